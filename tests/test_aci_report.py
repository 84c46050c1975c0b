"""A real aci/1 report (``shared/testdata/aci/report_aci1.json``, rev-a, fetched
from a production gateway with a fixed nonce) verified factor by factor.

The quote through the same TDX verifier as every report, the keyset against
its digest, the workload id against the identity key, the keyset
endorsement, and REPORTDATA recomputed from the statement with *our* nonce;
the revision is named by the caller. Each mutation is refused by the row
that names it. Intel collateral for this platform was not captured: those
rows are waived by the test's policy, and say so.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import SHARED

from enclaved.attestation import Policy, Verifier
from enclaved.attestation.formats import detect_format, verify_document
from enclaved.attestation.tdx import DirectoryCollateral
from enclaved.errors import EvidenceParseError

REPORT = json.loads((SHARED / "testdata" / "aci" / "report_aci1.json").read_text())
NONCE = bytes.fromhex("00" * 31 + "01")  # the fixed nonce it was fetched with
FETCHED = dt.datetime.fromtimestamp(1782664738, dt.UTC)

pytestmark = pytest.mark.filterwarnings("ignore::enclaved.attestation.InsecurePolicyWarning")


def _verify(
    doc: Any,
    fmt: str = "aci-rev-a",
    nonce: bytes = NONCE,
    tmp: Path | None = None,
    allow_unbound_provenance: bool = True,
) -> Any:
    # The report states its source (repo@commit) but carries no app_compose to
    # check it against the measured compose-hash: aci.provenance is skipped,
    # waived here by allow_missing_compose_binding, and said so.
    policy = Policy(
        allow_missing_collateral=True,
        allow_missing_nvidia=True,
        allow_missing_compose_binding=allow_unbound_provenance,
    )
    verifier = Verifier(
        policy, collateral=DirectoryCollateral(tmp or Path("/nonexistent")), now=lambda: FETCHED
    )
    verdict = verify_document(verifier, doc, nonce=nonce, format=fmt)
    return verdict.component("gateway")


def _status(verdict: Any, cid: str) -> str:
    row = verdict.get(cid)
    assert row is not None, cid
    return str(row.status.value)


def test_the_production_report_verifies(tmp_path: Path) -> None:
    v = _verify(REPORT, tmp=tmp_path)
    assert v.ok, v.table()
    for cid in (
        "tdx.quote.signature",
        "tdx.pck.chain",
        "aci.keyset_digest",
        "aci.workload_id",
        "aci.keyset_endorsement",
        "aci.report_data",
        "aci.keyset_expiry",
        "eventlog.replay",
        "measurements.mrconfigid",
    ):
        assert _status(v, cid) == "pass", (cid, v.table())
    assert _status(v, "aci.key_custody") == "skipped"
    assert _status(v, "aci.provenance") == "skipped"
    assert "no app_compose" in v.get("aci.provenance").reason


def test_unbound_provenance_is_refused_unless_the_policy_waives_it(tmp_path: Path) -> None:
    """§9.1 step 4: a provenance claim no measurement backs does not satisfy it."""
    v = _verify(REPORT, tmp=tmp_path, allow_unbound_provenance=False)
    assert not v.ok
    blocking = [c.id for c in v if not c.ok]
    assert blocking == ["aci.provenance"], v.table()


def _provenance_row(provenance: Any, compose: str | None, measured: bytes | None) -> Any:
    from enclaved.attestation.document import AttestationReport
    from enclaved.attestation.eventlog import EventLogEntry
    from enclaved.attestation.formats import _aci_provenance

    events: tuple[EventLogEntry, ...] = ()
    if measured is not None:
        events = (EventLogEntry(3, 0x08000001, bytes(48), "compose-hash", measured),)
    report = AttestationReport(
        intel_quote=b"", signing_algo="ed25519", signing_address=b"", event_log=events, raw={}
    )
    evidence = {} if compose is None else {"app_compose": compose}
    return _aci_provenance({"source_provenance": provenance, "evidence": evidence}, report)


COMPOSE = '{"docker_compose_file":"services:\\n  gw:\\n    image: ghcr.io/x/gw@sha256:abcd"}'
PROVENANCE = {"repo_url": "https://example/gw.git", "repo_commit": "1b43f7", "image_digest": None}


def test_provenance_corroborated_by_the_measured_compose() -> None:
    import hashlib

    measured = hashlib.sha256(COMPOSE.encode()).digest()
    image = {**PROVENANCE, "repo_commit": None, "image_digest": "sha256:abcd"}
    assert _provenance_row(image, COMPOSE, measured).status.value == "pass"
    # The compose is measured, but it names neither the stated image nor commit.
    assert _provenance_row(PROVENANCE, COMPOSE, measured).status.value == "fail"
    # An app_compose that is not the measured one.
    assert _provenance_row(image, COMPOSE, bytes(32)).status.value == "fail"
    assert _provenance_row(image, COMPOSE, None).status.value == "fail"
    # Nothing stated: skipped (enforced unless waived), never a pass.
    nothing = {"repo_url": None, "repo_commit": None, "image_digest": None}
    assert _provenance_row(nothing, COMPOSE, measured).status.value == "skipped"


def test_the_revision_is_named_not_guessed(tmp_path: Path) -> None:
    with pytest.raises(EvidenceParseError, match="name its revision"):
        detect_format(REPORT)
    wrong = _verify(REPORT, "aci-current", tmp=tmp_path)
    assert _status(wrong, "aci.report_data") == "fail"


def test_another_nonce_is_refused(tmp_path: Path) -> None:
    assert _status(_verify(REPORT, nonce=bytes(32), tmp=tmp_path), "aci.report_data") == "fail"


def _keyset(doc: dict[str, Any]) -> dict[str, Any]:
    keyset: dict[str, Any] = doc["attestation"]["workload_keyset"]
    return keyset


MUTATIONS: list[tuple[str, Callable[[dict[str, Any]], None], str]] = [
    (
        "receipt key swapped",
        lambda d: _keyset(d)["receipt_signing_keys"][0].update(public_key="00" * 32),
        "aci.keyset_digest",
    ),
    (
        "stated digest",
        lambda d: d.update(workload_keyset_digest="sha256:" + "11" * 32),
        "aci.keyset_digest",
    ),
    ("workload id", lambda d: d.update(workload_id="sha256:" + "22" * 32), "aci.workload_id"),
    (
        "endorsement",
        lambda d: d["attestation"]["keyset_endorsement"].update(
            value="00" + d["attestation"]["keyset_endorsement"]["value"][2:]
        ),
        "aci.keyset_endorsement",
    ),
    (
        "app_compose not the measured one",
        lambda d: d["attestation"]["evidence"].update(app_compose='{"docker_compose_file":""}'),
        "aci.provenance",
    ),
    (
        "expired keyset",
        lambda d: _keyset(d)["keyset_epoch"].update(not_after=1700000000),
        "aci.keyset_expiry",
    ),
]


@pytest.mark.parametrize(("name", "mutate", "cid"), MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_each_mutation_is_refused_by_its_row(
    tmp_path: Path, name: str, mutate: Callable[[dict[str, Any]], None], cid: str
) -> None:
    doc = copy.deepcopy(REPORT)
    mutate(doc)
    v = _verify(doc, tmp=tmp_path)
    assert not v.ok
    assert _status(v, cid) == "fail", v.table()
