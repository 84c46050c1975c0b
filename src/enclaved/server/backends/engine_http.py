"""HTTP/1.1 to the inference engine: a lean keep-alive client for one hop.

Everywhere else enclaved speaks HTTP through httpx. Here it does not,
because httpx forces a worse result on the one path where every
microsecond reaches the user: the node's request to the engine sits inside
every time to first token. Measured on the benchmark machine
(``bench/stream.py``, the ``engine_hop`` figures), one 4-token streamed
request to a local engine costs httpx ~3 ms of CPU before the first token
(about 3,300 Python function calls: URL and header models, the auth and
hook machinery, httpcore's pool, anyio, h11's state machine, and ~7 layers
of async generators per body chunk) against ~0.5 ms for a bare socket - more
than the node's whole 2 ms budget. Under load the per-event generator hops
were the largest single item in the node's profile.

So this module keeps only what an engine hop needs, on the parts that are
well kept and fast:

* asyncio's transports (one :class:`asyncio.Protocol` per connection, no
  stream layer) and ``ssl`` for ``https://`` engines (certificates checked
  against ``certifi``'s roots, as httpx does);
* ``httptools`` (llhttp, the parser of Node.js, in C) for the response: the
  status line, headers, chunked transfer coding, keep-alive rules;
* a LIFO pool of idle connections, so that a request normally skips the
  TCP handshake: at most :data:`KEEPALIVE_CONNECTIONS` are kept, each for at
  most :data:`KEEPALIVE_EXPIRY` seconds (engines built on uvicorn, vLLM
  among them, close idle connections after 5 s).

What it does not do, on purpose: ``HEAD`` requests (an answer to one
would be read as if it had a body), HTTP/2, proxies (``HTTP_PROXY`` is ignored:
the engine runs next to the node), redirects, cookies, compression (it asks
for ``identity``; a compressed answer is refused), request bodies streamed
from an iterator.

Failures are :class:`~enclaved.server.backends.base.BackendError` with the
status the node reports: 502 for an unreachable engine or a broken or
malformed answer, 504 for a timeout. A POST on a *reused* connection that
the engine had already closed (it closes idle connections on its own clock)
fails before any byte of an answer; such a request is sent again, once, on a
new connection - the engine never saw it. Messages never contain request or
answer bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
import time
from collections.abc import AsyncGenerator, Mapping
from urllib.parse import urlsplit

import httptools

from .base import BackendError

__all__ = [
    "KEEPALIVE_CONNECTIONS",
    "KEEPALIVE_EXPIRY",
    "EngineHttp",
    "EngineResponse",
    "Timeouts",
]

#: Idle connections kept for reuse. Each one is a file descriptor on both
#: sides; 64 covers the concurrency the benchmarks drive (C = 64).
KEEPALIVE_CONNECTIONS = 64

#: Seconds an idle connection is kept: under the 5 s after which uvicorn
#: (vLLM, SGLang) closes it, so that a reused connection is rarely stale.
KEEPALIVE_EXPIRY = 4.0

#: The status line and headers of an answer, together, at most.
MAX_HEAD_BYTES = 64 * 1024

#: Answer bytes buffered before reading from the engine pauses (the
#: consumer - the node's writer to its client - is slower than the engine).
READ_HIGH_WATER = 256 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds allowed for each step of a request to the engine."""

    #: Opening a connection (TCP and, for ``https://``, TLS).
    connect: float = 10.0
    #: Between two reads of the answer: an engine may be busy with a long
    #: prefill, or queued behind other requests, before its first byte.
    read: float = 300.0
    #: Handing the request body to the kernel (a long prompt, a slow engine).
    write: float = 30.0
    #: From the request sent to the answer's first byte (its status line);
    #: ``None``: ``read``. A chat answer's status waits for the first token.
    first_byte: float | None = None

    @classmethod
    def of(cls, value: Timeouts | float) -> Timeouts:
        """``value`` itself, or one number for all three."""
        if isinstance(value, Timeouts):
            return value
        return cls(connect=float(value), read=float(value), write=float(value))


def _unreachable() -> BackendError:
    return BackendError("upstream engine unreachable", status=502)


def _timed_out() -> BackendError:
    return BackendError("upstream engine timed out", status=504, code="upstream_timeout")


def _broken() -> BackendError:
    # Dropped mid-answer, or an answer that is not valid HTTP/1.1.
    return BackendError("upstream engine connection failed", status=502)


