"""Embedded model: SmolLM2 through enclaved vs llama-cpp-python called directly.

    python bench/embedded.py [--max-tokens N] [--rounds R] [--threads T] [--streams S]

Side by side in one run, interleaved round by round:

=========  ====================================================================
direct     ``llama_cpp.Llama(...).create_chat_completion(stream=True)`` in
           this process: the bundled SmolLM2-135M-Instruct GGUF, the same
           ``n_ctx`` and thread count as the server's embedded backend,
           llama.cpp's extra buffer types on (the library's default)
direct_plain  the same with them off, as the server loads the model
           (docs/server.md, "The embedded model")
tee        ``tee-smollm2-135m`` through ``enclaved serve`` (a real process on
           loopback; a lean httpx streaming client)
e2ee       ``e2ee-smollm2-135m`` through it, end-to-end encrypted (attested
           once up front; the client seals the prompt and opens every delta)
=========  ====================================================================

Same prompt, same ``max_tokens``, temperature 0 (greedy), so the three
produce the same text (checked: ``same_text``). Reported per mode: TTFT
(request to first content; for ``direct``, the call to its first chunk:
template, tokenization and prefill included) and decode tokens/s (content
chunks after the first, over the time from the first to the last), p50 over
the rounds; and the ratios through-the-server over direct.

Memory, for docs/benchmarks.md: the server's RSS (``/proc/PID/status``)
right after start (model loaded), after one completion, then with ``--streams``
(default 64) streams held open at once against a slow fake engine (a third
model, ``tee-slow`` / ``e2ee-slow``, served by ``bench/fake_upstream.py``
with one token per ``--slow-delay-ms``), plain and E2EE, and after they close.

The thread count defaults to the server's own choice (all usable cores but
one, at least one); ``--threads`` changes it for ``direct`` only (the server
does not take it from its configuration).

Prints a table, then one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
from _common import (
    attest,
    emit,
    enclaved_server,
    fake_upstream,
    free_port,
    machine,
    ratio,
    rss_kib,
    summary_ms,
    write_config,
)

PROMPT = "Write a short story about a robot who learns to paint."
TEE, E2EE = "tee-smollm2-135m", "e2ee-smollm2-135m"
SLOW_TEE, SLOW_E2EE = "tee-slow", "e2ee-slow"
N_CTX = 2048  # EmbeddedBackend's default


def server_threads() -> int:
    """What ``EmbeddedBackend`` picks: all usable cores but one, at least one."""
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    return max(1, cores - 1)


# -- direct -------------------------------------------------------------------------------


class Direct:
    """llama-cpp-python on the bundled GGUF, configured as the server's backend is,
    with llama.cpp's extra buffer types (AMX, repacked weights) on - the
    library's default - or off, as the server loads it."""

    def __init__(self, threads: int, *, extra_bufts: bool = True) -> None:
        from enclaved.server.backends.embedded import bundled_model_path, load_llama

        started = time.perf_counter()
        self.llama = load_llama(
            bundled_model_path(), n_ctx=N_CTX, n_threads=threads, use_extra_bufts=extra_bufts
        )
        self.load_s = time.perf_counter() - started

    def run(self, max_tokens: int) -> dict[str, Any]:
        marks: list[float] = []
        text: list[str] = []
        t = time.perf_counter()
        for chunk in self.llama.create_chat_completion(
            messages=[{"role": "user", "content": PROMPT}],
            max_tokens=max_tokens,
            temperature=0.0,
            stream=True,
        ):
            delta: Any = chunk["choices"][0]["delta"]  # type: ignore[index]
            piece = delta.get("content")
            if isinstance(piece, str) and piece:
                marks.append(time.perf_counter())
                text.append(piece)
        return _figures(t, marks, "".join(text))


# -- through the server ---------------------------------------------------------------


async def _server_runs(
    base_url: str, plan: list[tuple[str, int, dict[str, Any] | None]]
) -> list[dict[str, Any]]:
    """Completions one after the other on one keep-alive connection (the client is
    made once, outside the timing: making an httpx client costs tens of ms)."""
    async with httpx.AsyncClient(timeout=120.0) as client:
        (await client.get(f"{base_url}/models")).raise_for_status()  # connect first, untimed
        return [await _server_once(client, base_url, *step) for step in plan]


