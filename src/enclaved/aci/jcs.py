"""JSON canonicalization for ACI (RFC 8785, in ACI's constrained profile).

The profile the reference implementation uses (``shared/testdata/aci/
jcs_vectors.json``): integers only (within i64 or u64; a float is refused),
object keys sorted by UTF-16 code units at every level, strings as raw UTF-8
with the short escapes ``\\b \\t \\n \\f \\r``, other control characters as
lowercase ``\\u00xx``, and ``"`` / ``\\`` escaped. Compact: no whitespace.

Written here rather than taken from a library: RFC 8785 libraries serialize
floats (the profile must refuse them) and some sort keys by code point, which
differs from UTF-16 order outside the BMP; both would sign other bytes than
the reference implementation does.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import EvidenceParseError

__all__ = ["jcs", "jcs_sha256"]

_I64_MIN = -(2**63)
_U64_MAX = 2**64 - 1


def jcs(value: Any) -> bytes:
    """The canonical bytes of ``value`` (parsed JSON). Raises
    :class:`~enclaved.errors.EvidenceParseError` for what the profile refuses."""
    out: list[str] = []
    _write(value, out)
    try:
        return "".join(out).encode("utf-8")
    except UnicodeEncodeError:
        raise EvidenceParseError("JCS: a string holds a lone surrogate") from None


def jcs_sha256(value: Any) -> str:
    """``"sha256:" + hex(sha256(jcs(value)))``."""
    return "sha256:" + hashlib.sha256(jcs(value)).hexdigest()


def _utf16_key(key: str) -> bytes:
    return key.encode("utf-16-be", "surrogatepass")


def _write(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, int):
        if not _I64_MIN <= value <= _U64_MAX:
            raise EvidenceParseError("JCS: an integer is outside i64 / u64")
        out.append(str(value))
    elif isinstance(value, float):
        raise EvidenceParseError("JCS: floats are not allowed")
    elif isinstance(value, str):
        out.append(json.dumps(value, ensure_ascii=False))
    elif isinstance(value, Mapping):
        out.append("{")
        for i, key in enumerate(sorted(value, key=_utf16_key)):
            if not isinstance(key, str):
                raise EvidenceParseError("JCS: an object key is not a string")
            if i:
                out.append(",")
            out.append(json.dumps(key, ensure_ascii=False))
            out.append(":")
            _write(value[key], out)
        out.append("}")
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        raise EvidenceParseError(f"JCS: {type(value).__name__} is not JSON")
