"""Attested Confidential Inference (``aci/1``), the node's side.

The node's workload keyset (the Ed25519 receipt key made at start, the node's
secp256k1 key as its E2EE key, the TLS fingerprints when it has a
certificate), its digest, the ``report_data`` statement of a nonce, and one
signed receipt per answer. Which of the two revisions it serves is
``[aci] revision`` (docs/server.md, "Attested Confidential Inference").

The encodings themselves (JCS, the digest, the statement of each revision,
receipt signing) are the shared core's, :mod:`enclaved.aci`; this module
only says what goes into them. :class:`AciCore` is all the node needs of it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from ..crypto import Ed25519KeyPair, KeyPair
from ..protocol import headers
from .config import AciConfig

__all__ = [
    "ACI_VERSION",
    "Aci",
    "AciCore",
    "ReceiptHashes",
    "api_key_digest",
    "e2ee_key_id",
    "receipt_key_id",
]

ACI_VERSION = "aci/1"
#: The statement's purpose tag (both revisions).
REPORT_DATA_PURPOSE = "aci.report_data.v1"


class AciCore(Protocol):
    """What the node needs of the shared core (:mod:`enclaved.aci`, whose
    ``node_core()`` returns one). ``revision`` is ``"current"`` or ``"rev-a"``.
    Every encoding is the core's; the node only chooses the inputs."""

    def keyset_digest(self, keyset: Mapping[str, Any]) -> str:
        """``"sha256:" + hex(sha256(JCS(keyset)))`` (both revisions)."""

    def workload_id(self, identity_public_key: Mapping[str, Any]) -> str:
        """rev-a: ``"sha256:" + hex(sha256(JCS({"algo", "public_key"})))``."""

    def endorse(self, keyset_digest: str, identity: KeyPair) -> dict[str, Any]:
        """rev-a §4.3: ``{"algo": "ecdsa-secp256k1", "value": hex(r || s)}`` over
        ``sha256(JCS({"purpose": "aci.keyset.endorsement.v1",
        "workload_keyset_digest": ...}))``, signed with the identity (node) key."""

    def statement(
        self, revision: str, keyset_digest: str, nonce: str | None, workload_id: str | None
    ) -> bytes:
        """The exact ``report_data`` statement bytes: current §3.2
        (``keyset_digest``, ``nonce``, ``purpose``), rev-a §4.4 (``nonce``,
        ``purpose``, ``workload_id``, ``workload_keyset_digest``); ``nonce``
        ``None`` is JSON ``null``."""

    def sign_receipt(
        self, revision: str, document: Mapping[str, Any], key: Ed25519KeyPair, key_id: str
    ) -> dict[str, Any]:
        """``document`` (no ``key_id``, no ``signature``) signed with ``key.sign``:
        current §7.2, ``key_id`` added and ``signature`` = hex Ed25519 over the JCS
        of the document with ``key_id``; rev-a §8.2, ``signature`` = ``{"algo":
        "ed25519", "key_id", "value"}``, ``value`` over the JCS of the document
        whose ``signature`` is that object less ``value``."""


def receipt_key_id(key: Ed25519KeyPair) -> str:
    """A stable id for the receipt key: its algorithm and the start of its hash."""
    return "enclaved-receipt-ed25519-" + hashlib.sha256(key.public_key).hexdigest()[:16]


def e2ee_key_id(key: KeyPair) -> str:
    return "enclaved-e2ee-ecdsa-" + hashlib.sha256(key.public_key).hexdigest()[:16]


def api_key_digest(authorization: str | None) -> str | None:
    """What a receipt is bound to (spec §7.6): SHA-256 of the bearer key, never the key.

    ``None`` for a request without a bearer key.
    """
    if not authorization:
        return None
    scheme, _, key = authorization.strip().partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return None
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()


@dataclasses.dataclass(frozen=True)
class ReceiptHashes:
    """The bytes an answer saw, as ``sha256:<hex>``: what its receipt's events carry."""

    received: str
    forwarded: str | None
    #: The response bytes as sent (ciphertext under E2EE).
    returned: str
    #: rev-a only: the response before sealing (= ``returned`` for a plaintext
    #: answer); ``None`` where the node does not have it (E2EE).
    cleartext: str | None = None


