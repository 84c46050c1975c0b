"""Server-sent events, incrementally: bytes in, ``data`` payloads out.

Sans-IO: :class:`SSEParser` never reads a socket. The transport feeds it
whatever chunks the network delivers (an event may be split across chunks,
or several events may share one) and gets back the complete events so far.

Only what the chat-completions stream uses is modelled: ``data:`` lines
(joined with ``\\n`` when an event has several) and the ``event:`` name.
Comment lines (``: keep-alive``), ``id:`` and ``retry:`` are ignored.
Lines may end in ``\\n``, ``\\r\\n`` or ``\\r`` (the SSE specification
allows all three).

What this module does NOT do: hash, decrypt or interpret payloads - that
is :mod:`._stream`'s job. It keeps the raw bytes untouched for that.
"""

from __future__ import annotations

import dataclasses
import re

from ..errors import APIError

#: One event may not exceed this (a JSON chunk is a few hundred bytes; a
#: server that never ends an event must not make the client buffer forever).
MAX_EVENT_BYTES = 16 * 1024 * 1024

_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r|\r\n\n|\n\r\n")
_LINE_END = re.compile(r"\r\n|\n|\r")


@dataclasses.dataclass(frozen=True)
class SSEEvent:
    """One dispatched event: its ``data`` (may be empty) and ``event`` name."""

    data: str
    event: str | None = None


class SSEParser:
    """Splits an SSE byte stream into events."""

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Add bytes; return every event completed by them (possibly none)."""
        self._buffer += chunk
        events: list[SSEEvent] = []
        while True:
            match = _EVENT_END.search(self._buffer)
            if match is None:
                break
            block, self._buffer = self._buffer[: match.start()], self._buffer[match.end() :]
            event = _parse_block(block)
            if event is not None:
                events.append(event)
        if len(self._buffer) > MAX_EVENT_BYTES:
            raise APIError(
                "the server sent an event larger than 16 MiB", status=200, code="invalid_stream"
            )
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: an unterminated final event is still dispatched.

        (Servers should end every event with a blank line, but some proxies
        drop the last newline; the event is complete if its data is.)
        """
        block, self._buffer = self._buffer, b""
        if not block.strip():
            return []
        event = _parse_block(block)
        return [] if event is None else [event]


def _parse_block(block: bytes) -> SSEEvent | None:
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        raise APIError(
            "the server sent an event that is not UTF-8", status=200, code="invalid_stream"
        ) from None
    data: list[str] = []
    name: str | None = None
    for line in _LINE_END.split(text):
        if not line or line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            name = value
    if not data and name is None:
        return None
    return SSEEvent("\n".join(data), name)


__all__ = ["MAX_EVENT_BYTES", "SSEEvent", "SSEParser"]
