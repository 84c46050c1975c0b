"""Transport limits: what a connection may cost the node before it is a request.

uvicorn's httptools protocol has no limit on the size of a request line or
of the headers (llhttp hands them over piece by piece and uvicorn joins
them: an 8 MiB header line is accepted and answered 200), no deadline for a
connection's first request or for its headers (a connection that sends
nothing, or one header line a second, is kept for ever), and no cap on
connections (``limit_concurrency`` answers 503 only once a request's headers
have been parsed, and counts in-flight tasks too). The node raises its
open-file limit to the hard one, so those idle connections are what an
anonymous client could exhaust.

Why this layer: a subclass of uvicorn's :class:`HttpToolsProtocol` that
counts the bytes of a request's head and times it, and steps aside once the
head is complete (one attribute test per *received* chunk, nothing per sent
or streamed chunk). The alternatives:

- uvicorn's settings alone (``limit_concurrency``, ``timeout_keep_alive``)
  give neither a header limit nor a header deadline.
- hypercorn has ``h11_max_incomplete_size`` and a read timeout, but parses
  with h11 in pure Python: every request and every streamed chunk would pay
  for it, and its ASGI path is slower than uvicorn + httptools for SSE.
- granian (Rust) has limits, but is a second server with its own process
  model, signal handling and logging, a native wheel in the TCB, and no
  header-deadline setting either.

So the parser (llhttp), the ASGI cycle and the streaming path stay what the
benchmarks measured (``docs/benchmarks.md``); only the head is watched.

What a refusal looks like (``docs/server.md``, "Transport limits"):

- request line over ``max_request_line_bytes``: 400 ``request_line_too_long``;
- head over ``max_header_bytes``: 431 ``request_header_fields_too_large``;
- a connection that sends no byte within ``first_request_timeout_seconds``:
  closed (nothing to answer); a head not complete ``header_timeout_seconds``
  after its first byte: 408 ``request_timeout``;
- a connection beyond ``max_connections``: 503 ``too_many_connections``,
  and a warning in the log (at most one a second).

Each refusal is written, then the node stops sending (FIN) and discards
what still arrives for up to :data:`LINGER_SECONDS` before it closes the
socket: closing at once, with the client's bytes unread, would make the
kernel send a reset, which can destroy the refusal before the client reads
it. Nothing in a refusal or its log line comes from the request.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

__all__ = ["TransportLimits", "limited_http_protocol"]

log = logging.getLogger("enclaved.transport")

#: Seconds a refused connection is drained (its bytes discarded) before it is closed.
LINGER_SECONDS = 2.0


@dataclasses.dataclass(frozen=True, slots=True)
class TransportLimits:
    """Limits on a connection before its request reaches the app (the TOML's ``[transport]``)."""

    #: The request line (``POST /api/v1/chat/completions HTTP/1.1``), at most (400 above).
    max_request_line_bytes: int = 8 * 1024
    #: The request line and headers together, at most (431 above).
    max_header_bytes: int = 64 * 1024
    #: Seconds from accepting a connection to its first byte (closed after).
    first_request_timeout_seconds: float = 10.0
    #: Seconds from the first byte of a request to the end of its headers (408 after).
    header_timeout_seconds: float = 10.0
    #: Open client connections, at most; one more is answered 503 and closed.
    max_connections: int = 1024
    #: Seconds an idle keep-alive connection is kept open after a response
    #: (uvicorn's ``timeout_keep_alive``).
    keep_alive_timeout_seconds: float = 5.0


def _refusal(status: int, reason: str, message: str, code: str) -> bytes:
    body = orjson.dumps(
        {
            "error": {
                "message": message,
                "type": "invalid_request_error",
                "param": None,
                "code": code,
            }
        }
    )
    return (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode("ascii") + body


class _LimitedHttpTools(HttpToolsProtocol):
    """HttpToolsProtocol whose request heads are bounded in size and time."""

    limits: ClassVar[TransportLimits] = TransportLimits()
    _last_refusal_log: ClassVar[float] = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True  # bytes received now belong to a request head
        self._head_bytes = 0  # of the current head, so far
        self._head_ended = False  # its end (a blank line) has been seen
        self._line_done = False  # its request line has ended
        self._tail = b""  # the last bytes of the head so far (a marker split across reads)
        self._deadline: asyncio.TimerHandle | None = None
        self._refused = False

    # -- connection -------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        limits = self.limits
        if len(self.connections) > limits.max_connections:
            now = time.monotonic()
            if now - _LimitedHttpTools._last_refusal_log >= 1.0:
                _LimitedHttpTools._last_refusal_log = now
                log.warning(
                    "connection refused: %d connections open (max_connections = %d)",
                    len(self.connections) - 1,
                    limits.max_connections,
                )
            self._refuse(503, "Service Unavailable", "Too many connections", "too_many_connections")
            return
        self._deadline = self.loop.call_later(
            limits.first_request_timeout_seconds, self._silent_too_long
        )

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_deadline()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head and not self._head_ended and not self._count_head(data):
            return
        super().data_received(data)

    # -- parser callbacks -------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._cancel_deadline()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        # What follows on this connection is the head of the next request.
        self._in_head = True
        self._head_bytes = 0
        self._head_ended = False
        self._line_done = False
        self._tail = b""
        super().on_message_complete()

    # -- the head ----------------------------------------------------------------

    def _count_head(self, data: bytes) -> bool:
        """Count ``data`` against the limits; False once the connection is refused."""
        if self._refused:
            return False  # draining before the close: discarded
        limits = self.limits
        if self._head_bytes == 0 and data:
            # The first byte of a head: from now its headers have a deadline.
            self._cancel_deadline()
            self._deadline = self.loop.call_later(
                limits.header_timeout_seconds, self._head_too_slow
            )
        window = self._tail + data
        start = self._head_bytes - len(self._tail)  # offset of window[0] in the head
        if not self._line_done:
            nl = window.find(b"\n")
            line = start + (nl if nl >= 0 else len(window))
            if line > limits.max_request_line_bytes:
                self._refuse(400, "Bad Request", "Request line too long", "request_line_too_long")
                return False
            self._line_done = nl >= 0
        end = window.find(b"\r\n\r\n")
        if end >= 0:
            end += 4
        else:
            end = window.find(b"\n\n")  # bare LF line ends, which llhttp accepts
            if end >= 0:
                end += 2
        size = start + (end if end >= 0 else len(window))
        if size > limits.max_header_bytes:
            self._refuse(
                431,
                "Request Header Fields Too Large",
                "Request header fields too large",
                "request_header_fields_too_large",
            )
            return False
        self._head_bytes = size
        self._head_ended = end >= 0
        self._tail = window[-3:]
        return True

    def _silent_too_long(self) -> None:
        self._deadline = None
        if self._head_bytes == 0 and not self.transport.is_closing():
            self.transport.close()

    def _head_too_slow(self) -> None:
        self._deadline = None
        if self._in_head and not self.transport.is_closing():
            self._refuse(
                408, "Request Timeout", "Request headers not received in time", "request_timeout"
            )

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _refuse(self, status: int, reason: str, message: str, code: str) -> None:
        self._cancel_deadline()
        transport = self.transport
        if self._refused or transport.is_closing():
            return
        self._refused = True
        self._in_head, self._head_ended = True, False  # what arrives goes to _count_head
        transport.write(_refusal(status, reason, message, code))
        if transport.can_write_eof():
            transport.write_eof()
            self._deadline = self.loop.call_later(LINGER_SECONDS, transport.close)
        else:
            transport.close()


def limited_http_protocol(limits: TransportLimits) -> type[asyncio.Protocol]:
    """uvicorn's ``http=`` protocol class, bounded by ``limits``."""
    return type("LimitedHttpToolsProtocol", (_LimitedHttpTools,), {"limits": limits})
