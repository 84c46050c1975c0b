"""The TDX event log: parse it, replay it into RTMR0-3, read the runtime facts.

A TD's four runtime measurement registers (RTMR0-3) can only be *extended*:
``rtmr = SHA-384(rtmr || digest)``, starting from 48 zero bytes. The event log
is the list of everything that was extended, in order. It is unauthenticated
on its own; replaying it and getting exactly the RTMRs of a signed quote is
what makes each entry's *digest* trustworthy.

An entry's *digest* being trustworthy does not make its *payload*
trustworthy: the payload is whatever the server says was hashed. For the
runtime events (RTMR3, extended by the dstack guest agent after boot) we
recompute every digest from the event name and payload ourselves::

    digest = SHA-384( event_type (4 bytes, little-endian) || b":" || name || b":" || payload )

(checked against the production captures in ``shared/testdata/captures``:
all ten RTMR3 events of both captures hash this way, event type
``0x08000001``). Only after both checks pass are the runtime facts
(``compose-hash``, ``os-image-hash``, ``app-id``, ``instance-id``,
``key-provider``...) trusted.

What this module does NOT check:

- the *payloads* of boot events (RTMR0-2: firmware, kernel, initrd, command
  line). They are replayed as opaque digests; whether those digests are
  the ones you expect is a matter of allowlisting RTMR0-2 in the policy.
- that the event log is *complete* beyond what replay proves: replay proves
  that the listed digests, in order, produce the quoted registers.
- anything about the quote itself (its signature is :mod:`.tdx`'s job). A
  replay match against an unauthenticated quote proves nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import EvidenceParseError
from .checks import Check, CheckId

#: Size of a SHA-384 digest and of an RTMR.
RTMR_SIZE = 48
#: The event type the dstack guest agent uses for runtime (RTMR3) events.
DSTACK_RUNTIME_EVENT_TYPE = 0x08000001
#: The register runtime events are extended into.
RUNTIME_IMR = 3


@dataclasses.dataclass(frozen=True)
class EventLogEntry:
    """One event-log entry, as served: ``{imr, event_type, digest, event, event_payload}``."""

    #: Which RTMR (0-3) this event was extended into.
    imr: int
    #: TCG event type (boot events) or ``0x08000001`` (dstack runtime events).
    event_type: int
    #: The 48-byte SHA-384 digest that was extended.
    digest: bytes
    #: The event name (runtime events: ``"compose-hash"`` ...; boot events: ``""``).
    event: str
    #: The bytes that were measured (runtime events) or the TCG event data (boot).
    event_payload: bytes


def parse_event_log(obj: Any) -> tuple[EventLogEntry, ...]:
    """Parse an event log given as a list of entries or as a JSON string of one.

    Raises :class:`~enclaved.errors.EvidenceParseError` when it is not a
    list of well-formed entries. Says nothing about whether the log is true.
    """
    if isinstance(obj, (str, bytes)):
        try:
            obj = json.loads(obj)
        except (ValueError, UnicodeDecodeError) as exc:
            raise EvidenceParseError("event_log: not valid JSON") from exc
    if not isinstance(obj, list):
        raise EvidenceParseError(f"event_log: expected a list, got {type(obj).__name__}")
    return tuple(_parse_entry(i, e) for i, e in enumerate(obj))


def _parse_entry(index: int, raw: Any) -> EventLogEntry:
    where = f"event_log[{index}]"
    if not isinstance(raw, Mapping):
        raise EvidenceParseError(f"{where}: expected an object")
    imr = raw.get("imr")
    event_type = raw.get("event_type")
    # bool is an int subclass; a JSON true is not a register number.
    if not isinstance(imr, int) or isinstance(imr, bool) or not 0 <= imr <= 3:
        raise EvidenceParseError(f"{where}.imr: expected an integer 0-3, got {imr!r}")
    if (
        not isinstance(event_type, int)
        or isinstance(event_type, bool)
        or not 0 <= event_type <= 0xFFFFFFFF
    ):
        raise EvidenceParseError(f"{where}.event_type: expected a 32-bit unsigned integer")
    digest = _hex_field(raw.get("digest"), f"{where}.digest")
    if len(digest) != RTMR_SIZE:
        raise EvidenceParseError(f"{where}.digest: expected 48 bytes, got {len(digest)}")
    event = raw.get("event", "")
    if event is None:
        event = ""
    if not isinstance(event, str):
        raise EvidenceParseError(f"{where}.event: expected a string")
    payload_raw = raw.get("event_payload", "")
    payload = _hex_field("" if payload_raw is None else payload_raw, f"{where}.event_payload")
    return EventLogEntry(imr, event_type, digest, event, payload)


def _hex_field(value: Any, where: str) -> bytes:
    if not isinstance(value, str):
        raise EvidenceParseError(f"{where}: expected a hex string")
    try:
        return bytes.fromhex(value)
    except ValueError as exc:
        raise EvidenceParseError(f"{where}: not valid hex") from exc


# --- replay ---------------------------------------------------------------


def extend(register: bytes, digest: bytes) -> bytes:
    """One RTMR extension: ``SHA-384(register || digest)``."""
    return hashlib.sha384(register + digest).digest()


def replay(entries: Sequence[EventLogEntry]) -> tuple[bytes, bytes, bytes, bytes]:
    """RTMR0-3 as they would be after extending every entry's digest, in order."""
    regs = [bytes(RTMR_SIZE)] * 4
    for e in entries:
        regs[e.imr] = extend(regs[e.imr], e.digest)
    return regs[0], regs[1], regs[2], regs[3]


