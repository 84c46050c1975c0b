"""The aci/1 core against the published vectors of both revisions, byte for byte.

Sources: ``shared/specs/aci/test-vectors.md`` (current revision),
``test-vectors-rev-a.md`` (the older one) and
``shared/testdata/aci/jcs_vectors.json`` (the reference implementation's
canonicalization). The JCS bytes are compared, not only their hashes; a
changed byte of a signed receipt, or a swapped key, is refused.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import SHARED
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from enclaved import aci
from enclaved.errors import EvidenceParseError, VerificationError

SPECS = SHARED / "specs" / "aci"
DATA = SHARED / "testdata" / "aci"


def _blocks(path: Path) -> list[str]:
    """The ```text blocks of a vectors document, in order."""
    return re.findall(r"```text\n(.*?)\n```", path.read_text(encoding="utf-8"), re.DOTALL)


CUR = _blocks(SPECS / "test-vectors.md")
REVA = _blocks(SPECS / "test-vectors-rev-a.md")


def _value(block: str, name: str) -> str:
    match = re.search(rf"{re.escape(name)}\s*=\s*(\S+)", block)
    assert match, (name, block)
    return match.group(1)


class Seed:
    """An Ed25519 key from a fixed 32-byte seed, with the ``sign`` the core uses."""

    def __init__(self, byte: int) -> None:
        self.key = Ed25519PrivateKey.from_private_bytes(bytes([byte]) * 32)

    def sign(self, message: bytes) -> bytes:
        return self.key.sign(message)


RECEIPT_KEY = Seed(0x02)
IDENTITY_KEY = Seed(0x01)


# -- JCS ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "vector",
    json.loads((DATA / "jcs_vectors.json").read_text())["vectors"],
    ids=lambda v: v["name"],
)
def test_jcs_reference_vectors(vector: dict[str, Any]) -> None:
    if vector["wantErr"]:
        with pytest.raises(EvidenceParseError):
            aci.jcs(vector["value"])
        return
    assert aci.jcs(vector["value"]).hex() == vector["canonical_hex"]
    assert aci.jcs_sha256(vector["value"]) == vector["sha256"]


@pytest.mark.parametrize(
    ("value", "canonical"),
    [
        ({"big": 2**53 + 1}, b'{"big":9007199254740993}'),
        (
            {"u64": 2**64 - 1, "i64": -(2**63)},
            b'{"i64":-9223372036854775808,"u64":18446744073709551615}',
        ),
        ({"\u00e9": "\u00fc\U0001f600"}, '{"\u00e9":"\u00fc\U0001f600"}'.encode()),
        ({"\ue000": 1, "\U0001f600": 2}, '{"\U0001f600":2,"\ue000":1}'.encode()),  # UTF-16 order
    ],
)
def test_jcs_edge_cases(value: Any, canonical: bytes) -> None:
    assert aci.jcs(value) == canonical


@pytest.mark.parametrize("bad", [1.0, {"x": 0.5}, 2**64, -(2**63) - 1, {"s": "\ud800"}, b"x"])
def test_jcs_refuses_what_the_profile_refuses(bad: Any) -> None:
    with pytest.raises(EvidenceParseError):
        aci.jcs(bad)


# -- current revision --------------------------------------------------------------


def test_current_keyset_digest() -> None:
    keyset_jcs = CUR[0].encode()
    assert aci.jcs(json.loads(keyset_jcs)) == keyset_jcs
    assert aci.keyset_digest(json.loads(keyset_jcs)) == _value(CUR[1], "workload_keyset_digest")


def test_current_statement_and_report_data() -> None:
    digest = _value(CUR[1], "workload_keyset_digest")
    nonce = bytes(range(32)).hex()
    with_nonce = aci.statement(aci.CURRENT, digest, nonce)
    assert with_nonce == CUR[2].encode()
    assert hashlib.sha256(with_nonce).hexdigest() == _value(
        CUR[3], "report_data = sha256(statement)"
    )
    without = aci.statement(aci.CURRENT, digest, None)
    assert without == CUR[4].encode()
    assert hashlib.sha256(without).hexdigest() == _value(CUR[5], "report_data")
    assert aci.report_data(with_nonce).hex() == CUR[6]


def _current_receipt_vector() -> tuple[bytes, str, bytes]:
    receipts = [b for b in CUR if b.startswith('{"api_version"') and '"receipt_id"' in b]
    signing_input = next(b for b in receipts if '"signature"' not in b)
    served = next(b for b in receipts if '"signature"' in b)
    signature = next(_value(b, "signature") for b in CUR if b.startswith("signature ="))
    return signing_input.encode(), signature, served.encode()


def test_current_receipt_signature_byte_for_byte() -> None:
    signing_input, signature, served = _current_receipt_vector()
    document = json.loads(signing_input)
    key_id = document.pop("key_id")
    receipt = aci.sign_receipt(aci.CURRENT, document, RECEIPT_KEY, key_id)
    assert aci.receipt_signing_input(aci.CURRENT, receipt) == signing_input
    assert receipt["signature"] == signature
    assert aci.jcs(receipt) == served
    keyset = json.loads(CUR[0])
    keyset["receipt_signing_keys"][0]["key_id"] = key_id
    assert aci.verify_receipt_signature(aci.CURRENT, json.loads(served), keyset) == key_id


# -- rev-a -------------------------------------------------------------------------


def test_rev_a_workload_id_keyset_statement_endorsement() -> None:
    identity = json.loads(REVA[0])
    assert aci.jcs(identity) == REVA[0].encode()
    wid = aci.workload_id(identity)
    assert wid == _value(REVA[1], "workload_id")
    digest = "sha256:f2fba7e1b1451e0c0231df624f293407692ef939d3e0e55bca723131bea3f1ff"
    assert _value(REVA[2], "workload_keyset_digest") == digest
    stmt = aci.statement(aci.REV_A, digest, "test-nonce", wid)
    assert stmt == REVA[3].encode()
    assert hashlib.sha256(stmt).hexdigest() == _value(REVA[4], 'report_data (nonce "test-nonce")')
    null = aci.statement(aci.REV_A, digest, None, wid)
    assert hashlib.sha256(null).hexdigest() == _value(REVA[4], "report_data (nonce omitted → null)")
    payload = aci.endorsement_payload(digest)
    assert payload == REVA[5].encode()
    assert IDENTITY_KEY.sign(payload).hex() == _value(
        REVA[6], "keyset_endorsement.value (ed25519, identity key)"
    )
    revocation = aci.endorsement_payload(digest, "aci.keyset.revocation.v1")
    assert revocation == REVA[7].encode()


def test_rev_a_receipt_signature_byte_for_byte() -> None:
    canonical = next(b for b in REVA if b.startswith('{"api_version"'))
    value = next(
        _value(b, "signature.value (ed25519, receipt-1)") for b in REVA if "signature.value" in b
    )
    document = json.loads(canonical)
    signature = document.pop("signature")
    receipt = aci.sign_receipt(aci.REV_A, document, RECEIPT_KEY, signature["key_id"])
    assert aci.receipt_signing_input(aci.REV_A, receipt) == canonical.encode()
    assert receipt["signature"]["value"] == value
    keyset = {
        "receipt_signing_keys": [
            {
                "key_id": "receipt-1",
                "algo": "ed25519",
                "public_key": "8139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394",
            }
        ]
    }
    assert aci.verify_receipt_signature(aci.REV_A, receipt, keyset) == "receipt-1"


def test_the_reference_receipt_canonical_vector() -> None:
    vector = json.loads((DATA / "receipt_canonical_vector.json").read_text())
    canonical = aci.receipt_signing_input(aci.REV_A, vector["receipt"])
    assert canonical.hex() == vector["canonical_hex"]
    assert "sha256:" + hashlib.sha256(canonical).hexdigest() == vector["sha256"]


# -- mutations ---------------------------------------------------------------------


def _signed_current() -> tuple[dict[str, Any], dict[str, Any]]:
    signing_input, _, served = _current_receipt_vector()
    keyset = json.loads(CUR[0])
    keyset["receipt_signing_keys"][0]["key_id"] = json.loads(signing_input)["key_id"]
    return json.loads(served), keyset


@pytest.mark.parametrize(
    "mutate",
    [
        lambda r, k: r.update(served_at=r["served_at"] + 1),
        lambda r, k: r["event_log"][0].update(body_hash="sha256:" + "00" * 32),
        lambda r, k: r["event_log"].reverse(),
        lambda r, k: r.update(signature=r["signature"][:-2] + "00"),
        lambda r, k: k["receipt_signing_keys"][0].update(
            public_key="8a88e3dd7409f195fd52db2d3cba5d72ca6709bf1d94121bf3748801b40f6f5c"
        ),
        lambda r, k: r.update(key_id="receipt-2"),
        lambda r, k: k["receipt_signing_keys"].append(dict(k["receipt_signing_keys"][0])),
    ],
    ids=[
        "served_at",
        "body_hash",
        "event_order",
        "signature",
        "other_key",
        "unknown_key_id",
        "ambiguous_key",
    ],
)
def test_a_changed_receipt_or_keyset_is_refused(mutate: Any) -> None:
    receipt, keyset = _signed_current()
    receipt, keyset = copy.deepcopy(receipt), copy.deepcopy(keyset)
    mutate(receipt, keyset)
    with pytest.raises(VerificationError):
        aci.verify_receipt_signature(aci.CURRENT, receipt, keyset)


def test_the_revision_is_named_never_guessed() -> None:
    receipt, keyset = _signed_current()
    with pytest.raises(VerificationError):
        aci.verify_receipt_signature(aci.REV_A, receipt, keyset)  # a current receipt read as rev-a
    with pytest.raises(VerificationError, match="unknown aci/1 revision"):
        aci.statement("rev-b", "sha256:" + "00" * 32, None)


def test_node_core_matches_what_the_node_expects() -> None:
    core = aci.node_core()
    digest = core.keyset_digest(json.loads(CUR[0]))
    assert core.statement(aci.CURRENT, digest, bytes(range(32)).hex(), None) == CUR[2].encode()
