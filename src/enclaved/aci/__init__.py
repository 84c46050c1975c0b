"""Attested Confidential Inference (``aci/1``): the encodings both sides share.

- :func:`jcs`, :func:`jcs_sha256`: RFC 8785 in ACI's constrained profile.
- :func:`keyset_digest`, :func:`workload_id`, :func:`statement`,
  :func:`report_data`, :func:`endorsement_payload`: what a report binds.
- :func:`sign_receipt`, :func:`receipt_signing_input`,
  :func:`verify_receipt_signature`: receipts, in either revision
  (:data:`CURRENT`, :data:`REV_A`; the caller names it).
- :func:`verify_receipt`, :func:`body_hash`: a client's check of one answer
  against its receipt and the bytes exchanged (§9.3), as verdict rows;
  :func:`check_channel`: the E2EE or TLS key we used is in the keyset (§9.1).
- :func:`node_core`: the same, as the node's
  :class:`~enclaved.server.aci.AciCore` wants it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from .core import (
    CURRENT,
    ENDORSEMENT_PURPOSE,
    REPORT_DATA_PURPOSE,
    REV_A,
    REVISIONS,
    endorsement_payload,
    keyset_digest,
    keyset_not_after,
    receipt_key_id,
    receipt_signing_input,
    report_data,
    sign_receipt,
    statement,
    verify_receipt_signature,
    workload_id,
)
from .jcs import jcs, jcs_sha256
from .receipts import body_hash, check_channel, verify_receipt

__all__ = [
    "CURRENT",
    "ENDORSEMENT_PURPOSE",
    "REPORT_DATA_PURPOSE",
    "REVISIONS",
    "REV_A",
    "body_hash",
    "check_channel",
    "endorsement_payload",
    "jcs",
    "jcs_sha256",
    "keyset_digest",
    "keyset_not_after",
    "node_core",
    "receipt_key_id",
    "receipt_signing_input",
    "report_data",
    "sign_receipt",
    "statement",
    "verify_receipt",
    "verify_receipt_signature",
    "workload_id",
]


class _NodeCore:
    """The node's view of the core (``enclaved.server.aci.AciCore``)."""

    def keyset_digest(self, keyset: Mapping[str, Any]) -> str:
        return keyset_digest(keyset)

    def workload_id(self, identity_public_key: Mapping[str, Any]) -> str:
        return workload_id(identity_public_key)

    def endorse(self, keyset_digest: str, identity: Any) -> dict[str, Any]:
        # rev-a §4.3 with the node's secp256k1 identity: ECDSA over the
        # payload's SHA-256, r || s (64 bytes, hex), low-s (libsecp256k1).
        digest = hashlib.sha256(endorsement_payload(keyset_digest)).digest()
        signature = identity._signing_key().sign_recoverable(digest, hasher=None)
        return {"algo": "ecdsa-secp256k1", "value": bytes(signature[:64]).hex()}

    def statement(
        self, revision: str, keyset_digest: str, nonce: str | None, workload_id: str | None
    ) -> bytes:
        return statement(revision, keyset_digest, nonce, workload_id)

    def sign_receipt(
        self, revision: str, document: Mapping[str, Any], key: Any, key_id: str
    ) -> dict[str, Any]:
        return sign_receipt(revision, document, key, key_id)


def node_core() -> _NodeCore:
    """The core as the node uses it (``enclaved.server.app.load_aci_core``)."""
    return _NodeCore()
