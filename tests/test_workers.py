"""``enclaved serve --workers N``: N processes on one port, one node to its clients.

Run as an operator runs it (a subprocess with the embedded model). Every
answer, whatever process gives it, carries the same signing address; an
answer's signature is found whatever process serves the lookup (one SQLite
store); a worker that dies stops the node loudly rather than leaving it
serving at half strength; SIGTERM stops all of them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import httpx
import pytest

import enclaved
from enclaved.attestation.policy import InsecurePolicyWarning
from enclaved.client import last_signature

pytestmark = [pytest.mark.model]


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _start(tmp_path: Path) -> tuple[subprocess.Popen[str], int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [sys.executable, "-m", "enclaved", "serve", "--workers", "2", "--port", str(port)]
    argv += ["--data-dir", str(tmp_path), "--log-level", "warning"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if (
                httpx.get(f"http://127.0.0.1:{port}/ready").status_code == 200
                and len(_children(proc.pid)) == 2
            ):
                break
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    return proc, port


def test_two_workers_are_one_node(tmp_path: Path) -> None:
    proc, port = _start(tmp_path)
    try:
        base = f"http://127.0.0.1:{port}/v1"
        workers = _children(proc.pid)
        assert len(workers) == 2
        addresses = {
            httpx.get(base + "/tee/attestation", params={"model": "tee-smollm2-135m"}).json()[
                "signing_address"
            ]
            for _ in range(20)  # a new connection each: the kernel hands them to either worker
        }
        assert len(addresses) == 1
        (address,) = addresses
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InsecurePolicyWarning)
            for _ in range(6):
                client = enclaved.OpenAI(
                    base_url=base,
                    api_key="k",
                    trust_root=str(tmp_path / "dev-root-ca.pem"),
                    max_retries=0,
                )
                reply = client.chat.completions.create(
                    model="e2ee-smollm2-135m",
                    messages=[{"role": "user", "content": "hi"}],
                    max_tokens=8,
                )
                signature = last_signature(client)
                assert reply.choices[0].message.content is not None
                assert signature is not None and signature.ok
                assert signature.recovered_address == address
                client.close()
        # A worker that dies stops the node, loudly.
        os.kill(workers[1], signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 1
    assert "a worker exited" in err
    assert "workers:         2 processes" in out


def test_sigterm_stops_every_worker(tmp_path: Path) -> None:
    proc, _ = _start(tmp_path)
    workers = _children(proc.pid)
    assert len(workers) == 2
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert not [pid for pid in workers if Path(f"/proc/{pid}").exists()]
