"""Server-sent events: the framing the node writes, the parser both sides read with.

Writing (the node, on the path of every token: no per-chunk work beyond a
concatenation): an event is ``data: <one JSON line>`` and a blank line
(:func:`event`); a stream ends with :data:`DONE`; a failure after the first
byte is :func:`error_event` then :data:`DONE` (PROTOCOL.md, "E2EE").
:func:`event_lines` frames text that may hold newlines (one ``data:`` line
each).

Reading: :class:`SSEDecoder` is incremental and sans-IO, bytes in, ``(event
type, data bytes)`` out. The node reads its engine with it
(``server/backends/upstream.py``); the client reads the node with
:class:`SSEParser`, the same decoder plus what a client must not trust a
server with: an event is at most :data:`MAX_EVENT_BYTES`, every byte is
UTF-8, and errors are :class:`~enclaved.errors.APIError` (code
``invalid_stream``).

What this module does NOT do: hash, decrypt or interpret payloads
(``client/_stream.py``, ``server/chat/``).
"""

from __future__ import annotations

import codecs
import dataclasses

import orjson

from ..errors import APIError
from .errors import SERVER_ERROR

__all__ = [
    "DATA",
    "DONE",
    "DONE_DATA",
    "MAX_EVENT_BYTES",
    "SSEDecoder",
    "SSEEvent",
    "SSEParser",
    "error_event",
    "event",
    "event_lines",
]

#: What starts every ``data`` line.
DATA = b"data: "
#: The payload of the last event of a stream.
DONE_DATA = b"[DONE]"
#: The last event of a stream, as written.
DONE = DATA + DONE_DATA + b"\n\n"

#: One event may not exceed this, for a client (a JSON chunk is a few hundred
#: bytes; a server that never ends an event must not make the client buffer forever).
MAX_EVENT_BYTES = 16 * 1024 * 1024


# -- writing --------------------------------------------------------------------------


def event(data: bytes) -> bytes:
    """One event of one ``data`` line: ``data`` must hold no newline (JSON does not)."""
    return DATA + data + b"\n\n"


def event_lines(text: str) -> bytes:
    """One event whose data may hold newlines: one ``data`` line each."""
    return b"".join(DATA + line.encode("utf-8") + b"\n" for line in text.split("\n")) + b"\n"


def error_event(message: str, code: str) -> bytes:
    """The mid-stream failure event (PROTOCOL.md): exactly message, type, code."""
    return event(orjson.dumps({"error": {"message": message, "type": SERVER_ERROR, "code": code}}))


# -- reading --------------------------------------------------------------------------


