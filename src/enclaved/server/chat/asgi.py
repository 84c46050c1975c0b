"""ASGI plumbing of the chat route: the body in, JSON answers out, the client watched.

Nothing here knows about chat: :func:`read_body` reads the request body
within a size limit, :func:`send_json` / :func:`send_error` answer a whole
JSON document, and :class:`Connection` notices when the client leaves.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from ..errors import HTTPError

__all__ = [
    "Connection",
    "Message",
    "Receive",
    "Scope",
    "Send",
    "read_body",
    "send_error",
    "send_json",
]

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Connection:
    """Watches the client after its body was read. ``finishing`` protects the
    final sign-and-store step from cancellation (its outcome is decided by
    checking ``disconnected`` instead)."""

    __slots__ = ("_receive", "_task", "cancelled", "disconnected", "finishing")

    def __init__(self, receive: Receive, task: asyncio.Task[Any]) -> None:
        self._receive = receive
        self._task = task
        self.disconnected = False
        self.finishing = False
        #: Whether ``watch`` cancelled the request's task.
        self.cancelled = False

    async def watch(self) -> None:
        """Until the client leaves; then stop the request's task, unless it
        is signing and storing (``finishing``) or has already returned."""
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                self.disconnected = True
                if not self.finishing and not self._task.done():
                    self.cancelled = True
                    self._task.cancel()
                return


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body as received; ``None`` if the client left. 413 above ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise HTTPError(
                413, f"Request body is larger than {limit} bytes", code="request_too_large"
            )
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def send_json(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *(headers or ()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def send_error(
    send: Send, error: HTTPError, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    headers = [(k.lower().encode(), v.encode()) for k, v in error.headers.items()]
    await send_json(send, error.status, error.body(), headers + (extra or []))
