"""The simulated TEE's event log, compose document and ``info`` exercise the whole verifier.

A report from ``enclaved serve`` (over a real socket) must verify under
``Policy.development(root)`` with every row passing, except the rows the
simulated TEE cannot have (no GPUs; a client has no collateral for it) and
unconfigured allowlists - and the development policy must not waive a
missing event log or compose binding. What is served is recomputed here
with hashlib, independently of enclaved's own replay.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_fakes import E2EE_MODEL, TEE_MODEL, TOOLS_MODEL, NodeHandle, fake_node

from enclaved import __version__
from enclaved.attestation import AttestationReport, Policy, Verifier
from enclaved.attestation.checks import Status
from enclaved.attestation.tdx import parse_quote
from enclaved.attestation.tdx.verify import COLLATERAL_CHECK_IDS
from enclaved.evidence.simulated import SimulatedTd, SimulatedTdx
from enclaved.evidence.simulated_deployment import SimulatedDeployment
from enclaved.evidence.simulated_source import SimulatedEvidence

pytestmark = pytest.mark.filterwarnings("ignore::enclaved.attestation.policy.InsecurePolicyWarning")

NONCE = bytes(range(32))
#: The rows that check the event log and the compose binding.
MEASUREMENT_ROWS = (
    "eventlog.replay",
    "eventlog.rtmr3_digests",
    "measurements.compose_hash",
    "measurements.mrconfigid",
    "report.info",
)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """One attestation report from a running node, and its development root (PEM)."""
    tmp = tmp_path_factory.mktemp("node")
    with fake_node(tmp) as node:
        doc = _attest(node)
        root = node.app.state.node.evidence.root_path.read_text()
    return doc, root


def _attest(node: NodeHandle) -> dict[str, Any]:
    r = httpx.get(
        node.api + "/tee/attestation",
        params={"model": E2EE_MODEL, "nonce": NONCE.hex()},
        timeout=30,
    )
    assert r.status_code == 200, r.text
    doc: dict[str, Any] = r.json()
    return doc


def _verify(doc: dict[str, Any], policy: Policy) -> Any:
    return Verifier(policy, collateral=None).verify(
        AttestationReport.from_json(json.dumps(doc)), nonce=NONCE
    )


# --- the whole pipeline ---------------------------------------------------------------------


def test_development_policy_requires_the_event_log_and_compose_binding(tmp_path: Path) -> None:
    p = Policy.development(SimulatedTdx.load_or_create(tmp_path).root_pem)
    assert not p.allow_missing_event_log and not p.allow_missing_compose_binding
    # Only what the simulated TEE (or a client of it) really lacks is waived.
    assert p.allow_missing_nvidia and p.allow_missing_collateral


def test_every_row_passes_or_is_skipped_for_a_stated_reason(
    served: tuple[dict[str, Any], str],
) -> None:
    doc, root = served
    verdict = _verify(doc, Policy.development(root))
    assert verdict.ok, verdict.table()
    not_passed = {c.id: c for c in verdict.checks if c.status is not Status.PASS}
    # Nothing failed, and every skip is one of the expected kinds.
    assert all(c.status is Status.SKIPPED for c in not_passed.values()), verdict.table()
    expected_skips = (
        set(COLLATERAL_CHECK_IDS)  # the client has no collateral for the dev platform
        | {"nvidia.gpus"}  # no GPUs, no payload
        | {c.id for c in verdict.checks if c.id.startswith("policy.") and c.kind == "policy"}
    )
    assert set(not_passed) <= expected_skips, verdict.table()
    for cid in COLLATERAL_CHECK_IDS:
        assert not_passed[cid].reason == "no collateral source configured"
    assert not_passed["nvidia.gpus"].reason == "no nvidia_payload"
    for c in not_passed.values():
        if c.id.startswith("policy."):
            assert "no allowlist configured" in c.reason and not c.enforced
    # The event log and compose binding are checked, pass, and are relied on.
    for row_id in MEASUREMENT_ROWS:
        row = verdict.get(row_id)
        assert row is not None and row.status is Status.PASS and row.enforced, row_id
    assert "16 events replay" in verdict.get("eventlog.replay").reason
    assert verdict.get("report.verified_flag").status is Status.PASS  # the node says so too


def test_the_node_verifies_itself_with_every_collateral_check(
    served: tuple[dict[str, Any], str],
) -> None:
    doc, _ = served
    assert doc["verified"] is True
    rows = {c["id"]: c["status"] for c in doc["server_verification"]["checks"]}
    skipped = {cid for cid, status in rows.items() if status != "pass"}
    assert all(rows[cid] == "skipped" for cid in skipped)
    # No GPUs; and the node verifies before it has a `verified` flag to state.
    assert {cid for cid in skipped if not cid.startswith("policy.")} == {
        "nvidia.gpus",
        "report.verified_flag",
    }
    assert all(rows[cid] == "pass" for cid in MEASUREMENT_ROWS)


def test_allowlists_of_the_simulated_values_pass(served: tuple[dict[str, Any], str]) -> None:
    doc, root = served
    info, tcb = doc["info"], doc["info"]["tcb_info"]
    policy = dataclasses.replace(
        Policy.development(root),
        mrtd=frozenset({tcb["mrtd"]}),
        rtmr0=frozenset({tcb["rtmr0"]}),
        rtmr1=frozenset({tcb["rtmr1"]}),
        rtmr2=frozenset({tcb["rtmr2"]}),
        compose_hash=frozenset({hashlib.sha256(tcb["app_compose"].encode()).hexdigest()}),
        os_image_hash=frozenset({info["os_image_hash"]}),
        app_id=frozenset({info["app_id"]}),
    )
    verdict = _verify(doc, policy)
    assert verdict.ok, verdict.table()
    for name in ("mrtd", "rtmr0", "rtmr1", "rtmr2", "compose_hash", "os_image_hash", "app_id"):
        assert verdict.get(f"policy.{name}").status is Status.PASS, name


def test_intels_root_alone_still_rejects_it(served: tuple[dict[str, Any], str]) -> None:
    """A replaying event log makes the simulated TEE look complete, not real."""
    doc, _ = served
    verdict = _verify(doc, Policy.strict())
    assert not verdict.ok
    assert verdict.get("tdx.pck.chain").status is Status.FAIL


# --- tampering is caught --------------------------------------------------------------------


def _flip(hex_text: str, index: int = 0) -> str:
    raw = bytearray(bytes.fromhex(hex_text))
    raw[index] ^= 0x01
    return raw.hex()


@pytest.mark.parametrize("which", [0, 3, 12])  # a firmware, a kernel and a runtime event
def test_a_flipped_event_digest_fails_replay(
    served: tuple[dict[str, Any], str], which: int
) -> None:
    doc, root = served
    bad = copy.deepcopy(doc)
    bad["event_log"][which]["digest"] = _flip(bad["event_log"][which]["digest"])
    verdict = _verify(bad, Policy.development(root))
    assert not verdict.ok
    row = verdict.get("eventlog.replay")
    assert row.status is Status.FAIL and row.enforced
    assert f"rtmr{doc['event_log'][which]['imr']}" in row.reason
    # A log that does not replay is no source of facts.
    assert verdict.get("measurements.compose_hash").status is Status.SKIPPED


def test_reordered_or_dropped_events_fail_replay(served: tuple[dict[str, Any], str]) -> None:
    doc, root = served
    swapped = copy.deepcopy(doc)
    log = swapped["event_log"]
    log[0], log[1] = log[1], log[0]
    dropped = copy.deepcopy(doc)
    dropped["event_log"].pop()
    for bad in (swapped, dropped):
        verdict = _verify(bad, Policy.development(root))
        assert verdict.get("eventlog.replay").status is Status.FAIL
        assert not verdict.ok


def test_a_rewritten_runtime_payload_fails_its_digest(served: tuple[dict[str, Any], str]) -> None:
    """Claiming another compose hash without changing the digest: caught by recomputation."""
    doc, root = served
    bad = copy.deepcopy(doc)
    event = next(e for e in bad["event_log"] if e["event"] == "compose-hash")
    event["event_payload"] = "11" * 32
    verdict = _verify(bad, Policy.development(root))
    assert verdict.get("eventlog.replay").status is Status.PASS  # digests untouched
    assert verdict.get("eventlog.rtmr3_digests").status is Status.FAIL
    assert not verdict.ok


def test_info_that_misstates_the_compose_fails(served: tuple[dict[str, Any], str]) -> None:
    doc, root = served
    bad = copy.deepcopy(doc)
    bad["info"]["tcb_info"]["app_compose"] += " "
    verdict = _verify(bad, Policy.development(root))
    assert verdict.get("measurements.compose_hash").status is Status.FAIL
    assert not verdict.ok


def test_a_missing_event_log_is_not_waived(served: tuple[dict[str, Any], str]) -> None:
    doc, root = served
    bad = copy.deepcopy(doc)
    bad["event_log"] = []
    del bad["info"]["tcb_info"]["event_log"]
    verdict = _verify(bad, Policy.development(root))
    assert not verdict.ok
    for cid in ("eventlog.replay", "measurements.compose_hash", "measurements.mrconfigid"):
        row = verdict.get(cid)
        assert row.status is Status.SKIPPED and row.enforced, cid


def test_a_quote_without_the_compose_binding_fails(tmp_path: Path) -> None:
    """The same log, but a TD created with MRCONFIGID zero: measurements.mrconfigid fails."""
    from enclaved.crypto import KeyPair

    evidence = SimulatedEvidence.load_or_create(tmp_path, models=["m"])
    td = dataclasses.replace(evidence.td, mrconfigid=bytes(48))
    key = KeyPair.generate()
    quote = evidence._tdx.quote(bytes.fromhex(key.address[2:]) + bytes(12) + NONCE, td=td)
    doc = {
        "intel_quote": quote.hex(),
        "signing_key": key.public_key_hex,
        "signing_address": key.address,
        "nonce": NONCE.hex(),
        "event_log": evidence.event_log(),
        "info": evidence.info(),
    }
    verdict = _verify(doc, Policy.development(evidence.root_path.read_text()))
    row = verdict.get("measurements.mrconfigid")
    assert row.status is Status.FAIL and row.enforced
    assert not verdict.ok


# --- what is served, recomputed independently -----------------------------------------------


def test_the_log_replays_to_the_quote_by_hand(served: tuple[dict[str, Any], str]) -> None:
    doc, _ = served
    quote = parse_quote(bytes.fromhex(doc["intel_quote"]))
    regs = [bytes(48)] * 4
    for e in doc["event_log"]:
        payload = bytes.fromhex(e["event_payload"])
        if e["imr"] == 3:
            # dstack: SHA-384(event_type LE32 || ":" || name || ":" || payload)
            assert e["event_type"] == 0x08000001
            want = hashlib.sha384(
                struct.pack("<I", e["event_type"]) + b":" + e["event"].encode() + b":" + payload
            ).hexdigest()
        else:
            want = hashlib.sha384(payload).hexdigest()  # the simulated boot events
        assert e["digest"] == want, e
        regs[e["imr"]] = hashlib.sha384(regs[e["imr"]] + bytes.fromhex(e["digest"])).digest()
    assert tuple(regs) == quote.rtmrs
    tcb = doc["info"]["tcb_info"]
    assert [tcb[f"rtmr{i}"] for i in range(4)] == [r.hex() for r in regs]
    assert tcb["mrtd"] == quote.mrtd.hex()
    # MRCONFIGID = 0x01 || compose hash || zero padding.
    compose_hash = hashlib.sha256(tcb["app_compose"].encode()).digest()
    assert quote.mrconfigid == b"\x01" + compose_hash + bytes(15)
    assert doc["info"]["compose_hash"] == tcb["compose_hash"] == compose_hash.hex()


def test_runtime_events_are_dstacks(served: tuple[dict[str, Any], str]) -> None:
    doc, _ = served
    runtime = [e for e in doc["event_log"] if e["imr"] == 3]
    assert [e["event"] for e in runtime] == [
        "system-preparing",
        "app-id",
        "compose-hash",
        "instance-id",
        "boot-mr-done",
        "os-image-hash",
        "key-provider",
        "system-ready",
    ]
    by_name = {e["event"]: e["event_payload"] for e in runtime}
    info = doc["info"]
    assert by_name["app-id"] == info["app_id"] and len(info["app_id"]) == 40
    assert by_name["instance-id"] == info["instance_id"] and len(info["instance_id"]) == 40
    assert by_name["os-image-hash"] == info["os_image_hash"]
    assert by_name["compose-hash"] == info["compose_hash"]
    assert json.loads(bytes.fromhex(by_name["key-provider"]))["name"] == "none"
    # The served log is also in tcb_info, as in production.
    assert info["tcb_info"]["event_log"] == doc["event_log"]


def test_it_says_it_is_simulated(served: tuple[dict[str, Any], str]) -> None:
    doc, _ = served
    assert doc["tee_hardware"] == "simulated"
    info = doc["info"]
    assert info["tee_mode"] == "simulated" and "proves nothing" in info["warning"]
    assert info["app_name"] == "enclaved-simulated"
    compose = json.loads(info["tcb_info"]["app_compose"])
    assert compose["tee_hardware"] == "simulated" and "proves nothing" in compose["warning"]
    assert compose["enclaved_version"] == __version__ == info["app_version"]
    assert compose["models"] == sorted([E2EE_MODEL, TEE_MODEL, TOOLS_MODEL])
    for e in doc["event_log"]:
        if e["imr"] < 3 and e["event_type"] != 4:  # every boot event but the separators
            text = bytes.fromhex(e["event_payload"]).decode()
            assert "enclaved simulated" in text and "development value" in text, text


# --- the deployment values --------------------------------------------------------------------


def test_deployment_is_deterministic_and_tracks_the_models() -> None:
    a = SimulatedDeployment(models=("b", "a"))
    assert a == SimulatedDeployment(models=("a", "b", "a"))  # a set, sorted
    assert a.event_log_json() == SimulatedDeployment(models=("a", "b")).event_log_json()
    other = SimulatedDeployment(models=("a",))
    assert other.compose_hash != a.compose_hash
    assert other.rtmrs[:3] == a.rtmrs[:3]  # boot is the same ...
    assert other.rtmrs[3] != a.rtmrs[3] and other.mrconfigid != a.mrconfigid  # ... the app not
    newer = SimulatedDeployment(models=("a", "b"), version="99.0")
    assert newer.compose_hash != a.compose_hash


def test_default_td_measures_the_default_deployment(tmp_path: Path) -> None:
    d = SimulatedDeployment()
    assert SimulatedTd().rtmrs == d.rtmrs and SimulatedTd().mrconfigid == d.mrconfigid
    m = SimulatedDeployment(models=("x",))
    td = SimulatedTd().running(m)
    assert td.rtmrs == m.rtmrs and td.mrconfigid == m.mrconfigid and td.mrtd == SimulatedTd().mrtd


def test_event_log_json_is_a_fresh_copy() -> None:
    d = SimulatedDeployment()
    first = d.event_log_json()
    first[0]["digest"] = "00"
    assert d.event_log_json()[0]["digest"] != "00"
    assert d.info(bytes(48))["tcb_info"]["event_log"] == d.event_log_json()
