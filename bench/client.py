"""Client: verifying a production attestation, and attestation + first token.

    python bench/client.py [--iterations N] [--cold-runs K] [--chat-runs K]

Two measurements, side by side in one run:

1. **Full verification of a shared capture** (``../shared/testdata/captures``):
   every real production report there, verified the way ``enclaved verify``
   does it, under the strict policy plus NVIDIA's recorded NRAS answer
   (``Policy(require_nras=True, nvidia_gpu_count=8)``), with the Intel
   collateral recorded in the capture and the capture time as "now".
   *Warm*: parse + verify repeated in one process (imports, trust roots and
   collateral parsing already done; the target is <= 50 ms p50).
   *Cold*: ``python -m enclaved verify REPORT --collateral DIR --nras --nonce
   N --at T --json`` in a fresh process, wall time from spawn to exit
   (interpreter start and imports included), plus the same verification as a
   bare ``python -c`` that reports its own import and verify times.

2. **Attestation + first token** against a local ``enclaved serve`` (simulated
   TEE, fake engine behind it), E2EE model:

   - ``sdk_first_request``: a fresh ``enclaved.OpenAI`` client's first
     streamed completion, to the first decrypted token: fresh nonce,
     ``GET /tee/attestation``, full verification (development policy
     trusting the node's ``dev-root-ca.pem``), prompt sealing, the request;
   - ``sdk_next_request``: the same client's next completion (attestation
     cached): the price of E2EE alone;
   - ``attestation_fetch`` / ``attestation_verify``: the two halves of the
     first one (the server builds and self-verifies a report; the client
     verifies it);
   - ``sdk_aci_*`` / ``sdk_plain_*``: whole answers with ``aci="current"``
     and without, side by side: the first (attestation, plus the aci/1
     keyset) and the next ones (signature, plus the receipt check);
   - ``chat_cli_cold``: ``enclaved chat PROMPT --model e2ee-bench`` as a fresh
     process, to the first byte of the answer on stdout, and to exit
     (signature check included).

Prints a table, then one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import (
    REPO,
    child_env,
    emit,
    enclaved_server,
    fake_upstream,
    free_port,
    machine,
    quiet_dev_policy,
    ratio,
    summary_ms,
    write_config,
)

CAPTURES = REPO.parent / "shared" / "testdata" / "captures"
MODEL = "e2ee-bench"
PROMPT = "Say hello."


# -- 1. capture verification ----------------------------------------------------------


class Capture:
    """One capture folder: the report, its nonce, its time, its collateral."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.name = folder.name.split("_", 1)[0]
        manifest = json.loads((folder / "manifest.json").read_text())
        self.nonce_hex: str = manifest["nonce_hex"]
        self.at: str = manifest["captured_at"]
        self.responses = folder / "responses"
        self.report = next(self.responses.glob("0001_*.body"))


def captures() -> list[Capture]:
    # The report format enclaved verifies; the NEAR AI cloud and Chutes
    # captures beside them are other formats (not verified yet).
    return [
        Capture(f)
        for f in sorted(CAPTURES.iterdir())
        if f.name.startswith(("venice_", "neardirect_")) and (f / "manifest.json").is_file()
    ]


#: The verification, as a string so that the cold child runs exactly it.
VERIFY_CODE = """
import time, json, sys
t0 = time.perf_counter()
from datetime import datetime
from pathlib import Path
from enclaved.attestation import AttestationReport, Policy, Verifier
from enclaved.attestation.verifier import directory_collateral, recorded_nras
t1 = time.perf_counter()
folder, report_path, nonce_hex, at = sys.argv[1:5]
when = datetime.fromisoformat(at.replace("Z", "+00:00"))
verifier = Verifier(Policy(require_nras=True, nvidia_gpu_count=8),
                    collateral=directory_collateral(Path(folder) / "responses"),
                    nras=recorded_nras(Path(folder)), now=lambda: when)
verdict = verifier.verify(AttestationReport.from_json(Path(report_path).read_bytes()),
                          nonce=bytes.fromhex(nonce_hex))
t2 = time.perf_counter()
print(json.dumps({"ok": verdict.ok, "import_ms": (t1 - t0) * 1000, "verify_ms": (t2 - t1) * 1000}))
"""


def verify_warm(c: Capture, iterations: int) -> dict[str, Any]:
    """Parse + verify ``iterations`` times in this process (after one untimed run)."""
    from datetime import datetime

    from enclaved.attestation import AttestationReport, Policy, Verifier
    from enclaved.attestation.verifier import directory_collateral, recorded_nras

    when = datetime.fromisoformat(c.at)  # Python 3.11 reads the "Z"
    verifier = Verifier(
        Policy(require_nras=True, nvidia_gpu_count=8),
        collateral=directory_collateral(c.responses),
        nras=recorded_nras(c.folder),
        now=lambda: when,
    )
    body = c.report.read_bytes()
    nonce = bytes.fromhex(c.nonce_hex)
    first = time.perf_counter()
    verdict = verifier.verify(AttestationReport.from_json(body), nonce=nonce)
    first_s = time.perf_counter() - first
    times = []
    for _ in range(iterations):
        t = time.perf_counter()
        verifier.verify(AttestationReport.from_json(body), nonce=nonce)
        times.append(time.perf_counter() - t)
    failed = [row.id for row in verdict.failures]
    return {
        "ok": verdict.ok,
        "failed_checks": failed,
        "rows": len(list(verdict)),
        "first_in_process_ms": round(first_s * 1000, 2),
        "warm_ms": summary_ms(times),
    }


