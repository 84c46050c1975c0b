"""Intel's TCB-level algorithm: how Intel's collateral rates a TDX platform.

:func:`tcb_status` follows Intel's TDX DCAP quote verification library
("TCB level check"): the TCB level of the platform (PCK certificate SGX
components and PCESVN, then the quote's TEE_TCB_SVN), the TDX module's
identity and level, the quoting enclave's (:func:`qe_identity_status`),
folded into one :class:`~enclaved.attestation.checks.TcbStatus`.

Pure: it verifies no signature (:mod:`.collateral_checks` does, and calls
this on collateral it accepted) and makes no policy decision (which statuses
are acceptable is :mod:`enclaved.attestation.policy`'s).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from ..checks import INTEL_TCB_STATUSES, TcbStatus
from .collateral import Collateral, QeIdentity, TcbInfo, TcbLevel
from .parse import Quote, pck_extensions


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
    masked = bytes(a & m for a, m in zip(qe.attributes, identity.attributes_mask, strict=True))
    expected = bytes(
        a & m for a, m in zip(identity.attributes, identity.attributes_mask, strict=True)
    )
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
    if bytes(a & m for a, m in zip(body.seam_attributes, mask, strict=True)) != bytes(
        a & m for a, m in zip(attrs, mask, strict=True)
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
            c >= want for c, want in zip(pck.tcb_components, level.sgx_components, strict=True)
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


__all__ = ["TcbResult", "qe_identity_status", "tcb_status"]
