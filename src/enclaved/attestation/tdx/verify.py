"""Is this TDX quote genuine, and what does Intel say about its platform?

:func:`verify_quote` runs every check below on a parsed quote and returns
one :class:`~enclaved.attestation.checks.Check` row per check, in this
order. It never raises for a failed check; it raises
:class:`~enclaved.errors.EvidenceParseError` only when handed bytes that are
not a TDX quote at all.

Check ids (stable; the policy layer and ``docs/verification.md`` use them):

``tdx.quote.structure``
    Quote version 4 or 5, attestation key type 2 (ECDSA-256-with-P-256),
    TEE type 0x81 (TDX), QE vendor id Intel's, certification data type 6
    carrying a type-5 PCK chain.
``tdx.pck.chain``
    The PCK chain in the quote (leaf, intermediate CA [, root]) leads to one
    of ``trust_roots`` (default: Intel's pinned SGX Root CA) under the one
    path validator both verifiers share (:func:`.._x509.path_problem`: each
    signature, each certificate valid at ``now``, each issuer a CA with
    basicConstraints, pathLen and keyUsage keyCertSign, the leaf not a CA).
    A root carried in the quote is only accepted if it is byte-for-byte a
    trusted root.
``tdx.qe_report.signature``
    The PCK leaf key signed the QE report (ECDSA P-256, SHA-256).
``tdx.qe_report.binding``
    QE report_data[0:32] == SHA-256(attestation key || QE auth data) and
    report_data[32:64] is zero: the QE vouches for this attestation key.
``tdx.quote.signature``
    The attestation key signed header [+ v5 body descriptor] + TD report.

With collateral (each is SKIPPED with reason "no collateral" without it):

``tdx.collateral.tcb_info.signature``
    TCB info signed by the first certificate of its issuer chain; that
    certificate is a non-CA issued directly by a trusted root, valid at ``now``.
``tdx.collateral.qe_identity.signature``
    The same for the QE identity.
``tdx.collateral.pck_crl``
    The PCK CRL is signed by its issuer (a CA allowed to sign CRLs, issued
    directly by a trusted root, valid at ``now``), that issuer is the CA
    that issued the PCK leaf,
    and the PCK leaf's serial number is not on it.
``tdx.collateral.root_ca_crl``
    The root CA CRL is signed by a trusted root and revokes none of the
    intermediate certificates used (PCK CA, TCB signer, CRL signer).
    SKIPPED, with the reason, when the collateral has no root CA CRL.
``tdx.collateral.fresh``
    issueDate/thisUpdate <= now < nextUpdate for TCB info, QE identity, the
    PCK CRL and (when present) the root CA CRL.
``tdx.fmspc``
    FMSPC and PCE-ID of the PCK leaf == those of the TCB info.
``tdx.tcb.status``
    Intel's TCB level selection (see :func:`tcb_status`). Passes only for
    ``UpToDate``; any other Intel status fails with ``kind="policy"`` (the
    policy layer may accept it), with the status and advisory ids in the
    reason. No matching level, a TDX module mismatch, or TCB info that is
    not TDX v3 fails with ``kind="verification"``.
``tdx.qe_identity.match``
    The QE report matches the QE identity (``TD_QE``): MRSIGNER, ISVPRODID,
    MISCSELECT and ATTRIBUTES under their masks, and its ISVSVN reaches a
    TCB level; the reason names that level's status (which also feeds
    ``tdx.tcb.status``).

NOT checked here (policy's job, :mod:`enclaved.attestation.policy`): TD
attributes (debug), measurements (MRTD, RTMRs), REPORTDATA contents, and
which non-``UpToDate`` statuses or advisories are acceptable. Not
implemented: the TD 1.5 "relaunch advised" evaluation (``tee_tcb_svn2``),
and SGX (non-TDX) quotes.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
from collections.abc import Callable, Sequence

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from ...errors import EvidenceParseError
from .._x509 import cert_name, path_problem
from ..checks import (
    COLLATERAL_CHECK_IDS,
    INTEL_TCB_STATUSES,
    Check,
    CheckId,
    CheckKind,
    TcbStatus,
)
from .collateral import Collateral, QeIdentity, TcbInfo, TcbLevel
from .parse import (
    ATT_KEY_TYPE_ECDSA_P256,
    CERT_DATA_PCK_CHAIN,
    CERT_DATA_QE_REPORT,
    INTEL_QE_VENDOR_ID,
    TEE_TYPE_TDX,
    Quote,
    parse_quote,
    pck_extensions,
)
from .roots import intel_sgx_root_ca

__all__ = [
    "CHECK_IDS",
    "COLLATERAL_CHECK_IDS",
    "UP_TO_DATE",
    "TcbResult",
    "qe_identity_status",
    "tcb_status",
    "verify_quote",
]

#: Kept for callers of the old name: :attr:`TcbStatus.UP_TO_DATE`.
UP_TO_DATE = TcbStatus.UP_TO_DATE
#: The ids :func:`verify_quote` reports, in order (the last eight need collateral).
CHECK_IDS: tuple[CheckId, ...] = (
    CheckId.TDX_QUOTE_STRUCTURE,
    CheckId.TDX_PCK_CHAIN,
    CheckId.TDX_QE_REPORT_SIGNATURE,
    CheckId.TDX_QE_REPORT_BINDING,
    CheckId.TDX_QUOTE_SIGNATURE,
    *COLLATERAL_CHECK_IDS,
)


# --- small crypto helpers -----------------------------------------------------------


def _raw_sig_to_der(sig: bytes) -> bytes:
    """Intel's r||s (32 + 32 bytes, big-endian) -> the DER form cryptography verifies."""
    return encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))


