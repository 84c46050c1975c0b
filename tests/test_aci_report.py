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


def _verify(doc: Any, fmt: str = "aci-rev-a", nonce: bytes = NONCE, tmp: Path | None = None) -> Any:
    policy = Policy(allow_missing_collateral=True, allow_missing_nvidia=True)
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
