"""The verdict: one row per check, shared by every verifier.

Every verifier in :mod:`enclaved.attestation` reports what it looked at as
:class:`Check` rows - pass, fail or skipped, with a reason that names the
values compared - and never raises for a failed check. Whether a failed or
skipped row matters is the policy's decision (:mod:`.policy`), recorded in
``enforced``. Raising is reserved for the caller that turns a verdict into an
exception (:meth:`Verdict.raise_for_status`).

Check ids are dotted, stable, and documented in ``docs/verification.md``:
:class:`CheckId` names every one once (per-GPU rows through
:func:`gpu_check_id` / :func:`nras_gpu_check_id`), :class:`CheckKind` what
kind of failure a row is, :class:`TcbStatus` Intel's TCB statuses. They are
StrEnums, so the verdict's JSON and table read the same
strings as before, and a row's id still compares equal to its text. They
live here, in a module that imports nothing heavy, so that the policy and
the client can name ids without loading the TDX or NVIDIA layers.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from collections.abc import Iterable, Iterator
from typing import Any


class CheckId(enum.StrEnum):
    """Every check id a verdict can hold, in ``docs/verification.md``'s order.

    GPU rows carry the GPU's index and are not members: see
    :func:`gpu_check_id` and :func:`nras_gpu_check_id`.
    """

    # 1. The document.
    REPORT_NONCE = "report.nonce"
    REPORT_VERIFIED_FLAG = "report.verified_flag"
    # 2. The TDX quote (tdx/), then its collateral.
    TDX_QUOTE_STRUCTURE = "tdx.quote.structure"
    TDX_PCK_CHAIN = "tdx.pck.chain"
    TDX_QE_REPORT_SIGNATURE = "tdx.qe_report.signature"
    TDX_QE_REPORT_BINDING = "tdx.qe_report.binding"
    TDX_QUOTE_SIGNATURE = "tdx.quote.signature"
    TDX_TCB_INFO_SIGNATURE = "tdx.collateral.tcb_info.signature"
    TDX_QE_IDENTITY_SIGNATURE = "tdx.collateral.qe_identity.signature"
    TDX_PCK_CRL = "tdx.collateral.pck_crl"
    TDX_ROOT_CA_CRL = "tdx.collateral.root_ca_crl"
    TDX_COLLATERAL_FRESH = "tdx.collateral.fresh"
    TDX_FMSPC = "tdx.fmspc"
    TDX_TCB_STATUS = "tdx.tcb.status"
    TDX_QE_IDENTITY_MATCH = "tdx.qe_identity.match"
    POLICY_QUOTE_VERSION = "policy.quote_version"
    # 3. TD attributes.
    POLICY_TD_DEBUG = "policy.td_attributes.debug"
    POLICY_TD_SEPT_VE_DISABLE = "policy.td_attributes.sept_ve_disable"
    POLICY_TD_MIGRATABLE = "policy.td_attributes.migratable"
    # 4-5. Binding.
    BINDING_IDENTITY = "binding.report_data.identity"
    BINDING_NONCE = "binding.report_data.nonce"
    BINDING_SIGNING_KEY = "binding.signing_key"
    # 6. Event log and measurements.
    EVENTLOG_REPLAY = "eventlog.replay"
    EVENTLOG_RTMR3_DIGESTS = "eventlog.rtmr3_digests"
    MEASUREMENTS_COMPOSE_HASH = "measurements.compose_hash"
    MEASUREMENTS_MRCONFIGID = "measurements.mrconfigid"
    REPORT_INFO = "report.info"
    POLICY_MRTD = "policy.mrtd"
    POLICY_RTMR0 = "policy.rtmr0"
    POLICY_RTMR1 = "policy.rtmr1"
    POLICY_RTMR2 = "policy.rtmr2"
    POLICY_MRSEAM = "policy.mrseam"
    POLICY_COMPOSE_HASH = "policy.compose_hash"
    POLICY_OS_IMAGE_HASH = "policy.os_image_hash"
    POLICY_APP_ID = "policy.app_id"
    # 7-8. NVIDIA GPUs (per-GPU rows: gpu_check_id, nras_gpu_check_id).
    NVIDIA_PAYLOAD_NONCE = "nvidia.payload.nonce"
    NVIDIA_GPUS = "nvidia.gpus"
    POLICY_NVIDIA_GPU_COUNT = "policy.nvidia.gpu_count"
    POLICY_NVIDIA_ARCH = "policy.nvidia.arch"
    NVIDIA_NRAS = "nvidia.nras"
    # The client's own rows (client/_attest.py; docs/client.md).
    CLIENT_SIMULATED_TEE = "client.simulated_tee"
    CLIENT_MODEL = "client.model"
    CLIENT_E2EE_KEY = "client.e2ee_key"
    # The other services' formats (formats.py; docs/verification.md).
    NEARCLOUD_GATEWAY_TLS_CERTIFICATE = "nearcloud.gateway.tls_certificate"
    NEARCLOUD_GATEWAY_MODEL_BINDING = "nearcloud.gateway.model_binding"
    NEARCLOUD_MODEL_OHTTP_KEY = "nearcloud.model.ohttp_key"
    NEARCLOUD_CM_ACTIONS_HASH = "nearcloud.compose_manager.actions_hash"
    NEARCLOUD_CM_ACTIONS = "nearcloud.compose_manager.actions"
    NEARCLOUD_CM_SAME_TD = "nearcloud.compose_manager.same_td"
    CHUTES_NONCE_ECHO = "chutes.nonce_echo"
    CHUTES_E2E_KEY_NONCE = "chutes.report_data.e2e_key_nonce"
    CHUTES_CERTIFICATE = "chutes.report_data.certificate"
    CHUTES_E2E_KEY = "chutes.e2e_key"
    ACI_NONCE_ECHO = "aci.nonce_echo"
    ACI_KEYSET_DIGEST = "aci.keyset_digest"
    ACI_WORKLOAD_ID = "aci.workload_id"
    ACI_REPORT_DATA = "aci.report_data"
    ACI_ENDORSEMENT = "aci.keyset_endorsement"
    ACI_KEYSET_EXPIRY = "aci.keyset_expiry"
    ACI_PROVENANCE = "aci.provenance"
    ACI_KEY_CUSTODY = "aci.key_custody"
    ACI_CHANNEL = "aci.channel"
    ACI_RECEIPT_SIGNATURE = "aci.receipt.signature"
    ACI_RECEIPT_DOCUMENT = "aci.receipt.document"
    ACI_RECEIPT_REQUEST = "aci.receipt.request"
    ACI_RECEIPT_RESPONSE = "aci.receipt.response"
    ACI_RECEIPT_REWRITE = "aci.receipt.rewrite"


class GpuCheck(enum.StrEnum):
    """What one GPU's rows check: ``nvidia.gpu[i].<this>``."""

    CERT_CHAIN = "cert_chain"
    SPDM_SIGNATURE = "spdm.signature"
    NONCE = "nonce"
    FWID = "fwid"


