"""Hostile and odd requests against a node, over a real socket.

Most tests here pin a defect found in review: what a hostile or merely
unusual client (or a failing store or engine) could do to the node before
it was fixed. The rest pin properties the review checked and that nothing
else tested.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_fakes import E2EE_MODEL, TEE_MODEL, FakeBackend, SeedClient, fake_node, sse_events

from enclaved.server import app as app_module
from enclaved.server.backends.base import BackendError, ChatRequest
from enclaved.server.chat import route as chat_route
from enclaved.server.chat import sign as chat_sign

# The node verifies its own simulated evidence under the development policy, which warns by design.
pytestmark = pytest.mark.filterwarnings("ignore::enclaved.attestation.InsecurePolicyWarning")


def _error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == code
    return dict(err)


# -- a large E2EE request must not freeze every other request ------------------------------------


def test_decrypting_a_large_e2ee_request_does_not_stall_the_node(tmp_path: Path) -> None:
    """Every envelope costs an ECDH (~0.1 ms). An 8 MiB request holds ~40,000 of
    them: decrypted on the event loop, one request froze every stream and route
    of the node for seconds. Sixteen distinct ephemeral keys, cycled, defeat the
    per-request key cache, as an attacker would."""
    with fake_node(tmp_path) as n:
        client = SeedClient()
        envelopes = [SeedClient.encrypt("x", n.key.public_key_hex) for _ in range(16)]
        body = json.dumps(
            {
                "model": E2EE_MODEL,
                "stream": True,
                "messages": [{"role": "user", "content": envelopes[i % 16]} for i in range(8_000)],
            }
        ).encode()
        result: dict[str, Any] = {}

        def big() -> None:
            started = time.monotonic()
            r = httpx.post(
                n.api + "/chat/completions",
                content=body,
                headers=client.headers(n.key.public_key_hex),
                timeout=120,
            )
            result["status"] = r.status_code
            result["seconds"] = time.monotonic() - started

        thread = threading.Thread(target=big)
        thread.start()
        worst = 0.0
        while thread.is_alive():
            started = time.monotonic()
            assert httpx.get(n.url + "/health", timeout=120).status_code == 200
            worst = max(worst, time.monotonic() - started)
            time.sleep(0.02)
        thread.join()
        assert result["status"] == 200
        # Stalled, /health waits for (nearly) the whole decryption; served
        # beside it, it answers in milliseconds.
        assert worst < 0.3 * result["seconds"], (worst, result["seconds"])


# -- a backend that refuses a request when called -----------------------------------------------


class RefusesAtCall(FakeBackend):
    """A backend whose ``stream`` validates eagerly and raises at the call,
    not at the first iteration (the Backend protocol allows either)."""

    def stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        self.requests.append(request)
        raise BackendError("'top_k' is not supported", status=400, code="invalid_parameter")


@pytest.mark.parametrize("stream", [True, False])
def test_backend_error_raised_at_call_keeps_its_status(tmp_path: Path, stream: bool) -> None:
    """It was a bare 500 ``Internal server error`` (and logged as unhandled)."""
    with fake_node(tmp_path, backend=RefusesAtCall()) as n:
        r = httpx.post(
            n.api + "/chat/completions",
            json={
                "model": TEE_MODEL,
                "stream": stream,
                "messages": [{"role": "user", "content": "x"}],
            },
            timeout=10,
        )
        err = _error(r, 400, "invalid_parameter")
        assert err["message"] == "'top_k' is not supported"
        assert r.headers["x-venice-tee"] == "true"


# -- a message with no content at all -----------------------------------------------------------


@pytest.mark.parametrize("e2ee", [True, False])
def test_empty_content_array_is_refused(tmp_path: Path, e2ee: bool) -> None:
    """``content: []`` carries no envelope: under E2EE it was served as an
    (empty) plaintext user message. OpenAI refuses an empty parts array too."""
    with fake_node(tmp_path) as n:
        client = SeedClient()
        headers = client.headers(n.key.public_key_hex) if e2ee else {}
        enc = SeedClient.encrypt("hi", n.key.public_key_hex)
        messages = [
            {"role": "system", "content": []},
            {"role": "user", "content": enc if e2ee else "hi"},
        ]
        r = httpx.post(
            n.api + "/chat/completions",
            json={"model": E2EE_MODEL, "stream": True, "messages": messages},
            headers=headers,
            timeout=10,
        )
        err = _error(r, 400, "invalid_parameter")
        assert err["param"] == "messages[0].content"
        assert n.backend.requests == []


def test_a_valid_e2ee_request_still_works(tmp_path: Path) -> None:
    """The control for the tests above: the same node answers a good request."""
    with fake_node(tmp_path) as n:
        client = SeedClient()
        enc = SeedClient.encrypt("hi", n.key.public_key_hex)
        r = httpx.post(
            n.api + "/chat/completions",
            json={
                "model": E2EE_MODEL,
                "stream": True,
                "messages": [{"role": "user", "content": enc}],
            },
            headers=client.headers(n.key.public_key_hex),
            timeout=10,
        )
        assert r.status_code == 200
        events = sse_events(r.content)
        text = "".join(
            client.decrypt(e["choices"][0]["delta"]["content"])
            for e in events[:-1]
            if e["choices"] and e["choices"][0]["delta"].get("content")
        )
        assert text == "Hello, wörld!"


# -- the access log --------------------------------------------------------------------------


def test_access_log_cannot_be_forged_through_the_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The path is percent-decoded: ``%0a`` put a newline, hence a forged
    log line of the client's choosing, into the access log."""
    caplog.set_level(logging.INFO, logger="enclaved.access")
    with fake_node(tmp_path) as n:
        forged = "/v1/models%0aPOST%20/api/v1/chat/completions%20200%201.0ms"
        assert httpx.get(n.url + forged, timeout=10).status_code == 404
    lines = [r.getMessage() for r in caplog.records if r.name == "enclaved.access"]
    assert lines
    assert all("\n" not in line and "\r" not in line for line in lines), lines


