"""The node as a user starts it: the README's first command, in a fresh home.

:func:`started_node` runs ``./scripts/serve --port N`` (the README's first
command; only the port differs) as a subprocess, with ``HOME`` set to an
empty directory, so the node makes its development root where a new user's
node makes it (``~/.local/share/enclaved``) and serves the embedded
SmolLM2 model on a simulated TEE. It is up once the banner is printed.

``ENCLAVED_VENV`` points the script at the virtual environment that runs the
tests, so that it installs nothing. The doc tests and the first-run tests
share one such node (``conftest.user_node``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The virtual environment running the tests (its ``bin`` holds ``enclaved``).
VENV = Path(sys.executable).parent.parent


@dataclasses.dataclass
class UserNode:
    """A running ``scripts/serve``: where it listens, its home, what it printed."""

    proc: subprocess.Popen[str]
    port: int
    home: Path
    banner: str
    stderr: list[str]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def dev_root(self) -> Path:
        return self.home / ".local" / "share" / "enclaved" / "dev-root-ca.pem"

    def env(self) -> dict[str, str]:
        """The environment of a user in another shell: same home, enclaved on PATH
        (``source .venv/bin/activate``), and the node's port as the default URL."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("ENCLAVED_", "OPENAI_"))}
        env["HOME"] = str(self.home)
        env.pop("XDG_DATA_HOME", None)
        env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env["VIRTUAL_ENV"] = str(VENV)
        env["ENCLAVED_BASE_URL"] = self.base_url
        return env


def user_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ENCLAVED_", "OPENAI_"))}
    env.pop("XDG_DATA_HOME", None)
    env.update(HOME=str(home), ENCLAVED_VENV=str(VENV), PYTHONUNBUFFERED="1")
    return env


@contextlib.contextmanager
def started_node(home: Path, port: int, *, timeout: float = 300.0) -> Iterator[UserNode]:
    """``./scripts/serve --port PORT`` with ``HOME=home``; stopped with SIGINT (Ctrl-C)."""
    home.mkdir(parents=True, exist_ok=True)
    proc = subprocess.Popen(
        [str(REPO / "scripts" / "serve"), "--port", str(port)],
        cwd=home,
        env=user_env(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.extend(proc.stderr or ()), daemon=True)
    reader.start()
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line == "\n" and any("check it with:" in x for x in lines):
            break  # the banner ends with an empty line
    banner = "".join(lines)
    if not re.search(rf"serving on http://127\.0\.0\.1:{port}/v1", banner):
        proc.kill()
        proc.wait(10)
        reader.join(5)
        raise RuntimeError("scripts/serve did not start:\n" + banner + "".join(stderr))
    threading.Thread(target=lambda: proc.stdout and proc.stdout.read(), daemon=True).start()
    node = UserNode(proc, port, home, banner, stderr)
    try:
        yield node
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        reader.join(5)
