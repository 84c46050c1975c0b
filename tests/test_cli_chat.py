"""``enclaved chat``, ``enclaved models`` and ``enclaved signature`` against a real server."""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from client_server import (
    E2EE_MODEL,
    FAKE_ANSWER,
    TEE_MODEL,
    RealServer,
    embedded_server,
    real_server,
)
from conftest import running_server
from test_client_mitm import Attack, Mitm, _forge_with_attacker_key

from enclaved.attestation import InsecurePolicyWarning
from enclaved.cli import main
from enclaved.cli.chat import build_messages

__all__ = ["real_server"]


@pytest.fixture(autouse=True)
def _quiet_dev_policy() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecurePolicyWarning)
        yield


def run_merged(argv: list[str]) -> tuple[int, str]:
    """Run the CLI with stdout and stderr in one buffer, to see what is printed before what.

    (Set inside the test call: pytest re-installs its own capture between phases.)
    """
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
        code = main(argv)
    return code, buf.getvalue()


def chat_args(server: RealServer, *extra: str, url: str | None = None) -> list[str]:
    return [
        "chat",
        "--model",
        E2EE_MODEL,
        "--base-url",
        url or server.base_url,
        "--trust-root",
        str(server.dev_root),
        *extra,
    ]


@pytest.mark.parametrize("mode", [[], ["--no-stream"]], ids=["stream", "no-stream"])
def test_one_shot_prints_verified_then_the_answer(real_server: RealServer, mode: list[str]) -> None:
    code, out = run_merged(chat_args(real_server, "hello there", *mode))
    assert code == 0
    verified = out.index("verified: simulated, 0x")
    assert "SIMULATED TEE" in out
    assert out.index(FAKE_ANSWER) > verified
    assert "signature: ok" in out
    assert "(every chunk authenticated as it arrived)" in out


def test_require_stream_binding_flag(real_server: RealServer) -> None:
    """An enclaved node binds its response key: the flag changes nothing visible."""
    code, out = run_merged(chat_args(real_server, "hello there", "--require-stream-binding"))
    assert code == 0 and FAKE_ANSWER in out
    assert "(every chunk authenticated as it arrived)" in out
    # With --signatures address the binding cannot be checked: refused at once, exit 5.
    code, out = run_merged(
        chat_args(real_server, "hi", "--require-stream-binding", "--signatures", "address")
    )
    assert code == 5 and "require_stream_binding" in out


def test_prompt_from_stdin(
    real_server: RealServer, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("a prompt from a pipe"))
    assert main(chat_args(real_server, "-")) == 0
    assert FAKE_ANSWER in capsys.readouterr().out


def test_without_the_dev_root_it_fails_with_one_clear_line(
    real_server: RealServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["chat", "hi", "--model", E2EE_MODEL, "--base-url", real_server.base_url]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith(
        "enclaved: verification failed: attestation check client.simulated_tee fail"
    )
    assert "--trust-root" in lines[0]


def test_unreachable_server_is_a_network_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["chat", "hi", "--model", E2EE_MODEL, "--base-url", "http://127.0.0.1:9/v1"]) == 3
    assert "cannot reach" in capsys.readouterr().err


@pytest.fixture
def mitm(real_server: RealServer) -> Iterator[tuple[Mitm, str]]:
    m = Mitm(real_server.origin)
    with running_server(m.app()) as url:
        yield m, url + "/v1"


def test_forged_signature_after_a_streamed_answer(
    real_server: RealServer, mitm: tuple[Mitm, str]
) -> None:
    m, url = mitm
    m.attack = Attack(responses={"signature": _forge_with_attacker_key})
    code, out = run_merged(chat_args(real_server, "hi", url=url))
    assert code == 2
    assert out.index("WARNING: the text above was NOT verified") > out.index(FAKE_ANSWER)
    assert "response signature check signature.address fail" in out


