"""``enclaved.OpenAI`` / ``enclaved.AsyncOpenAI`` against a running enclaved server.

Real sockets, the real verifier, the simulated TEE: the server's
development root must be trusted explicitly, and without it the client
refuses with a message that says how. The engine is the fake upstream
(``tests/client_server.py``) except in the ``model`` tests, which run the
real embedded SmolLM2 model.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import warnings
from collections.abc import Iterator

import httpx
import openai
import pytest
from client_fakes import answer_text
from client_server import (
    E2EE_MODEL,
    FAKE_ANSWER,
    TEE_MODEL,
    RealServer,
    embedded_server,
    real_server,
)
from openai.types.chat import ChatCompletionMessageParam

import enclaved
from enclaved.attestation import InsecurePolicyWarning, Policy, Verifier
from enclaved.cli._client_common import describe_error
from enclaved.client import EnclavedTransport, last_attestation, last_signature
from enclaved.crypto import KeyPair
from enclaved.errors import VerificationError

__all__ = ["real_server"]  # the fixture, imported

PROMPT = "Tell me a secret about canary-7d1e."
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": PROMPT}]


@pytest.fixture(autouse=True)
def _quiet_dev_policy() -> Iterator[None]:
    # The development policy warns on every verification, by design.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecurePolicyWarning)
        yield


def client(server: RealServer) -> openai.OpenAI:
    return enclaved.OpenAI(
        base_url=server.base_url, api_key="unused", trust_root=server.dev_root, max_retries=0
    )


def test_sync_non_streaming(real_server: RealServer) -> None:
    c = client(real_server)
    reply = c.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    assert reply.choices[0].message.content == FAKE_ANSWER
    assert reply.usage is not None and reply.usage.completion_tokens > 0
    node = last_attestation(c)
    assert node is not None and node.tee_hardware == "simulated"
    assert node.verdict.ok and node.verdict.get("binding.report_data.nonce").status.value == "pass"
    sig = last_signature(c)
    assert sig is not None and sig.ok and sig.recovered_address == node.signing_address


def test_sync_streaming(real_server: RealServer) -> None:
    c = client(real_server)
    stream = c.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES, stream=True)
    assert "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices) == FAKE_ANSWER


def test_async_streaming_and_not(real_server: RealServer) -> None:
    async def main() -> None:
        c = enclaved.AsyncOpenAI(
            base_url=real_server.base_url,
            api_key="unused",
            trust_root=real_server.dev_root,
            max_retries=0,
        )
        reply = await c.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
        assert reply.choices[0].message.content == FAKE_ANSWER
        stream = await c.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES, stream=True)
        text = "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])
        assert text == FAKE_ANSWER
        assert last_signature(c) is not None and last_signature(c).ok
        await c.close()

    asyncio.run(main())


@pytest.mark.parametrize("stream", [False, True])
def test_tee_model(real_server: RealServer, stream: bool) -> None:
    c = client(real_server)
    text = answer_text(c, TEE_MODEL, MESSAGES, stream)
    assert text == FAKE_ANSWER
    assert last_signature(c) is not None and last_signature(c).ok


def test_models_pass_through(real_server: RealServer) -> None:
    ids = {m.id for m in client(real_server).models.list()}
    assert {E2EE_MODEL, TEE_MODEL} <= ids


def test_raw_httpx_with_the_transport(real_server: RealServer) -> None:
    transport = EnclavedTransport(trust_root=real_server.dev_root)
    with httpx.Client(transport=transport) as http:
        r = http.post(
            real_server.base_url + "/chat/completions",
            json={"model": E2EE_MODEL, "messages": MESSAGES},
        )
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == FAKE_ANSWER
    assert r.headers["x-enclaved-tee-hardware"] == "simulated"


def test_without_the_dev_root_the_client_refuses_and_says_why(real_server: RealServer) -> None:
    c = enclaved.OpenAI(base_url=real_server.base_url, api_key="unused", max_retries=0)
    with pytest.raises(VerificationError) as info:
        c.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    code, message = describe_error(info.value)
    assert code == 2
    assert "client.simulated_tee" in message and "--trust-root" in message


def test_strict_verifier_rejects_the_simulated_quote_chain(real_server: RealServer) -> None:
    """Even without the client's shortcut, the quote itself does not chain to Intel."""
    inner = Verifier(
        Policy(allow_missing_collateral=True, allow_missing_nvidia=True), collateral=None
    )

    class VerifyOnly:  # no .policy: the client cannot take its shortcut
        verify = inner.verify

    verifier = VerifyOnly()
    c = enclaved.OpenAI(
        base_url=real_server.base_url, api_key="unused", verifier=verifier, max_retries=0
    )
    with pytest.raises(VerificationError) as info:
        c.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    assert info.value.verdict is not None
    failed = {row.id for row in info.value.verdict.failures}
    assert any(cid.startswith("tdx.") for cid in failed), failed
    assert "--trust-root" in describe_error(info.value)[1]


def test_no_key_and_no_plaintext_left_behind(
    real_server: RealServer, caplog: pytest.LogCaptureFixture
) -> None:
    """The session key does not outlive the request; nothing logs the prompt or the answer.

    The server runs in this process, so its logs are captured too.
    """
    for name in (None, "httpx", "httpcore", "openai", "enclaved", "uvicorn"):
        caplog.set_level(logging.DEBUG, logger=name)
    c = client(real_server)
    gc.collect()
    before = sum(1 for o in gc.get_objects() if isinstance(o, KeyPair))
    c.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES)
    list(c.chat.completions.create(model=E2EE_MODEL, messages=MESSAGES, stream=True))
    gc.collect()
    assert sum(1 for o in gc.get_objects() if isinstance(o, KeyPair)) == before
    logged = "\n".join(
        f"{r.name} {r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records
    )
    assert any(r.name.startswith("httpx") for r in caplog.records)  # the loggers ran
    for secret in (PROMPT, "canary-7d1e", "tok3"):
        assert secret not in logged


@pytest.mark.model
def test_embedded_model_answers_through_e2ee(tmp_path_factory: pytest.TempPathFactory) -> None:
    with embedded_server(tmp_path_factory.mktemp("embedded")) as server:
        c = client(server)
        reply = c.chat.completions.create(
            model="e2ee-smollm2-135m",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            max_tokens=24,
            temperature=0,
        )
        text = reply.choices[0].message.content or ""
        assert text.strip()
        assert last_signature(c) is not None and last_signature(c).ok