def runtime_event_digest(event_type: int, event: str, payload: bytes) -> bytes:
    """The digest dstack extends into RTMR3 for a named runtime event."""
    return hashlib.sha384(
        struct.pack("<I", event_type) + b":" + event.encode("utf-8") + b":" + payload
    ).digest()


def check_replay(entries: Sequence[EventLogEntry], rtmrs: Sequence[bytes]) -> Check:
    """``eventlog.replay``: the log replays to exactly the quote's RTMR0-3."""
    if not entries:
        return Check.skipped(CheckId.EVENTLOG_REPLAY, "the report has no event log")
    got = replay(entries)
    bad = [
        f"rtmr{i}: replayed {got[i].hex()[:16]}..., quote has {bytes(rtmrs[i]).hex()[:16]}..."
        for i in range(4)
        if got[i] != bytes(rtmrs[i])
    ]
    if bad:
        return Check.failed(CheckId.EVENTLOG_REPLAY, "; ".join(bad))
    return Check.passed(
        CheckId.EVENTLOG_REPLAY, f"{len(entries)} events replay to the quote's RTMR0-3"
    )


def check_runtime_digests(entries: Sequence[EventLogEntry]) -> Check:
    """``eventlog.rtmr3_digests``: every RTMR3 digest recomputes from its name and payload.

    An RTMR3 event of a type we cannot recompute fails the row: we would
    otherwise have to take its payload on faith.
    """
    runtime = [e for e in entries if e.imr == RUNTIME_IMR]
    if not runtime:
        return Check.skipped(CheckId.EVENTLOG_RTMR3_DIGESTS, "no RTMR3 events in the event log")
    bad: list[str] = []
    for e in runtime:
        if e.event_type != DSTACK_RUNTIME_EVENT_TYPE:
            bad.append(f"{e.event or '?'}: unknown runtime event type {e.event_type:#x}")
        elif runtime_event_digest(e.event_type, e.event, e.event_payload) != e.digest:
            bad.append(f"{e.event or '?'}: digest does not match its name and payload")
    if bad:
        return Check.failed(CheckId.EVENTLOG_RTMR3_DIGESTS, "; ".join(bad))
    return Check.passed(
        CheckId.EVENTLOG_RTMR3_DIGESTS,
        f"{len(runtime)} runtime events recomputed from their name and payload",
    )


# --- runtime facts --------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RuntimeFacts:
    """What the runtime (RTMR3) events say, by event name.

    Trust these only when ``eventlog.replay`` and ``eventlog.rtmr3_digests``
    both passed for the same log against an authenticated quote.
    """

    #: event name -> payload, for every RTMR3 event. If a name repeats, the
    #: last one wins (and :attr:`repeated` names it).
    events: Mapping[str, bytes]
    repeated: frozenset[str] = frozenset()

    def get(self, name: str) -> bytes | None:
        return self.events.get(name)

    def text(self, name: str) -> str | None:
        """A payload as text (dstack's payloads are ASCII: hex ids, JSON)."""
        raw = self.events.get(name)
        if raw is None:
            return None
        return raw.decode("utf-8", "replace")

    @property
    def compose_hash(self) -> bytes | None:
        """The ``compose-hash`` event: SHA-256 of the app compose document (32 bytes)."""
        return self.events.get("compose-hash")

    @property
    def os_image_hash(self) -> bytes | None:
        """The ``os-image-hash`` event: the dstack OS image measured at boot."""
        return self.events.get("os-image-hash")

    @property
    def app_id(self) -> bytes | None:
        return self.events.get("app-id")

    @property
    def instance_id(self) -> bytes | None:
        return self.events.get("instance-id")

    @property
    def key_provider(self) -> str | None:
        """The ``key-provider`` event: a JSON document naming the KMS."""
        return self.text("key-provider")


def runtime_facts(entries: Sequence[EventLogEntry]) -> RuntimeFacts:
    """Collect the RTMR3 events by name. Does no checking of its own."""
    events: dict[str, bytes] = {}
    repeated: set[str] = set()
    for e in entries:
        if e.imr != RUNTIME_IMR or not e.event:
            continue
        if e.event in events:
            repeated.add(e.event)
        events[e.event] = e.event_payload
    return RuntimeFacts(events, frozenset(repeated))


__all__ = [
    "DSTACK_RUNTIME_EVENT_TYPE",
    "EventLogEntry",
    "RuntimeFacts",
    "check_replay",
    "check_runtime_digests",
    "extend",
    "parse_event_log",
    "replay",
    "runtime_event_digest",
    "runtime_facts",
]
