"""Shared helpers for the benchmark scripts in ``bench/``.

Not a public API: each ``bench/<name>.py`` imports this module by its bare
name (the script's folder is first on ``sys.path`` when it runs as
``python bench/<name>.py``).

What is here:

- :func:`free_port`, :func:`wait_http`: loopback plumbing;
- :class:`Proc`: start a child process (argument list or shell command),
  wait until an HTTP URL answers, stop it (terminate, then kill), keep its
  output in a temp file for the error message when it dies early;
- :func:`percentile`, :func:`summary_ms`: figures;
- :func:`write_config`, :func:`enclaved_server`, :func:`fake_upstream`: the
  processes the benches measure (an ``enclaved serve`` with a temp TOML
  config, the fake OpenAI-compatible engine);
- :func:`attest`: attest a node once (fresh nonce, full verification);
- :func:`rss_kib`, :func:`group_cpu_s`: a process's memory and CPU time from ``/proc``;
- :func:`machine`: what ran the benchmark (CPU count and model, Python);
- :func:`emit`: the one JSON object every bench prints on its last line.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

#: The repository root (``bench/`` sits in it) and its ``src/`` folder.
REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
BENCH = REPO / "bench"


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for child processes: ``src/`` importable, output unbuffered."""
    env = dict(os.environ)
    paths = [str(SRC), str(BENCH)]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    if extra:
        env.update(extra)
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (racy, fine for benches)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(
    url: str, *, timeout: float = 60.0, proc: subprocess.Popen[bytes] | None = None
) -> float:
    """Poll ``GET url`` until it answers 2xx; seconds waited. Raises if ``proc`` dies first."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(
                f"process exited with status {proc.returncode} before {url} answered"
            )
        try:
            if httpx.get(url, timeout=2.0).is_success:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")
        time.sleep(0.05)


class Proc:
    """A child process that serves HTTP, for the duration of a ``with`` block.

    ``cmd`` is an argument list, or a string run by the shell (``--server-cmd``).
    Output goes to a temp file, shown in the error if the process dies or
    never answers ``ready_url``.

    >>> with Proc([sys.executable, "-m", "enclaved", "serve", ...], ready_url=".../health") as p:  # doctest: +SKIP
    ...     p.pid
    """

    def __init__(
        self,
        cmd: Sequence[str] | str,
        *,
        ready_url: str | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 60.0,
        name: str = "process",
    ) -> None:
        self.cmd = cmd
        self.ready_url = ready_url
        self.env = child_env(env)
        self.timeout = timeout
        self.name = name
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s = 0.0
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in __exit__

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def output(self) -> str:
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")

    def __enter__(self) -> Self:
        shell = isinstance(self.cmd, str)
        self.proc = subprocess.Popen(
            self.cmd,
            shell=shell,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            # Own process group: a shell command's children stop with it.
            start_new_session=True,
        )
        if self.ready_url:
            try:
                self.startup_s = wait_http(self.ready_url, timeout=self.timeout, proc=self.proc)
            except RuntimeError as exc:
                self.stop()
                tail = self.output()[-3000:]
                raise RuntimeError(f"{self.name}: {exc}\n--- its output ---\n{tail}") from None
        return self

    def stop(self) -> None:
        proc = self.proc
        if proc is None:
            return
        self.proc = None
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
        self._log.close()


def python_cmd(*args: str) -> list[str]:
    """``[this python, *args]``."""
    return [sys.executable, *args]


def shell_join(args: Sequence[str]) -> str:
    return " ".join(shlex.quote(a) for a in args)


# -- the processes under test ---------------------------------------------------

#: The fake engine's model name (``bench/fake_upstream.py --model``).
UPSTREAM_MODEL = "fake-model"


def write_config(
    folder: Path,
    port: int,
    *,
    upstream_url: str | None = None,
    upstream_models: Sequence[str] = (),
    embedded_models: Sequence[str] = (),
    extra: str = "",
) -> Path:
    """A TOML config for ``enclaved serve`` in ``folder`` (state in ``folder/data``).

    ``upstream_models`` are served by the engine at ``upstream_url``,
    ``embedded_models`` by the bundled SmolLM2. ``extra`` is appended to the
    top-level keys (e.g. ``e2ee_key_per_chunk = true``).
    """
    path = folder / "enclaved.toml"
    text = f'host = "127.0.0.1"\nport = {port}\ndata_dir = "{folder / "data"}"\ntee = "simulated"\n{extra}\n'
    text += '\n[signatures]\nkind = "sqlite"\n'
    for model_id in upstream_models:
        text += (
            f'\n[[models]]\nid = "{model_id}"\nbackend = "upstream"\n'
            f'base_url = "{upstream_url}"\nupstream_model = "{UPSTREAM_MODEL}"\n'
        )
    for model_id in embedded_models:
        text += f'\n[[models]]\nid = "{model_id}"\nbackend = "embedded"\n'
    path.write_text(text)
    return path


def enclaved_server(config: Path, port: int, *, timeout: float = 120.0, workers: int = 1) -> Proc:
    """``enclaved serve --config CONFIG --workers N`` (log level warning), ready once
    ``/health`` answers."""
    cmd = python_cmd(
        "-m",
        "enclaved",
        "serve",
        "--config",
        str(config),
        "--log-level",
        "warning",
        "--workers",
        str(workers),
    )
    return Proc(
        cmd, ready_url=f"http://127.0.0.1:{port}/health", name="enclaved serve", timeout=timeout
    )


def fake_upstream(port: int, *, tokens: int, delay_ms: float = 0.0) -> Proc:
    """``bench/fake_upstream.py``, ready once ``/v1/models`` answers."""
    cmd = python_cmd(
        str(BENCH / "fake_upstream.py"),
        "--port",
        str(port),
        "--tokens",
        str(tokens),
        "--delay-ms",
        str(delay_ms),
        "--model",
        UPSTREAM_MODEL,
    )
    return Proc(cmd, ready_url=f"http://127.0.0.1:{port}/v1/models", name="fake upstream")


def quiet_dev_policy() -> None:
    """The development policy logs and warns on every use; known, and not news in a bench."""
    import logging
    import warnings

    logging.getLogger("enclaved.attestation.policy").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message="INSECURE attestation policy")


def attest(base_url: str, model: str, trust_root: Path | None) -> dict[str, Any]:
    """Fetch the attestation once (fresh nonce); verify it when a trust root is known.

    Returns the model key to seal prompts to, and how long attestation took.
    """
    from enclaved.client._attest import check_attestation, new_nonce

    nonce = new_nonce()
    started = time.perf_counter()
    response = httpx.get(
        f"{base_url.rstrip('/')}/tee/attestation",
        params={"model": model, "nonce": nonce.hex()},
        timeout=30.0,
    )
    response.raise_for_status()
    if trust_root is None:
        doc = response.json()
        key_text = doc.get("signing_key") or doc.get("signing_public_key")
        key_hex = key_text if len(key_text) == 130 else "04" + key_text
        return {
            "model_key_hex": key_hex,
            "model_key_text": key_text,
            "attested": False,
            "attestation_ms": round((time.perf_counter() - started) * 1000, 1),
        }
    from enclaved.attestation import Policy, Verifier

    quiet_dev_policy()
    verifier = Verifier(Policy.development(trust_root.read_text()), collateral=None)
    node = check_attestation(
        response.content, base_url=base_url, model=model, nonce=nonce, verifier=verifier, e2ee=True
    )
    assert node.signing_key is not None and node.signing_key_text is not None
    return {
        "model_key_hex": node.signing_key.hex(),
        "model_key_text": node.signing_key_text,
        "attested": True,
        "attestation_ms": round((time.perf_counter() - started) * 1000, 1),
    }


# -- figures ---------------------------------------------------------------------


def percentile(values: Sequence[float], p: float) -> float:
    """The ``p``-th percentile (0-100), linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def summary_ms(seconds: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / max of durations given in seconds, in milliseconds (3 decimals)."""
    ms = [s * 1000.0 for s in seconds]
    return {
        "p50": round(percentile(ms, 50), 3),
        "p95": round(percentile(ms, 95), 3),
        "max": round(max(ms), 3) if ms else float("nan"),
        "n": len(ms),
    }


def ratio(a: float, b: float) -> float:
    """``a / b``, NaN when ``b`` is 0 or NaN (a bench that produced nothing)."""
    if not b or math.isnan(b):
        return float("nan")
    return round(a / b, 3)


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (``VmRSS`` of ``/proc/PID/status``); 0 if unknown."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def group_cpu_s(pgid: int) -> float:
    """CPU seconds (user + system) used so far by every live process of group ``pgid``.

    :class:`Proc` starts each child in its own session, so a server started
    through a shell (``--server-cmd``) is counted with its children. CPU time
    is far less noisy than throughput on a shared machine: a process that is
    descheduled waits, but does not burn CPU.
    """
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # After "pid (comm)": state ppid pgrp session ... utime(14) stime(15), 1-based.
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _clean(obj: Any) -> Any:
    """NaN is not JSON: make it null."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def emit(result: Mapping[str, Any]) -> None:
    """Print the result as one JSON object on one line (the last line of every bench)."""
    print(json.dumps(_clean(dict(result)), sort_keys=False), flush=True)
