"""Steps 6-8 for a non-streamed answer.

The engine's chunks are rewritten as for a stream (never sealed: E2EE
requires streaming), folded into one ``chat.completion`` document, signed
and sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson

from ...protocol.assemble import CompletionAssembler
from ...protocol.headers import RECEIPT_ID
from ...protocol.headers import TEE_RESPONSE_HEADERS_RAW as TEE_HEADERS
from ..backends.base import BackendError
from ..errors import internal_error, shutting_down
from ..node import Node
from ..signing import ResponseHasher
from .asgi import Connection, Send, send_error, send_json
from .engine import aclose, backend_http_error
from .rewrite import ChunkWriter, new_completion_id
from .sign import forget, sign
from .validate import Prepared

__all__ = ["respond"]

log = logging.getLogger("enclaved.server")


async def respond(node: Node, prepared: Prepared, send: Send, conn: Connection) -> None:
    """Steps 6-8 for a non-streamed answer: collect, sign, send.

    Cancelled from outside - the server's graceful shutdown period ran out
    (SIGTERM while the engine is slow or hangs) - the client gets the 503
    ``shutting_down`` error document, not a cut connection.
    """
    try:
        await _respond(node, prepared, send, conn)
    except asyncio.CancelledError:
        if not conn.cancelled and not conn.disconnected:
            log.warning("answer ended by the node's shutdown")
            # A client that is gone, or a response already started: nothing to add.
            with contextlib.suppress(Exception):
                await send_error(send, shutting_down(), TEE_HEADERS)
        raise


async def _respond(node: Node, prepared: Prepared, send: Send, conn: Connection) -> None:
    writer = ChunkWriter(new_completion_id(), prepared.model.id, int(node.clock()), None)
    stream: AsyncIterator[dict[str, Any]] | None = None
    collector = CompletionAssembler(only_index=0)
    try:
        stream = prepared.backend.stream(prepared.request)
        async for chunk in stream:
            collector.add_choices(writer.choices(chunk))
    except BackendError as exc:
        prepared.engine_error = exc.code
        log.warning("backend failed (%s): %s", exc.code, exc.message)
        await send_error(send, backend_http_error(exc), TEE_HEADERS)
        return
    except Exception as exc:  # noqa: BLE001 - any failure, reported by type only
        log.error("completion failed: %s", type(exc).__name__)
        await send_error(send, internal_error(), TEE_HEADERS)
        return
    finally:
        if stream is not None:
            await aclose(stream)

    usage = prepared.usage = writer.final_usage()
    body = orjson.dumps(
        {
            "id": writer.id,
            "object": "chat.completion",
            "created": writer.created,
            "model": writer.model,
            "choices": [collector.choice(0)],
            "usage": usage,
        }
    )
    conn.finishing = True
    if not conn.disconnected:
        hasher = ResponseHasher()
        hasher.update(body)
        record = await sign(node, prepared, writer.id, hasher.hexdigest())
        if conn.disconnected:
            await forget(node, record)
    headers = TEE_HEADERS
    if node.aci is not None:
        headers = [*TEE_HEADERS, (RECEIPT_ID.lower().encode(), writer.id.encode())]
    await send_json(send, 200, body, headers)
