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

import coincurve
import pytest
from conftest import SHARED

from enclaved.attestation import Policy, Verifier
from enclaved.attestation.formats import detect_format, verify_document
from enclaved.attestation.tdx import DirectoryCollateral
from enclaved.crypto.keys import address_from_public_key
from enclaved.errors import EvidenceParseError, PolicyError

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
    kms_roots: tuple[str, ...] = (),
) -> Any:
    # The report states its source (repo@commit) but carries no app_compose to
    # check it against the measured compose-hash: aci.provenance is skipped,
    # waived here by allow_missing_provenance, and said so.
    policy = Policy(
        allow_missing_collateral=True,
        allow_missing_nvidia=True,
        allow_missing_provenance=allow_unbound_provenance,
        aci_kms_roots=frozenset(kms_roots),
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


#: Where the report's dstack-kms chains lead (recovered from them; the KMS
#: contract's kmsInfo is what a relying party would pin it from).
KMS_ROOT = "0xd5bdeb037f237baac161ea37999b6aa37f7f4c77"
APP_ID = "fdb7a14e5a6675f752e2cb69c9067a98ca402918"  # the measured app-id event


def test_custody_unpinned_is_a_named_skip_naming_the_root(tmp_path: Path) -> None:
    row = _verify(REPORT, tmp=tmp_path).get("aci.key_custody")
    assert row.status.value == "skipped" and not row.enforced
    assert f"4 of 5 listed keys chain to dstack KMS root {KMS_ROOT}" in row.reason
    assert f"measured app-id {APP_ID}" in row.reason
    # The legacy Ed25519 E2EE key's chain does not verify under dstack's format
    # ("purpose:hex(public key)", Keccak-256): a finding, said by name.
    assert "not to it: e2ee 'dstack-kms-legacy-ed25519-v1'" in row.reason
    assert "aci_kms_roots" in row.reason


def test_custody_pinned_names_every_unproven_key(tmp_path: Path) -> None:
    v = _verify(REPORT, tmp=tmp_path, kms_roots=(KMS_ROOT,))
    row = v.get("aci.key_custody")
    assert row.status.value == "fail" and row.enforced
    assert "dstack-kms-legacy-ed25519-v1" in row.reason
    assert [c.id for c in v if not c.ok] == ["aci.key_custody"]
    other = _verify(REPORT, tmp=tmp_path, kms_roots=("0x" + "11" * 20,))
    assert "not a pinned KMS root" in other.get("aci.key_custody").reason


def _custody(keyset: Any, custody: Any, kms_roots: frozenset[str]) -> Any:
    from enclaved.attestation.document import AttestationReport
    from enclaved.attestation.eventlog import EventLogEntry
    from enclaved.attestation.formats import _aci_custody

    event = EventLogEntry(3, 0x08000001, bytes(48), "app-id", bytes.fromhex(APP_ID))
    report = AttestationReport(
        intel_quote=b"", signing_algo="ed25519", signing_address=b"", event_log=(event,)
    )
    return _aci_custody({"evidence": {"key_custody": custody}}, keyset, report, kms_roots)


def _without_legacy(doc: Any) -> tuple[Any, Any]:
    att = copy.deepcopy(doc["attestation"])
    keyset = att["workload_keyset"]
    keyset["e2ee_public_keys"] = [e for e in keyset["e2ee_public_keys"] if e["algo"] != "ed25519"]
    return keyset, att["evidence"]["key_custody"]


def test_custody_pinned_passes_when_every_listed_key_chains() -> None:
    keyset, custody = _without_legacy(REPORT)
    row = _custody(keyset, custody, frozenset({KMS_ROOT}))
    assert row.status.value == "pass", row.reason
    assert "4 of 4 listed keys" in row.reason and "TLS keys: not covered" in row.reason


@pytest.mark.parametrize("link", [0, 1])
def test_custody_a_flipped_chain_byte_unproves_its_key(link: int) -> None:
    keyset, custody = _without_legacy(REPORT)
    entry = next(k for k in custody["keys"] if k["role"] == "receipt")
    sig = bytearray.fromhex(entry["signature_chain"][link])
    sig[10] ^= 1
    entry["signature_chain"][link] = sig.hex()
    row = _custody(keyset, custody, frozenset({KMS_ROOT}))
    assert row.status.value == "fail"
    assert "not to it: receipt 'dstack-kms-receipt-v1'" in row.reason


def test_custody_a_key_swapped_in_the_keyset_is_unproven() -> None:
    keyset, custody = _without_legacy(REPORT)
    generator = coincurve.PrivateKey(bytes(31) + b"\x01").public_key  # a key no chain names
    keyset["receipt_signing_keys"][0]["public_key"] = generator.format(compressed=False).hex()
    row = _custody(keyset, custody, frozenset({KMS_ROOT}))
    assert row.status.value == "fail" and "receipt 'dstack-kms-receipt-v1'" in row.reason


def test_custody_without_chains() -> None:
    keyset, _ = _without_legacy(REPORT)
    unpinned = _custody(keyset, None, frozenset())
    assert unpinned.status.value == "skipped" and not unpinned.enforced
    pinned = _custody(keyset, None, frozenset({KMS_ROOT}))
    assert pinned.status.value == "skipped" and pinned.enforced


def test_policy_pins_kms_roots_as_addresses() -> None:
    key = coincurve.PrivateKey(bytes(31) + b"\x07").public_key
    address = address_from_public_key(key.format(compressed=False))
    p = Policy(aci_kms_roots=frozenset({key.format(compressed=True).hex(), address.upper()}))
    assert p.aci_kms_roots == frozenset({address.lower()})
    assert Policy.from_toml(f'aci_kms_roots = ["{address}"]').aci_kms_roots == {address.lower()}
    with pytest.raises(PolicyError, match="aci_kms_roots"):
        Policy(aci_kms_roots=frozenset({"0x1234"}))
