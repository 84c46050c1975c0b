"""Steps 6-8 for a streamed answer: engine -> rewrite + seal -> SSE -> sign.

The status line carries, under E2EE with one key per response, the node's
signature binding that key to the request (:func:`~.rewrite.binding_headers`).
Every backend chunk is rebuilt by :class:`~.rewrite.ChunkWriter`, serialized
once, hashed and written. Up to the first token each chunk is written the
moment it arrives; after it, the chunks that arrived while the previous
write was under way go out with one write, and runs of plain text pieces
among them are merged into one chunk (one envelope): see :mod:`.batching`.
Then one usage chunk, then ``data: [DONE]``. A failure after the first byte
becomes an SSE error event followed by ``[DONE]``, and no signature. If the
client is still connected when the stream is complete, the signature is
stored *before* ``[DONE]`` is written (:mod:`.sign`), so a client that has
read ``[DONE]`` can fetch it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from ...errors import Error
from ...protocol.headers import RECEIPT_ID, TEE_RESPONSE_HEADERS_RAW

RECEIPT_ID_RAW = RECEIPT_ID.lower().encode()
from ...protocol.sse import DONE, error_event
from ..backends.base import BackendError
from ..errors import SHUTTING_DOWN_MESSAGE, internal_error, shutting_down
from ..node import Node
from ..signing import ResponseHasher
from .asgi import Connection, Send, send_error
from .batching import ChunkPump
from .engine import aclose, backend_http_error, first_chunk
from .rewrite import (
    ChunkWriter,
    binding_headers,
    carries_text,
    new_completion_id,
    response_sealer,
    role_only,
)
from .sign import forget, sign
from .validate import Prepared

__all__ = [
    "BATCH_MAX_CHUNKS",
    "DONE",
    "SSE_HEADERS",
    "YIELD_EVERY_CHUNKS",
    "error_event",
    "respond",
]

log = logging.getLogger("enclaved.server")

#: Response headers on every answer about a TEE model (all enclaved models are).
TEE_HEADERS = TEE_RESPONSE_HEADERS_RAW
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
    *TEE_HEADERS,
]

#: The stream loop hands the event loop a turn after this many chunks (see
#: ``_Stream.first_tokens``): a bare ``await asyncio.sleep(0)``,
#: a few microseconds against the ~100 us each chunk costs.
YIELD_EVERY_CHUNKS = 8

#: The most engine chunks that wait to be written (``batching.ChunkPump``):
#: the bound on one batch, and how far the server reads ahead of a slow
#: client before it stops reading the engine.
BATCH_MAX_CHUNKS = 64


class _ClientLeft(Error):
    """The client left mid-stream: nothing was delivered, so nothing is signed."""


async def respond(node: Node, prepared: Prepared, send: Send, conn: Connection) -> None:
    """Steps 6-8 for ``stream: true``: see the module docstring."""
    stream: AsyncIterator[dict[str, Any]] | None = None
    out: _Stream | None = None
    try:
        # 6. Failures before the first byte are real HTTP errors (a
        # backend may raise when called, or at its first chunk).
        try:
            stream = prepared.backend.stream(prepared.request)
            chunk = await first_chunk(stream)
        except BackendError as exc:
            prepared.engine_error = exc.code
            log.warning("backend failed before streaming (%s): %s", exc.code, exc.message)
            await send_error(send, backend_http_error(exc), TEE_HEADERS)
            return
        except Exception as exc:  # noqa: BLE001 - any failure, reported by type only
            log.error("backend failed before streaming: %s", type(exc).__name__)
            await send_error(send, internal_error(), TEE_HEADERS)
            return

        out = _Stream(node, prepared, send, conn, stream)
        # 7. Every byte written goes through the hasher first, in the
        # order written: batching changes how many ``send`` calls carry
        # the bytes, never which bytes.
        try:
            more = await out.first_tokens(chunk)
            tail = await out.batches() if more else b""
        except _ClientLeft:
            return  # nothing was delivered: no signature
        except Exception as exc:  # noqa: BLE001 - any failure, reported by type only
            await out.fail(exc)
            return
        await out.finish(tail)
    except asyncio.CancelledError:
        # Cancelled from outside - the server's graceful shutdown period ran
        # out (SIGTERM while the engine is slow or hangs) - not by the
        # client's leaving: the client gets the documented end, not a cut.
        if not conn.cancelled and not conn.disconnected:
            await _shutting_down(send, out)
        raise
    finally:
        if out is not None and out.pump is not None:
            await out.pump.aclose()  # it owns the stream now, and closes it
        elif stream is not None:
            await aclose(stream)


async def _shutting_down(send: Send, out: _Stream | None) -> None:
    """503 ``shutting_down`` before the first byte; after it, that error
    event, then ``[DONE]``. No signature: the completion is not complete."""
    log.warning("stream ended by the node's shutdown")
    with contextlib.suppress(Exception):  # a client that is gone, a closed transport
        if out is None or not out.started:
            await send_error(send, shutting_down(), TEE_HEADERS)
        else:
            await out.write(
                out.held + error_event(SHUTTING_DOWN_MESSAGE, "shutting_down") + DONE, more=False
            )


class _Stream:
    """The SSE body of one completion, from its first chunk to ``[DONE]``."""

    __slots__ = (
        "conn",
        "hasher",
        "headers",
        "held",
        "node",
        "prepared",
        "pump",
        "send",
        "started",
        "stream",
        "writer",
    )

    def __init__(
        self,
        node: Node,
        prepared: Prepared,
        send: Send,
        conn: Connection,
        stream: AsyncIterator[dict[str, Any]],
    ) -> None:
        self.node = node
        self.prepared = prepared
        self.send = send
        self.conn = conn
        self.stream = stream
        sealer = response_sealer(node, prepared)
        self.writer = ChunkWriter(new_completion_id(), prepared.model.id, int(node.clock()), sealer)
        self.headers = SSE_HEADERS + binding_headers(node, prepared, sealer)
        if node.aci is not None:
            # The receipt's id is the completion's: known before the first byte.
            self.headers = [*self.headers, (RECEIPT_ID_RAW, self.writer.id.encode())]
        self.hasher = ResponseHasher()
        self.started = False
        #: Role chunks not written yet (see :meth:`first_tokens`).
        self.held = b""
        #: Reads the engine once the first token is out (see :meth:`batches`).
        self.pump: ChunkPump | None = None

    async def write(self, data: bytes, *, more: bool = True) -> None:
        # The status line goes out with the first bytes of the body:
        # the client is woken once for both (each wake-up of an idle
        # process costs ~0.1 ms on a virtual machine).
        if not self.started:
            self.started = True
            await self.send({"type": "http.response.start", "status": 200, "headers": self.headers})
        await self.send({"type": "http.response.body", "body": data, "more_body": more})

    async def first_tokens(self, chunk: dict[str, Any] | None) -> bool:
        """7a. Up to and including the first chunk that carries text, each
        chunk is written the moment it is read, on its own: the first token
        never waits for company. Returns whether the stream goes on (it
        stopped at the first token rather than at its end).

        An engine whose output is already buffered hands over chunk after
        chunk without this loop ever waiting, and the event loop only runs
        when it waits: a client that left would go unnoticed and no other
        stream on the node would be served. So the loop yields every
        YIELD_EVERY_CHUNKS chunks and stops once the client is gone (this
        matters for a stream with no text, e.g. tool calls only; 7b always
        yields).

        Chunks that only announce the role (engines send one before the
        first token) are held and written with the next one, so that the
        first token costs the client one wake-up, not two.
        """
        writer, update, write, conn, stream = (
            self.writer,
            self.hasher.update,
            self.write,
            self.conn,
            self.stream,
        )
        held = self.held
        try:
            since_yield = 0
            while chunk is not None:
                choices = writer.choices(chunk)
                if choices:
                    held += writer.event(choices)
                    if not role_only(choices):
                        data, held = held, b""
                        update(data)
                        await write(data)
                        if carries_text(choices):
                            break
                since_yield += 1
                if since_yield == YIELD_EVERY_CHUNKS:
                    since_yield = 0
                    await asyncio.sleep(0)
                    if conn.disconnected:
                        raise _ClientLeft
                chunk = await anext(stream, None)
        finally:
            self.held = held
        return chunk is not None

    async def batches(self) -> bytes:
        """7b. The rest in batches: a pump reads the engine in a task of
        its own, and every chunk that arrived while the previous batch was
        being written goes out with one ``send``, runs of text pieces merged
        into one chunk (``ChunkWriter.batch``). Nothing waits for a batch to
        fill: one ready chunk is a batch. Returns the last batch, unwritten
        (it goes out with the usage chunk)."""
        self.pump = pump = ChunkPump(self.stream, limit=BATCH_MAX_CHUNKS)
        writer, update, write, conn = self.writer, self.hasher.update, self.write, self.conn
        while True:
            batch, finished = await pump.take()
            if conn.disconnected:
                raise _ClientLeft
            data = writer.batch(batch)
            if finished and pump.error is None:
                return data
            if data:
                update(data)
                await write(data)
            if finished:
                assert pump.error is not None
                raise pump.error

    async def fail(self, exc: Exception) -> None:
        """A failure after the first byte: an error event, then ``[DONE]``;
        no signature for a failed completion."""
        if isinstance(exc, BackendError):
            self.prepared.engine_error = exc.code
            log.warning("backend failed mid-stream (%s): %s", exc.code, exc.message)
            event = error_event(exc.message, exc.code)
        else:
            log.error("completion failed mid-stream: %s", type(exc).__name__)
            event = error_event("Internal server error", "internal_error")
        await self.write(self.held + event + DONE, more=False)

    async def finish(self, tail: bytes) -> None:
        """The last batch and the usage chunk; 8. sign over everything
        including ``[DONE]``, store, then write ``[DONE]``."""
        # ``held``: role chunks of a stream that ended before anything else.
        data = self.held + tail + self.writer.usage_event()
        self.prepared.usage = self.writer.final_usage()  # for the metrics and rate limits
        update = self.hasher.update
        update(data)
        await self.write(data)

        conn = self.conn
        conn.finishing = True
        update(DONE)
        if not conn.disconnected:
            record = await sign(self.node, self.prepared, self.writer.id, self.hasher.hexdigest())
            if conn.disconnected:  # left while we stored: the answer was not delivered
                await forget(self.node, record)
        await self.write(DONE, more=False)
