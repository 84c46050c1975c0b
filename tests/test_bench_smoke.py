"""Smoke test of the benchmark scripts in ``bench/``, so that they don't rot.

Each script runs once with tiny settings, as a real process (as a user runs
it), and must print one JSON object on its last line with the figures the
docs quote. No timing is asserted (these machines are noisy): only that
every path ran and produced something - tokens came through each mode, E2EE
decrypted, the captures verified, no stream failed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"


def run_bench(name: str, *args: str, timeout: float = 180.0) -> dict[str, Any]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    done = subprocess.run(
        [sys.executable, str(BENCH / f"{name}.py"), *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{name}.py failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"
    last = done.stdout.strip().splitlines()[-1]
    result = json.loads(last)
    assert isinstance(result, dict)
    assert result["bench"] == name
    return result


def test_crypto() -> None:
    result = run_bench("crypto", "--seconds", "0.01")
    assert all(rate > 0 for rate in result["per_second"].values())
    assert set(result["ratios"]) >= {"floor_over_seal_per_chunk_key"}


def test_stream_enclaved_and_any_server() -> None:
    # enclaved itself, plus a second enclaved started through --server-cmd,
    # standing in for "another implementation of the protocol" (item 3).
    result = run_bench(
        "stream",
        "--tokens",
        "8",
        "--concurrency",
        "1,2",
        "--seconds",
        "0.8",  # a loaded 2-core machine may spend 0.3 s starting the client processes
        "--warmup",
        "0.05",
        "--rounds",
        "1",
        "--client-procs",  # C=2 then runs in two client processes
        "2",
        "--idle-requests",
        "2",
        "--server-url",
        "http://127.0.0.1:{port}/v1",
        "--server-cmd",
        "{python} -m enclaved serve --config {config} --data-dir {data_dir} --port {port} --log-level warning",
        "--server-name",
        "second",
    )
    results = result["results"]
    assert set(results) == {"upstream", "enclaved", "second"}
    for name, modes in results.items():
        expected = {"upstream"} if name == "upstream" else {"tee", "e2ee"}
        assert set(modes) == expected, name
        for mode, cells in modes.items():
            assert set(cells) == {"1", "2"}
            for c, cell in cells.items():
                assert cell["errors"] == 0, (name, mode, c, cell.get("last_error"))
                assert cell["tokens_per_s"] > 0, (name, mode, c)
                assert cell["ttft_ms"]["n"] > 0
    # enclaved's attestation was verified; the other one was used unverified, and says so.
    assert result["servers"]["enclaved"]["attested"] is True
    assert result["servers"]["second"]["attested"] is False
    for name in ("enclaved", "second"):
        ratios = result["ratios"][name]
        assert set(ratios["e2ee_over_tee"]) == {"1", "2"}
        assert set(ratios["idle_ttft_overhead_ms"]) == {"tee", "e2ee"}
        assert set(ratios["ttft_overhead_ms_c1"]) == {"tee", "e2ee"}
    assert set(result["idle_ttft_ms"]) == {
        "upstream/upstream",
        "enclaved/tee",
        "enclaved/e2ee",
        "second/tee",
        "second/e2ee",
        # The E2EE client's own share of its TTFT (key, sealing, first open).
        "enclaved/e2ee client crypto",
        "second/e2ee client crypto",
    }
    assert all(t["n"] == 2 for t in result["idle_ttft_ms"].values())
    assert set(result["ratios"]["enclaved"]["idle_client_crypto_ms"]) == {"e2ee"}
    # The engine hop through the node's own client, httpx and a bare socket.
    assert set(result["engine_hop_ttft_ms"]) == {"node", "httpx", "raw"}
    assert all(t["n"] == 2 for t in result["engine_hop_ttft_ms"].values())
    assert isinstance(result["engine_hop_overhead_ms"], float)


def test_client() -> None:
    result = run_bench("client", "--iterations", "1", "--cold-runs", "1", "--chat-runs", "1")
    assert set(result["captures"]) == {"venice", "neardirect"}
    for name, cap in result["captures"].items():
        assert cap["ok"], (name, cap["failed_checks"])
        assert cap["cli_exit_codes"] == [0], name
        assert cap["warm_ms"]["n"] == 1
    chat = result["chat"]
    assert chat["chat_cli_exit_codes"] == [0]
    assert chat["chat_cli_first_byte_ms"]["n"] == 1  # the CLI printed an answer
    assert chat["sdk_first_request_ttft_ms"]["n"] == 1
    assert chat["sdk_next_request_ttft_ms"]["n"] == 1


@pytest.mark.model
@pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python not installed"
)
def test_embedded() -> None:
    result = run_bench("embedded", "--max-tokens", "4", "--rounds", "1", "--streams", "4")
    assert set(result["results"]) == {"direct", "direct_plain", "tee", "e2ee"}
    for mode, r in result["results"].items():
        assert r["chunks"] and r["chunks"][0] > 0, mode
    # Greedy decoding of the same prompt: the server (plain and E2EE) says
    # exactly what llama.cpp says when called directly.
    assert result["same_text"] is True
    memory = result["memory_kib"]
    assert memory["rss_idle_kib"] > 0
    assert memory["rss_tee_streams_open_kib"] > 0 and memory["rss_e2ee_streams_open_kib"] > 0
