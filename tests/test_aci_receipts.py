"""A client's check of an answer against its aci/1 receipt (spec §9.3, rev-a §10.2).

The receipts, keysets and request/response bytes are the published vectors
of both revisions (``shared/specs/aci/test-vectors*.md``): every row passes on
them, and each changed byte, swapped body or swapped key is refused by the
row a user reads in the verdict.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from test_aci_core import CUR, REVA

from enclaved import aci
from enclaved.attestation.checks import CheckId, Status


def _first_line(blocks: list[str], prefix: str) -> bytes:
    return next(b.split("\n", 1)[0] for b in blocks if b.startswith(prefix)).encode()


class _Key:
    def __init__(self, byte: int) -> None:
        self.key = Ed25519PrivateKey.from_private_bytes(bytes([byte]) * 32)

    def sign(self, message: bytes) -> bytes:
        return self.key.sign(message)


RECEIPT_KEY_HEX = "8139770ea87d175f56a35466c34c7ecccb8d8a91b4ee37a25df60f5b8fc9b394"


def _current() -> dict[str, Any]:
    served = next(b for b in CUR if b.startswith('{"api_version"') and '"signature"' in b)
    keyset = json.loads(CUR[0])
    return {
        "revision": aci.CURRENT,
        "receipt": json.loads(served),
        "keyset": keyset,
        "keyset_digest": aci.keyset_digest(keyset),
        "workload_id": None,
        "request_body": _first_line(CUR, '{"messages"'),
        "response_body": _first_line(CUR, '{"choices"'),
    }


def _rev_a() -> dict[str, Any]:
    canonical = json.loads(next(b for b in REVA if b.startswith('{"api_version"')))
    signature = canonical.pop("signature")
    receipt = aci.sign_receipt(aci.REV_A, canonical, _Key(0x02), signature["key_id"])
    keyset = {
        "receipt_signing_keys": [
            {"key_id": "receipt-1", "algo": "ed25519", "public_key": RECEIPT_KEY_HEX}
        ]
    }
    return {
        "revision": aci.REV_A,
        "receipt": receipt,
        "keyset": keyset,
        "keyset_digest": canonical["workload_keyset_digest"],
        "workload_id": canonical["workload_id"],
        "request_body": _first_line(REVA, '{"messages"'),
        "response_body": _first_line(REVA, '{"choices"'),
    }


CASES = {"current": _current, "rev-a": _rev_a}


def _verify(case: dict[str, Any], **over: Any) -> Any:
    args = {**case, **over}
    return aci.verify_receipt(
        args.pop("revision"),
        args.pop("receipt"),
        **args,
    )


def test_body_hash_is_the_vectors_hash() -> None:
    assert (
        aci.body_hash(_first_line(CUR, '{"messages"'))
        == "sha256:94d809bf47380d8a2eab0eb6e126d4dda9364b0b4725cdf7ead52dd70b2aa87b"
    )
    assert (
        aci.body_hash(_first_line(REVA, '{"choices"'))
        == "sha256:dedfffe5b14d031b8e2c01996d021a15293cb7c63b56be7e4be9e89b6f0a5f61"
    )


@pytest.mark.parametrize("name", CASES)
def test_the_published_receipt_verifies_row_by_row(name: str) -> None:
    verdict = _verify(CASES[name]())
    assert verdict.ok, verdict.table()
    assert [c.id for c in verdict] == [
        CheckId.ACI_RECEIPT_SIGNATURE,
        CheckId.ACI_RECEIPT_DOCUMENT,
        CheckId.ACI_RECEIPT_REQUEST,
        CheckId.ACI_RECEIPT_RESPONSE,
        CheckId.ACI_RECEIPT_REWRITE,
    ]
    assert all(c.status is Status.PASS for c in verdict)


def _flip(data: bytes) -> bytes:
    return data[:5] + bytes([data[5] ^ 0x01]) + data[6:]


def _set_event(receipt: dict[str, Any], kind: str, field: str, value: Any) -> None:
    for event in receipt["event_log"]:
        if event["type"] == kind:
            event[field] = value


MUTATIONS: dict[str, tuple[Any, CheckId]] = {
    # The bytes we exchanged are not the ones the receipt names.
    "request byte flipped": (
        lambda c: c.update(request_body=_flip(c["request_body"])),
        CheckId.ACI_RECEIPT_REQUEST,
    ),
    "response byte flipped": (
        lambda c: c.update(response_body=_flip(c["response_body"])),
        CheckId.ACI_RECEIPT_RESPONSE,
    ),
    "request and response swapped": (
        lambda c: c.update(request_body=c["response_body"], response_body=c["request_body"]),
        CheckId.ACI_RECEIPT_REQUEST,
    ),
    # The receipt changed after signing.
    "served_at changed": (
        lambda c: c["receipt"].update(served_at=c["receipt"]["served_at"] + 1),
        CheckId.ACI_RECEIPT_SIGNATURE,
    ),
    "response hash changed": (
        lambda c: _set_event(c["receipt"], "response.returned", "body_hash", "sha256:" + "0" * 64),
        CheckId.ACI_RECEIPT_SIGNATURE,
    ),
    "event order swapped": (
        lambda c: c["receipt"]["event_log"].reverse(),
        CheckId.ACI_RECEIPT_SIGNATURE,
    ),
    # A key that is not the established keyset's.
    "receipt key swapped": (
        lambda c: c["keyset"]["receipt_signing_keys"][0].update(
            public_key=Ed25519PrivateKey.from_private_bytes(bytes([3]) * 32)
            .public_key()
            .public_bytes_raw()
            .hex()
        ),
        CheckId.ACI_RECEIPT_SIGNATURE,
    ),
    # A receipt of another keyset (or workload) than the one established.
    "another keyset digest": (
        lambda c: c.update(keyset_digest="sha256:" + "1" * 64),
        CheckId.ACI_RECEIPT_DOCUMENT,
    ),
}


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("mutation", MUTATIONS)
def test_each_mutation_is_refused_by_its_row(name: str, mutation: str) -> None:
    case = copy.deepcopy(CASES[name]())
    mutate, row = MUTATIONS[mutation]
    if name == "rev-a" and mutation == "response hash changed":
        mutate = lambda c: _set_event(
            c["receipt"], "response.returned", "wire_hash", "sha256:" + "0" * 64
        )
    mutate(case)
    verdict = _verify(case)
    assert not verdict.ok
    failed = verdict.get(row)
    assert failed is not None and failed.status is Status.FAIL, verdict.table()


def test_rev_a_another_workload_id_is_refused() -> None:
    verdict = _verify(_rev_a(), workload_id="sha256:" + "2" * 64)
    row = verdict.get(CheckId.ACI_RECEIPT_DOCUMENT)
    assert not verdict.ok and row is not None and row.status is Status.FAIL


def test_no_bytes_to_compare_is_a_skipped_enforced_row_not_a_pass() -> None:
    verdict = _verify(_current(), request_body=None, response_body=None)
    assert not verdict.ok
    for cid in (CheckId.ACI_RECEIPT_REQUEST, CheckId.ACI_RECEIPT_RESPONSE):
        row = verdict.get(cid)
        assert row is not None and row.status is Status.SKIPPED and row.enforced


def _resigned(case: dict[str, Any], edit: Any) -> dict[str, Any]:
    """``case`` with its receipt edited, then signed again by the same receipt key."""
    receipt = case["receipt"]
    doc = {k: v for k, v in receipt.items() if k not in ("key_id", "signature")}
    edit(doc)
    key_id = aci.receipt_key_id(case["revision"], receipt)
    case["receipt"] = aci.sign_receipt(case["revision"], doc, _Key(0x02), key_id)
    return case


def test_a_rewritten_request_is_refused_unless_allowed() -> None:
    case = _resigned(
        _current(),
        lambda d: _set_event(d, "request.forwarded", "body_hash", "sha256:" + "3" * 64),
    )
    verdict = _verify(case)
    row = verdict.get(CheckId.ACI_RECEIPT_REWRITE)
    assert not verdict.ok and row is not None and row.status is Status.FAIL
    allowed = _verify(case, allow_rewrite=True)
    assert allowed.ok, allowed.table()


def test_rev_a_an_undeclared_rewrite_is_refused_even_when_allowed() -> None:
    case = _resigned(
        _rev_a(),
        lambda d: _set_event(d, "request.forwarded", "body_hash", "sha256:" + "3" * 64),
    )
    assert not _verify(case, allow_rewrite=True).ok


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d.update(api_version="aci/2"),
        lambda d: d["event_log"].insert(0, d["event_log"].pop()),  # request.received not first
        lambda d: d["event_log"].append(dict(d["event_log"][-1])),  # two response.returned
        lambda d: d.update(event_log="none"),
    ],
    ids=["api_version", "first event", "duplicate response", "not a list"],
)
def test_a_signed_but_malformed_document_is_refused(edit: Any) -> None:
    verdict = _verify(_resigned(_current(), edit))
    row = verdict.get(CheckId.ACI_RECEIPT_DOCUMENT)
    signature = verdict.get(CheckId.ACI_RECEIPT_SIGNATURE)
    assert signature is not None and signature.status is Status.PASS
    assert not verdict.ok and row is not None and row.status is Status.FAIL


def test_rev_a_seq_must_increase_from_zero() -> None:
    def edit(d: dict[str, Any]) -> None:
        d["event_log"][1]["seq"] = 5

    verdict = _verify(_resigned(_rev_a(), edit))
    row = verdict.get(CheckId.ACI_RECEIPT_DOCUMENT)
    assert not verdict.ok and row is not None and row.status is Status.FAIL


def test_a_current_receipt_read_as_rev_a_fails() -> None:
    """The revision is the caller's, never read from the receipt."""
    case = _current()
    case["revision"] = aci.REV_A
    assert not _verify(case).ok


