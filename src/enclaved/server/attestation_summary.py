"""``server_verification``: the node's own verdict, as the attestation report carries it.

A server wire format, so it lives with the server: the verifier produces an
:class:`~enclaved.attestation.AttestationVerdict` (rows plus the facts they
were reached on), and this module summarizes it factor by factor in the
production service's field names (``tdx{valid, signatureValid,
certificateChainValid, ...}``, ``nvidia{...}``, ``signingAddressBinding``,
``nonceBinding``, ``verifiedAt``), plus ``ok`` and our own ``checks`` list,
so a client can see exactly which rows held.

The shapes are :class:`~typing.TypedDict`\\ s: the JSON is the dict as built
here, key order included (clients and tests compare it byte for byte).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, TypedDict

from ..attestation.checks import Check, CheckId, GpuCheck, Status
from ..attestation.document import AttestationReport
from ..attestation.verifier import AttestationVerdict


class Measurements(TypedDict):
    mrtd: str | None
    mrconfigid: str | None
    mrowner: str | None
    mrownerconfig: str | None
    rtmr0: str | None
    rtmr1: str | None
    rtmr2: str | None
    rtmr3: str | None
    tdAttributes: str | None
    xfam: str | None


class CrlCheck(TypedDict):
    checked: bool
    revoked: bool


class TdxSummary(TypedDict):
    valid: bool
    signatureValid: bool
    certificateChainValid: bool
    rootCaPinned: bool
    attestationKeyMatch: bool
    tcbStatus: str | None
    debug: bool
    reportData: str | None
    measurements: Measurements
    crlCheck: CrlCheck


class CertificateChainStatus(TypedDict):
    valid: bool


class NvidiaSummary(TypedDict):
    valid: bool
    present: bool
    signatureVerified: bool
    certificateChainStatus: CertificateChainStatus
    gpuCount: int
    architectures: list[str]


class SigningAddressBinding(TypedDict):
    bound: bool
    reportDataAddress: str | None
    signingKeyMatches: bool


class NonceBinding(TypedDict):
    bound: bool
    method: str


class EventLogSummary(TypedDict):
    replayed: bool
    runtimeDigests: bool
    composeHashBound: bool


class ServerVerification(TypedDict):
    ok: bool
    tdx: TdxSummary
    #: ``None`` without GPU evidence (not applicable), never ``valid: false``.
    nvidia: NvidiaSummary | None
    signingAddressBinding: SigningAddressBinding
    nonceBinding: NonceBinding
    nvidiaNonceBinding: NonceBinding | None
    eventLog: EventLogSummary
    verifiedAt: str | None
    verificationDurationMs: int
    relaxations: list[str]
    checks: list[dict[str, Any]]


def server_verification(verdict: AttestationVerdict) -> ServerVerification:
    """Summarize ``verdict`` as the report's ``server_verification`` field.

    Without GPU evidence ``nvidia`` and ``nvidiaNonceBinding`` are ``null``
    (not applicable), never ``valid: false``: clients written for the
    production service (the npm ``venice-e2ee``) read ``nvidia.valid ==
    false`` as a failed GPU attestation and refuse the node.
    """

    def prefixed(prefix: str) -> list[Check]:
        return [c for c in verdict if c.id.startswith(prefix)]

    def passed(*ids: str) -> bool:
        rows = [verdict.get(i) for i in ids]
        return all(r is not None and r.status is Status.PASS for r in rows)

    tdx_rows = prefixed("tdx.") + prefixed("policy.td_attributes")
    fields = verdict.quote_fields
    crl = verdict.get(CheckId.TDX_PCK_CRL)
    nvidia_rows = [c for c in prefixed("nvidia.") if not c.id.startswith(CheckId.NVIDIA_NRAS)]
    nvidia_present = any(c.status is not Status.SKIPPED for c in nvidia_rows)
    rd = fields.get("report_data", b"")

    def all_nvidia_pass(what: GpuCheck) -> bool:
        # ``.nonce`` also matches nvidia.payload.nonce: both nonces count.
        return nvidia_present and all(
            c.status is Status.PASS for c in nvidia_rows if c.id.endswith(f".{what}")
        )

    tdx: TdxSummary = {
        "valid": bool(tdx_rows) and all(c.ok for c in tdx_rows),
        "signatureValid": passed(CheckId.TDX_QUOTE_SIGNATURE, CheckId.TDX_QE_REPORT_SIGNATURE),
        "certificateChainValid": passed(CheckId.TDX_PCK_CHAIN),
        "rootCaPinned": passed(CheckId.TDX_PCK_CHAIN),
        "attestationKeyMatch": passed(CheckId.TDX_QE_REPORT_BINDING),
        "tcbStatus": verdict.tcb_status,
        "debug": (
            verdict.get(CheckId.POLICY_TD_DEBUG) is not None and not passed(CheckId.POLICY_TD_DEBUG)
        ),
        "reportData": rd.hex() if rd else None,
        "measurements": {
            "mrtd": _hex(fields.get("mrtd")),
            "mrconfigid": _hex(fields.get("mrconfigid")),
            "mrowner": _hex(fields.get("mrowner")),
            "mrownerconfig": _hex(fields.get("mrownerconfig")),
            "rtmr0": _hex(fields.get("rtmr0")),
            "rtmr1": _hex(fields.get("rtmr1")),
            "rtmr2": _hex(fields.get("rtmr2")),
            "rtmr3": _hex(fields.get("rtmr3")),
            "tdAttributes": _hex(fields.get("td_attributes")),
            "xfam": _hex(fields.get("xfam")),
        },
        "crlCheck": {
            "checked": crl is not None and crl.status is not Status.SKIPPED,
            "revoked": crl is not None and crl.status is Status.FAIL,
        },
    }
    nvidia: NvidiaSummary | None = None
    nvidia_nonce: NonceBinding | None = None
    if nvidia_present:
        nvidia = {
            "valid": all(c.ok for c in nvidia_rows),
            "present": True,
            "signatureVerified": all_nvidia_pass(GpuCheck.SPDM_SIGNATURE),
            "certificateChainStatus": {"valid": all_nvidia_pass(GpuCheck.CERT_CHAIN)},
            "gpuCount": verdict.gpu_count,
            "architectures": sorted(set(verdict.gpu_architectures)),
        }
        nvidia_nonce = {"bound": all_nvidia_pass(GpuCheck.NONCE), "method": "nvidia_payload"}
    verified_at = verdict.verified_at
    return {
        "ok": verdict.ok,
        "tdx": tdx,
        "nvidia": nvidia,
        "signingAddressBinding": {
            "bound": passed(CheckId.BINDING_IDENTITY),
            "reportDataAddress": _report_data_identity(verdict.report, rd),
            "signingKeyMatches": passed(CheckId.BINDING_SIGNING_KEY),
        },
        "nonceBinding": {"bound": passed(CheckId.BINDING_NONCE), "method": "raw"},
        "nvidiaNonceBinding": nvidia_nonce,
        "eventLog": {
            "replayed": passed(CheckId.EVENTLOG_REPLAY),
            "runtimeDigests": passed(CheckId.EVENTLOG_RTMR3_DIGESTS),
            "composeHashBound": passed(
                CheckId.MEASUREMENTS_COMPOSE_HASH, CheckId.MEASUREMENTS_MRCONFIGID
            ),
        },
        "verifiedAt": _iso_ms(verified_at) if verified_at else None,
        "verificationDurationMs": verdict.duration_ms,
        "relaxations": list(verdict.relaxations),
        "checks": [c.to_dict() for c in verdict],
    }


def _report_data_identity(report: AttestationReport | None, rd: bytes) -> str | None:
    """What REPORTDATA[0:32] holds, in the form the document uses for the identity."""
    if not rd:
        return None
    if (
        report is not None
        and report.signing_algo == "ecdsa"
        and report.tls_cert_fingerprint is None
    ):
        return "0x" + rd[:20].hex()
    return rd[:32].hex()


def _hex(value: bytes | None) -> str | None:
    return value.hex() if value is not None else None


def _iso_ms(when: datetime) -> str:
    """``2026-04-24T01:58:32.849Z``, the production service's format."""
    utc = when.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


__all__ = ["ServerVerification", "server_verification"]
