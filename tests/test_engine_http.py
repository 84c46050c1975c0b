"""EngineHttp, the node's keep-alive HTTP/1.1 client to its engine, against raw sockets.

Every engine here is an ``asyncio.start_server`` on 127.0.0.1 whose handler
reads requests and writes the exact bytes of its answers, so that each test
controls the framing, the timing and when a connection closes. The server
counts the connections it accepts and notes when the client closes one
(EOF): that is how keep-alive is observed from outside, without looking
into the client.
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import ipaddress
import os
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, Self

import pytest

from enclaved.server.backends.base import BackendError
from enclaved.server.backends.engine_http import (
    MAX_HEAD_BYTES,
    READ_HIGH_WATER,
    EngineHttp,
    EngineResponse,
    Timeouts,
)

#: Stands for answer content: it must never appear in an error.
SECRET = b"SECRET-ANSWER-BYTES"

#: What one read of a plain socket transport brings at most (asyncio's selector loop).
_SOCKET_READ = 256 * 1024

Handler = Callable[["Engine", int, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Engine:
    """A raw HTTP/1.1 server on 127.0.0.1; ``handler`` runs once per accepted connection."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self._handler = handler
        self._ssl = ssl_context
        #: Connections accepted so far; connection ``i`` is the ``i``-th accepted.
        self.accepted = 0
        #: Every request read: (connection, head, body).
        self.requests: list[tuple[int, bytes, bytes]] = []
        self._client_closed: dict[int, asyncio.Event] = {}
        self._writers: list[asyncio.StreamWriter] = []
        self._handlers: list[asyncio.Task[Any]] = []

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self._ssl)
        self.port: int = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for writer in self._writers:
            writer.close()  # a handler still reading sees the end and returns
        await self._server.wait_closed()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=2)

    @property
    def url(self) -> str:
        scheme = "https" if self._ssl else "http"
        return f"{scheme}://127.0.0.1:{self.port}/v1"

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = self.accepted
        self.accepted += 1
        self._client_closed[index] = asyncio.Event()
        self._writers.append(writer)
        task = asyncio.current_task()
        assert task is not None
        self._handlers.append(task)
        try:
            await self._handler(self, index, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def request(self, index: int, reader: asyncio.StreamReader) -> bytes | None:
        """The head of the next request on connection ``index`` (its body is read
        and kept in :attr:`requests`), or None once the client closed it."""
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self._client_closed[index].set()
            return None
        match = re.search(rb"\r\ncontent-length: *(\d+)\r\n", head, re.IGNORECASE)
        body = await reader.readexactly(int(match.group(1))) if match else b""
        self.requests.append((index, head, body))
        return head

    async def drain_until_closed(self, index: int, reader: asyncio.StreamReader) -> None:
        """Drop whatever the client sends until it closes connection ``index``."""
        try:
            while await reader.read(65536):
                pass
        except ConnectionError:
            pass
        self._client_closed[index].set()

    async def client_closed(self, index: int, timeout: float = 2.0) -> bool:
        """Whether the client closes connection ``index`` within ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self._client_closed[index].wait(), timeout)
        except TimeoutError:
            return False
        return True

    @property
    def connections(self) -> list[int]:
        """For each request, in order, the connection it came on."""
        return [index for index, _, _ in self.requests]


def ok(body: bytes = b"ok", *headers: bytes) -> bytes:
    """A 200 answer framed by Content-Length."""
    extra = b"".join(h + b"\r\n" for h in headers)
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


def chunked(*parts: bytes) -> bytes:
    """``parts`` in the chunked transfer coding, last chunk included."""
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def serve(answer: bytes) -> Handler:
    """A handler answering every request on a connection with ``answer``."""

    async def handler(
        engine: Engine, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while await engine.request(index, reader) is not None:
            writer.write(answer)
            await writer.drain()

    return handler


async def fetch(http: EngineHttp, body: bytes = b"", limit: int = 1 << 26) -> tuple[int, bytes]:
    """POST ``body`` to ``/x``; the status and the whole answer body."""
    response = await http.send(http.head("POST", "/x", {}), body)
    return response.status, await response.read(limit)


def run(coro: Coroutine[Any, Any, None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 10))


def assert_no_content(exc: BaseException) -> None:
    """Neither the error nor anything chained to it quotes answer bytes."""
    seen: BaseException | None = exc
    while seen is not None:
        assert SECRET.decode() not in str(seen)
        assert SECRET.decode() not in repr(seen)
        seen = seen.__cause__ or seen.__context__
    assert isinstance(exc, BackendError)
    assert SECRET.decode() not in exc.message


# -- keep-alive ----------------------------------------------------------------------------------


def test_sequential_requests_share_one_connection() -> None:
    """Requests whose answers are read to the end reuse one TCP connection: the node
    pays the engine's handshake once, not before every first token."""

    async def go() -> None:
        async with Engine(serve(ok(b"hello"))) as engine:
            http = EngineHttp(engine.url)
            try:
                for _ in range(3):
                    assert await fetch(http) == (200, b"hello")
            finally:
                await http.aclose()
        assert engine.accepted == 1
        assert engine.connections == [0, 0, 0]

    run(go())


def test_connection_close_answer_is_not_reused() -> None:
    """An answer with ``Connection: close`` ends that connection for the client even
    if the engine leaves the socket open: the next request opens a new one."""

    async def go() -> None:
        async with Engine(serve(ok(b"bye", b"Connection: close"))) as engine:
            http = EngineHttp(engine.url)
            try:
                assert await fetch(http) == (200, b"bye")
                assert await fetch(http) == (200, b"bye")
                assert await engine.client_closed(0)
            finally:
                await http.aclose()
        assert engine.connections == [0, 1]

    run(go())


@pytest.mark.parametrize("how", ["aclose", "break"])
def test_abandoned_answer_closes_its_connection(how: str) -> None:
    """An answer dropped before its end (the node's client left) closes its connection,
    which is how the engine learns to stop generating; that connection is never reused."""

    async def handler(
        engine: Engine, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if index > 0:
            return await serve(ok(b"fresh"))(engine, index, reader, writer)
        await engine.request(index, reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + SECRET)
        await writer.drain()
        await engine.drain_until_closed(index, reader)

    async def go() -> None:
        async with Engine(handler) as engine:
            http = EngineHttp(engine.url)
            try:
                response = await http.send(http.head("POST", "/x", {}))
                if how == "aclose":
                    first = await response.pieces().__anext__()
                    await response.aclose()
                else:
                    async for first in response.pieces():  # noqa: B007 - read after the loop
                        break
                assert first == SECRET
                assert await engine.client_closed(0)
                assert await fetch(http) == (200, b"fresh")
            finally:
                await http.aclose()
        assert engine.connections == [0, 1]

    run(go())


def test_idle_connections_expire() -> None:
    """A connection idle for longer than ``keepalive_expiry`` is closed rather than reused
    (engines close idle connections on their own clock: uvicorn after 5 s)."""

    async def go() -> None:
        async with Engine(serve(ok())) as engine:
            http = EngineHttp(engine.url, keepalive_expiry=0.1)
            try:
                await fetch(http)
                await asyncio.sleep(0.15)
                await fetch(http)
                assert await engine.client_closed(0)
            finally:
                await http.aclose()
        assert engine.connections == [0, 1]

    run(go())


def test_pool_keeps_at_most_keepalive_connections() -> None:
    """Beyond ``keepalive`` idle connections the extra ones are closed (each costs a file
    descriptor on both sides); the ones kept are reused."""
    arrived = 0
    both = asyncio.Event()

    async def handler(
        engine: Engine, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        nonlocal arrived
        while await engine.request(index, reader) is not None:
            arrived += 1
            if arrived == 2:
                both.set()
            await both.wait()  # both requests in flight at once: two connections
            writer.write(ok())
            await writer.drain()

    async def go() -> None:
        async with Engine(handler) as engine:
            http = EngineHttp(engine.url, keepalive=1)
            try:
                await asyncio.gather(fetch(http), fetch(http))
                closed = await asyncio.gather(
                    engine.client_closed(0, 0.3), engine.client_closed(1, 0.3)
                )
                assert sorted(closed) == [False, True]
                await fetch(http)
                kept = closed.index(False)
            finally:
                await http.aclose()
        assert engine.accepted == 2
        assert engine.connections[-1] == kept

    run(go())


# -- a kept-alive connection the engine closed -----------------------------------------------------


def test_request_on_stale_connection_is_sent_again_once() -> None:
    """The engine closes a kept-alive connection while the node is about to reuse it:
    the request goes out again on a new connection, transparently, and the engine
    sees it exactly once."""

    async def handler(
        engine: Engine, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if index > 0:
            return await serve(ok(b"second"))(engine, index, reader, writer)
        await engine.request(index, reader)
        writer.write(ok(b"first"))
        writer.close()  # the answer, then the engine's own idle close, at once

    async def go() -> None:
        async with Engine(handler) as engine:
            http = EngineHttp(engine.url)
            try:
                assert await fetch(http, b"one") == (200, b"first")
                # No pause: the request is written before the client can see the close.
                assert await fetch(http, b"two") == (200, b"second")
            finally:
                await http.aclose()
        assert [(index, body) for index, _, body in engine.requests] == [(0, b"one"), (1, b"two")]
        assert engine.accepted == 2

    run(go())


def test_new_connection_closed_before_answer_is_a_502() -> None:
    """A new connection that the engine closes before answering fails with 502, at once:
    the request may have reached the engine, so it is not sent again."""

    async def handler(
        engine: Engine, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await engine.request(index, reader)

    async def go() -> None:
        async with Engine(handler) as engine:
            http = EngineHttp(engine.url)
            try:
                with pytest.raises(BackendError) as info:
                    await fetch(http, b"once")
            finally:
                await http.aclose()
            assert info.value.status == 502
        assert engine.accepted == 1
        assert engine.connections == [0]

    run(go())


def test_stale_retry_happens_only_once() -> None:
    """If the connection opened for the retry also closes before answering, the request
    fails with 502 instead of looping over new connections."""

    async def handler(
        engine: Engine, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await engine.request(index, reader)
        if index == 0:
            writer.write(ok(b"first"))
        writer.close()

    async def go() -> None:
        async with Engine(handler) as engine:
            http = EngineHttp(engine.url)
            try:
                assert await fetch(http) == (200, b"first")
                with pytest.raises(BackendError) as info:
                    await fetch(http)
            finally:
                await http.aclose()
            assert info.value.status == 502
            await asyncio.sleep(0.05)
        assert engine.accepted == 2

    run(go())


# -- framing -------------------------------------------------------------------------------------


def test_chunked_body_one_byte_per_write() -> None:
    """An answer split anywhere by the network (here: every byte on its own, head
    included) decodes to the same status, headers and body, and the connection is kept."""
    body_parts = (b'data: {"a": 1}\n\n', b"x" * 300, b"\xff\x00\r\n0\r\n\r\n")
    answer = (
        b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
        + chunked(*body_parts)
    )

    async def handler(
        engine: Engine, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while await engine.request(index, reader) is not None:
            for i in range(len(answer)):
                writer.write(answer[i : i + 1])
                await writer.drain()
                await asyncio.sleep(0)

    async def go() -> None:
        async with Engine(handler) as engine:
            http = EngineHttp(engine.url)
            try:
                for _ in range(2):
                    response = await http.send(http.head("POST", "/x", {}))
                    assert response.status == 200
                    assert response.headers[b"content-type"] == b"text/event-stream"
                    assert await response.read(1 << 20) == b"".join(body_parts)
            finally:
                await http.aclose()
        assert engine.accepted == 1

    run(go())


def test_chunk_extensions_and_trailers() -> None:
    """Chunk extensions and trailer fields are legal HTTP/1.1: the body is decoded
    without them and the connection stays usable."""
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Checksum\r\n\r\n"
        b'5;name=value\r\nhello\r\n6;ext;q="a b"\r\n world\r\n0;last\r\n'
        b"X-Checksum: abc\r\n\r\n"
    )

    async def go() -> None:
        async with Engine(serve(answer)) as engine:
            http = EngineHttp(engine.url)
            try:
                assert await fetch(http) == (200, b"hello world")
                assert await fetch(http) == (200, b"hello world")
            finally:
                await http.aclose()
        assert engine.accepted == 1

    run(go())


def test_content_length_body() -> None:
    """A Content-Length body is exactly that many bytes, whatever they contain (here,
    bytes that look like chunked framing); an empty one is empty."""
    tricky = b"0\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"

    async def handler(
        engine: Engine, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while (head := await engine.request(index, reader)) is not None:
            writer.write(ok(b"" if b"/v1/empty" in head else tricky))
            await writer.drain()

    async def go() -> None:
        async with Engine(handler) as engine:
            http = EngineHttp(engine.url)
            try:
                assert await fetch(http) == (200, tricky)
                response = await http.send(http.head("GET", "/empty", {}))
                assert await response.read(10) == b""
                assert await fetch(http) == (200, tricky)
            finally:
                await http.aclose()
        assert engine.accepted == 1

    run(go())


def test_body_delimited_by_close_is_read_to_eof() -> None:
    """An answer with neither Content-Length nor chunked coding ends when the engine
    closes the connection: all of it is read, and that connection is not reused."""

    async def handler(
        engine: Engine, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await engine.request(index, reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst part, ")
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(b"second part")
        await writer.drain()
        writer.close()

    async def go() -> None:
        async with Engine(handler) as engine:
            http = EngineHttp(engine.url)
            try:
                assert await fetch(http) == (200, b"first part, second part")
                assert await fetch(http) == (200, b"first part, second part")
            finally:
                await http.aclose()
        assert engine.connections == [0, 1]

    run(go())


def test_204_has_no_body() -> None:
    """A 204 answer has no body even without Content-Length (it does not wait for a
    close), and its connection is reused."""

    async def go() -> None:
        async with Engine(serve(b"HTTP/1.1 204 No Content\r\nX-Done: yes\r\n\r\n")) as engine:
            http = EngineHttp(engine.url)
            try:
                assert await fetch(http) == (204, b"")
                assert await fetch(http) == (204, b"")
            finally:
                await http.aclose()
        assert engine.accepted == 1

    run(go())


def test_interim_answers_are_skipped() -> None:
    """``100 Continue`` (and other 1xx) answers before the real one are skipped: ``send``
    returns the final status and headers only, with none of the interim headers."""

    async def handler(
        engine: Engine, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while await engine.request(index, reader) is not None:
            writer.write(b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.02)
            writer.write(b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n")
            writer.write(b"HTTP/1.1 201 Created\r\nX-Final: 1\r\nContent-Length: 4\r\n\r\ndone")
            await writer.drain()

    async def go() -> None:
        async with Engine(handler) as engine:
            http = EngineHttp(engine.url)
            try:
                for _ in range(2):
                    response = await http.send(http.head("POST", "/x", {}), b"{}")
                    assert response.status == 201
                    assert dict(response.headers) == {b"x-final": b"1", b"content-length": b"4"}
                    assert await response.read(100) == b"done"
            finally:
                await http.aclose()
        assert engine.accepted == 1

    run(go())


def test_header_names_lower_cased_and_repeats_joined() -> None:
    """``EngineResponse.headers`` has lower-case names and repeated headers joined with
    ``", "`` in order (as one would read a comma-separated list); values keep their case."""
    answer = (
        b"HTTP/1.1 200 OK\r\nX-Dup: one\r\nX-MiXeD: Value\r\nx-dup: two\r\nX-DUP: three\r\n"
        b"Content-Length: 0\r\n\r\n"
    )

    async def go() -> None:
        async with Engine(serve(answer)) as engine:
            http = EngineHttp(engine.url)
            try:
                response = await http.send(http.head("GET", "/x", {}))
                assert dict(response.headers) == {
                    b"x-dup": b"one, two, three",
                    b"x-mixed": b"Value",
                    b"content-length": b"0",
                }
                assert response.is_success
                await response.aclose()
            finally:
                await http.aclose()

    run(go())


def test_bytes_after_the_end_of_an_answer_are_not_part_of_it() -> None:
    """An answer's body is exactly what its framing says, even when the engine sends
    more bytes right after it (in the same TCP segment): the extra bytes never reach
    the caller, and the connection they came on is not trusted again."""
    extra = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(SECRET), SECRET)

    async def handler(
        engine: Engine, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while await engine.request(index, reader) is not None:
            writer.write(ok(b"hello") + extra)  # one write: one segment on loopback
            await writer.drain()

    async def go() -> None:
        async with Engine(handler) as engine:
            http = EngineHttp(engine.url)
            try:
                assert await fetch(http) == (200, b"hello")
                assert await fetch(http) == (200, b"hello")
            finally:
                await http.aclose()
        assert engine.connections == [0, 1]

    run(go())


# -- failures ------------------------------------------------------------------------------------

# Well-formed headers, about twice MAX_HEAD_BYTES in all.
_OVERSIZED_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    + b"".join(b"X-H%d: %s\r\n" % (i, SECRET * 50) for i in range(MAX_HEAD_BYTES // 500))
    + b"Content-Length: 0\r\n\r\n"
)


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(b"HTTP/1.1 2OO " + SECRET + b"\r\nContent-Length: 0\r\n\r\n", id="status"),
        pytest.param(SECRET + b" 200 OK\r\n\r\n", id="not-http"),
        pytest.param(b"HTTP/1.1 200 OK\r\nX " + SECRET + b"\r\n\r\n", id="header-line"),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n" + SECRET,
            id="two-framings",
        ),
        pytest.param(_OVERSIZED_HEAD, id="oversized-head"),
    ],
)
def test_malformed_head_is_a_502(answer: bytes) -> None:
    """A status line or headers that are not valid HTTP/1.1, or over ``MAX_HEAD_BYTES``,
    fail the request with 502, and the error quotes none of the engine's bytes."""

    async def go() -> None:
        async with Engine(serve(answer)) as engine:
            http = EngineHttp(engine.url)
            try:
                with pytest.raises(BackendError) as info:
                    await http.send(http.head("GET", "/x", {}))
            finally:
                await http.aclose()
            assert info.value.status == 502
            assert_no_content(info.value)

    run(go())


def test_endless_header_line_is_cut_at_the_head_limit() -> None:
    """The ``MAX_HEAD_BYTES`` limit holds for a header line that never ends too: the
    client fails with 502 once the limit is passed, instead of buffering the engine's
    bytes until the read timeout."""

    async def handler(
        engine: Engine, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await engine.request(index, reader)
        writer.write(b"HTTP/1.1 200 OK\r\nX-Big: " + SECRET * (4 * MAX_HEAD_BYTES // len(SECRET)))
        await writer.drain()
        await engine.drain_until_closed(index, reader)

    async def go() -> None:
        async with Engine(handler) as engine:
            http = EngineHttp(engine.url, timeouts=Timeouts(read=1.0))
            try:
                with pytest.raises(BackendError) as info:
                    await http.send(http.head("GET", "/x", {}))
            finally:
                await http.aclose()
            assert info.value.status == 502
            assert_no_content(info.value)

    run(go())


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n"
            % (len(SECRET), SECRET),
            id="dropped-mid-chunked",
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + SECRET, id="dropped-mid-length"
        ),
        pytest.param(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\nzz\r\n%s\r\n"
            % (len(SECRET), SECRET, SECRET),
            id="bad-chunk-size",
        ),
    ],
)
def test_broken_body_is_a_502(answer: bytes) -> None:
    """A body cut short by the engine, or with broken chunked framing, fails with 502
    after the bytes that were valid: never a silently truncated answer."""

    async def handler(
        engine: Engine, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await engine.request(index, reader)
        writer.write(answer)
        await writer.drain()
        await asyncio.sleep(0.02)  # the valid part is read first
        writer.close()

    async def go() -> None:
        async with Engine(handler) as engine:
            http = EngineHttp(engine.url)
            got: list[bytes] = []
            try:
                response = await http.send(http.head("POST", "/x", {}))
                assert response.status == 200
                with pytest.raises(BackendError) as info:
                    async for piece in response.pieces():
                        got.append(piece)
            finally:
                await http.aclose()
            assert b"".join(got) == SECRET
            assert info.value.status == 502
            assert_no_content(info.value)

    run(go())


def test_nothing_listening_is_a_502_unreachable() -> None:
    """An engine that is not up (vLLM still loading) fails with 502 'unreachable'."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    async def go() -> None:
        http = EngineHttp(f"http://127.0.0.1:{port}/v1")
        try:
            with pytest.raises(BackendError) as info:
                await fetch(http)
        finally:
            await http.aclose()
        assert info.value.status == 502
        assert "unreachable" in info.value.message

    run(go())


@pytest.mark.parametrize("stall", ["before-head", "mid-body"])
def test_silent_engine_is_a_504(stall: str) -> None:
    """An engine that stops sending - before its answer or in the middle of the body -
    fails with 504 once ``Timeouts.read`` has passed without a byte, not later."""

    async def handler(
        engine: Engine, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await engine.request(index, reader)
        if stall == "mid-body":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + SECRET)
            await writer.drain()
        await engine.drain_until_closed(index, reader)

    async def go() -> None:
        async with Engine(handler) as engine:
            http = EngineHttp(engine.url, timeouts=Timeouts(read=0.2))
            start = time.monotonic()
            try:
                with pytest.raises(BackendError) as info:
                    await fetch(http)
            finally:
                await http.aclose()
            elapsed = time.monotonic() - start
            assert 0.19 <= elapsed < 2.0
            assert (info.value.status, info.value.code) == (504, "upstream_timeout")
            assert_no_content(info.value)
            assert await engine.client_closed(0)  # the engine can stop working on it

    run(go())


def test_read_over_limit_fails_and_releases_the_connection() -> None:
    """``read(limit)`` refuses an answer longer than ``limit`` with BackendError (without
    quoting it), and closes the connection so that the engine stops sending."""

    async def handler(
        engine: Engine, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await engine.request(index, reader)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        writer.write(b"%x\r\n%s\r\n" % (len(SECRET), SECRET))  # and more would follow
        await writer.drain()
        await engine.drain_until_closed(index, reader)

    async def go() -> None:
        async with Engine(handler) as engine:
            http = EngineHttp(engine.url)
            try:
                response = await http.send(http.head("GET", "/x", {}))
                with pytest.raises(BackendError) as info:
                    await response.read(len(SECRET) - 1)
                assert_no_content(info.value)
                assert await engine.client_closed(0, timeout=1.0)
            finally:
                await http.aclose()

    run(go())


def test_bytes_sent_to_an_idle_connection_make_it_unusable() -> None:
    """Bytes the engine sends while nothing was asked (the connection idle in the pool)
    mean the connection's framing can no longer be trusted: it is closed, and the next
    request goes out on a new connection and succeeds."""
    sent = asyncio.Event()

    async def handler(
        engine: Engine, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if index > 0:
            return await serve(ok(b"fresh"))(engine, index, reader, writer)
        await engine.request(index, reader)
        writer.write(ok(b"first"))
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(ok(SECRET))  # an answer to no request
        await writer.drain()
        sent.set()
        await engine.drain_until_closed(index, reader)

    async def go() -> None:
        async with Engine(handler) as engine:
            http = EngineHttp(engine.url)
            try:
                assert await fetch(http) == (200, b"first")
                await sent.wait()
                await asyncio.sleep(0.02)
                assert await fetch(http) == (200, b"fresh")
                assert await engine.client_closed(0)
            finally:
                await http.aclose()
        assert engine.connections == [0, 1]

    run(go())


# -- flow control --------------------------------------------------------------------------------


def test_large_body_read_slowly_arrives_intact_with_bounded_buffering() -> None:
    """A large answer read by a slower consumer arrives byte for byte, and the client
    stops reading from the engine once ``READ_HIGH_WATER`` bytes wait (memory per
    request stays bounded, whatever the engine sends)."""
    payload = os.urandom(4 * 1024 * 1024)
    step = 64 * 1024
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + chunked(
        *(payload[i : i + step] for i in range(0, len(payload), step))
    )

    async def go() -> None:
        async with Engine(serve(answer)) as engine:
            http = EngineHttp(engine.url)
            digest = hashlib.sha256()
            largest = size = 0
            try:
                response = await http.send(http.head("GET", "/big", {}))
                async for piece in response.pieces():
                    digest.update(piece)
                    size += len(piece)
                    largest = max(largest, len(piece))
                    await asyncio.sleep(0.01)  # the slow consumer
                assert await fetch(http) == (200, payload)  # the connection was kept
            finally:
                await http.aclose()
        assert size == len(payload)
        assert digest.digest() == hashlib.sha256(payload).digest()
        # Without the pause, the first sleep alone would let the whole 4 MiB pile up.
        assert largest <= READ_HIGH_WATER + _SOCKET_READ
        assert engine.accepted == 1

    run(go())


def test_large_request_body_arrives_intact() -> None:
    """A long prompt (8 MiB) sent to an engine that reads it slowly arrives byte for
    byte, and the connection stays usable afterwards."""
    payload = os.urandom(8 * 1024 * 1024)

    async def handler(
        engine: Engine, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError:
                return
            match = re.search(rb"\r\nContent-Length: (\d+)\r\n", head)
            assert match is not None
            left = int(match.group(1))
            digest = hashlib.sha256()
            while left:
                data = await reader.read(min(left, 512 * 1024))
                digest.update(data)
                left -= len(data)
                await asyncio.sleep(0.005)  # the slow engine
            writer.write(ok(digest.hexdigest().encode()))
            await writer.drain()

    async def go() -> None:
        async with Engine(handler) as engine:
            http = EngineHttp(engine.url, timeouts=Timeouts(write=5.0, read=5.0))
            try:
                expected = hashlib.sha256(payload).hexdigest().encode()
                assert await fetch(http, payload) == (200, expected)
                assert await fetch(http, b"small") == (
                    200,
                    hashlib.sha256(b"small").hexdigest().encode(),
                )
            finally:
                await http.aclose()
        assert engine.accepted == 1

    run(go())


# -- request heads -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Evil", "a\r\nInjected: 1"),
        ("X-Evil", "a\nb"),
        ("X-Evil", "a\rb"),
        ("X-Evil", "a\0b"),
        ("X-Evil\r\nInjected", "1"),
        ("X Evil", "1"),
        ("X-Evil:", "1"),
        ("", "1"),
        ("X-Évil", "1"),
        ("X(Evil)", "1"),
    ],
)
def test_head_refuses_header_injection(name: str, value: str) -> None:
    """``head`` refuses a header whose name is not an HTTP token or whose value holds
    CR, LF or NUL: no configured header (an API key from the environment) can smuggle
    another header or request to the engine."""
    http = EngineHttp("http://127.0.0.1:8000/v1")
    with pytest.raises(ValueError):
        http.head("POST", "/chat/completions", {name: value})


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/chat completions"),
        ("POST", "/x\r\nX-Evil: 1"),
        ("PO ST", "/chat/completions"),
        ("", "/chat/completions"),
    ],
)
def test_head_refuses_a_broken_request_line(method: str, path: str) -> None:
    """A method or path that would split the request line is refused, like a header."""
    http = EngineHttp("http://127.0.0.1:8000/v1")
    with pytest.raises(ValueError):
        http.head(method, path, {})


@pytest.mark.parametrize(
    "url", ["ftp://engine/v1", "engine:8000/v1", "http:///v1", "unix:///tmp/engine.sock"]
)
def test_only_http_and_https_urls(url: str) -> None:
    """A base URL that is not ``http://`` or ``https://`` with a host is refused at once."""
    with pytest.raises(ValueError):
        EngineHttp(url)


@pytest.mark.parametrize(
    ("base_url", "line", "host"),
    [
        ("http://engine.internal/v1", b"POST /v1/chat/completions", b"engine.internal"),
        ("http://engine.internal:80/v1/", b"POST /v1/chat/completions", b"engine.internal"),
        ("https://engine.internal:443/v1", b"POST /v1/chat/completions", b"engine.internal"),
        ("https://engine.internal", b"POST /chat/completions", b"engine.internal"),
        ("http://engine.internal:443/", b"POST /chat/completions", b"engine.internal:443"),
        (
            "https://engine.internal:80/api/v1",
            b"POST /api/v1/chat/completions",
            b"engine.internal:80",
        ),
        ("http://10.0.0.5:8000/v1", b"POST /v1/chat/completions", b"10.0.0.5:8000"),
        ("http://[::1]:8000/v1", b"POST /v1/chat/completions", b"[::1]:8000"),
        ("http://[::1]/v1", b"POST /v1/chat/completions", b"[::1]"),
    ],
)
def test_head_request_line_and_host(base_url: str, line: bytes, host: bytes) -> None:
    """The request line carries the base URL's path prefix, and ``Host`` leaves out
    the scheme's default port and keeps any other (virtual hosts and proxies in front
    of an engine route on it)."""
    head = EngineHttp(base_url).head("POST", "/chat/completions", {"Authorization": "Bearer k"})
    assert head == line + b" HTTP/1.1\r\nHost: " + host + b"\r\nAuthorization: Bearer k\r\n"


def test_request_on_the_wire() -> None:
    """What the engine receives: the prefixed request line, ``Host`` with the port,
    the given headers, and a Content-Length matching the body."""

    async def go() -> None:
        async with Engine(serve(ok())) as engine:
            http = EngineHttp(engine.url + "/")
            try:
                head = http.head("POST", "/chat/completions", {"Accept": "text/event-stream"})
                response = await http.send(head, b'{"model": "m"}')
                await response.read(10)
                response = await http.send(http.head("GET", "/models", {}))
                await response.read(10)
            finally:
                await http.aclose()
        port = str(engine.port).encode()
        assert [(h, b) for _, h, b in engine.requests] == [
            (
                b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:"
                + port
                + b"\r\nAccept: text/event-stream\r\nContent-Length: 14\r\n\r\n",
                b'{"model": "m"}',
            ),
            (
                b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1:"
                + port
                + b"\r\nContent-Length: 0\r\n\r\n",
                b"",
            ),
        ]

    run(go())


# -- https ---------------------------------------------------------------------------------------


def _tls_contexts(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A certificate for IP 127.0.0.1 issued by a fresh CA: (the server's context,
    a client context that trusts that CA and nothing else)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "enclaved test CA")])
    usage = {
        "content_commitment": False,
        "key_encipherment": False,
        "data_encipherment": False,
        "key_agreement": False,
        "encipher_only": False,
        "decipher_only": False,
    }
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, **usage),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, **usage),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_file, key_file = directory / "engine.pem", directory / "engine.key"
    cert_file.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cadata=ca.public_bytes(serialization.Encoding.PEM).decode())
    return server, client


def test_https_engine_with_its_own_ca(tmp_path: Path) -> None:
    """An ``https://`` engine whose certificate the given ``ssl_context`` trusts works,
    keep-alive included; with the default context (certifi's public roots) the same
    engine is refused with 502 before any request is sent."""
    server_ctx, client_ctx = _tls_contexts(tmp_path)

    async def go() -> None:
        async with Engine(serve(ok(b"over tls")), ssl_context=server_ctx) as engine:
            http = EngineHttp(engine.url, ssl_context=client_ctx)
            try:
                assert await fetch(http, b"a") == (200, b"over tls")
                assert await fetch(http, b"b") == (200, b"over tls")
            finally:
                await http.aclose()
            assert engine.accepted == 1
            assert engine.connections == [0, 0]

            default = EngineHttp(engine.url)
            try:
                with pytest.raises(BackendError) as info:
                    await fetch(default, b"never")
            finally:
                await default.aclose()
            assert info.value.status == 502
            assert len(engine.requests) == 2  # nothing reached the engine

    run(go())


# -- closing -------------------------------------------------------------------------------------


def test_aclose_closes_idle_connections_and_refuses_requests() -> None:
    """After ``aclose`` the idle connections are closed (the engine sees them go) and
    ``send`` fails with 503 ``not_ready`` instead of opening new ones."""

    async def go() -> None:
        async with Engine(serve(ok())) as engine:
            http = EngineHttp(engine.url)
            await fetch(http)
            await http.aclose()
            assert http.closed
            assert await engine.client_closed(0)
            with pytest.raises(BackendError) as info:
                await fetch(http)
            assert (info.value.status, info.value.code) == (503, "not_ready")
            await http.aclose()  # idempotent
        assert engine.accepted == 1

    run(go())


def test_answer_in_flight_at_aclose_finishes_then_closes() -> None:
    """An answer still arriving when the client is closed is read to its end, and its
    connection is then closed rather than pooled."""
    go_on = asyncio.Event()

    async def handler(
        engine: Engine, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await engine.request(index, reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nfirst")
        await writer.drain()
        await go_on.wait()
        writer.write(b"-last")
        await writer.drain()
        await engine.drain_until_closed(index, reader)

    async def go() -> None:
        async with Engine(handler) as engine:
            http = EngineHttp(engine.url)
            response: EngineResponse = await http.send(http.head("GET", "/x", {}))
            await http.aclose()
            go_on.set()
            assert await response.read(100) == b"first-last"
            assert await engine.client_closed(0)

    run(go())
