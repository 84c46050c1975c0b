"""REPORTDATA, signing key and nonce bindings, on the production captures."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import CAPTURES

from enclaved.attestation import binding
from enclaved.attestation.checks import Status
from enclaved.attestation.document import AttestationReport
from enclaved.crypto import KeyPair

VENICE = next(CAPTURES.glob("venice_*/responses/0001_*.body"))
NEAR = next(CAPTURES.glob("neardirect_*/responses/0001_*.body"))

# TDX quote v4: 48-byte header, then the TD report; REPORTDATA is its last 64 bytes.
RD_OFFSET = 48 + 520


def load(path: Path) -> tuple[dict[str, Any], AttestationReport, bytes, bytes]:
    doc = json.loads(path.read_bytes())
    report = AttestationReport.from_json(doc)
    rd = report.intel_quote[RD_OFFSET : RD_OFFSET + 64]
    nonce = bytes.fromhex(doc["request_nonce"])
    return doc, report, rd, nonce


def statuses(rows: list[Any]) -> dict[str, Status]:
    return {c.id: c.status for c in rows}


@pytest.mark.parametrize("path", [VENICE, NEAR], ids=["venice-ecdsa", "near-ed25519-tls"])
def test_captures_bind(path: Path) -> None:
    _, report, rd, nonce = load(path)
    rows = binding.check_all(report, rd, nonce) + [binding.check_nonce_echo(report, nonce)]
    assert all(c.status is Status.PASS for c in rows), rows


def test_near_uses_the_tls_fingerprint_layout() -> None:
    doc, report, rd, _ = load(NEAR)
    want = hashlib.sha256(
        bytes.fromhex(doc["signing_address"]) + bytes.fromhex(doc["tls_cert_fingerprint"])
    ).digest()
    assert rd[:32] == want
    assert binding.expected_identity(report)[0] == want
    # Without the fingerprint the document claims the plain Ed25519 layout,
    # which this quote does not hold: layouts are never tried in turn.
    doc.pop("tls_cert_fingerprint")
    plain = AttestationReport.from_json(doc)
    assert binding.check_report_data_identity(plain, rd).status is Status.FAIL


def test_venice_layout_is_address_then_zeros() -> None:
    doc, _, rd, nonce = load(VENICE)
    assert rd[:20] == bytes.fromhex(doc["signing_address"][2:])
    assert rd[20:32] == bytes(12)
    assert rd[32:] == nonce


@pytest.mark.parametrize("path", [VENICE, NEAR])
@pytest.mark.parametrize("index", [0, 19, 20, 31])
def test_identity_byte_flip_fails(path: Path, index: int) -> None:
    _, report, rd, _ = load(path)
    bad = bytearray(rd)
    bad[index] ^= 1
    row = binding.check_report_data_identity(report, bytes(bad))
    assert row.id == "binding.report_data.identity" and row.status is Status.FAIL


@pytest.mark.parametrize("index", [32, 63])
def test_nonce_byte_flip_fails(index: int) -> None:
    _, report, rd, nonce = load(VENICE)
    bad = bytearray(rd)
    bad[index] ^= 0x80
    assert binding.check_report_data_nonce(report, bytes(bad), nonce).status is Status.FAIL


def test_other_nonce_fails_both_rows() -> None:
    _, report, rd, _ = load(VENICE)
    other = bytes(32)
    assert binding.check_report_data_nonce(report, rd, other).status is Status.FAIL
    assert binding.check_nonce_echo(report, other).status is Status.FAIL


def test_without_client_nonce_uses_document_nonce_and_says_so() -> None:
    _, report, rd, _ = load(VENICE)
    row = binding.check_report_data_nonce(report, rd, None)
    assert row.status is Status.PASS and "NOT checked" in row.reason
    echo = binding.check_nonce_echo(report, None)
    assert echo.status is Status.SKIPPED and "freshness NOT checked" in echo.reason


def test_missing_echo_fails() -> None:
    doc, _, _, nonce = load(VENICE)
    doc.pop("nonce")
    doc.pop("request_nonce")
    row = binding.check_nonce_echo(AttestationReport.from_json(doc), nonce)
    assert row.status is Status.FAIL


def test_server_nonce_source_fails() -> None:
    doc, _, _, nonce = load(VENICE)
    doc["nonce_source"] = "server"
    assert binding.check_nonce_echo(AttestationReport.from_json(doc), nonce).status is Status.FAIL


def test_signing_key_of_another_address_fails() -> None:
    doc, _, _, _ = load(VENICE)
    other = KeyPair.generate().public_key_hex
    doc["signing_key"] = doc["signing_public_key"] = other
    row = binding.check_signing_key(AttestationReport.from_json(doc))
    assert row.status is Status.FAIL and "hashes to" in row.reason


def test_signing_key_off_curve_fails() -> None:
    doc, _, _, _ = load(VENICE)
    doc["signing_key"] = doc["signing_public_key"] = "04" + "00" * 64
    assert binding.check_signing_key(AttestationReport.from_json(doc)).status is Status.FAIL


def test_signing_key_missing_is_skipped() -> None:
    doc, _, _, _ = load(VENICE)
    doc.pop("signing_key")
    doc.pop("signing_public_key")
    assert binding.check_signing_key(AttestationReport.from_json(doc)).status is Status.SKIPPED


def test_ed25519_key_must_equal_address() -> None:
    doc, _, _, _ = load(NEAR)
    doc["signing_public_key"] = "11" * 32
    assert binding.check_signing_key(AttestationReport.from_json(doc)).status is Status.FAIL


def test_verified_flag_is_never_enforced() -> None:
    doc, report, _, _ = load(VENICE)
    assert binding.check_verified_flag(report).enforced is False
    doc["verified"] = False
    row = binding.check_verified_flag(AttestationReport.from_json(doc))
    assert row.status is Status.FAIL and not row.enforced and row.ok


def test_synthetic_ecdsa_with_fingerprint() -> None:
    """The ecdsa + tls_cert_fingerprint layout hashes the 20 address bytes."""
    doc, _, _, nonce = load(VENICE)
    fp = hashlib.sha256(b"cert").digest()
    doc["tls_cert_fingerprint"] = fp.hex()
    report = AttestationReport.from_json(doc)
    rd = hashlib.sha256(report.signing_address + fp).digest() + nonce
    assert all(c.status is Status.PASS for c in binding.check_all(report, rd, nonce))


def test_short_report_data_fails() -> None:
    _, report, rd, nonce = load(VENICE)
    assert binding.check_report_data_identity(report, rd[:63]).status is Status.FAIL
    assert binding.check_report_data_nonce(report, rd[:63], nonce).status is Status.FAIL