def verify_cold(c: Capture, runs: int) -> dict[str, Any]:
    """The CLI and the bare library, each in a fresh process ``runs`` times."""
    env = child_env()
    cli = [
        sys.executable,
        "-m",
        "enclaved",
        "verify",
        str(c.report),
        "--collateral",
        str(c.responses),
        "--nras",
        "--nonce",
        c.nonce_hex,
        "--at",
        c.at,
        "--json",
    ]
    cli_s, lib_s, lib_import, lib_verify, codes = [], [], [], [], []
    for _ in range(runs):
        t = time.perf_counter()
        cli_run = subprocess.run(cli, env=env, capture_output=True, check=False)
        cli_s.append(time.perf_counter() - t)
        codes.append(cli_run.returncode)
        t = time.perf_counter()
        done = subprocess.run(
            [sys.executable, "-c", VERIFY_CODE, str(c.folder), str(c.report), c.nonce_hex, c.at],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        )
        lib_s.append(time.perf_counter() - t)
        inner = json.loads(done.stdout.strip().splitlines()[-1])
        lib_import.append(inner["import_ms"])
        lib_verify.append(inner["verify_ms"])
    return {
        "cli_exit_codes": sorted(set(codes)),
        "cli_wall_ms": summary_ms(cli_s),
        "library_wall_ms": summary_ms(lib_s),
        "library_import_ms_p50": round(statistics.median(lib_import), 1),
        "library_verify_ms_p50": round(statistics.median(lib_verify), 1),
    }


# -- 2. attestation + first token ---------------------------------------------------------


def _streamed_answer(client: Any) -> tuple[float, float]:
    """One streamed completion of the bench prompt: (seconds to the first
    decrypted token, seconds to the end of the stream, checks included)."""
    t = time.perf_counter()
    ttft = None
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=16,
        stream=True,
    )
    for chunk in stream:
        if ttft is None and chunk.choices and chunk.choices[0].delta.content:
            ttft = time.perf_counter() - t
    if ttft is None:
        raise RuntimeError("no content in the stream")
    return ttft, time.perf_counter() - t


def sdk_first_tokens(base_url: str, trust_root: Path, runs: int) -> dict[str, Any]:
    """A fresh SDK client per run: first completion (attests) and a second one (cached)."""
    import enclaved

    quiet_dev_policy()
    first: list[float] = []
    nxt: list[float] = []
    for _ in range(runs):
        client = enclaved.OpenAI(base_url=base_url, api_key="bench", trust_root=str(trust_root))
        for bucket in (first, nxt):
            bucket.append(_streamed_answer(client)[0])
        client.close()
    return {
        "sdk_first_request_ttft_ms": summary_ms(first),
        "sdk_next_request_ttft_ms": summary_ms(nxt),
    }


def sdk_aci_costs(base_url: str, trust_root: Path, runs: int) -> dict[str, Any]:
    """``aci="current"`` against none, side by side: the first request (the
    keyset established besides the attestation) and a whole cached answer,
    to the end of its stream (where the receipt is checked, after the
    signature)."""
    import enclaved

    quiet_dev_policy()
    out: dict[str, list[float]] = {}
    for _ in range(runs):
        for name, aci in (("plain", None), ("aci", "current")):
            client = enclaved.OpenAI(
                base_url=base_url, api_key="bench", trust_root=str(trust_root), aci=aci
            )
            for which in ("first", "next", "next"):
                out.setdefault(f"{name}_{which}", []).append(_streamed_answer(client)[1])
            client.close()
    result: dict[str, Any] = {
        f"sdk_{key}_answer_ms": summary_ms(values) for key, values in out.items()
    }
    for which in ("first", "next"):
        result[f"aci_over_plain_{which}_answer"] = ratio(
            result[f"sdk_aci_{which}_answer_ms"]["p50"],
            result[f"sdk_plain_{which}_answer_ms"]["p50"],
        )
    return result


def attestation_halves(base_url: str, trust_root: Path, runs: int) -> dict[str, Any]:
    """``GET /tee/attestation`` (the server's side) and the client's verification, apart."""
    import httpx

    from enclaved.attestation import Policy, Verifier
    from enclaved.client._attest import check_attestation, new_nonce

    quiet_dev_policy()
    verifier = Verifier(Policy.development(trust_root.read_text()), collateral=None)
    fetch, verify = [], []
    with httpx.Client(timeout=30.0) as http:
        for _ in range(runs + 1):
            nonce = new_nonce()
            t = time.perf_counter()
            response = http.get(
                f"{base_url}/tee/attestation", params={"model": MODEL, "nonce": nonce.hex()}
            )
            response.raise_for_status()
            t2 = time.perf_counter()
            check_attestation(
                response.content,
                base_url=base_url,
                model=MODEL,
                nonce=nonce,
                verifier=verifier,
                e2ee=True,
            )
            t3 = time.perf_counter()
            fetch.append(t2 - t)
            verify.append(t3 - t2)
    # The first round warms both sides up; drop it.
    return {
        "attestation_fetch_ms": summary_ms(fetch[1:]),
        "attestation_verify_ms": summary_ms(verify[1:]),
    }


