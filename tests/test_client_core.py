"""The client's sans-IO core, driven by hand: the operations it asks for, in order.

:class:`~enclaved.client._core.ClientCore` performs no I/O; each transport is
a driver that performs the operations the core yields. A driver written
here, over the in-memory node of tests/client_fakes.py, records them: so the
retry-once on 421 and the signature retries are pinned down as sequences,
for both transports at once (the transports' own tests, which run them
through httpx and the SDK, are in test_client_transport.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from client_fakes import E2EE_MODEL, TEE_MODEL, BindingVerifier, FakeNode

from enclaved.client import AsyncEnclavedTransport, EnclavedTransport
from enclaved.client._attest import fetch_for
from enclaved.client._core import (
    ClientCore,
    Close,
    Drain,
    Fetch,
    Judge,
    Op,
    Read,
    Relay,
    Send,
    Sleep,
    Steps,
)
from enclaved.client._exchange import Exchange
from enclaved.crypto import KeyPair
from enclaved.errors import StaleAttestationError

BASE = "http://node.test/v1"


def core() -> ClientCore:
    return ClientCore(
        verifier=BindingVerifier(),
        attestation_ttl=300.0,
        verify_signatures=True,
        require_e2ee=False,
        clock=lambda: 1000.0,
        random=lambda n: bytes(n),
        keypair_factory=KeyPair.generate,
        signature_attempts=3,
        signature_retry_delay=0.25,
    )


class Driver:
    """A sync driver that writes down what it did: ``"send /tee/attestation"``, ``"read 200"``..."""

    def __init__(self, core: ClientCore, node: FakeNode) -> None:
        self.core = core
        self.inner = httpx.MockTransport(node)
        self.log: list[str] = []
        self.fail_on: str | None = None

    def run(self, steps: Steps[Any]) -> Any:
        # As the transports do: an operation's exception is thrown into the
        # core where it asked, so that it can forget the session key.
        advance, result = steps.send, None
        while True:
            try:
                op = advance(result)
            except StopIteration as done:
                return done.value
            try:
                result, advance = self.perform(op), steps.send
            except httpx.HTTPError as exc:
                self.log.append(f"raised {type(exc).__name__}")
                result, advance = exc, steps.throw

    def perform(self, op: Op) -> Any:
        if isinstance(op, Send):
            self.log.append(f"send {op.request.url.path.removeprefix('/v1')}")
            if self.fail_on == op.request.url.path:
                raise httpx.ConnectError("connection refused", request=op.request)
            return self.inner.handle_request(op.request)
        if isinstance(op, Read):
            self.log.append(f"read {op.response.status_code}")
            return op.response.read()
        if isinstance(op, Sleep):
            self.log.append(f"sleep {op.seconds}")
            return None
        if isinstance(op, Fetch):
            self.log.append("fetch")
            return fetch_for(self.core.verifier, op.report)
        if isinstance(op, Judge):
            self.log.append("judge")
            return op.work()
        if isinstance(op, Drain):
            self.log.append("drain")
            for chunk in op.response.iter_bytes():
                for _ in op.decoder.feed(chunk):
                    pass
            return op.decoder.finish()
        assert not isinstance(op, (Close, Relay)), "no stream was asked for"
        raise AssertionError(op)

    def chat(self, model: str, *, stream: bool = False) -> httpx.Response:
        request = httpx.Request(
            "POST",
            f"{BASE}/chat/completions",
            json={
                "model": model,
                "messages": [{"role": "user", "content": "hi"}],
                "stream": stream,
            },
        )
        response: httpx.Response = self.run(self.core.handle(request))
        return response


FIRST = ["send /tee/attestation", "read 200", "fetch", "judge"]
SIGNATURE = ["send /tee/signature", "read 200"]


def test_an_e2ee_request_attests_once_then_reuses_the_attestation() -> None:
    node = FakeNode(["Hello", " there"])
    driver = Driver(core(), node)
    first = driver.chat(E2EE_MODEL)
    assert (
        first.status_code == 200
        and first.json()["choices"][0]["message"]["content"] == "Hello there"
    )
    assert driver.log == [*FIRST, "send /chat/completions", "drain", *SIGNATURE]
    driver.log.clear()
    driver.chat(E2EE_MODEL)
    assert driver.log == ["send /chat/completions", "drain", *SIGNATURE]


def test_a_tee_answer_is_read_whole_and_checked() -> None:
    driver = Driver(core(), FakeNode(["Hi"]))
    assert driver.chat(TEE_MODEL).status_code == 200
    assert driver.log == [*FIRST, "send /chat/completions", "read 200", *SIGNATURE]


def test_a_stale_key_is_attested_afresh_once_and_a_second_421_raises() -> None:
    node = FakeNode(["Hi"])
    node.stale_times = 1
    driver = Driver(core(), node)
    driver.chat(E2EE_MODEL)
    retried = ["send /chat/completions", "read 421"]
    assert driver.log == [*FIRST, *retried, *FIRST, "send /chat/completions", "drain", *SIGNATURE]
    node.stale_times = 2
    driver.log.clear()
    with pytest.raises(StaleAttestationError):
        driver.chat(E2EE_MODEL)
    assert driver.log == [*retried, *FIRST, *retried]


def test_a_signature_not_yet_stored_is_asked_for_again_after_a_growing_pause() -> None:
    node = FakeNode(["Hi"])
    node.signature_404s = 2
    driver = Driver(core(), node)
    driver.chat(E2EE_MODEL)
    assert driver.log[-8:] == [
        "send /tee/signature",
        "read 404",
        "sleep 0.25",
        "send /tee/signature",
        "read 404",
        "sleep 0.5",
        *SIGNATURE,
    ]


def test_an_error_where_the_core_asked_reaches_it_and_it_forgets_the_session_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    closed: list[Exchange] = []

    class Recorded(Exchange):
        def close(self) -> None:
            closed.append(self)
            super().close()

    monkeypatch.setattr("enclaved.client._core.Exchange", Recorded)
    driver = Driver(core(), FakeNode(["Hi"]))
    driver.fail_on = "/v1/chat/completions"
    with pytest.raises(httpx.ConnectError):
        driver.chat(E2EE_MODEL)
    assert driver.log == [*FIRST, "send /chat/completions", "raised ConnectError"]
    assert len(closed) == 1 and not closed[0].holds_key


def _refusing(node: FakeNode) -> httpx.MockTransport:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/chat/completions"):
            raise httpx.ConnectError("connection refused", request=request)
        return node(request)

    return httpx.MockTransport(handler)


def test_both_transports_hand_an_inner_transport_error_on_unchanged() -> None:
    body = {"model": E2EE_MODEL, "messages": [{"role": "user", "content": "hi"}]}
    sync = EnclavedTransport(_refusing(FakeNode(["Hi"])), verifier=BindingVerifier())
    with httpx.Client(transport=sync) as client, pytest.raises(httpx.ConnectError):
        client.post(f"{BASE}/chat/completions", json=body)

    async def no_sleep(seconds: float) -> None:
        return None

    async def run() -> None:
        transport = AsyncEnclavedTransport(
            _refusing(FakeNode(["Hi"])), verifier=BindingVerifier(), sleep=no_sleep
        )
        async with httpx.AsyncClient(transport=transport) as client:
            with pytest.raises(httpx.ConnectError):
                await client.post(f"{BASE}/chat/completions", json=body)

    asyncio.run(run())
