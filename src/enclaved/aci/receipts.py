"""A client's check of one answer against its ``aci/1`` receipt (§9.3; rev-a §10.2).

Given the keyset established by a verified report (its digest, and in rev-a
its ``workload_id``), the receipt, and the exact bytes we sent and received,
:func:`verify_receipt` returns one :class:`~enclaved.attestation.checks.Check`
row per step, with the ids of ``docs/verification.md``:

- ``aci.receipt.signature``: the signature verifies under the key its
  ``key_id`` names in the established keyset's ``receipt_signing_keys``;
- ``aci.receipt.document``: ``api_version`` is ``aci/1``, the receipt names
  the established keyset digest (and rev-a ``workload_id``), and its event
  log has the required shape (``request.received`` first, rev-a ``seq``
  strictly increasing from 0, one ``response.returned``);
- ``aci.receipt.request``: ``request.received.body_hash`` is the SHA-256 of
  the request bytes we sent (skipped, still enforced, when the caller gives
  none);
- ``aci.receipt.response``: ``response.returned.body_hash`` (rev-a:
  ``wire_hash``) is the SHA-256 of the response bytes we read off the wire,
  the raw SSE stream for a stream;
- ``aci.receipt.rewrite``: ``request.forwarded`` equals ``request.received``
  (no service-side rewrite), or, with ``allow_rewrite``, a rewrite that rev-a
  declares with ``transparency.request_modified``.

What a receipt does not prove: *when*. ``served_at`` is the node's own
clock, self-asserted, not attested; a receipt never embeds fresh evidence.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
from collections.abc import Mapping, Sequence
from typing import Any

from ..attestation.checks import Check, CheckId, Verdict
from ..errors import EvidenceParseError, VerificationError
from .core import CURRENT, REV_A, _revision, verify_receipt_signature

__all__ = ["body_hash", "check_channel", "tls_entries", "verify_receipt"]

API_VERSION = "aci/1"


def body_hash(body: bytes) -> str:
    """``"sha256:" + hex(sha256(body))``: how a receipt names bytes."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _tagged(body: bytes | None, sha256_hex: str | None) -> str | None:
    """``sha256:<hex>`` of the bytes, given whole or as their SHA-256 (hex)."""
    if body is not None:
        return body_hash(body)
    if sha256_hex is not None:
        return "sha256:" + sha256_hex.lower().removeprefix("sha256:")
    return None


def _same(stated: Any, ours: str) -> bool:
    return isinstance(stated, str) and hmac.compare_digest(stated.encode(), ours.encode())