class SSEDecoder:
    """Incremental Server-Sent Events decoder, bytes in, event data out.

    Follows the event-stream grammar of the HTML standard as far as the
    chat-completions stream needs it: lines end with CRLF, LF or CR; a line starting with
    ``:`` is a comment (keep-alive); ``data:`` lines accumulate, joined by
    ``\\n``; an empty line dispatches the event. The ``event``, ``id`` and
    ``retry`` fields are not used by OpenAI-compatible engines; the event
    type is returned with the data so that ``event: error`` can be detected.
    """

    __slots__ = ("_data", "_event", "_pending")

    def __init__(self) -> None:
        self._pending = b""
        self._data: list[bytes] = []
        self._event = b""

    def feed(self, chunk: bytes) -> list[tuple[str, bytes]]:
        """Consume ``chunk``; return the ``(event type, data)`` of every event it completes."""
        if (
            # The common case, one whole ``data: ...`` event per network chunk
            # (vLLM, SGLang, llama.cpp), taken without splitting lines: what
            # the general path below would return for it, in a third of the time.
            not self._pending
            and not self._data
            and not self._event
            and chunk.startswith(b"data: ")
            and chunk.find(b"\n") == len(chunk) - 2
            and chunk.endswith(b"\n\n")
            and b"\r" not in chunk
        ):
            return [("", chunk[6:-2])]
        buf = self._pending + chunk if self._pending else chunk
        # The last complete line ends at the last CR or LF - except a CR at
        # the very end, which may be the first half of a CRLF split across
        # two network reads: keep that line until the next byte is known.
        end = len(buf) - 1 if buf.endswith(b"\r") else len(buf)
        cut = max(buf.rfind(b"\n", 0, end), buf.rfind(b"\r", 0, end))
        if cut < 0:
            self._pending = buf
            return []
        self._pending = buf[cut + 1 :]
        return self._lines(buf[: cut + 1].splitlines())

    def flush(self, *, partial: bool = False) -> list[tuple[str, bytes]]:
        """End of stream: a final line without terminator still counts, but an
        event not closed by an empty line is discarded (as the standard says),
        unless ``partial``: then it is dispatched too (the client's choice:
        some proxies drop the last newline, and the event is complete if its
        data is)."""
        lines = self._pending.splitlines()
        self._pending = b""
        events = self._lines(lines)
        if partial and self._data:
            events.append((self._event.decode("utf-8", "replace"), b"\n".join(self._data)))
        self._data = []
        self._event = b""
        return events

    @property
    def buffered(self) -> int:
        """How many bytes wait for the end of their event (a bound for readers)."""
        return len(self._pending) + sum(len(d) for d in self._data)

    def _lines(self, lines: list[bytes]) -> list[tuple[str, bytes]]:
        events: list[tuple[str, bytes]] = []
        for line in lines:
            if not line:
                if self._data:
                    data = self._data[0] if len(self._data) == 1 else b"\n".join(self._data)
                    events.append((self._event.decode("utf-8", "replace"), data))
                self._data = []
                self._event = b""
                continue
            if line[0] == 0x3A:  # ":" comment / keep-alive
                continue
            name, colon, value = line.partition(b":")
            if colon and value[:1] == b" ":
                value = value[1:]
            if name == b"data":
                self._data.append(value)
            elif name == b"event":
                self._event = value
            # id, retry and unknown fields: ignored
        return events


@dataclasses.dataclass(frozen=True)
class SSEEvent:
    """One dispatched event: its ``data`` (may be empty) and ``event`` name."""

    data: str
    event: str | None = None


class SSEParser:
    """A client's reading of a node's stream: :class:`SSEDecoder`, bounded, UTF-8.

    Every byte must be UTF-8 (comments too); an event larger than
    :data:`MAX_EVENT_BYTES` is refused; an unterminated final event is still
    dispatched by :meth:`close`. An event with no ``data`` line is not
    dispatched (a client has nothing to do with it).
    """

    __slots__ = ("_decoder", "_utf8")

    def __init__(self) -> None:
        self._decoder = SSEDecoder()
        self._utf8 = codecs.getincrementaldecoder("utf-8")("strict")

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Add bytes; return every event completed by them (possibly none)."""
        self._check_utf8(chunk)
        events = self._decoder.feed(chunk)
        if self._decoder.buffered > MAX_EVENT_BYTES:
            raise APIError(
                "the server sent an event larger than 16 MiB", status=200, code="invalid_stream"
            )
        return [_text_event(name, data) for name, data in events]

    def close(self) -> list[SSEEvent]:
        """End of stream: an unterminated final event is still dispatched.

        (Servers should end every event with a blank line, but some proxies
        drop the last newline; the event is complete if its data is.)
        """
        self._check_utf8(b"", final=True)
        return [_text_event(name, data) for name, data in self._decoder.flush(partial=True)]

    def _check_utf8(self, chunk: bytes, *, final: bool = False) -> None:
        try:
            self._utf8.decode(chunk, final)
        except UnicodeDecodeError:
            raise APIError(
                "the server sent an event that is not UTF-8", status=200, code="invalid_stream"
            ) from None


def _text_event(name: str, data: bytes) -> SSEEvent:
    # Both decode: every byte was checked as UTF-8 on the way in.
    return SSEEvent(data.decode("utf-8"), name or None)
