"""The quote's own rows: is it a TDX quote, signed by a genuine Intel quoting enclave?

Nothing here needs Intel's collateral: the quote carries its PCK chain, the
quoting enclave's report and the attestation key. Check ids:
``tdx.quote.structure``, ``tdx.pck.chain``, ``tdx.qe_report.signature``,
``tdx.qe_report.binding``, ``tdx.quote.signature`` (each described in
:mod:`.verify`, which runs them in that order).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ...errors import EvidenceParseError
from .._x509 import cert_name, path_problem
from ..checks import Check, CheckId
from .parse import (
    ATT_KEY_TYPE_ECDSA_P256,
    CERT_DATA_PCK_CHAIN,
    CERT_DATA_QE_REPORT,
    INTEL_QE_VENDOR_ID,
    TEE_TYPE_TDX,
    Quote,
)


def _raw_sig_to_der(sig: bytes) -> bytes:
    """Intel's r||s (32 + 32 bytes, big-endian) -> the DER form cryptography verifies."""
    return encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))


def ecdsa_ok(key: object, sig: bytes, data: bytes) -> bool:
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        return False
    if len(sig) != 64:
        return False
    try:
        key.verify(_raw_sig_to_der(sig), data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


_name = cert_name


def fmt_time(t: dt.datetime | None) -> str:
    return "never" if t is None else t.strftime("%Y-%m-%dT%H:%M:%SZ")


def _check_structure(quote: Quote) -> Check:
    cid = CheckId.TDX_QUOTE_STRUCTURE
    h = quote.header
    problems = []
    if h.version not in (4, 5):
        problems.append(f"version {h.version} (4 or 5)")
    if h.att_key_type != ATT_KEY_TYPE_ECDSA_P256:
        problems.append(f"attestation key type {h.att_key_type} (2 = ECDSA P-256)")
    if h.tee_type != TEE_TYPE_TDX:
        problems.append(f"TEE type {h.tee_type:#x} (0x81 = TDX)")
    if h.qe_vendor_id != INTEL_QE_VENDOR_ID:
        problems.append(f"QE vendor id {h.qe_vendor_id.hex()} (Intel: {INTEL_QE_VENDOR_ID.hex()})")
    sd = quote.signature_data
    if sd.certification_data_type != CERT_DATA_QE_REPORT:
        problems.append(f"certification data type {sd.certification_data_type} (6)")
    if sd.certification_data.pck_cert_data_type != CERT_DATA_PCK_CHAIN:
        problems.append("PCK certification data is not a PEM chain (type 5)")
    if problems:
        return Check.failed(cid, "unsupported quote: " + "; ".join(problems))
    return Check.passed(
        cid, f"TDX quote v{h.version}, body {quote.body.body_type.name}, ECDSA P-256, Intel QE"
    )


def _check_pck_chain(quote: Quote, roots: Sequence[x509.Certificate], now: dt.datetime) -> Check:
    cid = CheckId.TDX_PCK_CHAIN
    chain = quote.pck_chain
    problem, root = path_problem(chain, roots, now, intermediates=1)
    if problem:
        return Check.failed(cid, problem)
    assert root is not None
    return Check.passed(
        cid,
        f"{_name(chain[0])!r} <- {_name(chain[1])!r} <- {_name(root)!r} (trusted), valid at "
        f"{fmt_time(now)}",
    )


def _check_qe_report_signature(quote: Quote) -> Check:
    cid = CheckId.TDX_QE_REPORT_SIGNATURE
    try:
        key = quote.pck_leaf.public_key()
    except ValueError as exc:
        return Check.failed(cid, f"PCK leaf key unusable: {exc}")
    cd = quote.signature_data.certification_data
    if ecdsa_ok(key, cd.qe_report_signature, cd.qe_report.raw):
        return Check.passed(cid, "QE report signed by the PCK leaf key")
    return Check.failed(cid, "QE report signature does not verify under the PCK leaf key")


def _check_qe_binding(quote: Quote) -> Check:
    cid = CheckId.TDX_QE_REPORT_BINDING
    expected = hashlib.sha256(quote.attestation_key + quote.qe_auth_data).digest()
    rd = quote.qe_report.report_data
    if rd[:32] != expected:
        return Check.failed(
            cid,
            f"QE report_data[0:32] {rd[:32].hex()} != SHA-256(attestation key || QE auth data) "
            f"{expected.hex()}",
        )
    if any(rd[32:]):
        return Check.failed(cid, "QE report_data[32:64] is not zero")
    return Check.passed(cid, "QE report binds the attestation key and QE auth data")


def _check_quote_signature(quote: Quote) -> Check:
    cid = CheckId.TDX_QUOTE_SIGNATURE
    try:
        key = quote.attestation_public_key()
    except EvidenceParseError as exc:
        return Check.failed(cid, str(exc))
    if ecdsa_ok(key, quote.signature_data.quote_signature, quote.signed_region):
        return Check.passed(
            cid, f"attestation key signed the {len(quote.signed_region)}-byte header and body"
        )
    return Check.failed(cid, "quote signature does not verify under the attestation key")


def check_quote(quote: Quote, roots: Sequence[x509.Certificate], now: dt.datetime) -> list[Check]:
    """The quote's own rows, in :data:`.verify.CHECK_IDS` order."""
    return [
        _check_structure(quote),
        _check_pck_chain(quote, roots, now),
        _check_qe_report_signature(quote),
        _check_qe_binding(quote),
        _check_quote_signature(quote),
    ]
