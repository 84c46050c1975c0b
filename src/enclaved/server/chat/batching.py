"""Streaming in batches: what the engine has already sent goes out together.

A fast engine (or a slow client) leaves several chunks waiting by the time
the server is ready to write again. Writing them one by one costs a pass
through the ASGI server per chunk (and under E2EE an envelope per token); a
batch costs one. Two pieces, both pure bookkeeping that never waits for
anything that has not arrived:

- :class:`ChunkPump` reads a backend's stream in a task of its own and
  hands over, at each :meth:`ChunkPump.take`, every chunk read since the
  previous one. The writer only ever waits when *nothing* is ready, so a
  batch is whatever arrived while the last one was being written: one chunk
  when the engine is slower than the client, many when it is faster.
- :func:`text_piece` says whether a chunk is nothing but one piece of text
  for choice 0 (no role, finish reason, usage, logprobs or tool calls), the
  only kind of chunk that may be merged with its neighbours: consecutive
  pieces of the same kind concatenate to the same text, which is all a
  client makes of them. The server layer (``chat.rewrite.ChunkWriter``) does
  the merging, so that it is the same for every backend.

Not here: the first token. The server writes everything up to and including
the first text chunk inline, one chunk at a time, before it starts a pump,
so the time to first token is never traded for batching.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from ...errors import Error

__all__ = ["TEXT_FIELDS", "ChunkPump", "StreamInterrupted", "text_piece"]

Chunk = dict[str, Any]

#: The delta fields whose pieces may be merged, and the name each is written
#: under (vLLM's newer ``reasoning`` is written as ``reasoning_content``).
TEXT_FIELDS = {
    "content": "content",
    "reasoning_content": "reasoning_content",
    "reasoning": "reasoning_content",
}


def text_piece(chunk: Chunk) -> tuple[str, str] | None:
    """``(field, text)`` when ``chunk`` is one non-empty piece of text for
    choice 0 and nothing else; ``None`` otherwise.

    ``field`` is the name the text is written under (``content`` or
    ``reasoning_content``). Fields set to ``None`` count as absent; fields
    the server drops anyway (``id``, ``stop_reason``, ...) are not looked at.
    A chunk with ``usage`` (even alongside text), a role, a finish reason,
    logprobs, tool calls or a second text field is never merged.
    """
    if chunk.get("usage") is not None:
        return None
    choices = chunk.get("choices")
    if not isinstance(choices, list) or len(choices) != 1:
        return None
    choice = choices[0]
    if (
        not isinstance(choice, dict)
        or choice.get("index", 0) != 0
        or choice.get("finish_reason") is not None
        or choice.get("logprobs") is not None
    ):
        return None
    delta = choice.get("delta")
    if not isinstance(delta, dict):
        return None
    found: tuple[str, str] | None = None
    for key, value in delta.items():
        if value is None:
            continue
        field = TEXT_FIELDS.get(key)
        if field is None or found is not None or not isinstance(value, str) or not value:
            return None
        found = (field, value)
    return found


class ChunkPump:
    """Reads ``stream`` in its own task; :meth:`take` returns what has arrived.

    At most ``limit`` chunks wait at once: then the reading task pauses until
    the writer takes them (backpressure towards the engine, and a bound on a
    batch). The stream's exception, if it raises one, is kept in
    :attr:`error` and reported once every chunk before it has been taken; a
    stream cancelled from inside ends with :class:`StreamInterrupted` there,
    never as if it had ended.

    Once a pump is made it owns the stream: :meth:`aclose` it instead of the
    stream (an async generator cannot be closed while another task is
    inside it; the pump stops its reading task first).
    """

    __slots__ = ("_loop", "_ready", "_room", "_stream", "_taker", "_task", "done", "error", "limit")

    def __init__(self, stream: AsyncIterator[Chunk], *, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._loop = asyncio.get_running_loop()
        self._stream = stream
        self.limit = limit
        self._ready: list[Chunk] = []
        #: The writer waiting for a chunk; the reader waiting for room.
        self._taker: asyncio.Future[None] | None = None
        self._room: asyncio.Future[None] | None = None
        #: The stream has ended (normally, or with :attr:`error`).
        self.done = False
        self.error: Exception | None = None
        self._task = self._loop.create_task(self._run())

    async def _run(self) -> None:
        try:
            async for chunk in self._stream:
                self._ready.append(chunk)
                _wake(self._taker)
                if len(self._ready) >= self.limit:
                    room = self._room = self._loop.create_future()
                    await room
        except Exception as exc:  # noqa: BLE001 - handed to the writer, which reports it
            self.error = exc
        except BaseException:
            # Cancelled - by aclose, or from inside the stream. Either way the
            # stream did not end: nothing may take this for the end of the
            # answer (which the server would then sign).
            self.error = StreamInterrupted("the engine stream was interrupted")
            raise
        finally:
            self.done = True
            _wake(self._taker)

    async def take(self) -> tuple[list[Chunk], bool]:
        """Every chunk read since the last call, and whether the stream is over.

        Waits only while nothing has arrived. Once it returns ``True`` (with
        the last chunks, possibly none), there is nothing more to take; check
        :attr:`error` then.
        """
        while not self._ready and not self.done:
            taker = self._taker = self._loop.create_future()
            try:
                await taker
            finally:
                self._taker = None
        batch = self._ready
        self._ready = []
        _wake(self._room)
        self._room = None
        return batch, self.done

    async def aclose(self) -> None:
        """Stop reading, then close the stream (``aclose``, errors ignored).

        The reading task may be inside the stream (awaiting the engine): it
        is cancelled and waited for first, since an async generator cannot be
        closed while another task runs it. That closing runs in a task of
        its own, so that it completes even if the caller is cancelled while
        waiting for it (the server cancels a stream whose client left, and
        may do so while the stream is already cleaning up).
        """
        if self._task.done():  # the stream ended: closing it does not wait
            await _aclose(self._stream)
            return
        self._task.cancel()
        closing = self._loop.create_task(self._close())
        _closing.add(closing)
        closing.add_done_callback(_closing.discard)
        await asyncio.shield(closing)

    async def _close(self) -> None:
        await asyncio.wait((self._task,))
        await _aclose(self._stream)


#: Closing pumps, referenced until they are closed (the event loop keeps
#: only weak references to tasks).
_closing: set[asyncio.Task[None]] = set()


async def _aclose(stream: AsyncIterator[Chunk]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()


class StreamInterrupted(Error):
    """The pump's stream stopped without ending (cancelled).

    Reported to the client as a mid-stream error; the answer is never signed.
    """


def _wake(future: asyncio.Future[None] | None) -> None:
    if future is not None and not future.done():
        future.set_result(None)
