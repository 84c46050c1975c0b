"""Intel TDX evidence: parse a quote, verify it against Intel's roots and collateral.

Three layers (the pipeline of go-tdx-guest):

- :mod:`.parse`: bytes -> frozen :class:`Quote`; structural errors only
  (:class:`~enclaved.errors.EvidenceParseError`).
- :mod:`.verify`: :func:`verify_quote`, the check rows in order:
  :mod:`.quote_checks` (structure, the PCK chain to Intel's pinned root, the
  QE report and quote signatures), then :mod:`.collateral_checks`
  (collateral signatures, CRLs, freshness, FMSPC, TCB status, QE identity),
  which rates the platform with Intel's TCB-level algorithm, :mod:`.tcb`.
- :mod:`.collateral`: what Intel publishes (TCB info, QE identity, CRLs), as
  models; where it comes from: :mod:`.sources` (the source protocol, a
  recorded directory), :mod:`.pcs` (Intel PCS, sync and async drivers) and
  :mod:`.pcs_cache` (its disk cache).

Policy (debug off, measurements, accepted TCB statuses) is not here; see
:mod:`enclaved.attestation.policy`.

Example::

    from enclaved.attestation.tdx import parse_quote, verify_quote, PcsCollateral, collateral_for

    quote = parse_quote(raw)
    checks = verify_quote(quote, collateral=collateral_for(quote, PcsCollateral()), now=now)
"""

from __future__ import annotations

from .collateral import Collateral
from .parse import (
    EnclaveReport,
    PckExtensions,
    Quote,
    QuoteHeader,
    TdAttributes,
    TdReport,
    decode_quote_text,
    parse_quote,
    pck_ca,
    pck_extensions,
    td_attributes_debug,
)
from .pcs import PcsCollateral
from .roots import INTEL_SGX_ROOT_CA_DER, intel_sgx_root_ca
from .sources import CollateralSource, DirectoryCollateral, collateral_for
from .tcb import TcbResult, tcb_status
from .verify import CHECK_IDS, verify_quote

__all__ = [
    "CHECK_IDS",
    "INTEL_SGX_ROOT_CA_DER",
    "Collateral",
    "CollateralSource",
    "DirectoryCollateral",
    "EnclaveReport",
    "PckExtensions",
    "PcsCollateral",
    "Quote",
    "QuoteHeader",
    "TcbResult",
    "TdAttributes",
    "TdReport",
    "collateral_for",
    "decode_quote_text",
    "intel_sgx_root_ca",
    "parse_quote",
    "pck_ca",
    "pck_extensions",
    "tcb_status",
    "td_attributes_debug",
    "verify_quote",
]
