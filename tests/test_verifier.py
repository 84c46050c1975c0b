"""The whole verifier on the production captures, and single-byte mutations of them.

Each mutation must fail with the check that names it; a parse error must be
a parse error; a policy violation a policy failure.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from attestation_captures import (
    ALL,
    MRCONFIGID,
    MRTD,
    NEAR,
    REPORT_DATA,
    RTMR0,
    RTMR3,
    TD_ATTRIBUTES,
    VENICE,
    XFAM,
    Capture,
    flip,
    simulated_report,
)

from enclaved.attestation import (
    AttestationReport,
    AttestationVerdict,
    InsecurePolicyWarning,
    Policy,
    Status,
    Verifier,
    verify_attestation,
)
from enclaved.attestation.tdx import DirectoryCollateral
from enclaved.attestation.verifier import recorded_nras
from enclaved.crypto import KeyPair
from enclaved.errors import EvidenceParseError, PolicyError, VerificationError

_COLLATERAL: dict[str, DirectoryCollateral] = {}


def collateral(c: Capture) -> DirectoryCollateral:
    if c.name not in _COLLATERAL:
        _COLLATERAL[c.name] = DirectoryCollateral(c.responses)
    return _COLLATERAL[c.name]


def verify(
    c: Capture,
    doc: dict[str, Any] | None = None,
    *,
    nonce: bytes | None | str = "manifest",
    policy: Policy | None = None,
    at: datetime | None = None,
    nras: bool = False,
    with_collateral: bool = True,
) -> AttestationVerdict:
    report = AttestationReport.from_json(doc if doc is not None else c.doc())
    when = at or c.at
    v = Verifier(
        policy or Policy.strict(),
        collateral=collateral(c) if with_collateral else None,
        nras=recorded_nras(c.folder) if nras else None,
        now=lambda: when,
    )
    return v.verify(report, nonce=c.nonce if nonce == "manifest" else nonce)  # type: ignore[arg-type]


def failed(verdict: AttestationVerdict) -> set[str]:
    return {c.id for c in verdict.failures}


# --- the captures pass --------------------------------------------------------------------


@pytest.mark.parametrize("c", ALL, ids=lambda c: c.name)
def test_capture_verifies_strict(c: Capture) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", InsecurePolicyWarning)  # strict: no relaxation warns
        verdict = verify(c, policy=Policy(require_nras=True, nvidia_gpu_count=8), nras=True)
    assert verdict.ok, verdict.table()
    verdict.raise_for_status()
    ids = {row.id for row in verdict}
    for needed in (
        "report.nonce",
        "tdx.quote.signature",
        "tdx.pck.chain",
        "tdx.collateral.pck_crl",
        "tdx.tcb.status",
        "policy.td_attributes.debug",
        "binding.report_data.identity",
        "binding.report_data.nonce",
        "binding.signing_key",
        "eventlog.replay",
        "eventlog.rtmr3_digests",
        "measurements.mrconfigid",
        "nvidia.gpus",
        "nvidia.nras",
    ):
        assert needed in ids
        assert verdict.get(needed).status is Status.PASS, needed  # type: ignore[union-attr]
    # Every Intel and NVIDIA row passed; only a root CA CRL could be absent.
    for row in verdict:
        if row.id.startswith(("tdx.", "nvidia.")) and row.id != "tdx.collateral.root_ca_crl":
            assert row.status is Status.PASS, row
    # Whatever did not pass is informational (allowlists not configured, the server's flag).
    for row in verdict:
        if row.status is not Status.PASS:
            assert not row.enforced, row
    assert verdict.tcb_status == "UpToDate"
    assert verdict.gpu_count == 8


def test_near_binding_is_the_tls_fingerprint_variant() -> None:
    verdict = verify(NEAR)
    row = verdict.get("binding.report_data.identity")
    assert row is not None and row.status is Status.PASS
    assert "TLS certificate fingerprint" in row.reason


# --- freshness ----------------------------------------------------------------------------


@pytest.mark.parametrize("c", ALL, ids=lambda c: c.name)
def test_other_nonce_fails(c: Capture) -> None:
    verdict = verify(c, nonce=bytes(32))
    bad = failed(verdict)
    assert {"report.nonce", "binding.report_data.nonce", "nvidia.payload.nonce"} <= bad
    assert any(i.startswith("nvidia.gpu[") and i.endswith(".nonce") for i in bad)
    with pytest.raises(VerificationError):
        verdict.raise_for_status()


def test_no_nonce_is_enforced_by_default_and_waivable_loudly() -> None:
    verdict = verify(VENICE, nonce=None)
    assert not verdict.ok and failed(verdict) == {"report.nonce"}
    assert verdict.get("report.nonce").status is Status.SKIPPED  # type: ignore[union-attr]
    relaxed = Policy(allow_missing_nonce=True)
    with pytest.warns(InsecurePolicyWarning, match="freshness"):
        verdict = verify(VENICE, nonce=None, policy=relaxed)
    assert verdict.ok and verdict.to_dict()["freshness_checked"] is False
    # The quote is still bound to the document's own nonce.
    assert "NOT checked" in verdict.get("binding.report_data.nonce").reason  # type: ignore[union-attr]


def test_echo_mismatch_alone_fails() -> None:
    doc = VENICE.doc()
    doc["nonce"] = "00" * 32
    assert failed(verify(VENICE, doc)) == {"report.nonce"}


# --- single-byte changes of the signed quote ----------------------------------------------


@pytest.mark.parametrize(
    "offset,name",
    [
        (30, "header user_data"),
        (MRTD, "MRTD"),
        (MRCONFIGID + 5, "MRCONFIGID"),
        (RTMR0, "RTMR0"),
        (RTMR3 + 47, "RTMR3"),
        (XFAM, "XFAM"),
        (REPORT_DATA + 40, "REPORTDATA nonce half"),
    ],
)
def test_signed_byte_flip_is_forged(offset: int, name: str) -> None:
    doc = VENICE.doc()
    doc["intel_quote"] = flip(doc["intel_quote"], offset)
    verdict = verify(VENICE, doc)
    assert "tdx.quote.signature" in failed(verdict), name
    with pytest.raises(VerificationError):
        verdict.raise_for_status()


def test_report_data_address_flip_names_binding() -> None:
    doc = VENICE.doc()
    doc["intel_quote"] = flip(doc["intel_quote"], REPORT_DATA + 3)
    bad = failed(verify(VENICE, doc))
    assert {"tdx.quote.signature", "binding.report_data.identity"} <= bad


def test_debug_bit_in_real_quote_breaks_the_signature() -> None:
    """Setting DEBUG in a signed quote is forgery: the signature row fails (and the policy row)."""
    doc = VENICE.doc()
    doc["intel_quote"] = flip(doc["intel_quote"], TD_ATTRIBUTES, 0x01)
    verdict = verify(VENICE, doc)
    bad = failed(verdict)
    assert {"tdx.quote.signature", "policy.td_attributes.debug"} <= bad
    with pytest.raises(VerificationError):  # verification wins over policy
        verdict.raise_for_status()


def test_quote_signature_byte_flip() -> None:
    doc = VENICE.doc()
    doc["intel_quote"] = flip(doc["intel_quote"], 632 + 4 + 10)  # inside the ECDSA signature
    assert "tdx.quote.signature" in failed(verify(VENICE, doc))


def test_garbage_quote_is_a_parse_error() -> None:
    doc = VENICE.doc()
    doc["intel_quote"] = doc["intel_quote"][:400]
    with pytest.raises(EvidenceParseError):
        verify(VENICE, doc)


# --- identity -----------------------------------------------------------------------------


def test_swapped_signing_key_fails() -> None:
    doc = VENICE.doc()
    doc["signing_key"] = doc["signing_public_key"] = KeyPair.generate().public_key_hex
    assert failed(verify(VENICE, doc)) == {"binding.signing_key"}


def test_other_address_fails_binding() -> None:
    other = KeyPair.generate()
    doc = VENICE.doc()
    doc["signing_key"] = doc["signing_public_key"] = other.public_key_hex
    doc["signing_address"] = other.address
    assert failed(verify(VENICE, doc)) == {"binding.report_data.identity"}


def test_other_tls_fingerprint_fails() -> None:
    doc = NEAR.doc()
    doc["tls_cert_fingerprint"] = flip(doc["tls_cert_fingerprint"], 0)
    assert failed(verify(NEAR, doc)) == {"binding.report_data.identity"}


def test_missing_signing_key_is_enforced_unless_allowed() -> None:
    doc = VENICE.doc()
    del doc["signing_key"], doc["signing_public_key"]
    assert failed(verify(VENICE, doc)) == {"binding.signing_key"}
    with pytest.warns(InsecurePolicyWarning):
        assert verify(VENICE, doc, policy=Policy(allow_missing_signing_key=True)).ok


# --- event log and measurements -----------------------------------------------------------


def test_event_log_digest_flip_fails_replay() -> None:
    doc = VENICE.doc()
    doc["event_log"][3]["digest"] = flip(doc["event_log"][3]["digest"], 0)
    bad = failed(verify(VENICE, doc))
    assert "eventlog.replay" in bad


def test_forged_compose_hash_event_fails() -> None:
    doc = VENICE.doc()
    event = next(e for e in doc["event_log"] if e["event"] == "compose-hash")
    event["event_payload"] = "11" * 32
    doc["info"]["compose_hash"] = "11" * 32
    bad = failed(verify(VENICE, doc))
    assert "eventlog.rtmr3_digests" in bad


def test_missing_event_log_is_enforced() -> None:
    doc = VENICE.doc()
    doc.pop("event_log")
    doc["info"]["tcb_info"].pop("event_log")
    bad = failed(verify(VENICE, doc))
    assert {"eventlog.replay", "measurements.compose_hash", "measurements.mrconfigid"} <= bad


def test_mrtd_allowlist_violation_is_a_policy_error() -> None:
    verdict = verify(VENICE, policy=Policy(mrtd=frozenset({"00" * 48})))
    assert failed(verdict) == {"policy.mrtd"}
    assert verdict.get("policy.mrtd").kind == "policy"  # type: ignore[union-attr]
    with pytest.raises(PolicyError):
        verdict.raise_for_status()


def test_allowlists_that_match_pass() -> None:
    doc = VENICE.doc()
    tcb = doc["info"]["tcb_info"]
    policy = Policy(
        mrtd=frozenset({tcb["mrtd"]}),
        rtmr0=frozenset({tcb["rtmr0"]}),
        rtmr1=frozenset({tcb["rtmr1"]}),
        rtmr2=frozenset({tcb["rtmr2"]}),
        compose_hash=frozenset({doc["info"]["compose_hash"]}),
        os_image_hash=frozenset({doc["info"]["os_image_hash"]}),
        app_id=frozenset({doc["info"]["app_id"]}),
        nvidia_architectures=frozenset({"HOPPER"}),
    )
    verdict = verify(VENICE, policy=policy)
    assert verdict.ok
    for name in ("mrtd", "rtmr0", "rtmr1", "rtmr2", "compose_hash", "os_image_hash", "app_id"):
        assert verdict.get(f"policy.{name}").status is Status.PASS  # type: ignore[union-attr]


def test_gpu_count_policy() -> None:
    verdict = verify(VENICE, policy=Policy(nvidia_gpu_count=4))
    assert failed(verdict) == {"policy.nvidia.gpu_count"}


# --- NVIDIA -------------------------------------------------------------------------------


def test_missing_gpu_evidence_is_enforced_unless_allowed() -> None:
    doc = VENICE.doc()
    doc["nvidia_payload"] = None
    assert failed(verify(VENICE, doc)) == {"nvidia.gpus"}
    with pytest.warns(InsecurePolicyWarning, match="allow_missing_nvidia"):
        assert verify(VENICE, doc, policy=Policy(allow_missing_nvidia=True)).ok


def test_gpu_payload_nonce_changed() -> None:
    doc = VENICE.doc()
    payload = json.loads(doc["nvidia_payload"])
    payload["nonce"] = "00" * 32
    doc["nvidia_payload"] = json.dumps(payload)
    assert failed(verify(VENICE, doc)) == {"nvidia.payload.nonce", "nvidia.gpus"}


def test_nras_not_configured_but_required() -> None:
    verdict = verify(VENICE, policy=Policy(require_nras=True))
    assert failed(verdict) == {"nvidia.nras"}


# --- collateral and time ------------------------------------------------------------------


def test_no_collateral_is_enforced_unless_allowed() -> None:
    verdict = verify(VENICE, with_collateral=False)
    bad = failed(verdict)
    assert {"tdx.tcb.status", "tdx.collateral.pck_crl", "tdx.collateral.fresh"} <= bad
    assert all(verdict.get(i).status is Status.SKIPPED for i in bad)  # type: ignore[union-attr]
    with pytest.warns(InsecurePolicyWarning, match="allow_missing_collateral"):
        assert verify(
            VENICE, with_collateral=False, policy=Policy(allow_missing_collateral=True)
        ).ok


def test_a_year_later_the_collateral_is_stale() -> None:
    verdict = verify(VENICE, at=VENICE.at + timedelta(days=365))
    assert failed(verdict) == {"tdx.collateral.fresh"}


def test_before_the_certificates_existed() -> None:
    bad = failed(verify(VENICE, at=datetime(2017, 1, 1, tzinfo=UTC)))
    assert "tdx.pck.chain" in bad
    assert any(i.endswith(".cert_chain") for i in bad)  # GPU certificates not yet valid


def test_relaxations_warn_on_every_verification() -> None:
    policy = Policy(allow_missing_collateral=True)
    v = Verifier(policy, collateral=None, now=lambda: VENICE.at)
    report = AttestationReport.from_json(VENICE.doc())
    for _ in range(2):
        with pytest.warns(InsecurePolicyWarning):
            verdict = v.verify(report, nonce=VENICE.nonce)
        assert verdict.relaxations


# --- the simulated TEE: a validly signed quote with DEBUG set -----------------------------


@pytest.mark.filterwarnings("ignore::enclaved.attestation.policy.InsecurePolicyWarning")
def test_simulated_tee_verifies_under_development_policy(tmp_path: Path) -> None:
    doc, nonce, root = simulated_report(tmp_path, debug=False)
    with pytest.warns(InsecurePolicyWarning, match="proves nothing about hardware"):
        verdict = verify_attestation(
            doc, nonce=nonce, policy=Policy.development(root), collateral=None
        )
    assert verdict.ok, verdict.table()
    # Intel's root alone rejects it.
    strict = verify_attestation(doc, nonce=nonce, policy=Policy.strict(), collateral=None)
    assert "tdx.pck.chain" in failed(strict)


@pytest.mark.filterwarnings("ignore::enclaved.attestation.policy.InsecurePolicyWarning")
def test_signed_debug_quote_is_a_policy_failure(tmp_path: Path) -> None:
    """A genuine signature over DEBUG=1: every signature passes, the policy refuses it."""
    doc, nonce, root = simulated_report(tmp_path, debug=True)
    with pytest.warns(InsecurePolicyWarning):
        verdict = verify_attestation(
            doc, nonce=nonce, policy=Policy.development(root), collateral=None
        )
    assert verdict.get("tdx.quote.signature").status is Status.PASS  # type: ignore[union-attr]
    assert failed(verdict) == {"policy.td_attributes.debug"}
    with pytest.raises(PolicyError):
        verdict.raise_for_status()
    relaxed = dataclasses.replace(Policy.development(root), allow_debug=True)
    with pytest.warns(InsecurePolicyWarning, match="allow_debug"):
        assert verify_attestation(doc, nonce=nonce, policy=relaxed, collateral=None).ok


# --- outputs ------------------------------------------------------------------------------


def test_verify_attestation_convenience() -> None:
    verdict = verify_attestation(
        VENICE.report_path.read_bytes(),
        nonce=VENICE.nonce.hex(),
        collateral=collateral(VENICE),
        now=VENICE.at,
    )
    assert verdict.ok


def test_naive_clock_is_refused() -> None:
    report = AttestationReport.from_json(VENICE.doc())
    v = Verifier(collateral=None, now=lambda: datetime(2026, 4, 24))
    with pytest.raises(ValueError):
        v.verify(report, nonce=VENICE.nonce)
    assert datetime(2026, 4, 24, tzinfo=UTC)  # the aware form is what is expected


def test_public_surface() -> None:
    from enclaved import attestation

    for name in attestation.__all__:
        assert getattr(attestation, name) is not None
    assert {
        "AttestationReport",
        "Policy",
        "Verifier",
        "verify_attestation",
        "Verdict",
        "Check",
        "Status",
    } <= set(attestation.__all__)