def _ecdsa_ok(key: object, sig: bytes, data: bytes) -> bool:
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        return False
    if len(sig) != 64:
        return False
    try:
        key.verify(_raw_sig_to_der(sig), data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _crl_signed_by(crl: x509.CertificateRevocationList, cert: x509.Certificate) -> bool:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return False  # Intel's PKI is P-256 throughout
    return crl.is_signature_valid(key)


_name = cert_name


def _fmt_time(t: dt.datetime | None) -> str:
    return "never" if t is None else t.strftime("%Y-%m-%dT%H:%M:%SZ")


# --- TCB status (Intel's algorithm) --------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TcbResult:
    """The TCB status of a TDX platform, as Intel's collateral rates it.

    ``status`` is one of Intel's TCB statuses (``UpToDate``,
    ``SWHardeningNeeded``, ``ConfigurationNeeded``,
    ``ConfigurationAndSWHardeningNeeded``, ``OutOfDate``,
    ``OutOfDateConfigurationNeeded``, ``Revoked``) when a level was selected,
    else ``TcbNotSupported`` (no level matches) or ``TdxModuleMismatch``;
    ``error`` then says why. The component statuses show how it was reached.
    """

    status: str
    advisory_ids: tuple[str, ...] = ()
    tcb_date: str | None = None
    platform_status: str | None = None
    tdx_status: str | None = None
    tdx_module_status: str | None = None
    qe_status: str | None = None
    error: str | None = None

    @property
    def up_to_date(self) -> bool:
        return self.status == TcbStatus.UP_TO_DATE

    @property
    def recognized(self) -> bool:
        """True when ``status`` is one of Intel's statuses (a policy may then accept it)."""
        return self.status in INTEL_TCB_STATUSES


def _converge(level_status: str, other: str | None) -> str:
    """Fold a TDX module's or the QE's status into a platform status (Intel's rules)."""
    if other == TcbStatus.OUT_OF_DATE:
        if level_status in (TcbStatus.UP_TO_DATE, TcbStatus.SW_HARDENING_NEEDED):
            return TcbStatus.OUT_OF_DATE
        if level_status in (
            TcbStatus.CONFIGURATION_NEEDED,
            TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED,
        ):
            return TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED
    if other == TcbStatus.REVOKED:
        return TcbStatus.REVOKED
    return level_status


def _merge(*groups: Sequence[str]) -> tuple[str, ...]:
    out: list[str] = []
    for group in groups:
        out.extend(a for a in group if a not in out)
    return tuple(out)


def qe_identity_status(
    quote: Quote, identity: QeIdentity
) -> tuple[str | None, str, tuple[str, ...]]:
    """Match the QE report against the QE identity.

    Returns (status or None when it does not match, reason, advisory ids).
    """
    qe = quote.qe_report
    if identity.id != "TD_QE":
        return None, f"QE identity is {identity.id!r}, expected 'TD_QE'", ()
    if qe.mrsigner != identity.mrsigner:
        return None, f"QE MRSIGNER {qe.mrsigner.hex()} != {identity.mrsigner.hex()}", ()
    if qe.isvprodid != identity.isvprodid:
        return None, f"QE ISVPRODID {qe.isvprodid} != {identity.isvprodid}", ()
    if qe.miscselect & identity.miscselect_mask != identity.miscselect & identity.miscselect_mask:
        return None, f"QE MISCSELECT {qe.miscselect:#010x} does not match under the mask", ()
    masked = bytes(a & m for a, m in zip(qe.attributes, identity.attributes_mask))
    expected = bytes(a & m for a, m in zip(identity.attributes, identity.attributes_mask))
    if masked != expected:
        return None, f"QE ATTRIBUTES {qe.attributes.hex()} do not match under the mask", ()
    for level in identity.tcb_levels:
        if qe.isvsvn >= level.isvsvn:
            return (
                level.status,
                f"QE ISVSVN {qe.isvsvn} -> level {level.isvsvn}: {level.status}",
                level.advisory_ids,
            )
    return None, f"QE ISVSVN {qe.isvsvn} is below every QE TCB level", ()


def _tdx_ge(tee_tcb_svn: bytes, level: TcbLevel) -> bool:
    # With a TDX module major version (TEE_TCB_SVN[1] > 0), bytes 0-1 are the
    # module's SVN and version: judged by the module identity, not here.
    start = 2 if tee_tcb_svn[1] > 0 else 0
    return all(tee_tcb_svn[i] >= level.tdx_components[i] for i in range(start, 16))


def _module_status(quote: Quote, info: TcbInfo) -> tuple[str, str | None, tuple[str, ...]]:
    """(TDX module status, problem, advisory ids): Intel's TDX module identity check."""
    body = quote.body
    version, svn = body.tdx_module_version, body.tdx_module_svn
    if version == 0:
        identity = info.tdx_module
        if identity is not None:
            problem = _module_identity_problem(
                quote, identity.mrsigner, identity.attributes, identity.attributes_mask
            )
            if problem:
                return TcbStatus.TDX_MODULE_MISMATCH, problem, ()
        return TcbStatus.UP_TO_DATE, None, ()
    want = f"TDX_{version:02X}"
    for identity in info.tdx_module_identities:
        if identity.id.upper() == want:
            break
    else:
        return TcbStatus.TDX_MODULE_MISMATCH, f"TCB info has no TDX module identity {want}", ()
    problem = _module_identity_problem(
        quote, identity.mrsigner, identity.attributes, identity.attributes_mask
    )
    if problem:
        return TcbStatus.TDX_MODULE_MISMATCH, problem, ()
    for level in identity.tcb_levels:
        if svn >= level.isvsvn:
            return level.status, None, level.advisory_ids
    return (
        TcbStatus.TCB_NOT_SUPPORTED,
        f"TDX module {want} SVN {svn} is below every module TCB level",
        (),
    )


def _module_identity_problem(
    quote: Quote, mrsigner: bytes, attrs: bytes, mask: bytes
) -> str | None:
    body = quote.body
    if body.mrsignerseam != mrsigner:
        return f"MRSIGNERSEAM {body.mrsignerseam.hex()} != TDX module identity {mrsigner.hex()}"
    if bytes(a & m for a, m in zip(body.seam_attributes, mask)) != bytes(
        a & m for a, m in zip(attrs, mask)
    ):
        return f"SEAMATTRIBUTES {body.seam_attributes.hex()} do not match the TDX module identity"
    return None


def tcb_status(quote: Quote, collateral: Collateral) -> TcbResult:
    """Intel's TCB evaluation for a TDX quote (TDX DCAP QVL, "TCB level check").

    1. TCB info must be TDX (``id`` "TDX", version >= 3).
    2. Walk the TCB levels, highest first. The SGX level is the first whose
       16 SGX components and PCESVN are all <= the PCK certificate's. The
       TDX level is the first such level whose 16 TDX components are also
       <= the quote's TEE_TCB_SVN (bytes 0-1 skipped when TEE_TCB_SVN[1] > 0).
    3. The TDX module identity ``TDX_<TEE_TCB_SVN[1]>``: MRSIGNERSEAM and
       SEAMATTRIBUTES must match; its level is the first whose ISVSVN <=
       TEE_TCB_SVN[0]. An ``OutOfDate``/``Revoked`` module folds into the status.
    4. The QE identity's level (by QE ISVSVN) folds in the same way.

    Does not verify any signature: call it on collateral :func:`verify_quote`
    accepted. Raises EvidenceParseError when the collateral is malformed.
    """
    info = collateral.tcb_info_parsed
    # 1.
    if info.id != "TDX" or info.version < 3:
        return TcbResult(
            TcbStatus.TCB_NOT_SUPPORTED, error=f"TCB info is {info.id} v{info.version}, not TDX v3"
        )
    pck = pck_extensions(quote.pck_leaf)
    tee = quote.body.tee_tcb_svn
    # 2.
    sgx_level: TcbLevel | None = None
    tdx_level: TcbLevel | None = None
    for level in info.tcb_levels:
        if pck.pcesvn >= level.pcesvn and all(
            c >= want for c, want in zip(pck.tcb_components, level.sgx_components)
        ):
            sgx_level = sgx_level or level
            if _tdx_ge(tee, level):
                tdx_level = level
                break
    if sgx_level is None:
        return TcbResult(
            TcbStatus.TCB_NOT_SUPPORTED,
            error="no TCB level matches the PCK certificate's SGX TCB and PCESVN",
        )
    if tdx_level is None:
        return TcbResult(
            TcbStatus.TCB_NOT_SUPPORTED,
            platform_status=sgx_level.status,
            error=f"no TCB level matches TEE_TCB_SVN {tee.hex()}",
        )
    # 3.
    module, problem, module_advisories = _module_status(quote, info)
    if module in (TcbStatus.TDX_MODULE_MISMATCH, TcbStatus.TCB_NOT_SUPPORTED):
        return TcbResult(
            module, platform_status=sgx_level.status, tdx_status=tdx_level.status, error=problem
        )
    status = _converge(tdx_level.status, module)
    # 4.
    qe_status, qe_reason, qe_advisories = qe_identity_status(quote, collateral.qe_identity_parsed)
    if qe_status is None:
        return TcbResult(
            TcbStatus.TCB_NOT_SUPPORTED,
            platform_status=sgx_level.status,
            tdx_status=tdx_level.status,
            tdx_module_status=module,
            error=qe_reason,
        )
    status = _converge(status, qe_status)
    return TcbResult(
        status=status,
        advisory_ids=_merge(tdx_level.advisory_ids, module_advisories, qe_advisories),
        tcb_date=tdx_level.tcb_date,
        platform_status=sgx_level.status,
        tdx_status=tdx_level.status,
        tdx_module_status=module,
        qe_status=qe_status,
    )


# --- the checks -------------------------------------------------------------------------


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
        f"{_fmt_time(now)}",
    )


