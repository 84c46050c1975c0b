"""Attestation: evidence in, verdict out.

::

    from enclaved.attestation import AttestationReport, Policy, Verifier

    report = AttestationReport.from_json(body)          # structure only
    verifier = Verifier(Policy.strict())
    fetched = verifier.fetch(report)                     # Intel PCS (await verifier.afetch(report) in async code)
    verdict = verifier.verify(report, nonce=my_nonce, fetched=fetched)  # pure: no socket
    print(verdict.table())                               # one row per check
    verdict.raise_for_status()                           # VerificationError / PolicyError

Layers (each says what it does NOT check): :mod:`.document` parses the
report; :mod:`.tdx` verifies the Intel TDX quote and its collateral;
:mod:`.nvidia` the GPU evidence; :mod:`.binding` REPORTDATA, the signing key
and the nonce; :mod:`.eventlog` and :mod:`.measurements` the event log and
what it measures; :mod:`.policy` decides what is required; :mod:`.verifier`
runs them all; :mod:`.formats` runs it on every TD of NEAR AI cloud's and
Chutes' documents (:func:`verify_document`). Check ids are documented in ``docs/verification.md``.
"""

from __future__ import annotations

from .checks import Check, Status, Verdict
from .document import AttestationReport
from .formats import DocumentVerdict, detect_format, verify_document
from .policy import InsecurePolicyWarning, Policy
from .verifier import (
    AttestationVerdict,
    Fetched,
    Verifier,
    verify_attestation,
)

__all__ = [
    "AttestationReport",
    "AttestationVerdict",
    "Check",
    "DocumentVerdict",
    "Fetched",
    "InsecurePolicyWarning",
    "Policy",
    "Status",
    "Verdict",
    "Verifier",
    "detect_format",
    "verify_attestation",
    "verify_document",
]