def sha256_tagged(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Aci:
    """One node's ACI state: its keyset, made once at start, and its receipt signer."""

    def __init__(
        self,
        config: AciConfig,
        core: AciCore,
        *,
        node_key: KeyPair,
        receipt_key: Ed25519KeyPair,
        started_at: float,
        tls_spki_sha256: Sequence[tuple[str, str | None]] = (),
    ) -> None:
        self.config = config
        self.revision = config.revision
        self.core = core
        self.node_key = node_key
        self.receipt_key = receipt_key
        self.key_id = receipt_key_id(receipt_key)
        not_after = int(started_at) + config.keyset_lifetime_seconds
        receipt_entry = {
            "key_id": self.key_id,
            "algo": "ed25519",
            "public_key": receipt_key.public_key_hex,
        }
        # The Venice E2EE key: 128 hex without ``04``, algo ``ecdsa``, as production lists it.
        e2ee_entry = {
            "key_id": e2ee_key_id(node_key),
            "algo": "ecdsa",
            "public_key": node_key.public_key_hex[2:],
        }
        tls = [
            {"spki_sha256": spki, **({"domain": domain} if domain else {})}
            for spki, domain in tls_spki_sha256
        ]
        self.workload_id: str | None = None
        self.endorsement: dict[str, Any] | None = None
        if self.revision == "rev-a":
            identity = {"algo": "ecdsa-secp256k1", "public_key": node_key.public_key_hex}
            self.keyset: dict[str, Any] = {
                "workload_identity": {"public_key": identity, "subject": config.subject},
                "keyset_epoch": {"version": 1, "not_after": not_after},
                "receipt_signing_keys": [receipt_entry],
                "e2ee_public_keys": [e2ee_entry],
                "tls_public_keys": tls,
            }
            self.workload_id = core.workload_id(identity)
        else:
            self.keyset = {
                "subject": config.subject,
                "not_after": not_after,
                "receipt_signing_keys": [receipt_entry],
                "e2ee_public_keys": [e2ee_entry],
                "tls_public_keys": tls,
            }
        self.digest = core.keyset_digest(self.keyset)
        if self.revision == "rev-a":
            self.endorsement = core.endorse(self.digest, node_key)
        #: ``X-ACI-Version`` and ``X-ACI-Keyset-Digest``, as ASGI header pairs.
        self.headers_raw: list[tuple[bytes, bytes]] = [
            (headers.ACI_VERSION.lower().encode(), ACI_VERSION.encode()),
            (headers.ACI_KEYSET_DIGEST.lower().encode(), self.digest.encode()),
        ]

    # -- the report -----------------------------------------------------------------

    def statement(self, nonce: str | None) -> bytes:
        """The exact statement bytes for ``nonce`` (64 lowercase hex, or ``None``)."""
        return self.core.statement(self.revision, self.digest, nonce, self.workload_id)

    def report_data(self, nonce: str | None) -> bytes:
        """The 64-byte REPORTDATA: sha256(statement), zero-padded."""
        return hashlib.sha256(self.statement(nonce)).digest() + bytes(32)

    def report(
        self, nonce: str | None, evidence: Mapping[str, Any], tee_type: str, now: float
    ) -> dict[str, Any]:
        """The ``GET /v1/aci/attestation`` document around ``evidence``."""
        report_data = hashlib.sha256(self.statement(nonce)).hexdigest()
        # Stated by the operator ([aci]); a client counts it only where the
        # measured app compose (evidence.app_compose) names it.
        provenance = {
            "repo_url": self.config.repo_url,
            "repo_commit": self.config.repo_commit,
            "image_digest": self.config.image_digest,
            "image_provenance": None,
        }
        attestation: dict[str, Any] = {"tee_type": tee_type, "workload_keyset": self.keyset}
        attestation["report_data"] = report_data
        if self.revision == "rev-a":
            attestation["keyset_endorsement"] = self.endorsement
        attestation["source_provenance"] = provenance
        if self.revision == "rev-a":
            # rev-a's freshness window: the node's own clock, one hour.
            attestation["freshness"] = {"fetched_at": int(now), "stale_after": int(now) + 3600}
        attestation["evidence"] = dict(evidence)
        doc: dict[str, Any] = {"api_version": ACI_VERSION}
        if self.workload_id is not None:
            doc["workload_id"] = self.workload_id
            # rev-a: the identity key is the node key, whose address signs the
            # EIP-191 text beside each receipt (what venice-e2ee cross-checks).
            doc["signing_address"] = self.node_key.address
        doc["workload_keyset_digest"] = self.digest
        doc["attestation"] = attestation
        doc["service_capabilities"] = {"supported_e2ee_versions": [], "serving": "direct"}
        return doc

    # -- receipts -------------------------------------------------------------------

    def receipt(
        self,
        *,
        receipt_id: str,
        chat_id: str | None,
        model: str | None,
        endpoint: str,
        served_at: float,
        hashes: ReceiptHashes,
    ) -> dict[str, Any]:
        """One answer's receipt, signed by the receipt key.

        rev-a numbers its events (``seq``), names the ``workload_id`` and
        splits ``response.returned`` into ``wire_hash`` (the bytes sent) and
        ``cleartext_hash`` (the same stream before sealing). The node hashes
        no pre-seal stream, so an E2EE answer's rev-a receipt carries no
        ``cleartext_hash``: a verifier that asks for it fails, rather than
        being told the ciphertext's hash is the cleartext's.
        """
        rev_a = self.revision == "rev-a"
        returned: dict[str, Any] = {"type": "response.returned"}
        if rev_a:
            if hashes.cleartext is not None:
                returned["cleartext_hash"] = hashes.cleartext
            returned["wire_hash"] = hashes.returned
        else:
            returned["body_hash"] = hashes.returned
        events: list[dict[str, Any]] = [{"type": "request.received", "body_hash": hashes.received}]
        if hashes.forwarded is not None:
            events.append({"type": "request.forwarded", "body_hash": hashes.forwarded})
            if rev_a and hashes.forwarded != hashes.received:
                # rev-a §8.4: a rewrite MUST be declared. Ours is the protocol's
                # own: the engine is given the decrypted, parsed request.
                events.append({"type": "transparency.request_modified"})
        events.append(returned)
        if rev_a and hashes.cleartext != hashes.returned:
            # rev-a §8.4: so must a response whose returned bytes are not the
            # response as produced (E2EE re-encryption included).
            events.append({"type": "transparency.response_modified"})
        if rev_a:
            events = [{"seq": i, **e} for i, e in enumerate(events)]
        document: dict[str, Any] = {
            "api_version": ACI_VERSION,
            "receipt_id": receipt_id,
            "chat_id": chat_id,
            "model": model,
        }
        if rev_a:
            document["workload_id"] = self.workload_id
        document.update(
            {
                "workload_keyset_digest": self.digest,
                "endpoint": endpoint,
                "method": "POST",
                "served_at": int(served_at),
                "event_log": events,
            }
        )
        return self.core.sign_receipt(self.revision, document, self.receipt_key, self.key_id)
