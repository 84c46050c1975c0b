"""A misbehaving engine behind the node (issue 14, items 4-6): every
engine-side buffer bounded, every wait timed, and a SIGTERM that ends
streams with an error event and ``[DONE]``. The engine is a stand-in on
127.0.0.1 (``hostile_support.engine``); the node's timeouts are lowered."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from hostile_support import (
    EndlessLine,
    engine,
    engine_config,
    head_then_silent,
    limited_node,
    rss_bytes,
    silent,
    token_then_hang,
)

from enclaved.server.backends.upstream import MAX_ENGINE_EVENT_BYTES

BODY = {"model": "tee-hostile", "messages": [{"role": "user", "content": "hi"}], "stream": True}


def _events(raw: bytes) -> list[Any]:
    out: list[Any] = []
    for block in raw.split(b"\n\n"):
        if block.startswith(b"data: "):
            data = block[6:]
            out.append("[DONE]" if data == b"[DONE]" else json.loads(data))
    return out


def _stream(url: str, timeout: float = 10.0) -> tuple[int, bytes, float]:
    start = time.monotonic()
    with (
        httpx.Client(timeout=timeout) as client,
        client.stream("POST", url + "/api/v1/chat/completions", json=BODY) as r,
    ):
        raw = b"".join(r.iter_raw())
    return r.status_code, raw, time.monotonic() - start


@pytest.mark.parametrize("lines", [False, True], ids=["one-line", "data-lines"])
def test_an_endless_sse_event_ends_the_stream_with_an_error_event(
    tmp_path: Path, lines: bool
) -> None:
    line = EndlessLine(48 * 1024 * 1024, lines=lines)
    with engine(line) as base, limited_node(engine_config(tmp_path, base)) as node:
        before = rss_bytes()
        status, raw, _ = _stream(node.url)
        grew = rss_bytes() - before
    events = _events(raw)
    assert status == 200
    assert events[0]["choices"][0]["delta"]["content"] == "hi"
    assert events[-2]["error"]["code"] == "upstream_error"
    assert events[-1] == "[DONE]"
    assert line.sent < 8 * MAX_ENGINE_EVENT_BYTES  # the node stopped reading
    assert grew < 16 * 1024 * 1024  # not the 48 MiB line, nor twice it


def test_a_silent_engine_is_a_504_after_the_first_byte_timeout(tmp_path: Path) -> None:
    for behaviour in (silent, head_then_silent):
        with engine(behaviour) as base:
            timeouts = {"first_byte_timeout_seconds": 0.5, "idle_timeout_seconds": 60}
            config = engine_config(tmp_path, base, engine=timeouts)
            with limited_node(config) as node:
                status, raw, took = _stream(node.url)
        assert status == 504, behaviour
        assert json.loads(raw)["error"]["code"] == "upstream_timeout"
        assert 0.4 < took < 5.0


def test_an_engine_silent_mid_stream_is_cut_at_the_idle_timeout(tmp_path: Path) -> None:
    with engine(token_then_hang) as base:
        models = [
            {
                "id": "tee-hostile",
                "backend": "upstream",
                "base_url": base,
                "upstream_model": "m",
                "idle_timeout_seconds": 0.5,  # the model's own, over [engine]'s
            }
        ]
        config = engine_config(tmp_path, base, models=models, engine={"idle_timeout_seconds": 60})
        with limited_node(config) as node:
            status, raw, took = _stream(node.url)
    events = _events(raw)
    assert status == 200
    assert events[-2]["error"]["code"] == "upstream_timeout"
    assert events[-1] == "[DONE]"
    assert took < 5.0


def test_sigterm_while_the_engine_hangs_ends_streams_with_an_error_and_done(
    tmp_path: Path,
) -> None:
    with engine(token_then_hang) as base:
        config = engine_config(tmp_path, base, graceful_shutdown_seconds=0.5)
        with limited_node(config) as node:
            got: list[tuple[int, bytes, float]] = []
            reader = threading.Thread(target=lambda: got.append(_stream(node.url)))
            reader.start()
            time.sleep(0.5)  # the first token is out, the engine hangs
            node.server.should_exit = True  # what SIGTERM does (uvicorn's handle_exit)
            reader.join(10)
    status, raw, _ = got[0]
    events = _events(raw)
    assert status == 200
    assert events[0]["choices"][0]["delta"]["content"] == "hi"
    assert events[-2]["error"]["code"] == "shutting_down"
    assert events[-1] == "[DONE]"


def test_sigterm_while_the_engine_hangs_ends_a_non_streamed_answer_with_the_error_document(
    tmp_path: Path,
) -> None:
    """A non-streamed answer has nothing on the wire yet: it gets the 503
    ``shutting_down`` document, not a cut connection."""
    got: list[httpx.Response] = []

    def ask(url: str) -> None:
        body = {**BODY, "stream": False}
        got.append(httpx.post(url + "/api/v1/chat/completions", json=body, timeout=10))

    with engine(token_then_hang) as base:
        config = engine_config(tmp_path, base, graceful_shutdown_seconds=0.5)
        with limited_node(config) as node:
            reader = threading.Thread(target=ask, args=(node.url,))
            reader.start()
            time.sleep(0.5)  # the engine sent a token, then hangs
            node.server.should_exit = True  # what SIGTERM does (uvicorn's handle_exit)
            reader.join(10)
    (r,) = got
    assert r.status_code == 503
    assert r.json()["error"]["code"] == "shutting_down"
    assert r.headers["x-venice-tee"] == "true"


def test_the_keep_alive_timeout_is_configurable(tmp_path: Path) -> None:
    """An idle keep-alive connection is closed after ``keep_alive_timeout_seconds``."""
    import socket

    with engine(silent) as base:
        config = engine_config(tmp_path, base, transport={"keep_alive_timeout_seconds": 0.3})
        assert config.transport.keep_alive_timeout_seconds == 0.3
        with limited_node(config) as node, socket.create_connection(("127.0.0.1", node.port)) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            s.settimeout(5)
            start = time.monotonic()
            data = b""
            while True:
                part = s.recv(65536)
                if not part:
                    break
                data += part
            took = time.monotonic() - start
    assert data.startswith(b"HTTP/1.1 ")
    assert 0.2 < took < 3.0  # closed by the node after 0.3 s idle, not 5 s
