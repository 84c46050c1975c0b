"""A hostile engine behind a real node: its own text never reaches the wire or the log.

Under E2EE the answer's text is sealed, but ``delta.role``,
``choices[].index``, ``finish_reason`` and an error's ``type`` travel in the
clear. The node used to relay the first three as the engine sent them, and
an engine error's ``type`` reached the client's error message and the log
verbatim: an engine could write whatever it liked past the encryption.

The engine here is a real HTTP server on 127.0.0.1 (the upstream backend
talks to it over a socket) that answers with a scripted SSE body; the node
is a real enclaved app on 127.0.0.1 in front of it. Each hostile value
carries a marker; the bytes the node wrote to its client and every log
record it made must contain none of them.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import running_server
from server_fakes import E2EE_MODEL, TEE_MODEL, TOOLS_MODEL, SeedClient, fake_config, sse_events
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from enclaved.crypto import KeyPair
from enclaved.server.app import create_app
from enclaved.server.backends.upstream import UpstreamBackend


class ScriptedEngine:
    """An OpenAI-compatible engine that answers every chat request with ``script``."""

    def __init__(self) -> None:
        self.script = b""

    def app(self) -> Starlette:
        async def chat(request: Request) -> Response:
            await request.body()
            return Response(self.script, media_type="text/event-stream")

        return Starlette(routes=[Route("/v1/chat/completions", chat, methods=["POST"])])


def chunk(choice: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    doc = {"id": "engine-1", "object": "chat.completion.chunk", "created": 1, "model": "m"}
    doc["choices"] = [] if choice is None else [choice]
    return doc | extra


def text(content: str, **fields: Any) -> dict[str, Any]:
    return chunk({"index": 0, "delta": {"content": content}, "finish_reason": None} | fields)


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + (
        b"data: [DONE]\n\n"
    )


ROLE = chunk({"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None})
STOP = chunk({"index": 0, "delta": {}, "finish_reason": "stop"})
USAGE = chunk(None, usage={"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6})

#: Each script: (name, the SSE body, the marker that must not come out).
HOSTILE: list[tuple[str, bytes, str]] = [
    (
        "role in the first chunk",
        sse(
            chunk({"index": 0, "delta": {"role": "LEAK_role_a1", "content": ""}}),
            text("Hello"),
            STOP,
            USAGE,
        ),
        "LEAK_role_a1",
    ),
    (
        "role beside later text",
        sse(
            ROLE,
            text("Hello"),
            text(" there"),
            chunk({"index": 0, "delta": {"role": "LEAK_role_b2", "content": "!"}}),
            STOP,
            USAGE,
        ),
        "LEAK_role_b2",
    ),
    ("index", sse(ROLE, text("Hello", index=918273645), STOP, USAGE), "918273645"),
    (
        "index as text",
        sse(ROLE, text("Hello", index="LEAK_index_c3"), STOP, USAGE),
        "LEAK_index_c3",
    ),
    (
        "finish_reason",
        sse(
            ROLE,
            text("Hello"),
            chunk({"index": 0, "delta": {}, "finish_reason": "LEAK_finish_d4"}),
            USAGE,
        ),
        "LEAK_finish_d4",
    ),
    (
        "error type",
        sse(
            ROLE,
            text("Hello"),
            {"error": {"message": "LEAK_message_e5", "type": "LEAK_type_e5", "code": 500}},
        ),
        "LEAK_type_e5",
    ),
    (
        "error type before the first token",
        sse({"error": {"message": "LEAK_message_f6", "type": "LEAK_type_f6", "code": 400}}),
        "LEAK_type_f6",
    ),
]


@pytest.fixture(scope="module")
def engine() -> Iterator[tuple[ScriptedEngine, str]]:
    scripted = ScriptedEngine()
    with running_server(scripted.app()) as url:
        yield scripted, url + "/v1"


@pytest.fixture
def node(tmp_path: Path, engine: tuple[ScriptedEngine, str]) -> Iterator[tuple[str, KeyPair]]:
    upstream = UpstreamBackend(engine[1], "engine-model", timeout=10.0)
    backends = {E2EE_MODEL: upstream, TEE_MODEL: upstream, TOOLS_MODEL: upstream}
    key = KeyPair.generate()
    app = create_app(fake_config(tmp_path), node_key=key, backends=backends)
    with running_server(app) as url:
        yield url + "/api/v1", key


def ask(node: tuple[str, KeyPair], model: str) -> tuple[httpx.Response, SeedClient]:
    """One streamed chat request (sealed for the E2EE model); the node's answer, as written."""
    api, key = node
    client = SeedClient()
    content = "the engine must not get this out"
    headers: dict[str, str] = {}
    if model == E2EE_MODEL:
        content = client.encrypt(content, key.public_key_hex)
        headers = client.headers(key.public_key_hex)
    body = {"model": model, "messages": [{"role": "user", "content": content}], "stream": True}
    with httpx.Client(timeout=30) as http:
        return http.post(api + "/chat/completions", json=body, headers=headers), client