async def _server_once(
    client: httpx.AsyncClient,
    base_url: str,
    model: str,
    max_tokens: int,
    e2ee: dict[str, Any] | None,
) -> dict[str, Any]:
    from enclaved.crypto import KeyPair, Opener, seal

    headers = {"Content-Type": "application/json"}
    t = time.perf_counter()
    content = PROMPT
    opener = None
    if e2ee is not None:
        client_key = KeyPair.generate()
        opener = Opener(client_key)
        content = seal(PROMPT, bytes.fromhex(e2ee["model_key_hex"]))
        headers.update(
            {
                "X-Venice-TEE-Client-Pub-Key": client_key.public_key_hex,
                "X-Venice-TEE-Model-Pub-Key": e2ee["model_key_text"],
                "X-Venice-TEE-Signing-Algo": "ecdsa",
            }
        )
    body = orjson.dumps(
        {
            "model": model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
        }
    )
    marks: list[float] = []
    text: list[str] = []
    usage: dict[str, Any] | None = None
    async with client.stream(
        "POST", f"{base_url}/chat/completions", content=body, headers=headers
    ) as response:
        if response.status_code != 200:
            await response.aread()
            raise RuntimeError(f"HTTP {response.status_code}: {response.text[:300]}")
        buf = b""
        async for raw in response.aiter_raw():
            buf += raw
            *events, buf = buf.split(b"\n\n")
            for event in events:
                if not event.startswith(b"data: ") or event == b"data: [DONE]":
                    continue
                chunk = orjson.loads(event[6:])
                if "error" in chunk:
                    raise RuntimeError(f"stream error: {chunk['error']}")
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or ():
                    piece = (choice.get("delta") or {}).get("content")
                    if piece:
                        marks.append(time.perf_counter())
                        text.append(opener.open_text(piece) if opener is not None else piece)
    out = _figures(t, marks, "".join(text))
    out["completion_tokens"] = (usage or {}).get("completion_tokens")
    return out


def _figures(t0: float, marks: list[float], text: str) -> dict[str, Any]:
    if not marks:
        return {
            "ttft_s": float("nan"),
            "decode_tokens_per_s": float("nan"),
            "chunks": 0,
            "text": text,
        }
    decode = (len(marks) - 1) / (marks[-1] - marks[0]) if len(marks) > 1 else float("nan")
    return {
        "ttft_s": marks[0] - t0,
        "decode_tokens_per_s": decode,
        "chunks": len(marks),
        "text": text,
    }


# -- memory -----------------------------------------------------------------------------------


async def _hold_streams(
    base_url: str, model: str, n: int, e2ee: dict[str, Any] | None, pid: int
) -> int:
    """Open ``n`` streams at once, wait until each has its response headers, read RSS, close."""
    from enclaved.crypto import KeyPair, seal

    ready = asyncio.Event()
    release = asyncio.Event()
    opened = 0

    async def one(client: httpx.AsyncClient) -> None:
        nonlocal opened
        headers = {"Content-Type": "application/json"}
        content = PROMPT
        if e2ee is not None:
            key = KeyPair.generate()
            content = seal(PROMPT, bytes.fromhex(e2ee["model_key_hex"]))
            headers.update(
                {
                    "X-Venice-TEE-Client-Pub-Key": key.public_key_hex,
                    "X-Venice-TEE-Model-Pub-Key": e2ee["model_key_text"],
                    "X-Venice-TEE-Signing-Algo": "ecdsa",
                }
            )
        body = orjson.dumps(
            {
                "model": model,
                "messages": [{"role": "user", "content": content}],
                "max_tokens": 1000,
                "stream": True,
            }
        )
        async with client.stream(
            "POST", f"{base_url}/chat/completions", content=body, headers=headers
        ) as r:
            if r.status_code != 200:
                raise RuntimeError(f"HTTP {r.status_code}")
            opened += 1
            if opened == n:
                ready.set()
            await release.wait()

    limits = httpx.Limits(max_connections=n + 4)
    async with httpx.AsyncClient(timeout=60.0, limits=limits) as client:
        tasks = [asyncio.ensure_future(one(client)) for _ in range(n)]
        await asyncio.wait_for(ready.wait(), timeout=60.0)
        await asyncio.sleep(0.5)  # let the server settle (buffers, the engine's first chunks)
        rss = rss_kib(pid)
        release.set()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return rss


