"""AttestationReport.from_json: every variant the protocol and the captures show."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from conftest import CAPTURES

from enclaved.attestation.document import AttestationReport
from enclaved.errors import EvidenceParseError

VENICE = next(CAPTURES.glob("venice_*/responses/0001_*.body"))
NEAR = next(CAPTURES.glob("neardirect_*/responses/0001_*.body"))


def venice() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(VENICE.read_bytes())
    return doc


def near() -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(NEAR.read_bytes())
    return doc


def test_venice_capture_parses() -> None:
    doc = venice()
    r = AttestationReport.from_json(VENICE.read_bytes())
    assert r.signing_algo == "ecdsa"
    assert r.signing_address_text == doc["signing_address"]
    assert r.signing_key is not None and r.signing_key.hex() == doc["signing_key"]
    assert r.intel_quote == bytes.fromhex(doc["intel_quote"])
    assert r.nonce == r.request_nonce == bytes.fromhex(doc["nonce"])
    assert r.nonce_source == "client"
    assert len(r.event_log) == 30
    assert r.nvidia_payload == doc["nvidia_payload"]  # verbatim
    assert r.verified is True
    assert r.tee_hardware == "intel-tdx" and r.tee_provider == "near-ai"
    assert r.model == "e2ee-qwen3-5-122b-a10b"
    assert r.info["compose_hash"] == doc["info"]["compose_hash"]
    assert r.tls_cert_fingerprint is None


def test_near_capture_parses_ed25519_with_fingerprint() -> None:
    doc = near()
    r = AttestationReport.from_json(doc)
    assert r.signing_algo == "ed25519"
    assert r.signing_address == bytes.fromhex(doc["signing_address"])
    assert r.signing_key == r.signing_address
    assert r.nonce is None and r.request_nonce == bytes.fromhex(doc["request_nonce"])
    assert r.echoed_nonces == (r.request_nonce,)
    assert r.tls_cert_fingerprint == bytes.fromhex(doc["tls_cert_fingerprint"])
    assert r.verified is None and r.model is None


def test_quote_base64_and_hex_agree() -> None:
    doc = venice()
    quote = bytes.fromhex(doc["intel_quote"])
    for form in (
        base64.b64encode(quote).decode(),
        base64.urlsafe_b64encode(quote).decode().rstrip("="),
        doc["intel_quote"].upper(),
        "0x" + doc["intel_quote"],
    ):
        doc["intel_quote"] = form
        assert AttestationReport.from_json(doc).intel_quote == quote


@pytest.mark.parametrize("field", ["signing_key", "signing_public_key"])
def test_key_from_either_field_and_without_04(field: str) -> None:
    doc = venice()
    key = doc.pop("signing_key")
    doc.pop("signing_public_key")
    doc[field] = key[2:]  # 128-hex form
    r = AttestationReport.from_json(doc)
    assert r.signing_key == bytes.fromhex(key)


def test_checksummed_address_accepted() -> None:
    doc = venice()
    doc["signing_address"] = "0x6525E128aFcffEbf7eed05D485D7bE983cdaE934"
    r = AttestationReport.from_json(doc)
    assert r.signing_address_text == "0x6525e128afcffebf7eed05d485d7be983cdae934"


def test_event_log_as_json_string_and_from_info() -> None:
    doc = venice()
    expected = AttestationReport.from_json(doc).event_log
    doc["event_log"] = json.dumps(doc["event_log"])
    assert AttestationReport.from_json(doc).event_log == expected
    del doc["event_log"]
    assert AttestationReport.from_json(doc).event_log == expected  # info.tcb_info.event_log
    doc["info"]["tcb_info"] = json.dumps(doc["info"]["tcb_info"])
    assert AttestationReport.from_json(doc).event_log == expected


def test_missing_optional_fields() -> None:
    doc = venice()
    for k in (
        "nvidia_payload",
        "event_log",
        "info",
        "signing_key",
        "signing_public_key",
        "verified",
    ):
        doc.pop(k)
    doc["nvidia_payload"] = None
    r = AttestationReport.from_json(doc)
    assert r.nvidia_payload is None and r.event_log == () and r.signing_key is None


BROKEN: dict[str, Any] = {
    "no_quote": {"intel_quote": None},
    "quote_not_hex_nor_base64": {"intel_quote": "zz!!"},
    "address_short": {"signing_address": "0x1234"},
    "address_not_hex": {"signing_address": "0x" + "g" * 40},
    "algo_unknown": {"signing_algo": "rsa"},
    "key_wrong_length": {"signing_key": "04" + "00" * 10},
    "key_bad_prefix": {"signing_key": "05" + "11" * 64, "signing_public_key": None},
    "keys_disagree": {"signing_public_key": "04" + "11" * 64},
    "nonce_not_hex": {"nonce": "xyz"},
    "event_log_not_list": {"event_log": {"imr": 0}},
    "event_log_bad_json": {"event_log": "[{"},
    "event_bad_imr": {"event_log": [{"imr": 4, "event_type": 1, "digest": "00" * 48}]},
    "event_short_digest": {"event_log": [{"imr": 0, "event_type": 1, "digest": "00" * 32}]},
    "nvidia_payload_not_json": {"nvidia_payload": "{not json"},
    "nvidia_payload_not_object": {"nvidia_payload": "[1]"},
    "verified_not_bool": {"verified": "yes"},
    "info_not_object": {"info": [1, 2]},
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_structural_problems_are_parse_errors(name: str) -> None:
    doc = venice()
    doc.update(BROKEN[name])
    with pytest.raises(EvidenceParseError):
        AttestationReport.from_json(doc)


@pytest.mark.parametrize("garbage", [b"", b"not json", b"[1,2]", b"\xff\xfe", "null"])
def test_garbage_is_a_parse_error(garbage: bytes | str) -> None:
    with pytest.raises(EvidenceParseError):
        AttestationReport.from_json(garbage)


def test_ed25519_address_must_be_32_bytes() -> None:
    doc = near()
    doc["signing_address"] = doc["signing_address"][:-2]
    with pytest.raises(EvidenceParseError):
        AttestationReport.from_json(doc)


def test_report_is_frozen() -> None:
    r = AttestationReport.from_json(venice())
    with pytest.raises(AttributeError):
        r.nonce = b"x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        r.info["x"] = 1  # type: ignore[index]