def _events(receipt: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    log = receipt.get("event_log")
    if not isinstance(log, Sequence) or isinstance(log, str | bytes):
        return []
    return [e for e in log if isinstance(e, Mapping)]


def _one(events: list[Mapping[str, Any]], kind: str) -> Mapping[str, Any] | None:
    found = [e for e in events if e.get("type") == kind]
    return found[0] if len(found) == 1 else None


def _document(
    revision: str,
    receipt: Mapping[str, Any],
    keyset_digest: str,
    workload_id: str | None,
) -> Check:
    cid = CheckId.ACI_RECEIPT_DOCUMENT
    if receipt.get("api_version") != API_VERSION:
        return Check.failed(cid, f"api_version is {receipt.get('api_version')!r}, not aci/1")
    stated = receipt.get("workload_keyset_digest")
    if stated != keyset_digest:
        return Check.failed(
            cid, f"the receipt names keyset {stated}, the established one is {keyset_digest}"
        )
    if revision == REV_A and receipt.get("workload_id") != workload_id:
        return Check.failed(cid, "the receipt's workload_id is not the established one")
    raw = receipt.get("event_log")
    events = _events(receipt)
    if not isinstance(raw, Sequence) or isinstance(raw, str | bytes) or len(events) != len(raw):
        return Check.failed(cid, "the event log is not a list of objects")
    if not events or events[0].get("type") != "request.received":
        return Check.failed(cid, "the first event is not request.received")
    for kind in ("request.received", "response.returned"):
        if _one(events, kind) is None:
            return Check.failed(cid, f"the event log has not exactly one {kind}")
    if revision == REV_A:
        seqs = [e.get("seq") for e in events]
        ints = [s for s in seqs if type(s) is int]
        if len(ints) != len(seqs) or ints[0] != 0:
            return Check.failed(cid, "event seq does not start at 0")
        if any(b <= a for a, b in itertools.pairwise(ints)):
            return Check.failed(cid, "event seq is not strictly increasing")
    return Check.passed(cid, f"aci/1, keyset {keyset_digest}, event log well formed")


def verify_receipt(
    revision: str,
    receipt: Mapping[str, Any],
    *,
    keyset: Mapping[str, Any],
    keyset_digest: str,
    workload_id: str | None = None,
    request_body: bytes | None = None,
    response_body: bytes | None = None,
    request_sha256: str | None = None,
    response_sha256: str | None = None,
    allow_rewrite: bool = False,
) -> Verdict:
    """Check ``receipt`` (as served, parsed JSON) against the established
    ``keyset`` / ``keyset_digest`` (rev-a: and ``workload_id``) and the bytes
    exchanged. ``revision`` is :data:`~enclaved.aci.CURRENT` or
    :data:`~enclaved.aci.REV_A`, chosen by the caller, never read from the
    receipt. The bytes exchanged are given whole (``request_body``,
    ``response_body``) or, for a stream hashed as it arrived, as their SHA-256
    in hex (``request_sha256``, ``response_sha256``). Never raises for a
    failed check: every row is in the verdict."""
    _revision(revision)
    sent = _tagged(request_body, request_sha256)
    got = _tagged(response_body, response_sha256)
    verdict = Verdict()
    # 1. The signature, by a key of the established keyset.
    cid = CheckId.ACI_RECEIPT_SIGNATURE
    try:
        key_id = verify_receipt_signature(revision, receipt, keyset)
        verdict.add(Check.passed(cid, f"signed by receipt key {key_id!r} of the keyset"))
    except (VerificationError, EvidenceParseError) as exc:
        verdict.add(Check.failed(cid, str(exc)))
    # 2. The document.
    verdict.add(_document(revision, receipt, keyset_digest, workload_id))
    events = _events(receipt)
    received = _one(events, "request.received")
    returned = _one(events, "response.returned")
    forwarded = _one(events, "request.forwarded")
    # 3. The request.
    cid = CheckId.ACI_RECEIPT_REQUEST
    if sent is None:
        verdict.add(Check.skipped(cid, "no request bytes given to compare"))
    elif received is not None and _same(received.get("body_hash"), sent):
        verdict.add(Check.passed(cid, f"request.received = {sent}"))
    else:
        verdict.add(Check.failed(cid, "request.received.body_hash is not the bytes we sent"))
    # 4. The response.
    cid = CheckId.ACI_RECEIPT_RESPONSE
    field = "body_hash" if revision == CURRENT else "wire_hash"
    if got is None:
        verdict.add(Check.skipped(cid, "no response bytes given to compare"))
    elif returned is not None and _same(returned.get(field), got):
        verdict.add(Check.passed(cid, f"response.returned.{field} = {got}"))
    else:
        verdict.add(Check.failed(cid, f"response.returned.{field} is not the bytes we received"))
    # 5. A service-side rewrite of the request.
    cid = CheckId.ACI_RECEIPT_REWRITE
    if forwarded is None or received is None:
        verdict.add(Check.passed(cid, "no request.forwarded event: nothing was rewritten"))
    elif forwarded.get("body_hash") == received.get("body_hash"):
        verdict.add(Check.passed(cid, "request.forwarded = request.received: not rewritten"))
    elif revision == REV_A and _one(events, "transparency.request_modified") is None:
        verdict.add(
            Check.failed(cid, "the request was rewritten without transparency.request_modified")
        )
    else:
        verdict.add(
            Check.failed(
                cid,
                "the service rewrote the request (request.forwarded differs)",
                enforced=not allow_rewrite,
            )
        )
    return verdict


def check_channel(
    keyset: Mapping[str, Any],
    *,
    e2ee_public_key: str | None = None,
    tls_spki_sha256: str | None = None,
    hostname: str | None = None,
) -> Check:
    """``aci.channel`` (§9.1 step 6): the channel we actually used is bound by
    the keyset: the E2EE public key we encrypt to (hex) is in
    ``e2ee_public_keys``, or the TLS SPKI SHA-256 we observed (hex) is in
    ``tls_public_keys`` (for ``hostname``, where an entry names a domain).
    Skipped, and enforced, when the caller names neither."""
    cid = CheckId.ACI_CHANNEL
    if e2ee_public_key is None and tls_spki_sha256 is None:
        return Check.skipped(cid, "no E2EE key or TLS SPKI of the channel given to compare")
    if e2ee_public_key is not None:
        ours = _point(e2ee_public_key)
        for e in _entries(keyset, "e2ee_public_keys"):
            if hmac.compare_digest(_point(str(e.get("public_key", ""))), ours):
                return Check.passed(cid, f"the E2EE key we used is {e.get('key_id')!r}")
    if tls_spki_sha256 is not None:
        ours = tls_spki_sha256.lower().removeprefix("sha256:")
        for e in tls_entries(keyset, hostname):
            if str(e.get("spki_sha256", "")).lower().removeprefix("sha256:") == ours:
                domain = e.get("domain")
                return Check.passed(cid, f"the TLS key we saw is listed for {domain or 'any host'}")
    return Check.failed(cid, "neither the E2EE key nor the TLS key we used is in the keyset")


def tls_entries(keyset: Mapping[str, Any], hostname: str | None) -> list[Mapping[str, Any]]:
    """The keyset's ``tls_public_keys`` entries that apply to ``hostname``: those
    naming no domain, and those naming it (none of the scoped ones without one)."""
    host = (hostname or "").lower()
    return [
        e
        for e in _entries(keyset, "tls_public_keys")
        if e.get("domain") is None or (host and str(e.get("domain")).lower() == host)
    ]


def _entries(keyset: Mapping[str, Any], name: str) -> list[Mapping[str, Any]]:
    value = keyset.get(name)
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        return []
    return [e for e in value if isinstance(e, Mapping)]


def _point(public_key: str) -> str:
    """An uncompressed secp256k1 key as X || Y in lowercase hex: keysets list it
    with its ``04`` prefix (130 hex, the production gateway) or without (128)."""
    text = public_key.strip().lower().removeprefix("0x")
    return text[2:] if len(text) == 130 and text.startswith("04") else text
