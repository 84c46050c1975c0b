"""Bindings: the quote's REPORTDATA, the signing key, and the echoed nonce.

A TDX quote signs 64 bytes chosen by the TD, REPORTDATA. PROTOCOL.md fixes
what the node puts there, so that the quote vouches for *this* key and *this*
request::

    ecdsa (default)      REPORTDATA[0:20]  = signing address (20 raw bytes)
                         REPORTDATA[20:32] = 12 zero bytes
    ed25519              REPORTDATA[0:32]  = the Ed25519 public key
    tls_cert_fingerprint REPORTDATA[0:32]  = SHA-256(signing address bytes || fingerprint bytes)
    all                  REPORTDATA[32:64] = the 32 nonce bytes, raw

Which identity layout applies is decided by the document itself - a
``tls_cert_fingerprint`` field selects the fingerprint layout, else the
``signing_algo`` - never by trying layouts until one matches.

Check ids (``docs/verification.md``):

- ``binding.report_data.identity``: REPORTDATA[0:32] holds the signing identity.
- ``binding.report_data.nonce``: REPORTDATA[32:64] holds the nonce.
- ``binding.signing_key``: the public key hashes to ``signing_address``
  (keccak-256, Ethereum style) and is a valid curve point; for ed25519 the
  key *is* the address.
- ``report.nonce``: the document echoes the client's nonce.
- ``report.verified_flag``: the server's own ``verified`` claim. Always
  informational (``enforced=False``): a server that lies about everything
  else lies about this too.

What this module does NOT check: that REPORTDATA comes from a genuine quote
(:mod:`.tdx` does), or that the nonce is fresh (only the caller knows which
nonce it sent; with ``nonce=None`` the document's own nonce is used and the
rows say that freshness was not established).
"""

from __future__ import annotations

import hashlib
import hmac

from ..errors import InvalidKeyError
from .checks import Check, CheckId
from .document import AttestationReport

REPORT_DATA_SIZE = 64
NONCE_SIZE = 32


def expected_identity(report: AttestationReport) -> tuple[bytes, str]:
    """The 32 bytes REPORTDATA[0:32] must hold for this report, and the layout's name."""
    if report.tls_cert_fingerprint is not None:
        digest = hashlib.sha256(report.signing_address + report.tls_cert_fingerprint).digest()
        return digest, "sha256(signing address || TLS certificate fingerprint)"
    if report.signing_algo == "ed25519":
        return report.signing_address, "Ed25519 public key"
    return report.signing_address + bytes(12), "signing address || 12 zero bytes"


def check_report_data_identity(report: AttestationReport, report_data: bytes) -> Check:
    """``binding.report_data.identity``."""
    cid = CheckId.BINDING_IDENTITY
    if len(report_data) != REPORT_DATA_SIZE:
        return Check.failed(cid, f"REPORTDATA is {len(report_data)} bytes, expected 64")
    want, layout = expected_identity(report)
    got = report_data[:32]
    if not hmac.compare_digest(got, want):
        return Check.failed(
            cid,
            f"REPORTDATA[0:32] is {got.hex()}, expected {want.hex()} ({layout}, "
            f"signing address {report.signing_address_text})",
        )
    return Check.passed(cid, f"REPORTDATA[0:32] = {layout}")


def check_report_data_nonce(
    report: AttestationReport, report_data: bytes, nonce: bytes | None
) -> Check:
    """``binding.report_data.nonce``: REPORTDATA[32:64] is the nonce, raw.

    With ``nonce=None`` (the caller sent none, e.g. ``enclaved verify``
    without ``--nonce``) the document's echoed nonce is used: this still
    proves the document's nonce is the quote's, not that the quote is fresh.
    """
    cid = CheckId.BINDING_NONCE
    if len(report_data) != REPORT_DATA_SIZE:
        return Check.failed(cid, f"REPORTDATA is {len(report_data)} bytes, expected 64")
    got = report_data[32:64]
    if nonce is None:
        echoed = report.echoed_nonces
        if not echoed:
            return Check.skipped(cid, "no nonce given and the document echoes none")
        nonce, whose = echoed[0], "the document's own nonce (freshness NOT checked)"
    else:
        whose = "the client nonce"
    if len(nonce) != NONCE_SIZE:
        return Check.failed(cid, f"the nonce is {len(nonce)} bytes, expected 32")
    if not hmac.compare_digest(got, nonce):
        return Check.failed(cid, f"REPORTDATA[32:64] is {got.hex()}, expected {nonce.hex()}")
    return Check.passed(cid, f"REPORTDATA[32:64] = {whose}")


def check_signing_key(report: AttestationReport) -> Check:
    """``binding.signing_key``: the key the client will encrypt to is the bound identity."""
    cid = CheckId.BINDING_SIGNING_KEY
    key = report.signing_key
    if key is None:
        return Check.skipped(cid, "the document carries no signing key")
    if report.signing_algo == "ed25519":
        if not hmac.compare_digest(key, report.signing_address):
            return Check.failed(
                cid, f"Ed25519 key {key.hex()} is not signing_address {report.signing_address_text}"
            )
        return Check.passed(cid, "Ed25519 key equals signing_address")
    # Imported here: the crypto package pulls in coincurve, which the parse
    # layer above does not need.
    from ..crypto import address_from_public_key

    try:
        derived = address_from_public_key(key)
    except InvalidKeyError as exc:
        return Check.failed(cid, f"signing_key is not a valid secp256k1 point: {exc}")
    if derived.lower() != report.signing_address_text.lower():
        return Check.failed(
            cid,
            f"signing_key hashes to {derived}, not signing_address {report.signing_address_text}",
        )
    return Check.passed(cid, f"keccak256(signing_key) -> {derived}")


def check_nonce_echo(report: AttestationReport, nonce: bytes | None) -> Check:
    """``report.nonce``: every nonce the document echoes equals the client's."""
    cid = CheckId.REPORT_NONCE
    echoed = report.echoed_nonces
    if nonce is None:
        return Check.skipped(
            cid, "no client nonce given: freshness NOT checked (the report may be a replay)"
        )
    if not echoed:
        return Check.failed(cid, "the document echoes no nonce (nonce / request_nonce)")
    bad = sorted({e.hex() for e in echoed if not hmac.compare_digest(e, nonce)})
    if bad:
        return Check.failed(cid, f"the document echoes {', '.join(bad)}, we sent {nonce.hex()}")
    if report.nonce_source not in (None, "client"):
        return Check.failed(cid, f"nonce_source is {report.nonce_source!r}, expected 'client'")
    return Check.passed(cid, "the document echoes the client nonce")


def check_verified_flag(report: AttestationReport) -> Check:
    """``report.verified_flag``: informational, never enforced."""
    cid = CheckId.REPORT_VERIFIED_FLAG
    if report.verified is None:
        return Check.skipped(cid, "the server states no 'verified' flag", enforced=False)
    if report.verified:
        return Check.passed(
            cid, "the server says it verified itself (not relied on)", enforced=False
        )
    return Check.failed(cid, "the server says its own verification failed", enforced=False)


def check_all(report: AttestationReport, report_data: bytes, nonce: bytes | None) -> list[Check]:
    """The REPORTDATA rows and the signing-key row, in that order."""
    return [
        check_report_data_identity(report, report_data),
        check_report_data_nonce(report, report_data, nonce),
        check_signing_key(report),
    ]


__all__ = [
    "check_all",
    "check_nonce_echo",
    "check_report_data_identity",
    "check_report_data_nonce",
    "check_signing_key",
    "check_verified_flag",
    "expected_identity",
]
