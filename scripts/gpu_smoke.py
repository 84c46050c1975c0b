"""The body of ``scripts/gpu-smoke`` (read that first): vLLM, enclaved, one JSON line."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import httpx

import enclaved
from enclaved.attestation.policy import InsecurePolicyWarning
from enclaved.client import last_signature


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait(url: str, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"gpu-smoke: {url} exited before it answered")
        try:
            if httpx.get(url, timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(1)
    raise SystemExit(f"gpu-smoke: {url} did not answer in {timeout:.0f} s")


async def _throughput(
    base: str, root: str, model: str, seconds: float, concurrency: int
) -> dict[str, Any]:
    client = enclaved.AsyncOpenAI(base_url=base, api_key="k", trust_root=root, max_retries=0)
    tokens = errors = 0
    stop = time.monotonic() + seconds

    async def worker() -> None:
        nonlocal tokens, errors
        while time.monotonic() < stop:
            try:
                stream = await client.chat.completions.create(
                    model=model,
                    messages=[{"role": "user", "content": "Write a short poem about the sea."}],
                    max_tokens=128,
                    stream=True,
                    stream_options={"include_usage": True},
                )
                async for chunk in stream:
                    if chunk.usage:
                        tokens += chunk.usage.completion_tokens
            except Exception:  # noqa: BLE001 - counted
                errors += 1

    started = time.monotonic()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    await client.close()
    return {"tokens_per_s": round(tokens / (time.monotonic() - started), 1), "errors": errors}


def main() -> int:
    p = argparse.ArgumentParser(description="vLLM + enclaved on a GPU: one JSON line")
    p.add_argument("--vllm", required=True, help="the vllm executable")
    p.add_argument("--model", default="Qwen/Qwen2.5-0.5B-Instruct")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--record", type=Path, help="write vLLM's raw chat stream here")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gpu-smoke-"))
    engine_port, node_port = _port(), _port()
    engine = subprocess.Popen(
        [args.vllm, "serve", args.model, "--port", str(engine_port), "--host", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=open(work / "vllm.log", "wb"),  # noqa: SIM115 - lives as long as the process
    )
    node: subprocess.Popen[bytes] | None = None
    try:
        engine_url = f"http://127.0.0.1:{engine_port}/v1"
        _wait(engine_url + "/models", 1800, engine)
        if args.record:
            args.record.mkdir(parents=True, exist_ok=True)
            body = {
                "model": args.model,
                "messages": [{"role": "user", "content": "What is the capital of France?"}],
                "stream": True,
                "stream_options": {"include_usage": True},
                "max_tokens": 64,
            }
            with httpx.stream(
                "POST", engine_url + "/chat/completions", json=body, timeout=120
            ) as r:
                (args.record / "chat_stream_recorded.sse").write_bytes(r.read())
        config = work / "node.toml"
        config.write_text(
            f'data_dir = "{work / "data"}"\n'
            + "".join(
                f'[[models]]\nid = "{mid}"\nbackend = "upstream"\nbase_url = "{engine_url}"\n'
                f'upstream_model = "{args.model}"\n'
                for mid in ("e2ee-gpu-smoke", "tee-gpu-smoke")
            ),
            encoding="utf-8",
        )
        node = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "enclaved",
                "serve",
                "--config",
                str(config),
                "--port",
                str(node_port),
            ],
            stdout=subprocess.DEVNULL,
            stderr=open(work / "enclaved.log", "wb"),  # noqa: SIM115
        )
        base = f"http://127.0.0.1:{node_port}/v1"
        _wait(f"http://127.0.0.1:{node_port}/ready", 120, node)
        root = str(work / "data" / "dev-root-ca.pem")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InsecurePolicyWarning)
            client = enclaved.OpenAI(base_url=base, api_key="k", trust_root=root, max_retries=0)
            reply = client.chat.completions.create(
                model="e2ee-gpu-smoke",
                messages=[{"role": "user", "content": "What is the capital of France?"}],
                max_tokens=64,
            )
            signature = last_signature(client)
            run = asyncio.run(
                _throughput(base, root, "e2ee-gpu-smoke", args.seconds, args.concurrency)
            )
        gpus = subprocess.run(
            ["nvidia-smi", "-L"], check=False, capture_output=True, text=True
        ).stdout
        result = {
            "gpu_smoke": "ok"
            if signature is not None and signature.ok and run["errors"] == 0
            else "failed",
            "gpus": [line for line in gpus.splitlines() if line.strip()],
            "model": args.model,
            "e2ee_chat": {
                "answer_chars": len(reply.choices[0].message.content or ""),
                "signature_ok": bool(signature and signature.ok),
            },
            "e2ee_throughput": {**run, "seconds": args.seconds, "concurrency": args.concurrency},
            "logs": str(work),
        }
        print(json.dumps(result))
        return 0 if result["gpu_smoke"] == "ok" else 1
    finally:
        for proc in (node, engine):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
