"""A new user's first run: the README's command starts a node, and everything
the README shows then works against it as shown.

This is the CI guard for the embedded model crashing the node (on Intel AMX
hosts it did, at the first chat request): the node here is the real
``scripts/serve`` process (``tests/real_node.py``), chatted with through the
plain ``openai`` SDK and ``enclaved.OpenAI``, streaming and not. If the
native library dies, these fail with the node's stderr attached.
"""

from __future__ import annotations

import os
import pty
import select
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from real_node import VENV, UserNode

pytestmark = [pytest.mark.model]

ENCLAVED = str(VENV / "bin" / "enclaved")


def _alive(node: UserNode) -> None:
    assert node.proc.poll() is None, "the node died:\n" + "".join(node.stderr[-40:])


def _run(node: UserNode, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ENCLAVED, *args],
        check=False,
        env=node.env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_the_node_says_what_it_runs_and_that_its_model_passed_its_self_test(
    user_node: UserNode,
) -> None:
    banner, log = user_node.banner, "".join(user_node.stderr)
    assert "e2ee-smollm2-135m, tee-smollm2-135m" in banner
    assert "THE TEE IS SIMULATED" in banner
    assert f"dev root CA:     {user_node.dev_root}" in banner and user_node.dev_root.is_file()
    assert "extra buffer types off" in log and "AMX: " in log
    assert "self-test passed: one token in" in log


def test_the_banners_check_command_runs_as_printed(user_node: UserNode) -> None:
    # scripts/serve does not put enclaved on PATH: the banner gives a command
    # that works anyway, and says how to put it there.
    line = next(x for x in user_node.banner.splitlines() if "check it with:" in x)
    command = shlex.split(line.split("check it with:", 1)[1])
    assert command[0] == ENCLAVED
    assert "source " in user_node.banner and "/bin/activate" in user_node.banner
    env = user_node.env()
    env["PATH"] = "/usr/bin:/bin"
    done = subprocess.run(
        command, check=False, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "VERIFIED" in done.stdout


def test_plain_openai_sdk_chats_with_the_embedded_model(user_node: UserNode) -> None:
    import openai

    client = openai.OpenAI(base_url=user_node.base_url, api_key="unused", max_retries=0)
    messages: Any = [{"role": "user", "content": "Say hi"}]
    reply = client.chat.completions.create(
        model="tee-smollm2-135m", messages=messages, max_tokens=24
    )
    assert reply.choices[0].message.content
    stream = client.chat.completions.create(
        model="tee-smollm2-135m", messages=messages, max_tokens=24, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text
    _alive(user_node)


@pytest.mark.filterwarnings("ignore::enclaved.attestation.InsecurePolicyWarning")
def test_enclaved_openai_chats_end_to_end_encrypted(user_node: UserNode) -> None:
    import enclaved
    from enclaved.client import last_attestation, last_signature

    client = enclaved.OpenAI(
        base_url=user_node.base_url, api_key="unused", trust_root=user_node.dev_root
    )
    messages: Any = [{"role": "user", "content": "Say hi"}]
    reply = client.chat.completions.create(
        model="e2ee-smollm2-135m", messages=messages, max_tokens=24
    )
    assert reply.choices[0].message.content
    stream = client.chat.completions.create(
        model="e2ee-smollm2-135m", messages=messages, max_tokens=24, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text
    node, signature = last_attestation(client), last_signature(client)
    assert node is not None and node.tee_hardware == "simulated"
    assert signature is not None and signature.ok
    _alive(user_node)


def test_a_busy_port_is_one_line_and_exit_1(user_node: UserNode) -> None:
    started = time.monotonic()
    done = _run(user_node, "serve", "--port", str(user_node.port))
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == (
        f"enclaved serve: cannot listen on 127.0.0.1:{user_node.port}: the address is already "
        "in use (another server? pick a port with --port)"
    )
    assert "Traceback" not in done.stderr and "loading model" not in done.stderr
    assert time.monotonic() - started < 30
    proxy = _run(user_node, "proxy", "--port", str(user_node.port))
    assert proxy.returncode == 1
    assert proxy.stderr.strip() == (
        f"enclaved proxy: cannot listen on 127.0.0.1:{user_node.port}: the address is already "
        "in use (another server? pick a port with --port)"
    )


def test_attest_and_verify_say_simulated_as_chat_does(user_node: UserNode, tmp_path: Path) -> None:
    saved = tmp_path / "report.json"
    for args in (
        ("attest", "--model", "e2ee-smollm2-135m", "--save", str(saved)),
        ("verify", str(saved)),
        ("chat", "hi", "--model", "e2ee-smollm2-135m"),
    ):
        done = _run(user_node, *args)
        assert done.returncode == 2, (args, done.stdout, done.stderr)
        assert "SIMULATED TEE" in done.stderr and "--trust-root" in done.stderr, args
        assert "cannot reach" not in done.stderr


def test_chat_names_the_url_it_could_not_reach(user_node: UserNode) -> None:
    done = _run(user_node, "chat", "hi", "--base-url", "http://127.0.0.1:9/v1")
    assert done.returncode == 3
    assert "cannot reach http://127.0.0.1:9/v1" in done.stderr


class _Terminal:
    """What a user's terminal shows: the master side of a pty, read as it fills."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.seen = bytearray()

    def wait_for(self, needle: bytes, *, after: int = 0, timeout: float = 60) -> int:
        """Read until ``needle`` appears at or after offset ``after``; its offset."""
        deadline = time.monotonic() + timeout
        while (at := self.seen.find(needle, after)) < 0:
            left = deadline - time.monotonic()
            assert left > 0, f"waited for {needle!r}; the screen ends {bytes(self.seen[-300:])!r}"
            self.read(left)
        return at

    def read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        try:
            chunk = os.read(self.fd, 4096)
        except OSError:  # the program ended and closed its side
            return False
        self.seen += chunk
        return bool(chunk)


def test_interactive_chat_ctrl_c_stops_the_answer_not_the_session(user_node: UserNode) -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [
            ENCLAVED,
            "chat",
            "--model",
            "tee-smollm2-135m",
            "--trust-root",
            str(user_node.dev_root),
            "--max-tokens",
            "400",
        ],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=user_node.env(),
        close_fds=True,
    )
    os.close(slave)
    screen = _Terminal(master)
    try:
        screen.wait_for(b"> ")
        os.write(master, b"Write a long story about a dragon who bakes bread.\n")
        answer = screen.wait_for(b"verified: ")
        screen.wait_for(b"\n", after=answer)
        while len(screen.seen) < answer + 300:  # the answer streams
            assert screen.read(30), "the answer stopped streaming"
        # Typed while the answer streams: it must not become the next prompt.
        os.write(master, b"typed ahead\n")
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        stopped = screen.wait_for(b"[stopped")
        screen.wait_for(b"> ", after=stopped)
        assert proc.poll() is None, "Ctrl-C ended the session"
        time.sleep(0.5)  # a second answer, if the typed line were taken, would start now
        while screen.read(0.5):
            pass
        os.write(master, b"\x04")  # Ctrl-D at the prompt ends the session, exit 0
        assert proc.wait(30) == 0
        while screen.read(0.5):
            pass
        after = bytes(screen.seen[stopped:]).decode(errors="replace")
        assert after.count("> ") == 1, after  # no answer to "typed ahead"
        assert after.endswith("\n"), repr(after[-20:])  # the shell's prompt starts a clean line
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        os.close(master)
    _alive(user_node)
