"""The ``aci/1`` encodings both sides share: digests, statements, receipts.

Two revisions, always named by the caller, never guessed from a document:

- ``CURRENT`` (``shared/specs/aci/aci.md``): the statement is
  ``{"keyset_digest", "nonce", "purpose"}``; a receipt carries a top-level
  ``key_id`` and ``signature`` is the hex Ed25519 signature over the JCS of
  the receipt without ``signature``.
- ``REV_A`` (``aci-rev-a.md``, served by production until about August
  2026): an identity key (``workload_id`` = its JCS digest) in the
  statement, a keyset endorsement, and ``signature = {"algo", "key_id",
  "value"}`` with ``value`` over the JCS of the receipt whose ``signature``
  is that object less ``value``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from ..errors import CryptoError, VerificationError
from .jcs import jcs, jcs_sha256

__all__ = [
    "CURRENT",
    "ENDORSEMENT_PURPOSE",
    "REPORT_DATA_PURPOSE",
    "REVISIONS",
    "REV_A",
    "endorsement_payload",
    "keyset_digest",
    "receipt_signing_input",
    "report_data",
    "sign_receipt",
    "statement",
    "verify_receipt_signature",
    "workload_id",
]

CURRENT = "current"
REV_A = "rev-a"
REVISIONS = (CURRENT, REV_A)
REPORT_DATA_PURPOSE = "aci.report_data.v1"
ENDORSEMENT_PURPOSE = "aci.keyset.endorsement.v1"


def _revision(revision: str) -> str:
    if revision not in REVISIONS:
        raise VerificationError(f"unknown aci/1 revision {revision!r}")
    return revision


def keyset_not_after(keyset: Mapping[str, Any]) -> int | None:
    """The keyset's expiry (Unix seconds): rev-a keeps it in ``keyset_epoch``,
    the current revision at the top; ``None`` when it states none as an integer."""
    epoch = keyset.get("keyset_epoch")
    not_after = epoch.get("not_after") if isinstance(epoch, Mapping) else keyset.get("not_after")
    return not_after if type(not_after) is int else None


def keyset_digest(keyset: Mapping[str, Any]) -> str:
    """``sha256:`` + hex SHA-256 of the keyset's JCS form (both revisions)."""
    return jcs_sha256(keyset)


def workload_id(identity_public_key: Mapping[str, Any]) -> str:
    """rev-a: the digest of the identity public key object ``{"algo", "public_key"}``."""
    return jcs_sha256(identity_public_key)


def statement(
    revision: str, keyset_digest: str, nonce: str | None, workload_id: str | None = None
) -> bytes:
    """The exact ``report_data`` statement bytes; ``nonce`` ``None`` is JSON ``null``."""
    if _revision(revision) == CURRENT:
        doc: dict[str, Any] = {
            "keyset_digest": keyset_digest,
            "nonce": nonce,
            "purpose": REPORT_DATA_PURPOSE,
        }
    else:
        doc = {
            "nonce": nonce,
            "purpose": REPORT_DATA_PURPOSE,
            "workload_id": workload_id,
            "workload_keyset_digest": keyset_digest,
        }
    return jcs(doc)


def report_data(statement_bytes: bytes) -> bytes:
    """The 64-byte TEE report-data slot: SHA-256 of the statement, then 32 zero bytes."""
    return hashlib.sha256(statement_bytes).digest() + bytes(32)


def endorsement_payload(keyset_digest: str, purpose: str = ENDORSEMENT_PURPOSE) -> bytes:
    """rev-a §4.3: the bytes the identity key signs to endorse (or revoke) a keyset."""
    return jcs({"purpose": purpose, "workload_keyset_digest": keyset_digest})


def receipt_signing_input(revision: str, receipt: Mapping[str, Any]) -> bytes:
    """The bytes a receipt's signature covers (``receipt`` as served, or unsigned)."""
    doc = dict(receipt)
    if _revision(revision) == CURRENT:
        doc.pop("signature", None)
    else:
        signature = doc.get("signature")
        if isinstance(signature, Mapping):
            doc["signature"] = {k: v for k, v in signature.items() if k != "value"}
    return jcs(doc)


