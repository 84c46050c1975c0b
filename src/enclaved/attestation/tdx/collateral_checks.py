"""The rows that judge the quote against Intel's collateral.

Signatures on the TCB info and QE identity, the PCK and root CA CRLs, the
collateral's freshness, the FMSPC, the TCB status (:mod:`.tcb`) and the QE
identity. Check ids: :data:`~enclaved.attestation.checks.COLLATERAL_CHECK_IDS`
(each described in :mod:`.verify`, which runs them in that order, or skips
them all without collateral).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ...errors import EvidenceParseError
from .._x509 import cert_name, path_problem
from ..checks import Check, CheckId, CheckKind, TcbStatus
from .collateral import Collateral
from .parse import Quote, pck_extensions
from .quote_checks import ecdsa_ok, fmt_time
from .tcb import qe_identity_status, tcb_status

_name = cert_name


def _crl_signed_by(crl: x509.CertificateRevocationList, cert: x509.Certificate) -> bool:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return False  # Intel's PKI is P-256 throughout
    return crl.is_signature_valid(key)


def _check_signed_json(
    cid: str,
    what: str,
    signed: Callable[[], tuple[bytes, bytes, object]],
    chain: Sequence[x509.Certificate],
    roots: Sequence[x509.Certificate],
    now: dt.datetime,
) -> Check:
    try:
        data, signature, _ = signed()
    except EvidenceParseError as exc:
        return Check.failed(cid, f"{what} malformed: {exc}")
    if not chain:
        return Check.failed(cid, f"{what} has no issuer chain")
    problem, root = path_problem(chain, roots, now, intermediates=0)
    if problem:
        return Check.failed(cid, f"{what} signer: {problem}")
    if not ecdsa_ok(chain[0].public_key(), signature, data):
        return Check.failed(cid, f"{what} signature does not verify under {_name(chain[0])!r}")
    assert root is not None
    return Check.passed(cid, f"{what} signed by {_name(chain[0])!r} <- {_name(root)!r}")


def _check_pck_crl(
    quote: Quote, c: Collateral, roots: Sequence[x509.Certificate], now: dt.datetime
) -> Check:
    cid = CheckId.TDX_PCK_CRL
    try:
        crl = c.pck_crl_parsed
        leaf = quote.pck_leaf
    except EvidenceParseError as exc:
        return Check.failed(cid, f"PCK CRL malformed: {exc}")
    chain = c.pck_crl_issuer_chain
    if not chain:
        return Check.failed(cid, "PCK CRL has no issuer chain")
    signer = chain[0]
    # The CRL signer is a CA issued directly by a trusted root.
    problem, _ = path_problem(chain, roots, now, intermediates=0, leaf="crl_issuer")
    if problem:
        return Check.failed(cid, f"PCK CRL signer: {problem}")
    if crl.issuer != signer.subject or not _crl_signed_by(crl, signer):
        return Check.failed(cid, f"PCK CRL signature does not verify under {_name(signer)!r}")
    # The CRL must be the one of the CA that issued this PCK leaf.
    if leaf.issuer != crl.issuer:
        return Check.failed(
            cid,
            f"PCK CRL is {_name(signer)!r}'s, but the PCK leaf is issued by "
            f"{leaf.issuer.rfc4514_string()}",
        )
    chain_q = quote.pck_chain
    if len(chain_q) > 1 and chain_q[1].public_key() != signer.public_key():
        return Check.failed(
            cid, "PCK CRL signer is not the CA certificate that issued the PCK leaf"
        )
    revoked = crl.get_revoked_certificate_by_serial_number(leaf.serial_number)
    if revoked is not None:
        return Check.failed(
            cid,
            f"PCK certificate {leaf.serial_number:x} revoked on "
            f"{fmt_time(revoked.revocation_date_utc)}",
        )
    return Check.passed(
        cid,
        f"PCK certificate {leaf.serial_number:x} not on {_name(signer)!r}'s CRL "
        f"({len(crl)} entries)",
    )


def _check_root_ca_crl(quote: Quote, c: Collateral, roots: Sequence[x509.Certificate]) -> Check:
    cid = CheckId.TDX_ROOT_CA_CRL
    if c.root_ca_crl is None:
        return Check.skipped(
            cid, "root CA CRL not provided: revocation of the intermediate CAs is not checked"
        )
    try:
        crl = c.root_ca_crl_parsed
        assert crl is not None
    except EvidenceParseError as exc:
        return Check.failed(cid, f"root CA CRL malformed: {exc}")
    issuer = next(
        (r for r in roots if r.subject == crl.issuer and _crl_signed_by(crl, r)),
        None,
    )
    if issuer is None:
        return Check.failed(cid, "root CA CRL is not signed by a trusted root")
    used = list(quote.pck_chain[1:]) + [
        chain[0]
        for chain in (c.tcb_info_issuer_chain, c.qe_identity_issuer_chain, c.pck_crl_issuer_chain)
        if chain
    ]
    for cert in used:
        issued_by_root = cert.issuer == issuer.subject and cert.subject != issuer.subject
        if issued_by_root and crl.get_revoked_certificate_by_serial_number(cert.serial_number):
            return Check.failed(cid, f"{_name(cert)!r} is revoked by {_name(issuer)!r}")
    return Check.passed(cid, f"no intermediate used is on {_name(issuer)!r}'s CRL")


def _check_fresh(c: Collateral, now: dt.datetime) -> Check:
    cid = CheckId.TDX_COLLATERAL_FRESH
    try:
        items: list[tuple[str, dt.datetime, dt.datetime | None]] = [
            ("TCB info", c.tcb_info_parsed.issue_date, c.tcb_info_parsed.next_update),
            ("QE identity", c.qe_identity_parsed.issue_date, c.qe_identity_parsed.next_update),
            ("PCK CRL", c.pck_crl_parsed.last_update_utc, c.pck_crl_parsed.next_update_utc),
        ]
        root_crl = c.root_ca_crl_parsed
    except EvidenceParseError as exc:
        return Check.failed(cid, f"collateral malformed: {exc}")
    if root_crl is not None:
        items.append(("root CA CRL", root_crl.last_update_utc, root_crl.next_update_utc))
    problems = []
    for what, issued, next_update in items:
        if now < issued:
            problems.append(f"{what} issued {fmt_time(issued)}, after now")
        elif next_update is None:
            problems.append(f"{what} has no nextUpdate")
        elif now >= next_update:
            problems.append(f"{what} stale since {fmt_time(next_update)}")
    if problems:
        return Check.failed(cid, "; ".join(problems) + f" (now {fmt_time(now)})")
    return Check.passed(
        cid,
        f"all collateral current at {fmt_time(now)}, next update due {fmt_time(c.next_update())}",
    )


def _check_fmspc(quote: Quote, c: Collateral) -> Check:
    cid = CheckId.TDX_FMSPC
    try:
        pck = pck_extensions(quote.pck_leaf)
        info = c.tcb_info_parsed
    except EvidenceParseError as exc:
        return Check.failed(cid, str(exc))
    if pck.fmspc != info.fmspc:
        return Check.failed(
            cid, f"PCK FMSPC {pck.fmspc.hex()} != TCB info FMSPC {info.fmspc.hex()}"
        )
    if pck.pce_id != info.pce_id:
        return Check.failed(
            cid, f"PCK PCE-ID {pck.pce_id.hex()} != TCB info PCE-ID {info.pce_id.hex()}"
        )
    return Check.passed(cid, f"FMSPC {pck.fmspc.hex()}, PCE-ID {pck.pce_id.hex()}")


def _check_tcb(quote: Quote, c: Collateral) -> Check:
    cid = CheckId.TDX_TCB_STATUS
    try:
        result = tcb_status(quote, c)
    except EvidenceParseError as exc:
        return Check.failed(cid, f"collateral malformed: {exc}")
    if result.up_to_date:
        return Check.passed(cid, f"TCB status {TcbStatus.UP_TO_DATE} (TCB date {result.tcb_date})")
    if not result.recognized:
        return Check.failed(cid, f"TCB status {result.status}: {result.error}")
    advisories = ", ".join(result.advisory_ids) or "none"
    return Check.failed(
        cid,
        f"TCB status {result.status} (platform {result.tdx_status}, TDX module "
        f"{result.tdx_module_status}, QE {result.qe_status}; TCB date {result.tcb_date}; "
        f"advisories: {advisories})",
        kind=CheckKind.POLICY,
    )


def _check_qe_identity(quote: Quote, c: Collateral) -> Check:
    cid = CheckId.TDX_QE_IDENTITY_MATCH
    try:
        status, reason, _ = qe_identity_status(quote, c.qe_identity_parsed)
    except EvidenceParseError as exc:
        return Check.failed(cid, f"QE identity malformed: {exc}")
    if status is None:
        return Check.failed(cid, reason)
    return Check.passed(cid, reason)


def check_collateral(
    quote: Quote, c: Collateral, roots: Sequence[x509.Certificate], now: dt.datetime
) -> list[Check]:
    """The collateral rows, in :data:`~enclaved.attestation.checks.COLLATERAL_CHECK_IDS` order."""
    return [
        _check_signed_json(
            CheckId.TDX_TCB_INFO_SIGNATURE,
            "TCB info",
            lambda: c.tcb_info_signed,
            c.tcb_info_issuer_chain,
            roots,
            now,
        ),
        _check_signed_json(
            CheckId.TDX_QE_IDENTITY_SIGNATURE,
            "QE identity",
            lambda: c.qe_identity_signed,
            c.qe_identity_issuer_chain,
            roots,
            now,
        ),
        _check_pck_crl(quote, c, roots, now),
        _check_root_ca_crl(quote, c, roots),
        _check_fresh(c, now),
        _check_fmspc(quote, c),
        _check_tcb(quote, c),
        _check_qe_identity(quote, c),
    ]
