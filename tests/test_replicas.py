"""Replicas of one deployment behind a standard load balancer (HAProxy), for real.

Three ``enclaved serve`` processes share one node key (``--node-key-file``)
and one Redis signature store, behind Debian's HAProxy with round-robin and
no sticky routing; a fake OpenAI engine process answers for all of them.
200 E2EE chats go through ``enclaved.AsyncOpenAI`` pointed at HAProxy: every
answer's attestation and signature are verified by the client, whichever
replica answered the chat and whichever served the signature. One replica is
killed mid-run: what was in flight on it fails, nothing else does, and new
requests go to the others; restarted with the same key, it serves again.
Then every replica is restarted with a new key (a rotation): the same client
is answered 421 for its old key, attests again and goes on.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import free_port

import enclaved
from enclaved.attestation.policy import InsecurePolicyWarning
from enclaved.crypto import KeyPair
from enclaved.evidence.simulated import SimulatedTdx

pytestmark = [pytest.mark.redis]

REDIS_URL = os.environ.get("ENCLAVED_TEST_REDIS_URL")
HAPROXY = shutil.which("haproxy") or "/usr/sbin/haproxy"
REPO = Path(__file__).resolve().parents[1]
MODEL = "e2ee-fake-1"


def _fake_engine() -> Any:
    spec = importlib.util.spec_from_file_location(
        "fake_upstream", REPO / "bench" / "fake_upstream.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fake_upstream", module)
    spec.loader.exec_module(module)
    return module


def _wait_ready(url: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready")


@contextmanager
def _process(argv: list[str]) -> Iterator[subprocess.Popen[bytes]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), env.get("PYTHONPATH")]))
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


class Fleet:
    def __init__(self, tmp: Path, engine_url: str, key_file: Path, stack: ExitStack) -> None:
        self.tmp, self.key_file, self.stack = tmp, key_file, stack
        self.ports = [free_port() for _ in range(3)]
        self.procs: list[subprocess.Popen[bytes] | None] = [None, None, None]
        self.config = tmp / "node.toml"
        self.config.write_text(
            f'data_dir = "{tmp / "data"}"\n'
            f'[signatures]\nkind = "redis"\nurl = "{REDIS_URL}"\n'
            f'[[models]]\nid = "{MODEL}"\nbackend = "upstream"\n'
            f'base_url = "{engine_url}"\nupstream_model = "fake-model"\n',
            encoding="utf-8",
        )

    def start(self, i: int, key_file: Path | None = None) -> None:
        argv = [sys.executable, "-m", "enclaved", "serve", "--config", str(self.config)]
        argv += ["--port", str(self.ports[i]), "--node-key-file", str(key_file or self.key_file)]
        argv += ["--log-level", "error"]
        self.procs[i] = self.stack.enter_context(_process(argv))
        _wait_ready(f"http://127.0.0.1:{self.ports[i]}")

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        assert proc is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)


def _haproxy_config(front: int, ports: list[int]) -> str:
    """docs/deploy.md's HAProxy configuration, with this test's ports and
    faster health checks, and a header naming the replica that answered."""
    doc = (REPO / "docs" / "deploy.md").read_text(encoding="utf-8")
    text = doc.split("<!-- haproxy.cfg -->\n```text\n", 1)[1].split("```", 1)[0]
    text = text.replace("bind 127.0.0.1:8000", f"bind 127.0.0.1:{front}")
    for i, port in enumerate(ports):
        text = text.replace(
            f"127.0.0.1:{8001 + i} check inter 1s fall 2 rise 2",
            f"127.0.0.1:{port} check inter 200ms fall 1 rise 2",
        )
    assert "127.0.0.1:800" not in text
    return text.replace(
        "    balance roundrobin\n",
        "    balance roundrobin\n    http-response set-header X-Replica %s\n",
    )


def _served_by(lb: str, replica: str, timeout: float = 10.0) -> bool:
    """Whether the balancer sends requests to ``replica`` again within ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(lb + "/v1/models").headers["x-replica"] == replica:
            return True
        time.sleep(0.05)
    return False