# -- rev-a secp256k1 receipt keys (§8.5), as the production gateway lists them ------


def _secp256k1_case(v_offset: int = 0, length: int = 65) -> dict[str, Any]:
    import hashlib

    import coincurve

    key = coincurve.PrivateKey(bytes([7]) * 32)
    case = _rev_a()
    receipt = case["receipt"]
    receipt["signature"] = {"algo": "ecdsa-secp256k1", "key_id": "dstack-kms-receipt-v1"}
    digest = hashlib.sha256(aci.receipt_signing_input(aci.REV_A, receipt)).digest()
    signature = bytearray(key.sign_recoverable(digest, hasher=None))
    signature[64] += v_offset
    receipt["signature"]["value"] = bytes(signature[:length]).hex()
    case["keyset"] = {
        "receipt_signing_keys": [
            {
                "key_id": "dstack-kms-receipt-v1",
                "algo": "ecdsa-secp256k1",
                "public_key": key.public_key.format(compressed=False).hex(),
            }
        ]
    }
    return case


def test_rev_a_secp256k1_receipt_verifies_with_either_recovery_id_form() -> None:
    for v_offset in (0, 27):
        verdict = _verify(_secp256k1_case(v_offset))
        assert verdict.ok, verdict.table()


@pytest.mark.parametrize(
    "mutate",
    [
        lambda c: c.update(**_secp256k1_case(length=64)),  # JOSE shape: refused by the spec
        lambda c: c["receipt"]["signature"].update(algo="ed25519"),  # algo is not the key's
        lambda c: c["keyset"]["receipt_signing_keys"][0].update(
            public_key=__import__("coincurve").PrivateKey(bytes([8]) * 32).public_key.format().hex()
        ),
        lambda c: c["receipt"].update(served_at=1),
    ],
    ids=["64-byte signature", "algo mismatch", "another key", "changed receipt"],
)
def test_rev_a_secp256k1_mutations_are_refused(mutate: Any) -> None:
    case = _secp256k1_case()
    mutate(case)
    row = _verify(case).get(CheckId.ACI_RECEIPT_SIGNATURE)
    assert row is not None and row.status is Status.FAIL