@pytest.mark.parametrize("model", [E2EE_MODEL, TEE_MODEL])
def test_a_well_formed_engine_answer_goes_through(
    engine: tuple[ScriptedEngine, str], node: tuple[str, KeyPair], model: str
) -> None:
    """The control: the same engine, sending only allowed values, is relayed whole."""
    engine[0].script = sse(ROLE, text("Hello"), text(" there"), STOP, USAGE)
    response, client = ask(node, model)
    assert response.status_code == 200
    events = sse_events(response.content)
    assert events[-1] == "[DONE]" and not any("error" in e for e in events[:-1])
    choices = [c for e in events[:-1] for c in e["choices"]]
    assert {c["index"] for c in choices} == {0}
    assert [c["delta"]["role"] for c in choices if "role" in c["delta"]] == ["assistant"]
    assert [c["finish_reason"] for c in choices if c["finish_reason"]] == ["stop"]
    pieces = [c["delta"].get("content") or "" for c in choices]
    if model == E2EE_MODEL:
        pieces = [client.decrypt(p) if p else "" for p in pieces]
    assert "".join(pieces) == "Hello there"


@pytest.mark.parametrize("model", [E2EE_MODEL, TEE_MODEL])
@pytest.mark.parametrize(("name", "script", "marker"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_hostile_engine_value_never_reaches_the_wire_or_the_log(
    engine: tuple[ScriptedEngine, str],
    node: tuple[str, KeyPair],
    caplog: pytest.LogCaptureFixture,
    model: str,
    name: str,
    script: bytes,
    marker: str,
) -> None:
    engine[0].script = script
    caplog.set_level(logging.DEBUG)
    response, _ = ask(node, model)
    assert marker.encode() not in response.content
    assert "LEAK" not in response.text  # nor the engine's error message
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "backend failed" in logged  # the failure was logged, by its code only
    assert marker not in logged and "LEAK" not in logged
    # The answer failed, as a documented error: never as if it were fine.
    if response.status_code == 200:
        events = sse_events(response.content)
        assert events[-1] == "[DONE]"
        errors = [e["error"] for e in events[:-1] if "error" in e]
        assert len(errors) == 1 and errors[0]["type"] == "server_error"
        assert errors[0]["code"] in ("upstream_error", "upstream_rejected")
    else:
        error = response.json()["error"]
        assert response.status_code == 400 and error["type"] == "invalid_request_error"
        assert error["code"] == "upstream_rejected"


@pytest.mark.parametrize(
    ("error", "status", "code", "documented"),
    [
        (
            {"type": "BadRequestError", "message": "LEAK", "code": 400},
            400,
            "upstream_rejected",
            "invalid_request_error",
        ),
        ({"type": "invalid_request_error"}, 400, "upstream_rejected", "invalid_request_error"),
        ({"type": "LEAK_type", "code": 422}, 400, "upstream_rejected", "invalid_request_error"),
        ({"type": "server_error", "code": 500}, 502, "upstream_error", "server_error"),
        ({"type": "LEAK_type", "code": 429}, 502, "upstream_error", "server_error"),
        ({"type": "LEAK type with spaces"}, 502, "upstream_error", "server_error"),
        ("LEAK as a string", 502, "upstream_error", "server_error"),
        (None, 502, "upstream_error", "server_error"),
    ],
)
def test_an_engine_error_type_is_mapped_to_a_documented_one(
    error: Any, status: int, code: str, documented: str
) -> None:
    from enclaved.server.backends.upstream import _engine_error

    failure = _engine_error(error)
    assert (failure.status, failure.code) == (status, code)
    assert failure.message == f"upstream engine reported an error mid-stream ({documented})"