class _Stale(BackendError):
    """A reused connection was closed by the engine before it answered."""

    def __init__(self) -> None:
        super().__init__("upstream engine closed a kept-alive connection", status=502)


class _Connection(asyncio.Protocol):
    """One connection to the engine, and the state of the answer in flight.

    The event loop feeds every received byte straight into the parser; the
    parser's callbacks fill the fields below; the request's task waits on
    :meth:`wait` until they change.
    """

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.lost = False  # the connection is gone (closed by either side)
        self.error: BackendError | None = None  # a malformed answer
        self.idle_since = 0.0  # time.monotonic() of the release to the pool; 0: in use
        self._waiter: asyncio.Future[None] | None = None
        self._write_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._read_paused = False
        self.begin()

    def begin(self) -> None:
        """Reset the per-answer state before a request is sent."""
        self.received = 0  # bytes of this answer so far
        self.head_bytes = 0
        self.status = 0
        self.headers: dict[bytes, bytes] = {}
        self.headers_done = False
        self.until_eof = False  # the body ends when the connection does
        self.body: list[bytes] = []
        self.buffered = 0
        self.complete = False
        self.keep_alive = False
        self.eof = False

    # -- asyncio.Protocol ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.idle_since:
            # Bytes nobody asked for: the connection's framing can no longer
            # be trusted. The pool drops it at the next checkout.
            self.error = _broken()
            self.close()
            return
        self.received += len(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.error = _broken()
            self.close()
        if not self.headers_done and self.received > MAX_HEAD_BYTES:
            # httptools reports a header line only once it ends: an endless
            # one is cut here, not at the read timeout.
            self.error = BackendError("upstream engine sent oversized headers")
            self.close()
        if self.buffered > READ_HIGH_WATER and not self._read_paused and self.transport:
            self.transport.pause_reading()
            self._read_paused = True
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._wake()
        waiter = self._write_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        waiter = self._write_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- httptools callbacks -----------------------------------------------------

    def on_message_begin(self) -> None:
        if self.complete:
            # Bytes after the end of the answer: not part of it, and no
            # request of ours asked for them. The connection is dropped.
            raise BackendError("upstream engine sent more than one answer")

    def on_status(self, status: bytes) -> None:
        self._count_head(len(status))

    def on_header(self, name: bytes, value: bytes) -> None:
        self._count_head(len(name) + len(value) + 4)
        if self.headers_done:
            return  # a trailer of a chunked body: not used
        key = name.lower()
        previous = self.headers.get(key)
        self.headers[key] = value if previous is None else previous + b", " + value

    def on_headers_complete(self) -> None:
        self.status = self.parser.get_status_code()
        if self.status < 200:
            return  # an interim answer (100 Continue): the real one follows
        self.headers_done = True
        chunked = b"chunked" in self.headers.get(b"transfer-encoding", b"").lower()
        self.until_eof = (
            not chunked and b"content-length" not in self.headers and self.status not in (204, 304)
        )

    def on_body(self, body: bytes) -> None:
        self.body.append(body)
        self.buffered += len(body)

    def on_message_complete(self) -> None:
        if self.status < 200:
            self.headers = {}
            self.head_bytes = 0
            return
        self.complete = True
        # Asked here: once the callback returns, llhttp resets its flags.
        self.keep_alive = self.parser.should_keep_alive()

    def _count_head(self, size: int) -> None:
        self.head_bytes += size
        if self.head_bytes > MAX_HEAD_BYTES:
            # Raised inside feed_data: httptools turns it into HttpParserError.
            raise BackendError("upstream engine sent oversized headers")

    # -- for the request's task ---------------------------------------------------

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def wait(self, timeout: float) -> None:
        """Until the next bytes, the end of the connection, or ``timeout``."""
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await _within(self._waiter, timeout)
        finally:
            self._waiter = None

    def take_body(self) -> bytes:
        """Every body byte received and not yet taken, as one piece."""
        body = self.body
        data = body[0] if len(body) == 1 else b"".join(body)
        body.clear()
        self.buffered = 0
        if self._read_paused and self.transport is not None:
            self._read_paused = False
            self.transport.resume_reading()
        return data

    async def write(self, data: bytes, timeout: float) -> None:
        transport = self.transport
        if transport is None or self.lost or transport.is_closing():
            raise _Stale()
        transport.write(data)
        if not self._write_paused:
            return
        self._write_waiter = asyncio.get_running_loop().create_future()
        try:
            await _within(self._write_waiter, timeout)
        finally:
            self._write_waiter = None

    def reusable(self) -> bool:
        return (
            self.complete
            and not self.lost
            and not self.eof
            and self.error is None
            and not self.body
            and self.keep_alive
            and self.transport is not None
            and not self.transport.is_closing()
        )

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def _within(waiter: asyncio.Future[None], timeout: float) -> None:
    """Await ``waiter``; a 504 :class:`BackendError` after ``timeout`` seconds.
    (A timer on the loop, cheaper per read than ``asyncio.timeout``'s task
    cancellation machinery.)"""
    timer = waiter.get_loop().call_later(timeout, _expire, waiter)
    try:
        await waiter
    finally:
        timer.cancel()


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(_timed_out())


class EngineResponse:
    """An answer whose status and headers have arrived; the body follows.

    Read the body with :meth:`pieces` (as it arrives) or :meth:`read` (all
    of it), or drop it with :meth:`aclose`. A body read to its end returns
    the connection to the pool; anything else closes it - which is how an
    engine learns that its client left (vLLM then aborts the generation).
    """

    __slots__ = ("_conn", "_first_timeout", "_pool", "_timeout", "headers", "status")

    def __init__(
        self,
        pool: EngineHttp,
        conn: _Connection,
        timeout: float,
        first_timeout: float | None = None,
    ) -> None:
        self._pool: EngineHttp | None = pool
        self._conn = conn
        self._timeout = timeout
        #: Until the first body byte (an engine that sends its headers, then thinks).
        self._first_timeout = timeout if first_timeout is None else first_timeout
        #: The HTTP status code.
        self.status: int = conn.status
        #: Header names in lower case; repeated headers joined with ``", "``.
        self.headers: Mapping[bytes, bytes] = conn.headers

    @property
    def is_success(self) -> bool:
        return 200 <= self.status < 300

    async def pieces(self) -> AsyncGenerator[bytes, None]:
        """The body as it arrives: each piece is every byte that one socket
        read brought (de-chunked). Raises :class:`BackendError` if the
        connection breaks before the body is complete."""
        conn = self._conn
        timeout = self._first_timeout
        try:
            while True:
                if conn.body:
                    timeout = self._timeout
                    yield conn.take_body()
                    continue
                if conn.complete:
                    break
                if conn.error is not None:
                    raise conn.error
                if conn.eof or conn.lost:
                    if conn.until_eof:
                        break
                    raise _broken()
                await conn.wait(timeout)
        finally:
            await self.aclose()

    async def read(self, limit: int) -> bytes:
        """The whole body; :class:`BackendError` beyond ``limit`` bytes."""
        out: list[bytes] = []
        size = 0
        async with contextlib.aclosing(self.pieces()) as pieces:
            async for piece in pieces:
                size += len(piece)
                if size > limit:
                    raise BackendError("upstream engine sent an oversized answer")
                out.append(piece)
        return b"".join(out)

    async def aclose(self) -> None:
        """Done with this answer: the connection goes back to the pool if the
        body was read to its end, and is closed otherwise. Idempotent."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool._release(self._conn)


class EngineHttp:
    """Keep-alive HTTP/1.1 to one engine (``http://`` or ``https://``).

    >>> engine = EngineHttp("http://127.0.0.1:8000/v1")  # doctest: +SKIP
    >>> head = engine.head("POST", "/chat/completions", {"Accept": "text/event-stream"})  # doctest: +SKIP
    >>> response = await engine.send(head, b'{"model": ...}')  # doctest: +SKIP
    >>> async for piece in response.pieces(): ...  # doctest: +SKIP

    Header blocks are built once with :meth:`head` and reused, since the
    headers of a node's requests to its engine never change.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeouts: Timeouts | float = Timeouts(),
        ssl_context: ssl.SSLContext | None = None,
        keepalive: int = KEEPALIVE_CONNECTIONS,
        keepalive_expiry: float = KEEPALIVE_EXPIRY,
    ) -> None:
        url = urlsplit(base_url)
        if url.username is not None or url.password is not None:
            # Not sent (no Basic auth here), and not repeated: it may be a password.
            raise ValueError(
                "credentials in the engine URL are not used: give the key by api_key_env"
            )
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"not an http:// or https:// URL: {base_url!r}")
        self.base_url = base_url
        self._host = url.hostname
        self._port = url.port or (443 if url.scheme == "https" else 80)
        self._prefix = url.path.rstrip("/")
        default_port = self._port == (443 if url.scheme == "https" else 80)
        host = f"[{self._host}]" if ":" in self._host else self._host
        self._authority = host if default_port else f"{host}:{self._port}"
        self._ssl: ssl.SSLContext | None = None
        if url.scheme == "https":
            self._ssl = ssl_context or _default_ssl_context()
        self.timeouts = Timeouts.of(timeouts)
        self._keepalive = keepalive
        self._expiry = keepalive_expiry
        self._idle: list[_Connection] = []
        #: True after :meth:`aclose`: a closed client sends nothing more.
        self.closed = False

    def __repr__(self) -> str:  # never shows headers (the engine's API key)
        return f"EngineHttp({self.base_url!r})"

    def head(self, method: str, path: str, headers: Mapping[str, str]) -> bytes:
        """The request line and headers for ``method`` on ``base_url + path``,
        without ``Content-Length`` and the blank line (``send`` adds them)."""
        target = f"{self._prefix}{path}"
        if not _is_token(method) or any(c in target for c in " \r\n\0\t"):
            raise ValueError(f"invalid HTTP request line: {method!r} {target!r}")
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self._authority}"]
        for name, value in headers.items():
            if not _is_token(name) or any(c in value for c in "\r\n\0"):
                raise ValueError(f"invalid HTTP header {name!r}")
            lines.append(f"{name}: {value}")
        return ("\r\n".join(lines) + "\r\n").encode("latin-1")

    async def send(self, head: bytes, body: bytes = b"") -> EngineResponse:
        """Send one request; return once the answer's status and headers are in."""
        if self.closed:
            raise BackendError("upstream backend is closed", status=503, code="not_ready")
        message = b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body)
        conn = self._checkout()
        if conn is not None:
            try:
                return await self._exchange(conn, message, reused=True)
            except _Stale:
                pass  # the engine had closed it; it never saw this request
        return await self._exchange(await self._connect(), message, reused=False)

    async def aclose(self) -> None:
        """Close the idle connections; connections in use close when their
        answers end."""
        self.closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    # -- internals -----------------------------------------------------------------

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self.timeouts.connect):
                _, conn = await loop.create_connection(
                    _Connection,
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._host if self._ssl else None,
                )
        except TimeoutError as exc:
            raise _timed_out() from exc
        except (OSError, ssl.SSLError) as exc:
            raise _unreachable() from exc
        return conn

    async def _exchange(self, conn: _Connection, message: bytes, *, reused: bool) -> EngineResponse:
        conn.begin()
        first_byte = (
            self.timeouts.read if self.timeouts.first_byte is None else self.timeouts.first_byte
        )
        try:
            await conn.write(message, self.timeouts.write)
            while not conn.headers_done:
                if conn.error is not None:
                    raise conn.error
                if conn.eof or conn.lost:
                    raise _Stale() if reused and not conn.received else _broken()
                await conn.wait(first_byte)
        except BaseException:
            conn.close()
            raise
        return EngineResponse(self, conn, self.timeouts.read, first_byte)

    def _checkout(self) -> _Connection | None:
        idle = self._idle
        if not idle:
            return None
        oldest = time.monotonic() - self._expiry
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to be stale
            if conn.idle_since > oldest and not conn.lost and conn.error is None and not conn.eof:
                conn.idle_since = 0.0
                return conn
            conn.close()
        return None

    def _release(self, conn: _Connection) -> None:
        if self.closed or not conn.reusable():
            conn.close()
            return
        if len(self._idle) >= self._keepalive:
            self._idle.pop(0).close()  # the oldest goes
        conn.idle_since = time.monotonic()
        self._idle.append(conn)


def _is_token(name: str) -> bool:
    return bool(name) and all(c.isascii() and (c.isalnum() or c in "!#$%&'*+-.^_`|~") for c in name)


_default_context: ssl.SSLContext | None = None


def _default_ssl_context() -> ssl.SSLContext:
    """Certificates checked against certifi's roots (httpx's default), built once."""
    global _default_context
    if _default_context is None:
        import certifi

        _default_context = ssl.create_default_context(cafile=certifi.where())
    return _default_context