def test_the_current_revision_accepts_only_ed25519_receipt_keys() -> None:
    case = _secp256k1_case()
    case["revision"] = aci.CURRENT
    row = _verify(case).get(CheckId.ACI_RECEIPT_SIGNATURE)
    assert row is not None and row.status is Status.FAIL


# -- §9.1 step 6: the channel we used is in the keyset --------------------------------


def test_the_channel_we_used_must_be_in_the_keyset() -> None:
    keyset = json.loads(CUR[0])
    e2ee = keyset["e2ee_public_keys"][0]["public_key"]
    spki = keyset["tls_public_keys"][0]["spki_sha256"]

    def status(**kw: Any) -> Status:
        return aci.check_channel(keyset, **kw).status

    assert status(e2ee_public_key=e2ee.upper()) is Status.PASS
    assert status(tls_spki_sha256=spki, hostname="api.example.com") is Status.PASS
    assert status(tls_spki_sha256="sha256:" + spki, hostname="API.example.com") is Status.PASS
    # The listed key, but for another host than the one we connected to.
    assert status(tls_spki_sha256=spki, hostname="evil.example.com") is Status.FAIL
    assert status(tls_spki_sha256=spki) is Status.FAIL
    assert status(e2ee_public_key="00" * 32) is Status.FAIL
    row = aci.check_channel(keyset)
    assert row.status is Status.SKIPPED and row.enforced and row.id == CheckId.ACI_CHANNEL