def _check_qe_report_signature(quote: Quote) -> Check:
    cid = CheckId.TDX_QE_REPORT_SIGNATURE
    try:
        key = quote.pck_leaf.public_key()
    except ValueError as exc:
        return Check.failed(cid, f"PCK leaf key unusable: {exc}")
    cd = quote.signature_data.certification_data
    if _ecdsa_ok(key, cd.qe_report_signature, cd.qe_report.raw):
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
    if _ecdsa_ok(key, quote.signature_data.quote_signature, quote.signed_region):
        return Check.passed(
            cid, f"attestation key signed the {len(quote.signed_region)}-byte header and body"
        )
    return Check.failed(cid, "quote signature does not verify under the attestation key")


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
    if not _ecdsa_ok(chain[0].public_key(), signature, data):
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
            f"{_fmt_time(revoked.revocation_date_utc)}",
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
            problems.append(f"{what} issued {_fmt_time(issued)}, after now")
        elif next_update is None:
            problems.append(f"{what} has no nextUpdate")
        elif now >= next_update:
            problems.append(f"{what} stale since {_fmt_time(next_update)}")
    if problems:
        return Check.failed(cid, "; ".join(problems) + f" (now {_fmt_time(now)})")
    return Check.passed(
        cid,
        f"all collateral current at {_fmt_time(now)}, next update due {_fmt_time(c.next_update())}",
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


def verify_quote(
    quote: Quote | bytes,
    *,
    trust_roots: Sequence[x509.Certificate] | None = None,
    collateral: Collateral | None,
    now: dt.datetime | None = None,
) -> list[Check]:
    """Verify a TDX quote; one :class:`Check` per id in :data:`CHECK_IDS`, in that order.

    ``trust_roots`` defaults to Intel's pinned SGX Root CA. ``now`` defaults
    to the current time (pass it for reproducible results). Raises
    EvidenceParseError only if ``quote`` is bytes that do not parse.

    >>> checks = verify_quote(quote_bytes, collateral=collateral, now=when)  # doctest: +SKIP
    >>> [c.id for c in checks if c.status != "pass"]  # doctest: +SKIP
    []
    """
    if not isinstance(quote, Quote):
        quote = parse_quote(quote)
    roots = list(trust_roots) if trust_roots is not None else [intel_sgx_root_ca()]
    if now is None:
        now = dt.datetime.now(dt.UTC)
    elif now.tzinfo is None:
        raise ValueError("now must be timezone-aware")

    checks = [
        _check_structure(quote),
        _check_pck_chain(quote, roots, now),
        _check_qe_report_signature(quote),
        _check_qe_binding(quote),
        _check_quote_signature(quote),
    ]
    if collateral is None:
        checks.extend(Check.skipped(cid, "no collateral") for cid in COLLATERAL_CHECK_IDS)
        return checks
    c = collateral
    checks += [
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
    return checks