# -- the run -------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--max-tokens", type=int, default=128, help="completion length (default 128)"
    )
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument(
        "--threads",
        type=int,
        default=server_threads(),
        help="llama.cpp threads for direct (default: the server's choice)",
    )
    parser.add_argument(
        "--streams", type=int, default=64, help="streams held open for the RSS figure (default 64)"
    )
    parser.add_argument(
        "--slow-delay-ms", type=float, default=2000.0, help="the slow engine's delay per token"
    )
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()

    runs: dict[str, list[dict[str, Any]]] = {
        "direct": [],
        "direct_plain": [],
        "tee": [],
        "e2ee": [],
    }
    memory: dict[str, Any] = {}
    setup: dict[str, Any] = {
        "threads_direct": args.threads,
        "threads_server": server_threads(),
        "n_ctx": N_CTX,
    }
    with tempfile.TemporaryDirectory(prefix="enclaved-bench-") as tmp:
        folder = Path(tmp)
        up_port, port = free_port(), free_port()
        with fake_upstream(up_port, tokens=1000, delay_ms=args.slow_delay_ms):
            config = write_config(
                folder,
                port,
                upstream_url=f"http://127.0.0.1:{up_port}/v1",
                upstream_models=[SLOW_TEE, SLOW_E2EE],
                embedded_models=[TEE, E2EE],
            )
            with enclaved_server(config, port, timeout=300.0) as server:
                base_url = f"http://127.0.0.1:{port}/v1"
                setup["server_startup_s"] = round(server.startup_s, 2)
                memory["rss_started_kib"] = rss_kib(server.pid)
                key = attest(base_url, E2EE, folder / "data" / "dev-root-ca.pem")
                direct = Direct(args.threads)
                plain = Direct(args.threads, extra_bufts=False)
                setup["direct_load_s"] = round(direct.load_s, 2)
                # One untimed run each: first-call costs (allocations, caches) out of the figures.
                direct.run(8)
                plain.run(8)
                asyncio.run(_server_runs(base_url, [(TEE, 8, None)]))
                memory["rss_after_first_completion_kib"] = rss_kib(server.pid)
                for _ in range(args.rounds):
                    runs["direct"].append(direct.run(args.max_tokens))
                    runs["direct_plain"].append(plain.run(args.max_tokens))
                    tee, e2ee = asyncio.run(
                        _server_runs(
                            base_url, [(TEE, args.max_tokens, None), (E2EE, args.max_tokens, key)]
                        )
                    )
                    runs["tee"].append(tee)
                    runs["e2ee"].append(e2ee)
                    print(
                        "  round: "
                        + ", ".join(
                            f"{m} {r[-1]['decode_tokens_per_s']:.0f} tok/s ttft {r[-1]['ttft_s'] * 1000:.0f} ms"
                            for m, r in runs.items()
                        ),
                        file=sys.stderr,
                        flush=True,
                    )
                del direct, plain
                if not args.skip_memory:
                    memory["streams"] = args.streams
                    memory["rss_idle_kib"] = rss_kib(server.pid)
                    memory["rss_tee_streams_open_kib"] = asyncio.run(
                        _hold_streams(base_url, SLOW_TEE, args.streams, None, server.pid)
                    )
                    slow_key = attest(base_url, SLOW_E2EE, folder / "data" / "dev-root-ca.pem")
                    memory["rss_e2ee_streams_open_kib"] = asyncio.run(
                        _hold_streams(base_url, SLOW_E2EE, args.streams, slow_key, server.pid)
                    )
                    time.sleep(0.5)
                    memory["rss_after_streams_closed_kib"] = rss_kib(server.pid)
                    memory["per_open_stream_kib"] = {
                        mode: round(
                            (memory[f"rss_{mode}_streams_open_kib"] - memory["rss_idle_kib"])
                            / args.streams,
                            1,
                        )
                        for mode in ("tee", "e2ee")
                    }

    results: dict[str, Any] = {}
    for mode, rs in runs.items():
        results[mode] = {
            "ttft_ms": summary_ms([r["ttft_s"] for r in rs]),
            "decode_tokens_per_s_p50": round(
                statistics.median(r["decode_tokens_per_s"] for r in rs), 1
            ),
            "chunks": [r["chunks"] for r in rs],
        }
    texts = {mode: {r["text"] for r in rs} for mode, rs in runs.items()}
    same_text = len(set().union(*texts.values())) == 1
    ratios = {
        f"{mode}_over_direct_tokens_per_s": ratio(
            results[mode]["decode_tokens_per_s_p50"], results["direct"]["decode_tokens_per_s_p50"]
        )
        for mode in ("direct_plain", "tee", "e2ee")
    }
    ratios.update(
        {
            f"{mode}_ttft_overhead_ms": round(
                results[mode]["ttft_ms"]["p50"] - results["direct"]["ttft_ms"]["p50"], 2
            )
            for mode in ("tee", "e2ee")
        }
    )
    for mode, r in results.items():
        print(
            f"{mode:<12} decode {r['decode_tokens_per_s_p50']:>7.1f} tok/s   TTFT p50 {r['ttft_ms']['p50']:>7.1f} ms"
            f"   chunks {r['chunks']}"
        )
    for k, v in {**ratios, "same_text": same_text}.items():
        print(f"{k:<32} {v}")
    for k, v in memory.items():
        print(f"{k:<32} {v}")
    emit(
        {
            "bench": "embedded",
            "prompt": PROMPT,
            "max_tokens": args.max_tokens,
            "rounds": args.rounds,
            "machine": machine(),
            "setup": setup,
            "results": results,
            "ratios": ratios,
            "same_text": same_text,
            "memory_kib": memory,
        }
    )


if __name__ == "__main__":
    main()
