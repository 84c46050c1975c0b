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

import datetime as dt
from collections.abc import Sequence

from cryptography import x509

from ..checks import COLLATERAL_CHECK_IDS, Check, CheckId
from .collateral import Collateral
from .collateral_checks import check_collateral
from .parse import Quote, parse_quote
from .quote_checks import check_quote
from .roots import intel_sgx_root_ca

__all__ = [
    "CHECK_IDS",
    "COLLATERAL_CHECK_IDS",
    "verify_quote",
]

#: The ids :func:`verify_quote` reports, in order (the last eight need collateral).
CHECK_IDS: tuple[CheckId, ...] = (
    CheckId.TDX_QUOTE_STRUCTURE,
    CheckId.TDX_PCK_CHAIN,
    CheckId.TDX_QE_REPORT_SIGNATURE,
    CheckId.TDX_QE_REPORT_BINDING,
    CheckId.TDX_QUOTE_SIGNATURE,
    *COLLATERAL_CHECK_IDS,
)


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

    checks = check_quote(quote, roots, now)
    if collateral is None:
        checks.extend(Check.skipped(cid, "no collateral") for cid in COLLATERAL_CHECK_IDS)
        return checks
    return checks + check_collateral(quote, collateral, roots, now)
