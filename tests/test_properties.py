"""Property tests (hypothesis): what must hold for every input, not only the
ones we thought of.

- The E2EE envelope: whatever is sealed opens to exactly itself, and a
  single changed byte anywhere fails with the one opaque ``DecryptionError``.
- The TDX quote parser: arbitrary bytes, and every truncation of a real
  production quote, are either a quote or an ``EvidenceParseError`` -
  never another exception (a parse error is never reported as anything else).
- The client's SSE parser: however a valid stream is cut into reads, the
  same events come out; bytes that are not UTF-8 are a clear error.

``max_examples`` is kept small and ``derandomize`` on, so the suite stays
fast and a failure reproduces.
"""

from __future__ import annotations

import itertools
import json

import pytest
from conftest import CAPTURES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclaved.attestation.tdx import parse_quote
from enclaved.crypto import KeyPair, Opener, seal
from enclaved.errors import APIError, DecryptionError, EvidenceParseError
from enclaved.protocol.sse import SSEParser

FAST = settings(
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)

_NODE = KeyPair()
_OPENER = Opener(_NODE)
_VENICE_REPORT = next(CAPTURES.glob("venice_*/responses/0001_*.body"))
_QUOTE = bytes.fromhex(json.loads(_VENICE_REPORT.read_bytes())["intel_quote"])
# A v4 TDX quote: 48-byte header, 584-byte TD report, a 4-byte little-endian
# length, then that many bytes of signature data. The production quote is
# followed by zero padding, which the parser (as Intel's) ignores.
_QUOTE_END = 636 + int.from_bytes(_QUOTE[632:636], "little")


@FAST
@given(st.text())
def test_sealed_text_opens_to_itself(text: str) -> None:
    assert _OPENER.open_text(seal(text, _NODE.public_key)) == text


@FAST
@given(st.binary(max_size=512), st.data())
def test_any_changed_byte_fails_with_the_one_opaque_error(
    plaintext: bytes, data: st.DataObject
) -> None:
    raw = bytearray.fromhex(seal(plaintext, _NODE.public_key))
    at = data.draw(st.integers(0, len(raw) - 1), label="byte")
    flip = data.draw(st.integers(1, 255), label="xor")
    raw[at] ^= flip
    with pytest.raises(DecryptionError) as info:
        _OPENER.open(raw.hex())
    assert str(info.value) == "failed to decrypt"


@FAST
@given(st.binary(max_size=2048))
def test_arbitrary_bytes_are_a_quote_or_a_parse_error(data: bytes) -> None:
    try:
        parse_quote(data)
    except EvidenceParseError:
        pass


@FAST
@given(st.integers(0, _QUOTE_END - 1))
def test_every_truncation_of_a_real_quote_is_a_parse_error(cut: int) -> None:
    assert _QUOTE_END < len(_QUOTE) and not any(_QUOTE[_QUOTE_END:])  # only padding after
    with pytest.raises(EvidenceParseError):
        parse_quote(_QUOTE[:cut])


_STREAM = (
    b": comment\r\n"
    + b"".join(
        b"data: " + json.dumps({"i": i, "t": "h\u00e9llo \u2713"}).encode() + b"\n\n"
        for i in range(5)
    )
    + b"event: done\ndata: [DONE]\n\n"
)


def _events(chunks: list[bytes]) -> list[tuple[str, str | None]]:
    parser = SSEParser()
    out = [e for chunk in chunks for e in parser.feed(chunk)] + parser.close()
    return [(e.data, e.event) for e in out]


_WHOLE = _events([_STREAM])


@FAST
@given(st.lists(st.integers(0, len(_STREAM)), max_size=12))
def test_any_cutting_of_a_stream_gives_the_same_events(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(_STREAM)]
    chunks = [_STREAM[a:b] for a, b in itertools.pairwise(bounds)]
    assert _events(chunks) == _WHOLE
    assert len(_WHOLE) == 6 and _WHOLE[-1] == ("[DONE]", "done")


@FAST
@given(st.binary(min_size=1, max_size=64))
def test_bytes_that_are_not_utf8_are_a_clear_error(garbage: bytes) -> None:
    try:
        garbage.decode("utf-8")
    except UnicodeDecodeError:
        with pytest.raises(APIError) as info:
            _events([b"data: ", garbage, b"\n\n"])
        assert info.value.code == "invalid_stream"
    else:
        _events([b"data: ", garbage, b"\n\n"])  # valid text: parses without error