def test_forged_signature_without_streaming_shows_nothing(
    real_server: RealServer, mitm: tuple[Mitm, str], capsys: pytest.CaptureFixture[str]
) -> None:
    m, url = mitm
    m.attack = Attack(responses={"signature": _forge_with_attacker_key})
    assert main(chat_args(real_server, "hi", "--no-stream", url=url)) == 2
    captured = capsys.readouterr()
    assert FAKE_ANSWER not in captured.out
    assert "signature.address" in captured.err


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_interactive_mode_keeps_the_conversation_encrypted(
    real_server: RealServer,
    mitm: tuple[Mitm, str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    m, url = mitm
    seen: list[bytes] = []

    def record(body: bytes) -> bytes:
        seen.append(body)
        return body

    m.attack = Attack(request_body=record)
    monkeypatch.setattr("sys.stdin", _Tty("first question\nsecond question\n\n"))
    assert main(chat_args(real_server, url=url)) == 0
    captured = capsys.readouterr()
    assert captured.out.count(FAKE_ANSWER) == 2
    assert captured.err.count("verified:") == 1  # shown once per node
    second = json.loads(seen[1])
    assert [msg["role"] for msg in second["messages"]] == ["system", "user"]
    assert FAKE_ANSWER.encode() not in seen[1] and b"first question" not in seen[1]


def test_build_messages() -> None:
    history = [("q1", "a1")]
    plain = build_messages(history, "q2", "sys", e2ee=False)
    assert [m["role"] for m in plain] == ["system", "user", "assistant", "user"]
    sealed = build_messages(history, "q2", "sys", e2ee=True)
    assert [m["role"] for m in sealed] == ["system", "user"]
    assert "User: q1\nAssistant: a1" in sealed[0]["content"] and sealed[0]["content"].startswith(
        "sys"
    )


def test_models_lists_the_private_models(
    real_server: RealServer, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["models", "--base-url", real_server.base_url]) == 0
    lines = capsys.readouterr().out.splitlines()
    e2ee = next(line for line in lines if line.startswith(E2EE_MODEL))
    tee = next(line for line in lines if line.startswith(TEE_MODEL))
    assert "E2EE TEE" in e2ee and "TEE" in tee and "E2EE" not in tee


def test_signature_command_checks_the_hashes_and_the_address(
    real_server: RealServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    request = json.dumps(
        {"model": TEE_MODEL, "messages": [{"role": "user", "content": "sign this"}]}
    ).encode()
    r = httpx.post(
        real_server.base_url + "/chat/completions",
        content=request,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 200
    (tmp_path / "req").write_bytes(request)
    (tmp_path / "resp").write_bytes(r.content)
    base = [
        "signature",
        "--model",
        TEE_MODEL,
        "--request-id",
        r.json()["id"],
        "--base-url",
        real_server.base_url,
        "--trust-root",
        str(real_server.dev_root),
    ]
    assert (
        main([*base, "--request", str(tmp_path / "req"), "--response", str(tmp_path / "resp")]) == 0
    )
    out = capsys.readouterr().out
    assert "signature.response_sha256" in out and "signature.address" in out
    # One changed byte of the response file: not what was signed.
    (tmp_path / "resp").write_bytes(r.content.replace(b"tok1", b"tok9"))
    assert (
        main([*base, "--request", str(tmp_path / "req"), "--response", str(tmp_path / "resp")]) == 2
    )
    assert "signature.response_sha256" in capsys.readouterr().err
    # Without the files: the address only, and it says so.
    assert main(base) == 0
    assert "hashes were not compared" in capsys.readouterr().err


@pytest.mark.model
def test_chat_with_the_embedded_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with embedded_server(tmp_path) as server:
        args = [
            "chat",
            "What is 2+2?",
            "--model",
            "e2ee-smollm2-135m",
            "--base-url",
            server.base_url,
            "--trust-root",
            str(server.dev_root),
            "--max-tokens",
            "16",
            "--temperature",
            "0",
        ]
        assert main(args) == 0
    captured = capsys.readouterr()
    assert captured.out.strip()
    assert "verified: simulated" in captured.err and "signature: ok" in captured.err


# -- review: exit codes and help texts -----------------------------------------------------


def test_exit_codes_match_enclaved_verify() -> None:
    import openai

    from enclaved.cli._client_common import describe_error
    from enclaved.errors import (
        APIError,
        ConfigError,
        DecryptionError,
        EvidenceParseError,
        NetworkError,
        PolicyError,
        VerificationError,
    )

    cases = [
        (VerificationError("attestation check binding.report_data.nonce fail: x"), 2),
        (DecryptionError(), 2),
        (PolicyError("policy check tdx.tcb_status fail: x"), 4),
        (EvidenceParseError("intel_quote: not valid hex"), 5),  # as `enclaved verify` / `attest`
        (ConfigError("tools are not supported with E2EE"), 5),
        (APIError("engine died", status=200, code="upstream_error"), 3),
        (NetworkError("the stream ended before [DONE]"), 3),
    ]
    for exc, code in cases:
        got, message = describe_error(exc)
        assert got == code, (exc, message)
        assert "\n" not in message
    # openai 1.x wraps any exception its transport raises in APIConnectionError:
    # the check that failed must still decide the exit code and be named.
    request = httpx.Request("POST", "http://node.test/v1/chat/completions")
    for exc, code in cases:
        wrapped = openai.APIConnectionError(request=request)  # type: ignore[arg-type]  # openai types httpx2, takes httpx
        wrapped.__cause__ = exc
        got, message = describe_error(wrapped)
        assert got == code and str(exc) in message, (exc, message)
        assert "cannot reach" not in message
    wrapped = openai.APIConnectionError(request=request)  # type: ignore[arg-type]  # openai types httpx2, takes httpx
    wrapped.__cause__ = httpx.ConnectError("refused")
    assert describe_error(wrapped)[0] == 3


def test_trust_root_help_says_that_it_relaxes_the_policy(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """--trust-root alone selects the development policy: the help must not say "also trust" only."""
    for command in ("chat", "signature", "models", "proxy"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--trust-root PEM" in text
        assert "development policy" in text and "collateral" in text, command