async def _chats(client: Any, n: int, concurrency: int) -> tuple[int, list[str]]:
    ok, errors = 0, []
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        nonlocal ok
        async with sem:
            try:
                stream = await client.chat.completions.create(
                    model=MODEL,
                    messages=[{"role": "user", "content": f"question {i}"}],
                    stream=True,
                )
                text = "".join(
                    [c.choices[0].delta.content or "" async for c in stream if c.choices]
                )
                assert text
                ok += 1
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors.append(type(exc).__name__)

    await asyncio.gather(*(one(i) for i in range(n)))
    return ok, errors


@pytest.mark.skipif(not REDIS_URL, reason="set ENCLAVED_TEST_REDIS_URL (scripts/test does)")
@pytest.mark.skipif(
    not Path(HAPROXY).exists(), reason="haproxy is not installed (scripts/test installs it)"
)
def test_three_replicas_behind_haproxy(tmp_path: Path) -> None:
    secret = secrets.token_hex(32)
    key_file = tmp_path / "node.key"
    key_file.write_text(secret + "\n", encoding="ascii")
    key_file.chmod(0o600)
    address = KeyPair(bytes.fromhex(secret)).address
    new_secret = secrets.token_hex(32)
    new_key_file = tmp_path / "new.key"
    new_key_file.write_text(new_secret, encoding="ascii")
    new_key_file.chmod(0o600)
    new_address = KeyPair(bytes.fromhex(new_secret)).address
    tdx = SimulatedTdx.load_or_create(tmp_path / "data")  # one development root for all
    front = free_port()
    fake = _fake_engine()
    with ExitStack() as stack:
        engine = stack.enter_context(
            fake.FakeUpstreamProcess(tokens=12, delay_ms=3, model="fake-model")
        )
        fleet = Fleet(tmp_path, engine.base_url, key_file, stack)
        for i in range(3):
            fleet.start(i)
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(_haproxy_config(front, fleet.ports), encoding="utf-8")
        stack.enter_context(_process([HAPROXY, "-f", str(cfg), "-db"]))
        lb = f"http://127.0.0.1:{front}"
        _wait_ready(lb)
        # Every replica answers, with the one key.
        served = {httpx.get(lb + "/v1/models").headers["x-replica"] for _ in range(9)}
        assert served == {"n0", "n1", "n2"}
        doc = httpx.get(lb + "/v1/tee/attestation", params={"model": MODEL}).json()
        assert doc["signing_address"] == address

        async def main() -> None:
            client = enclaved.AsyncOpenAI(
                base_url=lb + "/v1", api_key="k", trust_root=str(tdx.root_path), max_retries=0
            )
            # 1. 200 chats, every attestation and signature verified by the client.
            ok, errors = await _chats(client, 200, 16)
            assert (ok, errors) == (200, [])
            # 2. One replica killed while chats are in flight.
            run = asyncio.ensure_future(_chats(client, 120, 16))
            await asyncio.sleep(0.3)
            fleet.kill(1)
            ok, errors = await run
            assert ok + len(errors) == 120
            assert len(errors) <= 16, errors  # at most what was in flight on it
            # 3. New requests go to the others.
            ok, errors = await _chats(client, 40, 8)
            assert (ok, errors) == (40, [])
            # 4. The killed replica restarted with the same key serves again.
            await asyncio.to_thread(fleet.start, 1)
            assert await asyncio.to_thread(_served_by, lb, "n1")
            ok, errors = await _chats(client, 30, 6)
            assert (ok, errors) == (30, [])
            # 5. A key rotation: every replica restarted with a new key. The
            # same client, holding the old key, is answered 421, attests again
            # and goes on.
            for i in range(3):
                fleet.kill(i)
            for i in range(3):
                await asyncio.to_thread(fleet.start, i, new_key_file)
            await asyncio.to_thread(_wait_ready, lb)
            ok, errors = await _chats(client, 30, 6)
            assert (ok, errors) == (30, [])
            await client.close()

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", InsecurePolicyWarning)
            asyncio.run(main())
        doc = httpx.get(lb + "/v1/tee/attestation", params={"model": MODEL}).json()
        assert doc["signing_address"] == new_address != address
