"""Streaming in batches (``server/chat/batching.py``, ``ChunkWriter.batch``).

What a client relies on:

- the first token is written alone, the moment the engine produces it -
  never held back to wait for company;
- chunks that arrived together after it go out together, runs of plain text
  pieces merged into one chunk: under E2EE one envelope that decrypts to the
  same text;
- the signature covers the bytes exactly as written;
- a chunk that says anything besides "a piece of text" (role, finish reason,
  usage, logprobs, tool calls) is never merged with its neighbours;
- and, below the server, the pump that reads the engine hands over what has
  arrived, stops at its bound, reports the engine's failure after the chunks
  before it, and closes the engine's stream however the request ends.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from server_fakes import E2EE_MODEL, TEE_MODEL, FakeBackend, SeedClient, fake_node, sse_events

from enclaved.crypto import KeyPair, Opener, Sealer, eip191_recover_address
from enclaved.server.backends.base import BackendError, ChatRequest
from enclaved.server.backends.upstream import SSEDecoder, UpstreamBackend
from enclaved.server.chat.batching import ChunkPump, StreamInterrupted, text_piece
from enclaved.server.chat.rewrite import ChunkWriter

pytestmark = pytest.mark.filterwarnings("ignore::enclaved.attestation.InsecurePolicyWarning")


def piece(text: str, **delta: Any) -> dict[str, Any]:
    return {
        "id": "engine-id",
        "object": "chat.completion.chunk",
        "choices": [
            {
                "index": 0,
                "delta": {"content": text, **delta},
                "logprobs": None,
                "finish_reason": None,
            }
        ],
    }


def reasoning(text: str) -> dict[str, Any]:
    return {"choices": [{"index": 0, "delta": {"reasoning_content": text}, "finish_reason": None}]}


ROLE = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
FINISH = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
USAGE = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 9, "total_tokens": 12}}


def events(data: bytes) -> list[dict[str, Any]]:
    return [e for e in sse_events(data) if e != "[DONE]"]


def contents(evs: list[dict[str, Any]]) -> list[str]:
    return [c["delta"]["content"] for e in evs for c in e["choices"] if c["delta"].get("content")]


# -- which chunks may be merged -------------------------------------------------------


def test_text_piece_accepts_only_a_bare_piece_of_text() -> None:
    assert text_piece(piece("a")) == ("content", "a")
    assert text_piece(reasoning("r")) == ("reasoning_content", "r")
    # vLLM's newer name is written under the usual one.
    assert text_piece({"choices": [{"delta": {"reasoning": "r"}}]}) == ("reasoning_content", "r")
    # Null fields are absent fields; fields the server drops are not looked at.
    assert text_piece(piece("a", role=None, tool_calls=None)) == ("content", "a")
    assert text_piece({"usage": None, "choices": [{"delta": {"content": "a"}, "x": 1}]})

    refused: list[dict[str, Any]] = [
        ROLE,
        FINISH,
        USAGE,
        piece(""),  # nothing to merge
        piece("a", role="assistant"),
        piece("a", reasoning_content="r"),  # two texts
        piece("a", tool_calls=[{"index": 0}]),
        {**piece("a"), "usage": USAGE["usage"]},  # vLLM's continuous usage
        {"choices": [{"index": 0, "delta": {"content": "a"}, "logprobs": {"content": []}}]},
        {"choices": [{"index": 0, "delta": {"content": "a"}, "finish_reason": "length"}]},
        {"choices": [{"index": 1, "delta": {"content": "a"}}]},
        {"choices": [{"delta": {"content": "a"}}, {"index": 1, "delta": {"content": "b"}}]},
        {"choices": [{"index": 0, "delta": {"content": 5}}]},
        {"choices": "a"},
        {},
    ]
    for chunk in refused:
        assert text_piece(chunk) is None, chunk


# -- ChunkWriter.batch ------------------------------------------------------------------


def writer(sealer: Sealer | None = None) -> ChunkWriter:
    return ChunkWriter("chatcmpl-" + "ab" * 16, "tee-model", 1700000000, sealer)


def test_an_event_is_byte_for_byte_the_whole_chunk_encoded() -> None:
    w = writer()
    choices = w.choices(piece('x\u00e9\n"<'))
    whole = {
        "id": w.id,
        "object": "chat.completion.chunk",
        "created": w.created,
        "model": w.model,
        "choices": choices,
    }
    assert w.event(choices) == b"data: " + orjson.dumps(whole) + b"\n\n"


def test_a_run_of_pieces_is_one_chunk_with_their_text() -> None:
    merged = writer().batch([piece("Hel"), piece("lo"), piece(", "), piece("w\u00f6rld")])
    w = writer()
    assert merged == w.event(w.choices(piece("Hello, w\u00f6rld")))


def test_no_merge_across_finish_reason_usage_role_or_kind() -> None:
    w = writer()
    chunks = [
        ROLE,
        reasoning("thin"),
        reasoning("king"),
        piece("a"),
        piece("b"),
        {**piece("c"), "usage": {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}},
        piece("d"),
        {"choices": [{"index": 0, "delta": {"content": "e"}, "finish_reason": "stop"}]},
        USAGE,
    ]
    out = events(w.batch(chunks))
    deltas = [e["choices"][0]["delta"] for e in out]
    assert deltas == [
        {"role": "assistant", "content": ""},
        {"reasoning_content": "thinking"},
        {"content": "ab"},
        {"content": "c"},  # carried usage: alone
        {"content": "d"},
        {"content": "e"},  # carried the finish reason: alone, and keeps it
    ]
    assert [e["choices"][0]["finish_reason"] for e in out] == [None] * 5 + ["stop"]
    assert w.usage == USAGE["usage"]  # the usage chunk is remembered, not written here


def test_the_usage_estimate_counts_engine_pieces_not_chunks() -> None:
    w = writer()
    w.batch([piece("a"), piece("b"), piece("c"), FINISH])
    assert w.final_usage() == {"prompt_tokens": 0, "completion_tokens": 3, "total_tokens": 3}


def test_under_e2ee_a_run_is_one_envelope_of_the_joined_text() -> None:
    client = KeyPair.generate()
    w = writer(Sealer(client.public_key))
    out = events(w.batch([piece("Hel"), piece("lo"), FINISH, piece("!")]))
    envelopes = contents(out)
    assert len(envelopes) == 2
    opener = Opener(client)
    assert [opener.open_text(e) for e in envelopes] == ["Hello", "!"]


# -- the pump ---------------------------------------------------------------------------


async def burst(n: int, *, fail: bool = False) -> AsyncIterator[dict[str, Any]]:
    for i in range(n):
        yield piece(str(i))
    if fail:
        raise BackendError("engine failed mid-stream")


def test_pump_hands_over_everything_that_arrived() -> None:
    async def go() -> list[tuple[int, bool]]:
        pump = ChunkPump(burst(10), limit=64)
        batch, finished = await pump.take()
        await pump.aclose()
        return [(len(batch), finished)]

    assert asyncio.run(go()) == [(10, True)]


def test_pump_stops_reading_at_its_limit() -> None:
    async def go() -> list[tuple[int, bool]]:
        pump = ChunkPump(burst(10), limit=4)
        sizes = []
        finished = False
        while not finished:
            batch, finished = await pump.take()
            sizes.append((len(batch), finished))
        await pump.aclose()
        return sizes

    assert asyncio.run(go()) == [(4, False), (4, False), (2, True)]


def test_pump_reports_the_failure_after_the_chunks_before_it() -> None:
    async def go() -> tuple[int, bool, Exception | None]:
        pump = ChunkPump(burst(3, fail=True), limit=64)
        batch, finished = await pump.take()
        await pump.aclose()
        return len(batch), finished, pump.error

    n, finished, error = asyncio.run(go())
    assert (n, finished) == (3, True)
    assert isinstance(error, BackendError)


def test_pump_never_takes_a_cancelled_stream_for_a_finished_one() -> None:
    async def cancelled_inside() -> AsyncIterator[dict[str, Any]]:
        yield piece("a")
        raise asyncio.CancelledError  # e.g. a task inside the engine client was cancelled

    async def go() -> tuple[int, bool, Exception | None]:
        pump = ChunkPump(cancelled_inside(), limit=64)
        batch, finished = await pump.take()
        while not finished:
            more, finished = await pump.take()
            batch += more
        await pump.aclose()
        return len(batch), finished, pump.error

    n, finished, error = asyncio.run(go())
    assert (n, finished) == (1, True)
    assert isinstance(error, StreamInterrupted)


class Engine:
    """A stream that yields ``n`` pieces, then waits forever; records its closing."""

    def __init__(self, n: int = 1) -> None:
        self.n = n
        self.closed = False

    async def stream(self) -> AsyncIterator[dict[str, Any]]:
        try:
            for i in range(self.n):
                yield piece(str(i))
            await asyncio.Event().wait()
        finally:
            self.closed = True


@pytest.mark.parametrize("n", [1, 4])  # waiting inside the stream / parked at the limit
def test_pump_close_closes_the_stream(n: int) -> None:
    async def go() -> bool:
        engine = Engine(n)
        pump = ChunkPump(engine.stream(), limit=4)
        await pump.take()
        await asyncio.sleep(0.01)
        await pump.aclose()
        return engine.closed

    assert asyncio.run(go())


def test_pump_close_completes_when_its_caller_is_cancelled() -> None:
    """The server cancels a request whose client left, possibly while it is
    already closing its stream: the stream must still be closed."""

    async def go() -> bool:
        engine = Engine()
        pump = ChunkPump(engine.stream(), limit=4)
        await pump.take()
        closer = asyncio.ensure_future(pump.aclose())
        await asyncio.sleep(0)
        closer.cancel()
        for _ in range(100):
            if engine.closed:
                break
            await asyncio.sleep(0.001)
        return engine.closed

    assert asyncio.run(go())


# -- through the server -------------------------------------------------------------------


class GatedBackend(FakeBackend):
    """Role chunk and first piece at once; the other pieces only once the
    test opens the gate, and then all together."""

    def __init__(self, pieces: list[str]) -> None:
        super().__init__(pieces=pieces)
        self.gate = threading.Event()
        self.released_at: float | None = None

    async def stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        self.requests.append(request)
        yield self._chunk({"role": "assistant", "content": ""})
        yield self._chunk({"content": self.pieces[0]})
        while not self.gate.is_set():
            await asyncio.sleep(0.002)
        self.released_at = time.monotonic()
        for text in self.pieces[1:]:
            yield self._chunk({"content": text})
        yield self._chunk({}, "stop")
        yield {"id": "engine-id", "choices": [], "usage": self.usage}


PIECES = ["The", " first", " token", " goes", " out", " alone", "."]


def _read_until_first_token(lines: Iterator[str]) -> list[str]:
    seen: list[str] = []
    for line in lines:
        seen.append(line)
        if line.startswith("data: {") and contents([json.loads(line[6:])]):
            return seen
    raise AssertionError("the stream ended before its first token")


@pytest.fixture
def gated(tmp_path: Path) -> Iterator[tuple[Any, GatedBackend]]:
    backend = GatedBackend(PIECES)
    with fake_node(tmp_path, backend=backend) as node:
        try:
            yield node, backend
        finally:
            backend.gate.set()


def test_first_token_is_written_alone_without_waiting_for_the_next(
    gated: tuple[Any, GatedBackend],
) -> None:
    node, backend = gated
    body = {"model": TEE_MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with httpx.stream("POST", node.api + "/chat/completions", json=body, timeout=10) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        head = _read_until_first_token(lines)
        # The client holds the first token while the engine has produced nothing else.
        assert not backend.gate.is_set() and backend.released_at is None
        assert contents([json.loads(x[6:]) for x in head if x.startswith("data: {")]) == [PIECES[0]]
        backend.gate.set()
        after = [json.loads(x[6:]) for x in lines if x.startswith("data: {")]
    # Everything after it arrived at once: one chunk for the six pieces, then
    # the finish reason on its own, then the usage chunk.
    assert contents(after) == ["".join(PIECES[1:])]
    assert after[-2]["choices"][0]["finish_reason"] == "stop"
    assert after[-1]["choices"] == [] and after[-1]["usage"]["completion_tokens"] == len(PIECES)


def test_merged_e2ee_chunks_decrypt_to_the_text_and_the_signature_holds(tmp_path: Path) -> None:
    backend = FakeBackend(pieces=PIECES)  # every piece ready at once
    with fake_node(tmp_path, backend=backend) as node:
        client = SeedClient()
        key = node.key.public_key_hex
        sent = json.dumps(
            {
                "model": E2EE_MODEL,
                "stream": True,
                "messages": [{"role": "user", "content": SeedClient.encrypt("hi", key)}],
            }
        ).encode()
        r = httpx.post(
            node.api + "/chat/completions",
            content=sent,
            headers={"Content-Type": "application/json", **client.headers(key)},
            timeout=10,
        )
        assert r.status_code == 200
        received = r.content
        envelopes = contents(events(received))
        assert 2 <= len(envelopes) < len(PIECES)  # the first alone, the rest merged
        texts = [client.decrypt(e) for e in envelopes]
        assert texts[0] == PIECES[0]
        assert "".join(texts) == "".join(PIECES)

        request_id = events(received)[0]["id"]
        doc = httpx.get(
            node.api + "/tee/signature",
            params={"model": E2EE_MODEL, "request_id": request_id},
            timeout=10,
        ).json()
        sha = hashlib.sha256
        assert doc["text"] == sha(sent).hexdigest() + ":" + sha(received).hexdigest()
        assert eip191_recover_address(doc["text"], doc["signature"]) == node.key.address.lower()


# -- the upstream backend: one connection for consecutive streams ---------------------------


class CountingEngine:
    """A minimal HTTP/1.1 engine on loopback that counts connections. ``linger``:
    keep the body open after ``[DONE]`` (a misbehaving engine)."""

    def __init__(self, linger: bool = False) -> None:
        self.linger = linger
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                await reader.readexactly(length)
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                    b"Transfer-Encoding: chunked\r\n\r\n"
                )
                for data in (orjson.dumps(piece("x")), b"[DONE]"):
                    event = b"data: " + data + b"\n\n"
                    writer.write(b"%x\r\n%s\r\n" % (len(event), event))
                    await writer.drain()
                if self.linger:
                    await asyncio.sleep(3600)
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


async def _streams(engine: CountingEngine, n: int) -> list[list[dict[str, Any]]]:
    server = await asyncio.start_server(engine.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    backend = UpstreamBackend(f"http://127.0.0.1:{port}/v1", "m")
    await backend.start()
    try:
        request = ChatRequest(messages=[{"role": "user", "content": "hi"}])
        return [[c async for c in backend.stream(request)] for _ in range(n)]
    finally:
        await backend.close()
        server.close()


def test_consecutive_streams_share_one_engine_connection() -> None:
    engine = CountingEngine()
    results = asyncio.run(_streams(engine, 3))
    assert [contents(r) for r in results] == [["x"]] * 3
    assert engine.connections == 1


def test_an_engine_that_keeps_the_body_open_after_done_is_not_waited_for(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from enclaved.server.backends import upstream

    monkeypatch.setattr(upstream, "REST_TIMEOUT", 0.2)
    engine = CountingEngine(linger=True)
    started = time.monotonic()
    results = asyncio.run(_streams(engine, 2))
    assert [contents(r) for r in results] == [["x"]] * 2
    assert time.monotonic() - started < 3
    assert engine.connections == 2  # that connection could not be kept


# -- the SSE decoder's fast path agrees with the general one --------------------------------


@pytest.mark.parametrize(
    "feeds",
    [
        [b'data: {"a": 1}\n\n', b"data: [DONE]\n\n"],
        [b"data:  two spaces\n\n", b"data: \n\n", b"data:x\n\n"],
        [b"data: a\n", b"data: b\n\n"],  # an event spread over two network chunks
        [b"event: error\n", b"data: {}\n\n"],
        [b"data: a\r", b"\ndata: b\n\n"],  # CR LF split across two reads
        [b"data: a\r\n\r\n", b"data: b\nc\n\n", b": keep-alive\n\ndata: d\n\n"],
    ],
)
def test_sse_decoder_one_event_per_chunk_as_byte_by_byte(feeds: list[bytes]) -> None:
    whole = SSEDecoder()
    got = [e for f in feeds for e in whole.feed(f)] + whole.flush()
    slow = SSEDecoder()
    expected = [e for f in feeds for i in range(len(f)) for e in slow.feed(f[i : i + 1])]
    assert got == expected + slow.flush()


# -- what the node hands to the HTTP server before the first token ----------------------


def test_status_line_and_role_chunk_go_out_with_the_first_token(tmp_path: Path) -> None:
    """The engine's role chunk arrives 50 ms before its first token; the node
    writes nothing until that token, then the status line and one body
    message with both chunks: the client wakes once for the first token."""
    from conftest import running_server
    from server_fakes import fake_backends, fake_config

    from enclaved.server.app import create_app

    messages: list[dict[str, Any]] = []

    async def recording(scope: Any, receive: Any, send: Any) -> None:
        async def record(message: MutableMapping[str, Any]) -> None:
            if scope["type"] == "http" and scope["path"].endswith("/chat/completions"):
                messages.append({**message, "at": time.monotonic()})
            await send(message)

        await app(scope, receive, record)

    backend = FakeBackend(pieces=["Hi", " there"], delay=0.05)
    app = create_app(fake_config(tmp_path), backends=fake_backends(backend))
    body = {"model": TEE_MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    with running_server(recording) as url:
        sent = time.monotonic()
        with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=10) as r:
            assert r.status_code == 200
            raw = b"".join(r.iter_raw())
    assert messages[0]["type"] == "http.response.start"
    assert messages[0]["at"] - sent >= 0.04  # held until the first token
    first = messages[1]
    assert first["type"] == "http.response.body"
    events = sse_events(first["body"])
    assert [e["choices"][0]["delta"] for e in events] == [
        {"role": "assistant", "content": ""},
        {"content": "Hi"},
    ]
    assert raw.startswith(first["body"])  # and that is what the client read first