def chat_cli_cold(base_url: str, trust_root: Path, runs: int) -> dict[str, Any]:
    """``enclaved chat`` in a fresh process: to the first answer byte, and to exit."""
    env = child_env({"ENCLAVED_API_KEY": "bench"})
    cmd = [
        sys.executable,
        "-m",
        "enclaved",
        "chat",
        PROMPT,
        "--model",
        MODEL,
        "--base-url",
        base_url,
        "--trust-root",
        str(trust_root),
        "--max-tokens",
        "16",
    ]
    first, total, codes = [], [], []
    for _ in range(runs):
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert proc.stdout is not None
        byte = proc.stdout.read(1)  # blocks until the first token is printed
        t_first = time.perf_counter()
        proc.stdout.read()
        codes.append(proc.wait())
        total.append(time.perf_counter() - t)
        if byte:
            first.append(t_first - t)
    return {
        "chat_cli_exit_codes": sorted(set(codes)),
        "chat_cli_first_byte_ms": summary_ms(first),
        "chat_cli_total_ms": summary_ms(total),
    }


# -- the run -----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--iterations", type=int, default=30, help="warm verifications per capture (default 30)"
    )
    parser.add_argument(
        "--cold-runs", type=int, default=3, help="fresh processes per capture (default 3)"
    )
    parser.add_argument("--chat-runs", type=int, default=5, help="SDK / CLI runs (default 5)")
    parser.add_argument("--skip-chat", action="store_true", help="only the capture verification")
    args = parser.parse_args()

    result: dict[str, Any] = {"bench": "client", "machine": machine(), "captures": {}}
    for c in captures():
        warm = verify_warm(c, args.iterations)
        cold = verify_cold(c, args.cold_runs) if args.cold_runs > 0 else {}
        result["captures"][c.name] = {**warm, **cold}

    if not args.skip_chat:
        with tempfile.TemporaryDirectory(prefix="enclaved-bench-") as tmp:
            folder = Path(tmp)
            up_port, port = free_port(), free_port()
            with fake_upstream(up_port, tokens=16) as _up:
                config = write_config(
                    folder,
                    port,
                    upstream_url=f"http://127.0.0.1:{up_port}/v1",
                    upstream_models=[MODEL],
                )
                with enclaved_server(config, port):
                    base_url = f"http://127.0.0.1:{port}/v1"
                    trust_root = folder / "data" / "dev-root-ca.pem"
                    chat: dict[str, Any] = {}
                    chat.update(attestation_halves(base_url, trust_root, args.chat_runs))
                    chat.update(sdk_first_tokens(base_url, trust_root, args.chat_runs))
                    chat.update(sdk_aci_costs(base_url, trust_root, args.chat_runs))
                    chat.update(chat_cli_cold(base_url, trust_root, args.chat_runs))
                    first = chat["sdk_first_request_ttft_ms"]["p50"]
                    nxt = chat["sdk_next_request_ttft_ms"]["p50"]
                    chat["attestation_cost_ms_p50"] = round(first - nxt, 2)
                    chat["first_over_next_request"] = ratio(first, nxt)
                    result["chat"] = chat

    targets = {}
    for name, cap in result["captures"].items():
        warm_p50 = cap["warm_ms"]["p50"]
        targets[f"{name}: warm full verification p50 <= 50 ms"] = cap["ok"] and warm_p50 <= 50.0
    result["targets_met"] = targets
    _print(result)
    emit(result)


def _print(result: dict[str, Any]) -> None:
    for name, cap in result["captures"].items():
        line = f"capture {name:<12} ok={cap['ok']} warm p50 {cap['warm_ms']['p50']:.1f} ms"
        line += f" p95 {cap['warm_ms']['p95']:.1f} ms, first in process {cap['first_in_process_ms']:.1f} ms"
        if "cli_wall_ms" in cap:
            line += (
                f"; cold CLI {cap['cli_wall_ms']['p50']:.0f} ms, cold library {cap['library_wall_ms']['p50']:.0f}"
                f" ms (imports {cap['library_import_ms_p50']:.0f}, verify {cap['library_verify_ms_p50']:.0f})"
            )
        print(line)
    chat = result.get("chat")
    if chat:
        for key, value in chat.items():
            if isinstance(value, dict) and "p50" in value:
                print(f"{key:<32} p50 {value['p50']:>8.1f} ms  p95 {value['p95']:>8.1f} ms")
            else:
                print(f"{key:<32} {value}")
    for name, ok in result["targets_met"].items():
        print(f"target {name}: {'met' if ok else 'MISSED'}")


if __name__ == "__main__":
    main()
