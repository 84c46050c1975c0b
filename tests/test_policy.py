"""Policy: data, strict by default, relaxations named allow_* and loud."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from enclaved.attestation.checks import Check, Status
from enclaved.attestation.policy import (
    TD_ATTR_DEBUG,
    TD_ATTR_MIGRATABLE,
    TD_ATTR_SEPT_VE_DISABLE,
    InsecurePolicyWarning,
    Policy,
)
from enclaved.attestation.tdx.roots import intel_sgx_root_ca
from enclaved.errors import PolicyError

# TD_ATTRIBUTES of both production captures: SEPT_VE_DISABLE only.
CAPTURE_TD_ATTRIBUTES = bytes.fromhex("0000001000000000")
# Any real certificate will do as a "development root" here.
PEM = intel_sgx_root_ca().public_bytes(Encoding.PEM).decode()
MRTD = (
    "b24d3b24e9e3c16012376b52362ca09856c4adecb709d5fac33addf1c47e193d"
    "a075b125b6c364115771390a5461e217"
)


def by_id(rows: list[Check]) -> dict[str, Check]:
    return {c.id: c for c in rows}


def test_capture_attributes_pass_strict() -> None:
    assert int.from_bytes(CAPTURE_TD_ATTRIBUTES, "little") == TD_ATTR_SEPT_VE_DISABLE
    rows = Policy.strict().check_td_attributes(CAPTURE_TD_ATTRIBUTES)
    assert [c.status for c in rows] == [Status.PASS] * 3
    assert all(c.kind == "policy" for c in rows)


def test_debug_bit_fails_and_is_enforced() -> None:
    attrs = TD_ATTR_SEPT_VE_DISABLE | TD_ATTR_DEBUG
    p = Policy.strict()
    row = by_id(p.check_td_attributes(attrs))["policy.td_attributes.debug"]
    assert row.status is Status.FAIL and "DEBUG" in row.reason
    assert p.enforce(row).enforced


@pytest.mark.parametrize("bit", range(1, 8))
def test_any_tud_bit_counts_as_debug(bit: int) -> None:
    row = by_id(Policy().check_td_attributes(TD_ATTR_SEPT_VE_DISABLE | (1 << bit)))
    assert row["policy.td_attributes.debug"].status is Status.FAIL


def test_allow_debug_waives_but_still_reports_fail() -> None:
    p = Policy(allow_debug=True)
    row = p.enforce(
        by_id(p.check_td_attributes(TD_ATTR_SEPT_VE_DISABLE | 1))["policy.td_attributes.debug"]
    )
    assert row.status is Status.FAIL and row.enforced is False


def test_sept_ve_and_migratable() -> None:
    rows = by_id(Policy().check_td_attributes(TD_ATTR_MIGRATABLE))
    assert rows["policy.td_attributes.sept_ve_disable"].status is Status.FAIL
    assert rows["policy.td_attributes.migratable"].status is Status.FAIL


def test_tcb_status_is_waived_only_by_name() -> None:
    # The tdx layer fails every recognized status but UpToDate as a policy row.
    row = Check.failed("tdx.tcb.status", "TCB status SWHardeningNeeded", kind="policy")
    assert Policy.strict().enforce(row, tcb_status="SWHardeningNeeded").enforced
    relaxed = Policy(allow_tcb_statuses=frozenset({"SWHardeningNeeded"}))
    waived = relaxed.enforce(row, tcb_status="SWHardeningNeeded")
    assert waived.status is Status.FAIL and not waived.enforced
    assert relaxed.enforce(row, tcb_status="OutOfDate").enforced
    # A TCB row that failed for a verification reason is never waived.
    broken = Check.failed("tdx.tcb.status", "no matching TCB level")
    assert relaxed.enforce(broken, tcb_status="SWHardeningNeeded").enforced
    # Without collateral it is skipped; only allow_missing_collateral waives that.
    skipped = Check.skipped("tdx.tcb.status", "no collateral")
    assert relaxed.enforce(skipped).enforced
    assert not Policy(allow_missing_collateral=True).enforce(skipped).enforced


def test_revoked_can_never_be_allowed() -> None:
    with pytest.raises(PolicyError, match="Revoked"):
        Policy(allow_tcb_statuses=frozenset({"Revoked"}))


def test_root_ca_crl_absence() -> None:
    skipped = Check.skipped("tdx.collateral.root_ca_crl", "no root CA CRL in the collateral")
    assert not Policy.strict().enforce(skipped).enforced
    assert Policy(require_root_ca_crl=True).enforce(skipped).enforced
    # A root CA CRL that is present and revokes something is always enforced.
    assert Policy.strict().enforce(Check.failed("tdx.collateral.root_ca_crl", "revoked")).enforced


def test_nras_rows_follow_require_nras() -> None:
    row = Check.failed("nvidia.nras", "overall result false")
    assert not Policy.strict().enforce(row).enforced
    assert Policy(require_nras=True).enforce(row).enforced
    assert (
        Policy(require_nras=True).enforce(Check.skipped("nvidia.nras", "not configured")).enforced
    )


def test_allowlists() -> None:
    mrtd = bytes.fromhex(MRTD)
    strict = by_id(Policy().check_measurements({"mrtd": mrtd}))
    assert strict["policy.mrtd"].status is Status.SKIPPED and not strict["policy.mrtd"].enforced
    ok = by_id(Policy(mrtd=frozenset({MRTD.upper()})).check_measurements({"mrtd": mrtd}))
    assert ok["policy.mrtd"].status is Status.PASS
    bad = by_id(Policy(mrtd=frozenset({"00" * 48})).check_measurements({"mrtd": mrtd}))
    assert bad["policy.mrtd"].status is Status.FAIL and bad["policy.mrtd"].kind == "policy"
    missing = by_id(Policy(compose_hash=frozenset({"11" * 32})).check_measurements({}))
    assert missing["policy.compose_hash"].status is Status.FAIL


def test_allowlist_entries_are_validated() -> None:
    with pytest.raises(PolicyError):
        Policy(mrtd=frozenset({"abcd"}))
    with pytest.raises(PolicyError):
        Policy(rtmr0="00" * 48)  # type: ignore[arg-type]  # one string, not a list
    with pytest.raises(PolicyError):
        Policy(allow_tcb_statuses=frozenset({"Fine"}))
    with pytest.raises(PolicyError):
        Policy(quote_versions=frozenset({3}))


def test_nvidia_rows() -> None:
    rows = by_id(Policy(nvidia_gpu_count=8).check_nvidia_gpus(["HOPPER"] * 8))
    assert rows["policy.nvidia.gpu_count"].status is Status.PASS
    assert rows["policy.nvidia.arch"].status is Status.SKIPPED
    rows = by_id(
        Policy(nvidia_gpu_count=4, nvidia_architectures=frozenset({"blackwell"})).check_nvidia_gpus(
            ["HOPPER"] * 8
        )
    )
    assert rows["policy.nvidia.gpu_count"].status is Status.FAIL
    assert rows["policy.nvidia.arch"].status is Status.FAIL


def test_enforce_is_fail_closed() -> None:
    p = Policy.strict()
    for cid in ("tdx.signature", "nvidia.gpu0.signature", "eventlog.replay", "something.new"):
        assert p.enforce(Check.skipped(cid, "x")).enforced
        assert p.enforce(Check.failed(cid, "x")).enforced
    assert not p.enforce(Check.failed("report.verified_flag", "x")).enforced
    # A relaxation never changes a status.
    relaxed = Policy(allow_missing_nvidia=True, allow_missing_event_log=True)
    assert not relaxed.enforce(Check.skipped("nvidia.evidence", "none")).enforced
    assert relaxed.enforce(Check.failed("nvidia.evidence", "bad")).enforced
    assert not relaxed.enforce(Check.skipped("eventlog.replay", "none")).enforced
    assert relaxed.enforce(Check.failed("eventlog.replay", "bad")).enforced


def test_missing_nonce_relaxation() -> None:
    row = Check.skipped("report.nonce", "no nonce")
    assert Policy().enforce(row, nonce_given=False).enforced
    assert not Policy(allow_missing_nonce=True).enforce(row, nonce_given=False).enforced


def test_strict_has_no_relaxations_and_does_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Policy.strict().warn_relaxations() == []


def test_every_allow_field_is_a_relaxation() -> None:
    names = {f.name for f in dataclasses.fields(Policy) if f.name.startswith("allow_")}
    assert names == set(Policy.RELAXATIONS)
    for name in names:
        value: object = True
        if name == "allow_tcb_statuses":
            value = frozenset({"OutOfDate"})
        elif name == "allow_development_roots":
            value = (PEM,)
        p = Policy(**{name: value})  # type: ignore[arg-type]
        assert any(m.startswith(name) for m in p.relaxations()), name


def test_relaxations_warn_every_time_through_one_channel(
    caplog: pytest.LogCaptureFixture,
) -> None:
    p = Policy(allow_debug=True)
    for _ in range(2):
        with pytest.warns(InsecurePolicyWarning, match="allow_debug") as record:
            p.warn_relaxations()
        assert len(record) == 1
    # Warned, not also logged: a user of the SDK would see every line twice.
    assert not caplog.records


def test_development_policy_is_loud() -> None:
    p = Policy.development(PEM.encode())
    msgs = p.relaxations()
    assert any("proves nothing about hardware" in m for m in msgs)
    assert p.allow_missing_collateral and p.allow_missing_nvidia
    assert [c.subject for c in p.trust_roots()] == [intel_sgx_root_ca().subject] * 2
    # Everything that the simulated TEE can provide stays required.
    assert not (p.allow_debug or p.allow_missing_nonce or p.allow_missing_signing_key)


def test_strict_trusts_intel_only() -> None:
    assert Policy.strict().trust_roots() == [intel_sgx_root_ca()]


def test_development_roots_must_be_certificates() -> None:
    with pytest.raises(PolicyError):
        Policy(
            allow_development_roots=(
                "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
            )
        )


def test_from_toml(tmp_path: Path) -> None:
    pem = PEM
    (tmp_path / "dev.pem").write_text(pem)
    (tmp_path / "p.toml").write_text(
        f'mrtd = ["{MRTD}"]\n'
        'allow_tcb_statuses = ["SWHardeningNeeded"]\n'
        "nvidia_gpu_count = 8\n"
        'allow_development_roots = ["dev.pem"]\n'
    )
    p = Policy.from_file(tmp_path / "p.toml")
    assert p.mrtd == frozenset({MRTD})
    assert p.allow_tcb_statuses == frozenset({"SWHardeningNeeded"})
    assert p.nvidia_gpu_count == 8
    assert p.allow_development_roots == (pem,)
    assert Policy.from_toml("") == Policy.strict()
    assert Policy.from_dict(Policy.strict().to_dict()) == Policy.strict()


@pytest.mark.parametrize(
    "text",
    [
        "mrtdd = []",  # unknown key (typo)
        "allow_debug = 1",  # wrong type
        'mrtd = "00"',  # one string, not a list
        "nvidia_gpu_count = 0",
        "allow_debug = [",  # not TOML
        'allow_development_roots = ["/does/not/exist.pem"]',
    ],
)
def test_bad_toml_is_a_policy_error(text: str) -> None:
    with pytest.raises(PolicyError):
        Policy.from_toml(text)


def test_missing_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError):
        Policy.from_file(tmp_path / "nope.toml")


def test_the_policy_knows_which_tdx_rows_need_collateral() -> None:
    # One definition (attestation/checks.py), so that importing the policy does
    # not import the tdx layer (httpx...), and no copy to keep in step.
    from enclaved.attestation import checks, policy
    from enclaved.attestation.tdx.verify import COLLATERAL_CHECK_IDS

    assert checks.COLLATERAL_CHECK_IDS is COLLATERAL_CHECK_IDS
    (rule,) = [r for r in policy.RULES if r.field == "allow_missing_collateral"]
    assert rule.ids == COLLATERAL_CHECK_IDS


def test_the_enforcement_table_gives_every_relaxation_a_row_and_a_warning() -> None:
    # Policy.RELAXATIONS, the warnings and the enforcement are one table.
    relaxations = [r for r in Policy.RULES if r.warning is not None]
    assert Policy.RELAXATIONS == tuple(r.field for r in relaxations)
    assert all(name.startswith("allow_") for name in Policy.RELAXATIONS)
    fields = {f.name for f in dataclasses.fields(Policy)}
    assert {r.field for r in Policy.RULES if r.field is not None} <= fields
    # Every allow_ field of the policy is in the table.
    assert {f for f in fields if f.startswith("allow_")} == set(Policy.RELAXATIONS)


def test_no_two_relaxations_waive_the_same_row() -> None:
    from enclaved.attestation.checks import CheckId, CheckKind, GpuCheck, gpu_check_id

    relaxations = [r for r in Policy.RULES if r.warning is not None]
    ids = [*CheckId, gpu_check_id(0, GpuCheck.NONCE)]
    for cid in ids:
        for status in (Status.FAIL, Status.SKIPPED):
            for kind in CheckKind:
                row = Check(cid, status, "x", kind=kind)
                matching = [r.field for r in relaxations if r.matches(row)]
                assert len(matching) <= 1, (cid, status, kind, matching)
