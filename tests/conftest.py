"""Shared test fixtures.

- ``SHARED``: the ``shared/`` folder beside the repository checkout (spec,
  seeds, real captures), laid out the same way in CI.
- :func:`free_port` and :func:`running_server`: serve an ASGI app with
  uvicorn on 127.0.0.1 in a background thread, over a real socket.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

#: The shared folder beside the repository: the seed document, PROTOCOL.md, testdata.
SHARED = Path(__file__).resolve().parents[2] / "shared"
#: The recorded production attestations (one folder per capture, with its manifest).
CAPTURES = SHARED / "testdata" / "captures"
#: The captures in PROTOCOL.md's attestation-report format (the one service
#: and its inference node): the generic tests over "every report" go over these.
REPORT_CAPTURES = sorted(
    p for p in CAPTURES.glob("*") if p.name.startswith(("venice_", "neardirect_"))
)
#: The captures in the other services' formats (``attestation/formats.py``:
#: NEAR AI cloud's gateway + model nodes, Chutes' instances), verified
#: component by component in ``tests/test_formats.py``.
FORMAT_CAPTURES = sorted(
    p for p in CAPTURES.glob("*") if p.name.startswith(("nearcloud_", "chutes_"))
)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (prefer ``running_server``,
    which binds its own socket and so cannot race)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def running_server(
    app: Any, *, startup_timeout: float = 60.0, tls: tuple[str, str] | None = None
) -> Iterator[str]:
    """Run ``app`` under uvicorn on 127.0.0.1 (lifespan on); yield its base URL.

    ``tls``: (certificate, key) PEM paths: served over HTTPS (the URL says so).

    The socket is bound before the server starts, so the port is known and
    cannot be taken by someone else in between. On exit the server shuts
    down (lifespan shutdown included) and the thread is joined.
    """
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        app,
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=2,
        ssl_certfile=tls[0] if tls else None,
        ssl_keyfile=tls[1] if tls else None,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive():
            sock.close()
            raise RuntimeError("server failed to start (see the log above)")
        if time.monotonic() > deadline:
            server.should_exit = True
            thread.join(5)
            sock.close()
            raise TimeoutError("server did not start in time")
        time.sleep(0.01)
    try:
        yield f"{'https' if tls else 'http'}://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


def wait_until_healthy(port: int, proc: Any, timeout: float = 120.0) -> None:
    """Wait until ``enclaved serve`` (``proc``) on ``port`` answers ``/health``,
    or has exited, or ``timeout`` passed; the caller's next request tells which."""
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)


@pytest.fixture
def unused_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def user_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The README's first command running (``tests/real_node.py``): one per session."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    from real_node import started_node

    with started_node(tmp_path_factory.mktemp("home"), free_port()) as node:
        yield node


# -- CI: a skipped test is a failed run ---------------------------------------------
#
# A test that skips because its data, tool or service is missing checks
# nothing, and a green run would hide it. scripts/test installs everything
# the suite needs (Redis, the embedded model, Node's packages), so in CI
# (CI=true, as .ci/run is run) any skip fails the run, with the reasons.
# Locally, skips stay skips.


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    import os

    if os.environ.get("CI") != "true":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if not skipped:
        return
    lines = [f"  {getattr(r, 'nodeid', '?')}: {r.longrepr}" for r in skipped]
    if reporter is not None:
        reporter.write_line(
            f"CI=true: {len(skipped)} test(s) skipped; in CI nothing may skip:", red=True
        )
        for line in lines:
            reporter.write_line(line)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(autouse=True)
def _root_logging_restored() -> Iterator[None]:
    """A test that runs ``enclaved serve`` in process installs the command's
    stderr handler on the root logger; left there, it writes to the captured
    stderr pytest has closed, and every later in-process server's log line
    becomes a "Logging error". Take it away, and the level with it."""
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in before and type(handler) is logging.StreamHandler:
            root.removeHandler(handler)
    root.setLevel(level)
