"""``enclaved serve`` as a user runs it: a subprocess, a config file, a real socket.

The node's engine is an OpenAI-compatible upstream; here that upstream is
another enclaved node with a scripted backend, so the test needs no model
weights and still runs the real ``UpstreamBackend`` over HTTP.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from server_fakes import TEE_MODEL, NodeHandle, SeedClient, fake_node, sse_events

from enclaved.crypto import eip191_recover_address, sha256_hex

pytestmark = pytest.mark.filterwarnings("ignore::enclaved.attestation.InsecurePolicyWarning")

SRC = Path(__file__).resolve().parents[1] / "src"
LOW_FD_LIMIT = 1024
_HARD_FDS = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
CANARY = "CANARY-7f3a-prompt"


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeHandle]:
    with fake_node(tmp_path_factory.mktemp("engine")) as handle:
        yield handle


class Served:
    def __init__(
        self,
        proc: subprocess.Popen[str],
        url: str,
        banner: str,
        stderr: list[str],
        reader: threading.Thread,
    ) -> None:
        self.proc = proc
        self.url = url
        self.banner = banner
        self._stderr = stderr
        self._reader = reader

    def stop(self) -> str:
        """Ask the node to stop (SIGINT), wait, and return everything it logged."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        return "".join(self._stderr)


@pytest.fixture(scope="module")
def served(engine: NodeHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    tmp = tmp_path_factory.mktemp("serve")
    config = tmp / "enclaved.toml"
    config.write_text(
        f"""
system_prompt = "OPERATOR"
[[models]]
id = "e2ee-up-1"
backend = "upstream"
base_url = "{engine.url}/v1"
upstream_model = "{TEE_MODEL}"
[[models]]
id = "tee-up-1"
backend = "upstream"
base_url = "{engine.url}/v1"
upstream_model = "{TEE_MODEL}"
""",
        encoding="utf-8",
    )
    env = {
        "PYTHONPATH": str(SRC),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "ENCLAVED_PORT": "0",
    }
    # Started as many systems start it, with a soft limit of 1024 open files
    # (a shell sets it: preexec_fn is unsafe in this threaded test process).
    low = min(LOW_FD_LIMIT, _HARD_FDS)
    proc = subprocess.Popen(
        [
            "/bin/sh",
            "-c",
            f'ulimit -S -n {low} && exec "$@"',
            "sh",
            sys.executable,
            "-m",
            "enclaved",
            "serve",
            "--config",
            str(config),
            "--data-dir",
            str(tmp / "data"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(proc.stderr or ()), daemon=True)
    reader.start()
    lines: list[str] = []
    url = None
    deadline = time.monotonic() + 60
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        m = re.search(r"serving on (http://127\.0\.0\.1:\d+)/v1", line)
        if m:
            url = m.group(1)
        if url and "check it with" in line:  # the banner's last line
            break
    if url is None:
        proc.kill()
        pytest.fail("enclaved serve did not start:\n" + "".join(lines) + "".join(stderr))
    handle = Served(proc, url, "".join(lines), stderr, reader)
    try:
        yield handle
    finally:
        handle.stop()


def test_the_open_file_limit_is_raised_to_the_hard_one(served: Served) -> None:
    """Started with a soft limit of 1024 open files, the node lifts it to the
    hard limit: every stream holds two sockets (client and engine)."""
    limits = Path(f"/proc/{served.proc.pid}/limits").read_text(encoding="utf-8")
    line = next(x for x in limits.splitlines() if x.startswith("Max open files"))
    soft, hard = line.split()[3:5]
    assert soft == hard, line
    if _HARD_FDS > LOW_FD_LIMIT:
        assert int(soft) > LOW_FD_LIMIT


def test_banner(served: Served, engine: NodeHandle) -> None:
    b = served.banner
    assert "e2ee-up-1, tee-up-1" in b
    address = re.search(r"signing address: (0x[0-9a-f]{40})", b)
    assert address
    root = re.search(r"dev root CA:\s+(\S+)", b)
    assert root and Path(root.group(1)).name == "dev-root-ca.pem" and Path(root.group(1)).is_file()
    assert "THE TEE IS SIMULATED" in b
    doc = httpx.get(
        served.url + "/v1/tee/attestation", params={"model": "tee-up-1"}, timeout=30
    ).json()
    assert doc["signing_address"] == address.group(1)
    assert doc["verified"] is True
    assert doc["model_name"] == TEE_MODEL


def test_e2ee_through_an_upstream_engine(served: Served, engine: NodeHandle) -> None:
    nonce = os.urandom(32).hex()
    att = httpx.get(
        served.url + "/api/v1/tee/attestation",
        params={"model": "e2ee-up-1", "nonce": nonce},
        timeout=30,
    ).json()
    assert att["verified"] is True and att["nonce"] == nonce
    client = SeedClient()
    key = att["signing_key"]
    body = json.dumps(
        {
            "model": "e2ee-up-1",
            "stream": True,
            "messages": [{"role": "user", "content": SeedClient.encrypt(CANARY, key)}],
        }
    ).encode()
    with httpx.stream(
        "POST",
        served.url + "/api/v1/chat/completions",
        content=body,
        headers=client.headers(key),
        timeout=30,
    ) as r:
        assert r.status_code == 200
        raw = r.read()
    events = sse_events(raw)
    text = "".join(
        client.decrypt(c["delta"]["content"])
        for e in events[:-1]
        for c in e["choices"]
        if c["delta"].get("content")
    )
    assert text == "".join(engine.backend.pieces)
    # The engine got the plaintext; no operator prompt under E2EE.
    assert engine.backend.requests[-1].messages == [{"role": "user", "content": CANARY}]
    sig = httpx.get(
        served.url + "/api/v1/tee/signature",
        params={"model": "e2ee-up-1", "request_id": events[0]["id"]},
        timeout=10,
    ).json()
    assert sig["text"] == sha256_hex(body) + ":" + sha256_hex(raw)
    assert eip191_recover_address(sig["text"], sig["signature"]) == att["signing_address"]


def test_plain_tee_gets_the_operator_prompt(served: Served, engine: NodeHandle) -> None:
    r = httpx.post(
        served.url + "/v1/chat/completions",
        timeout=30,
        json={"model": "tee-up-1", "messages": [{"role": "user", "content": CANARY}]},
    )
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == "".join(engine.backend.pieces)
    assert engine.backend.requests[-1].messages[0] == {"role": "system", "content": "OPERATOR"}


def test_zz_logs_are_content_free(served: Served) -> None:
    """Runs last in this module: stops the node and reads everything it logged."""
    log = served.stop()
    assert served.proc.returncode == 0, log  # a signal is a graceful stop
    assert "Application shutdown complete" in log
    assert "POST /api/v1/chat/completions 200" in log  # the access log is there...
    assert CANARY not in log  # ...without content,
    assert "nonce=" not in log and "request_id=" not in log  # query strings,
    assert "authorization" not in log.lower()  # or headers
