"""The attestation report document of ``GET /tee/attestation`` (PROTOCOL.md).

:meth:`AttestationReport.from_json` turns every variant of that document
seen in the wild into one frozen, typed value:

- ``intel_quote`` in hex (production) or base64 (the public document);
- the key as ``signing_key`` or ``signing_public_key`` (both: must agree),
  130 hex ``04...`` or 128 hex without ``04``; an Ed25519 key is 64 hex;
- ``signing_address`` as ``0x`` + 40 hex in any case (EIP-55 included), or
  the Ed25519 key itself;
- the echoed nonce as ``nonce`` and/or ``request_nonce``;
- ``event_log`` as a list or a JSON string, falling back to
  ``info.tcb_info.event_log``;
- ``nvidia_payload`` as the JSON string it is on the wire (kept verbatim).

Parsing is structural only. A malformed document raises
:class:`~enclaved.errors.EvidenceParseError`; a well-formed one says nothing
about whether it is true - that is :mod:`.verifier`'s job. Nothing here is
trusted: ``verified`` and ``server_verification`` are the server's own
claims, kept for display.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import re
import types
from collections.abc import Mapping
from typing import Any

from ..errors import EvidenceParseError
from .eventlog import EventLogEntry, parse_event_log

_HEX = re.compile(r"\A[0-9a-fA-F]*\Z")
_ADDRESS = re.compile(r"\A0[xX][0-9a-fA-F]{40}\Z")

SIGNING_ALGOS = ("ecdsa", "ed25519")


@dataclasses.dataclass(frozen=True)
class AttestationReport:
    """A parsed, normalized attestation report. Every byte field is raw bytes."""

    #: The TDX quote, decoded (from hex or base64).
    intel_quote: bytes
    #: ``"ecdsa"`` (secp256k1, the E2EE key) or ``"ed25519"`` (inference nodes).
    signing_algo: str
    #: ecdsa: 20-byte Ethereum address. ed25519: the 32-byte public key.
    signing_address: bytes
    #: ecdsa: the 65-byte uncompressed key ``04...``; ed25519: 32 bytes;
    #: ``None`` when the document carries no key (plain TEE models may omit it).
    signing_key: bytes | None = None
    #: The nonce the document says it answers (``nonce``), as bytes.
    nonce: bytes | None = None
    #: The same, from ``request_nonce`` (production sends both).
    request_nonce: bytes | None = None
    #: ``"client"`` or ``"server"``, as the server says.
    nonce_source: str | None = None
    #: The event log (empty when the document has none).
    event_log: tuple[EventLogEntry, ...] = ()
    #: ``nvidia_payload`` exactly as served (a JSON string), or ``None``.
    nvidia_payload: str | None = None
    #: SHA-256 fingerprint of the node's TLS certificate, when bound (ed25519 nodes).
    tls_cert_fingerprint: bytes | None = None
    #: Deployment facts as the server states them (unauthenticated).
    info: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: The server's own ``verified`` flag. Informational only: never trusted.
    verified: bool | None = None
    tee_hardware: str | None = None
    tee_provider: str | None = None
    model: str | None = None
    #: The whole document as received, for fields not modelled here.
    raw: Mapping[str, Any] = dataclasses.field(default_factory=dict, repr=False, compare=False)

    @property
    def echoed_nonces(self) -> tuple[bytes, ...]:
        """Every nonce the document echoes (``nonce``, ``request_nonce``), in that order."""
        return tuple(n for n in (self.nonce, self.request_nonce) if n is not None)

    @property
    def signing_address_text(self) -> str:
        """The address as PROTOCOL.md writes it: ``0x`` + lowercase hex, or the Ed25519 key hex."""
        if self.signing_algo == "ecdsa":
            return "0x" + self.signing_address.hex()
        return self.signing_address.hex()

    @property
    def signing_key_hex(self) -> str | None:
        return None if self.signing_key is None else self.signing_key.hex()

    @classmethod
    def from_json(cls, obj: Mapping[str, Any] | bytes | str) -> AttestationReport:
        """Parse a report from its JSON text, bytes, or an already decoded dict."""
        if isinstance(obj, (bytes, bytearray, str)):
            try:
                obj = json.loads(obj)
            except (ValueError, UnicodeDecodeError) as exc:
                raise EvidenceParseError("attestation report: not valid JSON") from exc
        if not isinstance(obj, Mapping):
            raise EvidenceParseError("attestation report: expected a JSON object")
        return _parse(obj)


# --- parsing, field by field ------------------------------------------------


def _parse(doc: Mapping[str, Any]) -> AttestationReport:
    algo = _optional_str(doc, "signing_algo") or "ecdsa"
    algo = algo.lower()
    if algo not in SIGNING_ALGOS:
        raise EvidenceParseError(f"signing_algo: unsupported {algo!r} (ecdsa or ed25519)")

    info = _info(doc)
    event_log_raw = doc.get("event_log")
    if event_log_raw in (None, "", []):
        tcb = info.get("tcb_info")
        event_log_raw = tcb.get("event_log") if isinstance(tcb, Mapping) else None
    event_log = () if event_log_raw in (None, "") else parse_event_log(event_log_raw)

    verified = doc.get("verified")
    if verified is not None and not isinstance(verified, bool):
        raise EvidenceParseError("verified: expected true, false or null")

    return AttestationReport(
        intel_quote=_quote(doc.get("intel_quote")),
        signing_algo=algo,
        signing_address=_signing_address(doc.get("signing_address"), algo),
        signing_key=_signing_key(doc, algo),
        nonce=_optional_hex(doc, "nonce"),
        request_nonce=_optional_hex(doc, "request_nonce"),
        nonce_source=_optional_str(doc, "nonce_source"),
        event_log=event_log,
        nvidia_payload=_nvidia_payload(doc.get("nvidia_payload")),
        tls_cert_fingerprint=_fingerprint(doc.get("tls_cert_fingerprint")),
        info=types.MappingProxyType(dict(info)),
        verified=verified,
        tee_hardware=_optional_str(doc, "tee_hardware"),
        tee_provider=_optional_str(doc, "tee_provider"),
        model=_optional_str(doc, "model"),
        raw=types.MappingProxyType(dict(doc)),
    )


def _strip_0x(text: str) -> str:
    text = text.strip()
    return text[2:] if text[:2] in ("0x", "0X") else text


def _optional_str(doc: Mapping[str, Any], key: str) -> str | None:
    value = doc.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise EvidenceParseError(f"{key}: expected a string")
    return value


def _optional_hex(doc: Mapping[str, Any], key: str) -> bytes | None:
    value = doc.get(key)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise EvidenceParseError(f"{key}: expected a hex string")
    try:
        return bytes.fromhex(_strip_0x(value))
    except ValueError as exc:
        raise EvidenceParseError(f"{key}: not valid hex") from exc


def _quote(value: Any) -> bytes:
    """``intel_quote``: hex in production, base64 in the public document."""
    if not isinstance(value, str) or not value.strip():
        raise EvidenceParseError("intel_quote: missing (a TDX quote, hex or base64)")
    text = _strip_0x(value)
    # A real quote in base64 always has characters outside [0-9a-f] (it
    # starts "BAACAI..."), so "all hex, even length" is an unambiguous test.
    if _HEX.match(text) and len(text) % 2 == 0:
        return bytes.fromhex(text)
    compact = "".join(value.split())
    try:
        if "-" in compact or "_" in compact:
            return base64.urlsafe_b64decode(compact + "=" * (-len(compact) % 4))
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise EvidenceParseError("intel_quote: neither hex nor base64") from exc


def _signing_address(value: Any, algo: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise EvidenceParseError("signing_address: missing")
    if algo == "ecdsa":
        # Case-insensitive on purpose (PROTOCOL.md): the EIP-55 checksum is a
        # typo guard for people, not a security property; the binding check
        # compares the 20 bytes.
        if not _ADDRESS.match(value.strip()):
            raise EvidenceParseError("signing_address: expected 0x + 40 hex characters")
        return bytes.fromhex(value.strip()[2:])
    raw = _hex_bytes(value, "signing_address")
    if len(raw) != 32:
        raise EvidenceParseError("signing_address: an Ed25519 identity is 32 bytes (64 hex)")
    return raw


def _signing_key(doc: Mapping[str, Any], algo: str) -> bytes | None:
    keys = []
    for name in ("signing_key", "signing_public_key"):
        value = doc.get(name)
        if value is None or value == "":
            continue
        keys.append(_one_key(value, name, algo))
    if not keys:
        return None
    if any(k != keys[0] for k in keys):
        # Two different keys in one document: which would the client encrypt
        # to? Refuse to choose.
        raise EvidenceParseError("signing_key and signing_public_key differ")
    return keys[0]


def _one_key(value: Any, name: str, algo: str) -> bytes:
    if not isinstance(value, str):
        raise EvidenceParseError(f"{name}: expected a hex string")
    raw = _hex_bytes(value, name)
    if algo == "ed25519":
        if len(raw) != 32:
            raise EvidenceParseError(f"{name}: an Ed25519 key is 32 bytes (64 hex)")
        return raw
    if len(raw) == 64:
        raw = b"\x04" + raw
    if len(raw) != 65 or raw[0] != 4:
        raise EvidenceParseError(
            f"{name}: expected an uncompressed secp256k1 key (130 hex 04... or 128 hex)"
        )
    # Whether the point is on the curve is checked by binding.signing_key,
    # as a verification failure rather than a parse error.
    return raw


def _hex_bytes(value: str, name: str) -> bytes:
    try:
        return bytes.fromhex(_strip_0x(value))
    except ValueError as exc:
        raise EvidenceParseError(f"{name}: not valid hex") from exc


def _nvidia_payload(value: Any) -> str | None:
    """Kept as the exact string served; a dict is re-serialized (some proxies decode it)."""
    if value is None or value == "":
        return None
    if isinstance(value, Mapping):
        return json.dumps(value, separators=(",", ":"))
    if not isinstance(value, str):
        raise EvidenceParseError("nvidia_payload: expected a JSON string")
    try:
        parsed = json.loads(value)
    except ValueError as exc:
        raise EvidenceParseError("nvidia_payload: not valid JSON") from exc
    if not isinstance(parsed, Mapping):
        raise EvidenceParseError("nvidia_payload: expected a JSON object")
    return value


def _fingerprint(value: Any) -> bytes | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise EvidenceParseError("tls_cert_fingerprint: expected a hex string")
    # Accept the "AB:CD:..." form some tools print.
    return _hex_bytes(value.replace(":", ""), "tls_cert_fingerprint")


def _info(doc: Mapping[str, Any]) -> dict[str, Any]:
    """``info``, with a ``tcb_info`` given as a JSON string decoded (dstack does that)."""
    raw = doc.get("info")
    if raw is None:
        return {}
    if isinstance(raw, str):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise EvidenceParseError("info: not valid JSON") from exc
    if not isinstance(raw, Mapping):
        raise EvidenceParseError("info: expected an object")
    info = dict(raw)
    tcb = info.get("tcb_info")
    if isinstance(tcb, str) and tcb:
        try:
            info["tcb_info"] = json.loads(tcb)
        except ValueError as exc:
            raise EvidenceParseError("info.tcb_info: not valid JSON") from exc
    if info.get("tcb_info") is not None and not isinstance(info["tcb_info"], Mapping):
        raise EvidenceParseError("info.tcb_info: expected an object")
    return info


__all__ = ["SIGNING_ALGOS", "AttestationReport"]