def test_an_unexpected_failure_on_the_chat_route_is_a_500_logged_by_type_only(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chat route bypasses Starlette's middleware (``EnclavedApp``'s
    ``direct``): a bug that escapes it still answers an OpenAI-style 500, the
    access log records it, and the exception's text (which could quote the
    prompt) reaches no log."""

    async def broken(self: Any, prepared: Any, send: Any, conn: Any) -> None:
        raise RuntimeError("the secret prompt text")

    monkeypatch.setattr(chat_route.ChatCompletions, "_stream", broken)
    caplog.set_level(logging.INFO)
    with fake_node(tmp_path) as n:
        body = {"model": TEE_MODEL, "stream": True, "messages": [{"role": "user", "content": "x"}]}
        r = httpx.post(n.api + "/chat/completions", json=body, timeout=10)
    err = _error(r, 500, "internal_error")
    assert "secret" not in json.dumps(err)
    messages = [rec.getMessage() for rec in caplog.records]
    assert any("RuntimeError" in m for m in messages)
    assert not any("secret prompt" in m for m in messages)
    assert any(m.startswith("POST /api/v1/chat/completions 500 ") for m in messages)


# -- a signature store that hangs -------------------------------------------------------------


class HangingStore:
    """A store that never answers: a Redis behind a black-holed route."""

    def __init__(self) -> None:
        self.puts = 0

    async def put(self, record: Any) -> None:
        self.puts += 1
        await asyncio.sleep(3600)

    async def get(self, request_id: str) -> Any:
        await asyncio.sleep(3600)

    async def delete(self, request_id: str) -> None:
        await asyncio.sleep(3600)

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("stream", [True, False])
def test_a_hanging_store_costs_the_signature_not_the_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stream: bool
) -> None:
    """The signature is stored before ``[DONE]`` (and before a non-streamed
    body): a store that never answered held every answer back for ever."""
    monkeypatch.setattr(chat_sign, "STORE_TIMEOUT_SECONDS", 0.3)
    monkeypatch.setattr(app_module, "STORE_TIMEOUT_SECONDS", 0.3)
    store = HangingStore()
    with fake_node(tmp_path, store=store) as n:
        started = time.monotonic()
        r = httpx.post(
            n.api + "/chat/completions",
            json={
                "model": TEE_MODEL,
                "stream": stream,
                "messages": [{"role": "user", "content": "x"}],
            },
            timeout=10,
        )
        assert r.status_code == 200
        assert time.monotonic() - started < 5
        if stream:
            events = sse_events(r.content)
            assert events[-1] == "[DONE]"
            request_id = events[0]["id"]
        else:
            request_id = r.json()["id"]
        assert store.puts == 1
        # Reading it back: the store is unavailable, said at once.
        s = httpx.get(
            n.api + "/tee/signature",
            params={"model": TEE_MODEL, "request_id": request_id},
            timeout=10,
        )
        _error(s, 503, "store_unavailable")


# -- `verified` is computed, not asserted --------------------------------------------------------


def test_evidence_that_does_not_bind_the_key_is_never_served(tmp_path: Path) -> None:
    """An evidence source that quotes the wrong REPORTDATA (a bug, or a lie):
    the node checks its own evidence first and serves no report at all, rather
    than one that says ``verified: false`` (or, worse, true)."""
    from conftest import running_server
    from server_fakes import fake_backends, fake_config

    from enclaved.evidence.simulated_source import SimulatedEvidence
    from enclaved.server.app import create_app

    class UnboundEvidence(SimulatedEvidence):
        async def quote(self, report_data: bytes) -> bytes:
            return await super().quote(bytes(64))

    honest = SimulatedEvidence.load_or_create(tmp_path)
    app = create_app(
        fake_config(tmp_path),
        evidence=UnboundEvidence(honest._tdx),
        backends=fake_backends(),
    )
    with running_server(app) as url:
        r = httpx.get(
            url + "/api/v1/tee/attestation",
            params={"model": E2EE_MODEL, "nonce": "ab" * 32},
            timeout=30,
        )
    assert r.status_code == 500
    assert r.json()["error"]["code"] == "evidence_error"
    assert "intel_quote" not in r.text and "signing_address" not in r.text


def test_a_body_that_never_arrives_whole_is_a_408_and_the_connection_closes(
    tmp_path: Path,
) -> None:
    """A client that announces a body and trickles it (or stops) must not hold
    a connection and a task for ever: 408 after ``request_body_timeout_seconds``,
    the connection closed, the engine never asked."""
    import socket
    import urllib.parse

    with fake_node(tmp_path, request_body_timeout_seconds=1) as n:
        url = urllib.parse.urlsplit(n.url)
        with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
            sock.sendall(
                b"POST /api/v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                b'{"model": '
            )
            started = time.monotonic()
            answer = b""
            while chunk := sock.recv(65536):  # until the node closes the connection
                answer += chunk
            waited = time.monotonic() - started
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408 "), head
        assert b"connection: close" in head.lower()
        error = json.loads(body)["error"]
        assert error["code"] == "request_timeout"
        assert error["message"] == "Request body not received within 1 seconds"
        assert 0.9 <= waited < 5
        assert n.backend.requests == []
        # The node still serves others.
        r = httpx.post(
            n.api + "/chat/completions",
            json={"model": TEE_MODEL, "messages": [{"role": "user", "content": "hi"}]},
            timeout=10,
        )
        assert r.status_code == 200
