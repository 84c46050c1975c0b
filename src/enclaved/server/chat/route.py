"""``POST /chat/completions``: the route, a composition of the pipeline's steps.

1. API key (when configured).
2. The body, at most ``max_request_bytes`` (413 above it), within
   ``request_body_timeout_seconds`` (408 after, connection closed): these
   exact bytes are what the signature's request hash covers.
3-5. :func:`.validate.prepare` (inline, or on a worker thread for a body
   over ``PREPARE_INLINE_BYTES``).
6-8. :func:`.stream.respond` or :func:`.complete.respond`, in this task,
   cancelled by a watcher when the client leaves mid-generation.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from starlette.datastructures import Headers

from ...errors import NetworkError
from ..aci import api_key_digest
from ..errors import HTTPError
from ..node import Node
from ..ratelimit import RateLimiter, spend_later
from . import complete, stream
from .asgi import Connection, Message, Receive, Scope, Send, read_body, send_error
from .validate import PREPARE_INLINE_BYTES, Prepared, prepare

__all__ = ["ChatCompletions"]

log = logging.getLogger("enclaved.server")


async def admit(limiter: RateLimiter, caller: str) -> dict[str, str]:
    """The caller's rate-limit headers, or a 429. Counters that cannot be
    reached (Redis down) admit the request, with a warning: the limits guard
    the node's capacity, and an outage of their store must not stop the fleet."""
    try:
        return await asyncio.wait_for(limiter.admit(caller), 5.0)
    except (NetworkError, TimeoutError) as exc:
        log.warning("rate limits unavailable, request admitted: %s", type(exc).__name__)
        return {}


def with_headers(send: Send, extra: dict[str, str]) -> Send:
    """``send`` with ``extra`` added to the response's headers."""
    if not extra:
        return send
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in extra.items()]

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *raw]}
        await send(message)

    return sending


class ChatCompletions:
    """The ASGI endpoint. One instance per node."""

    def __init__(self, node: Node) -> None:
        self.node = node

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.node.metrics is None:
            await self._serve(scope, receive, send, None)
            return
        # Metrics: the status and the first body byte, seen on the way out.
        started = time.monotonic()
        seen: dict[str, Any] = {"status": 500, "first": None}

        async def observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                seen["status"] = message["status"]
            elif seen["first"] is None and message.get("body"):
                seen["first"] = time.monotonic()
            await send(message)

        holder: list[Prepared] = []
        try:
            await self._serve(scope, receive, observed, holder)
        finally:
            prepared = holder[0] if holder else None
            first = seen["first"]
            self.node.metrics.chat(
                model=prepared.model.id if prepared else None,
                e2ee=bool(prepared and prepared.e2ee),
                status=seen["status"],
                ttft=None if first is None else first - started,
                duration=time.monotonic() - started,
                usage=prepared.usage if prepared else None,
                engine_error=prepared.engine_error if prepared else None,
            )

    async def _serve(
        self, scope: Scope, receive: Receive, send: Send, holder: list[Prepared] | None
    ) -> None:
        headers = Headers(scope=scope)
        try:
            # 1. Authenticate before reading anything else; then the caller's
            # rate limits (their headers go out with the answer).
            caller = self.node.api_keys.check(headers.get("authorization"))
            limiter = self.node.rate_limiter
            if limiter is not None:
                send = with_headers(send, await admit(limiter, caller))
            # 2. The body, exactly as received, in bounded time: a client that
            # trickles its body must not hold a connection and a task forever.
            deadline = self.node.config.request_body_timeout_seconds
            try:
                async with asyncio.timeout(deadline):
                    body = await read_body(receive, self.node.config.max_request_bytes)
            except TimeoutError:
                raise HTTPError(
                    408,
                    f"Request body not received within {deadline} seconds",
                    code="request_timeout",
                    headers={"Connection": "close"},
                ) from None
            if body is None:
                return
            if len(body) <= PREPARE_INLINE_BYTES:
                prepared = prepare(self.node, headers, body)
            else:
                # Each envelope costs an ECDH (~0.1 ms): a large request
                # would freeze every other stream of the node while it is
                # parsed and decrypted. ``prepare`` is pure, so a worker
                # thread may run it.
                prepared = await asyncio.to_thread(prepare, self.node, headers, body)
        except HTTPError as exc:
            await send_error(send, exc)
            return
        prepared.endpoint = scope["path"]
        if self.node.api_keys.enabled:
            prepared.api_key_sha256 = api_key_digest(headers.get("authorization"))
        if holder is not None:
            holder.append(prepared)

        # The completion runs in this task (a task of its own would cost the
        # first token a turn of the event loop); a watcher task cancels it
        # when the client leaves mid-generation, which stops the engine now.
        task = asyncio.current_task()
        assert task is not None
        conn = Connection(receive, task)
        run = self._stream if prepared.stream else self._complete
        watcher = asyncio.ensure_future(conn.watch())
        try:
            await run(prepared, send, conn)
            if limiter is not None:
                await spend_later(limiter, caller, prepared.usage)
        except asyncio.CancelledError:
            if not conn.cancelled or task.cancelling() > 1:
                raise  # cancelled from outside (server shutdown)
        finally:
            watcher.cancel()
            if conn.cancelled:
                task.uncancel()  # the watcher's request, handled

    # -- the answer -------------------------------------------------------------------

    async def _stream(self, prepared: Prepared, send: Send, conn: Connection) -> None:
        await stream.respond(self.node, prepared, send, conn)

    async def _complete(self, prepared: Prepared, send: Send, conn: Connection) -> None:
        await complete.respond(self.node, prepared, send, conn)