def gpu_check_id(index: int, check: GpuCheck) -> str:
    """``nvidia.gpu[<index>].<check>``: one GPU's row."""
    return f"nvidia.gpu[{index}].{check}"


def nras_gpu_check_id(index: int) -> str:
    """``nvidia.nras.gpu[<index>]``: NRAS's token for one GPU."""
    return f"nvidia.nras.gpu[{index}]"


#: The tdx layer's rows that need Intel's collateral; skipped without it.
COLLATERAL_CHECK_IDS: tuple[CheckId, ...] = (
    CheckId.TDX_TCB_INFO_SIGNATURE,
    CheckId.TDX_QE_IDENTITY_SIGNATURE,
    CheckId.TDX_PCK_CRL,
    CheckId.TDX_ROOT_CA_CRL,
    CheckId.TDX_COLLATERAL_FRESH,
    CheckId.TDX_FMSPC,
    CheckId.TDX_TCB_STATUS,
    CheckId.TDX_QE_IDENTITY_MATCH,
)


class CheckKind(enum.StrEnum):
    """What kind of failure a row is when it fails."""

    #: Crypto, chains, bindings, replay: the evidence is not what it claims.
    VERIFICATION = "verification"
    #: Authentic evidence with values outside what the policy allows.
    POLICY = "policy"