def sign_receipt(
    revision: str, document: Mapping[str, Any], key: Any, key_id: str
) -> dict[str, Any]:
    """``document`` (no ``key_id``, no ``signature``) signed with ``key.sign``
    (an Ed25519 key pair), in ``revision``'s shape: the receipt as served."""
    doc = dict(document)
    if _revision(revision) == CURRENT:
        doc["key_id"] = key_id
        doc["signature"] = bytes(key.sign(jcs(doc))).hex()
    else:
        doc["signature"] = {"algo": "ed25519", "key_id": key_id}
        doc["signature"]["value"] = bytes(key.sign(jcs(doc))).hex()
    return doc


def receipt_key_id(revision: str, receipt: Mapping[str, Any]) -> str:
    """The ``key_id`` a receipt names (where each revision puts it)."""
    if _revision(revision) == CURRENT:
        key_id = receipt.get("key_id")
    else:
        signature = receipt.get("signature")
        key_id = signature.get("key_id") if isinstance(signature, Mapping) else None
    if not isinstance(key_id, str):
        raise VerificationError("the receipt names no key_id")
    return key_id


def verify_receipt_signature(
    revision: str, receipt: Mapping[str, Any], keyset: Mapping[str, Any]
) -> str:
    """Check ``receipt``'s signature by a receipt key of ``keyset``; return the
    ``key_id``. The keyset entry decides the algorithm: ``ed25519`` (both
    revisions), or in rev-a ``ecdsa-secp256k1`` (§8.5: a 65-byte recoverable
    ``r || s || v`` over SHA-256 of the signing input; the production gateway
    signs so), where the receipt's ``signature.algo`` must name the same.
    Raises :class:`~enclaved.errors.VerificationError`."""
    key_id = receipt_key_id(revision, receipt)
    entries = [
        k
        for k in keyset.get("receipt_signing_keys") or ()
        if isinstance(k, Mapping) and k.get("key_id") == key_id
    ]
    if len(entries) != 1:
        raise VerificationError(f"the keyset has no single receipt key {key_id!r}")
    algo = entries[0].get("algo")
    if revision == CURRENT:
        value = receipt.get("signature")
        allowed: tuple[str, ...] = ("ed25519",)
    else:
        signature = receipt.get("signature")
        value = signature.get("value") if isinstance(signature, Mapping) else None
        allowed = ("ed25519", "ecdsa-secp256k1")
        if isinstance(signature, Mapping) and signature.get("algo") != algo:
            raise VerificationError(
                f"the receipt says {signature.get('algo')!r}, its key {key_id!r} is {algo!r}"
            )
    if algo not in allowed:
        raise VerificationError(f"receipt key {key_id!r} is {algo!r}, not one of {allowed}")
    message = receipt_signing_input(revision, receipt)
    try:
        public = bytes.fromhex(str(entries[0]["public_key"]))
        signature_bytes = bytes.fromhex(str(value))
        if algo == "ed25519":
            Ed25519PublicKey.from_public_bytes(public).verify(signature_bytes, message)
        elif not _secp256k1_ok(public, signature_bytes, message):
            raise InvalidSignature
    except (ValueError, TypeError, InvalidSignature):
        raise VerificationError("the receipt's signature does not verify") from None
    return key_id


def _secp256k1_ok(public: bytes, signature: bytes, message: bytes) -> bool:
    """rev-a §8.5: ``r || s || v`` (65 bytes; ``v`` 0..3, or 27..30) over
    SHA-256(message), recovered and compared with the listed key. A 64-byte
    (JOSE) signature is refused, as the spec requires."""
    import coincurve

    from ..crypto import recover_public_key

    digest = hashlib.sha256(message).digest()
    try:
        recovered = recover_public_key(signature, digest, max_recovery_id=3)
        listed = coincurve.PublicKey(public)
    except (CryptoError, ValueError, TypeError):
        return False
    return recovered.format(compressed=False) == listed.format(compressed=False)
