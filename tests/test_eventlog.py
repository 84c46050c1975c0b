"""Event-log replay, runtime digests and the compose-hash bindings, on the captures."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
from pathlib import Path
from typing import Any

import pytest
from conftest import REPORT_CAPTURES

from enclaved.attestation import eventlog, measurements
from enclaved.attestation.checks import Status
from enclaved.attestation.document import AttestationReport
from enclaved.errors import EvidenceParseError

REPORTS = sorted(next((c / "responses").glob("0001_*.body")) for c in REPORT_CAPTURES)

# TDX quote v4 TD report offsets (after the 48-byte header).
TD = 48
MRCONFIGID = slice(TD + 184, TD + 232)


def rtmrs(quote: bytes) -> list[bytes]:
    return [quote[TD + 328 + 48 * i : TD + 376 + 48 * i] for i in range(4)]


def load(path: Path) -> tuple[dict[str, Any], AttestationReport]:
    doc = json.loads(path.read_bytes())
    return doc, AttestationReport.from_json(doc)


@pytest.mark.parametrize("path", REPORTS, ids=lambda p: p.parts[-3].split("_")[0])
def test_capture_replays_to_quote_rtmrs(path: Path) -> None:
    doc, report = load(path)
    assert eventlog.replay(report.event_log) == tuple(rtmrs(report.intel_quote))
    assert eventlog.check_replay(report.event_log, rtmrs(report.intel_quote)).status is Status.PASS
    # And to what info.tcb_info states.
    assert [r.hex() for r in eventlog.replay(report.event_log)] == [
        doc["info"]["tcb_info"][f"rtmr{i}"] for i in range(4)
    ]


@pytest.mark.parametrize("path", REPORTS, ids=lambda p: p.parts[-3].split("_")[0])
def test_runtime_digests_recompute(path: Path) -> None:
    _, report = load(path)
    row = eventlog.check_runtime_digests(report.event_log)
    assert row.status is Status.PASS and "10 runtime events" in row.reason


def test_runtime_digest_formula_outside_vector() -> None:
    """The dstack formula, written out by hand on one capture event."""
    _, report = load(REPORTS[0])
    event = next(e for e in report.event_log if e.event == "compose-hash")
    by_hand = hashlib.sha384(
        struct.pack("<I", 0x08000001) + b":compose-hash:" + event.event_payload
    ).digest()
    assert by_hand == event.digest


def test_facts() -> None:
    doc, report = load(REPORTS[0])
    facts = eventlog.runtime_facts(report.event_log)
    assert facts.compose_hash == bytes.fromhex(doc["info"]["compose_hash"])
    assert facts.os_image_hash == bytes.fromhex(doc["info"]["os_image_hash"])
    assert facts.app_id == bytes.fromhex(doc["info"]["app_id"])
    assert facts.instance_id == bytes.fromhex(doc["info"]["instance_id"])
    assert json.loads(facts.key_provider or "")["name"] == "kms"
    assert "system-ready" in facts.events


def _mutate(
    log: tuple[eventlog.EventLogEntry, ...], i: int, **kw: Any
) -> tuple[eventlog.EventLogEntry, ...]:
    out = list(log)
    out[i] = dataclasses.replace(out[i], **kw)
    return tuple(out)


@pytest.mark.parametrize("index", [0, 11, 20, 29])
def test_digest_flip_breaks_replay(index: int) -> None:
    _, report = load(REPORTS[0])
    e = report.event_log[index]
    bad = _mutate(report.event_log, index, digest=bytes([e.digest[0] ^ 1]) + e.digest[1:])
    row = eventlog.check_replay(bad, rtmrs(report.intel_quote))
    assert row.status is Status.FAIL and f"rtmr{e.imr}" in row.reason


def test_reordered_log_breaks_replay() -> None:
    _, report = load(REPORTS[0])
    log = list(report.event_log)
    log[21], log[22] = log[22], log[21]
    assert eventlog.check_replay(log, rtmrs(report.intel_quote)).status is Status.FAIL


def test_dropped_event_breaks_replay() -> None:
    _, report = load(REPORTS[0])
    assert (
        eventlog.check_replay(report.event_log[:-1], rtmrs(report.intel_quote)).status
        is Status.FAIL
    )


def test_forged_payload_keeps_replay_but_fails_digests() -> None:
    """Changing a payload but not its digest still replays: the digest row catches it."""
    _, report = load(REPORTS[0])
    i = next(i for i, e in enumerate(report.event_log) if e.event == "compose-hash")
    bad = _mutate(report.event_log, i, event_payload=b"\x00" * 32)
    assert eventlog.check_replay(bad, rtmrs(report.intel_quote)).status is Status.PASS
    row = eventlog.check_runtime_digests(bad)
    assert row.status is Status.FAIL and "compose-hash" in row.reason


def test_renamed_event_fails_digests() -> None:
    _, report = load(REPORTS[0])
    i = next(i for i, e in enumerate(report.event_log) if e.event == "app-id")
    bad = _mutate(report.event_log, i, event="instance-id")
    assert eventlog.check_runtime_digests(bad).status is Status.FAIL


def test_unknown_runtime_event_type_fails() -> None:
    _, report = load(REPORTS[0])
    i = next(i for i, e in enumerate(report.event_log) if e.imr == 3)
    bad = _mutate(report.event_log, i, event_type=0x1)
    assert eventlog.check_runtime_digests(bad).status is Status.FAIL


def test_empty_log_is_skipped() -> None:
    assert eventlog.check_replay((), [bytes(48)] * 4).status is Status.SKIPPED
    assert eventlog.check_runtime_digests(()).status is Status.SKIPPED


def test_parse_rejects_structure() -> None:
    with pytest.raises(EvidenceParseError):
        eventlog.parse_event_log([{"imr": True, "event_type": 1, "digest": "00" * 48}])
    with pytest.raises(EvidenceParseError):
        eventlog.parse_event_log([{"imr": 0, "event_type": -1, "digest": "00" * 48}])
    with pytest.raises(EvidenceParseError):
        eventlog.parse_event_log(
            [{"imr": 0, "event_type": 1, "digest": "00" * 48, "event_payload": "zz"}]
        )


# --- compose hash <-> info <-> MRCONFIGID ----------------------------------


@pytest.mark.parametrize("path", REPORTS, ids=lambda p: p.parts[-3].split("_")[0])
def test_compose_bindings_hold(path: Path) -> None:
    _, report = load(path)
    facts = eventlog.runtime_facts(report.event_log)
    assert measurements.check_compose_hash(facts, report.info).status is Status.PASS
    mrconfigid = report.intel_quote[MRCONFIGID]
    assert mrconfigid == measurements.expected_mrconfigid(facts.compose_hash or b"")
    assert measurements.check_mrconfigid(facts, mrconfigid).status is Status.PASS


def test_edited_app_compose_fails() -> None:
    doc, _ = load(REPORTS[0])
    doc["info"]["tcb_info"]["app_compose"] = doc["info"]["tcb_info"]["app_compose"].replace(
        "dstack", "dstacK", 1
    )
    report = AttestationReport.from_json(doc)
    facts = eventlog.runtime_facts(report.event_log)
    row = measurements.check_compose_hash(facts, report.info)
    assert row.status is Status.FAIL and "app_compose" in row.reason


def test_second_compose_hash_event_fails() -> None:
    _, report = load(REPORTS[0])
    event = next(e for e in report.event_log if e.event == "compose-hash")
    facts = eventlog.runtime_facts(report.event_log + (event,))
    assert facts.repeated == frozenset({"compose-hash"})
    assert measurements.check_compose_hash(facts, report.info).status is Status.FAIL


def test_mrconfigid_flip_fails() -> None:
    _, report = load(REPORTS[0])
    facts = eventlog.runtime_facts(report.event_log)
    bad = bytearray(report.intel_quote[MRCONFIGID])
    bad[1] ^= 1
    assert measurements.check_mrconfigid(facts, bytes(bad)).status is Status.FAIL


def test_info_misstating_mrtd_fails() -> None:
    doc, _ = load(REPORTS[0])
    doc["info"]["tcb_info"]["mrtd"] = "00" * 48
    report = AttestationReport.from_json(doc)
    q = report.intel_quote
    row = measurements.check_info(
        report.info,
        quote_measurements={
            "mrtd": q[TD + 136 : TD + 184],
            **{f"rtmr{i}": r for i, r in enumerate(rtmrs(q))},
        },
        facts=eventlog.runtime_facts(report.event_log),
    )
    assert row.status is Status.FAIL and "info.tcb_info.mrtd" in row.reason