class TcbStatus(enum.StrEnum):
    """A platform's TCB status: Intel's (PCS TCB info, ``tcbStatus``), then two of our own."""

    UP_TO_DATE = "UpToDate"
    SW_HARDENING_NEEDED = "SWHardeningNeeded"
    CONFIGURATION_NEEDED = "ConfigurationNeeded"
    CONFIGURATION_AND_SW_HARDENING_NEEDED = "ConfigurationAndSWHardeningNeeded"
    OUT_OF_DATE = "OutOfDate"
    OUT_OF_DATE_CONFIGURATION_NEEDED = "OutOfDateConfigurationNeeded"
    REVOKED = "Revoked"
    #: Ours: Intel's algorithm found no TCB level for the platform.
    TCB_NOT_SUPPORTED = "TcbNotSupported"
    #: Ours: the quote's TDX module matches no module identity in the TCB info.
    TDX_MODULE_MISMATCH = "TdxModuleMismatch"


#: The statuses Intel publishes (a TCB level's ``tcbStatus``), as plain strings.
INTEL_TCB_STATUSES: frozenset[str] = frozenset(
    s.value
    for s in TcbStatus
    if s not in (TcbStatus.TCB_NOT_SUPPORTED, TcbStatus.TDX_MODULE_MISMATCH)
)


class Status(str, enum.Enum):  # noqa: UP042 - str() and format() of a status are in printed output; kept as they were
    PASS = "pass"
    FAIL = "fail"
    SKIPPED = "skipped"


@dataclasses.dataclass(frozen=True)
class Check:
    """One verification step and its outcome."""

    #: A :class:`CheckId`, or a per-GPU id (:func:`gpu_check_id`).
    id: str
    status: Status
    reason: str = ""
    enforced: bool = True
    #: What kind of failure this is when it fails (:class:`CheckKind`).
    kind: CheckKind = CheckKind.VERIFICATION

    def __post_init__(self) -> None:
        # A caller may still pass "policy": store the enum either way.
        if not isinstance(self.kind, CheckKind):
            object.__setattr__(self, "kind", CheckKind(self.kind))

    @classmethod
    def passed(cls, id: str, reason: str = "", **kw: Any) -> Check:
        return cls(id, Status.PASS, reason, **kw)

    @classmethod
    def failed(cls, id: str, reason: str, **kw: Any) -> Check:
        return cls(id, Status.FAIL, reason, **kw)

    @classmethod
    def skipped(cls, id: str, reason: str, **kw: Any) -> Check:
        return cls(id, Status.SKIPPED, reason, **kw)

    @property
    def ok(self) -> bool:
        """True when this row does not block: it passed, or it is not enforced."""
        return self.status is Status.PASS or not self.enforced

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": str(self.id),
            "status": self.status.value,
            "enforced": self.enforced,
            "kind": self.kind.value,
            "reason": self.reason,
        }


@dataclasses.dataclass
class Verdict:
    """An ordered list of checks. Passes only if every enforced check passed.

    An enforced check that was skipped does not pass: a check we could not run
    is not a check that held. An empty verdict never passes.
    """

    checks: list[Check] = dataclasses.field(default_factory=list)

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        return check

    def extend(self, checks: Iterable[Check]) -> None:
        self.checks.extend(checks)

    def __iter__(self) -> Iterator[Check]:
        return iter(self.checks)

    def __len__(self) -> int:
        return len(self.checks)

    def get(self, id: str) -> Check | None:
        for c in self.checks:
            if c.id == id:
                return c
        return None

    @property
    def ok(self) -> bool:
        return bool(self.checks) and all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [c.to_dict() for c in self.checks]}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        """A plain-text table for people: one row per check."""
        rows = [("check", "result", "enforced", "reason")]
        for c in self.checks:
            rows.append((c.id, c.status.value, "yes" if c.enforced else "no", c.reason))
        w0 = max(len(r[0]) for r in rows)
        w1 = max(len(r[1]) for r in rows)
        w2 = max(len(r[2]) for r in rows)
        return "\n".join(f"{r[0]:<{w0}}  {r[1]:<{w1}}  {r[2]:<{w2}}  {r[3]}".rstrip() for r in rows)

    def raise_for_status(self) -> None:
        """Raise :class:`VerificationError` or :class:`PolicyError` if not ok.

        Verification failures win over policy failures: a forged quote is
        reported as forged even if its measurements are also unexpected.
        """
        from ..errors import PolicyError, VerificationError

        if self.ok:
            return
        if not self.checks:
            raise VerificationError("no checks were run", self)
        bad = self.failures
        ver = [c for c in bad if c.kind is not CheckKind.POLICY]
        first = (ver or bad)[0]
        msg = f"attestation check {first.id} {first.status.value}: {first.reason}"
        if ver:
            raise VerificationError(msg, self)
        raise PolicyError(msg, self)
