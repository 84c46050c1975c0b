"""The simulated TDX: genuine layout, development keys, trusted only when asked."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from enclaved.attestation.checks import Status
from enclaved.attestation.tdx import CHECK_IDS, parse_quote, pck_ca, pck_extensions, verify_quote
from enclaved.errors import ConfigError
from enclaved.evidence.simulated import (
    DEV_FMSPC,
    ROOT_CERT_FILE,
    ROOT_KEY_FILE,
    SimulatedTd,
    SimulatedTdx,
    build_quote,
)
from enclaved.evidence.simulated_deployment import SimulatedDeployment

NOW = dt.datetime(2026, 4, 24, 2, 0, tzinfo=dt.UTC)


@pytest.fixture
def tee(tmp_path: Path) -> SimulatedTdx:
    return SimulatedTdx.load_or_create(tmp_path / "data", now=NOW)


def failing(checks: list) -> set[str]:  # type: ignore[type-arg]
    return {c.id for c in checks if c.status is not Status.PASS}


def test_root_is_created_once_and_reused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = SimulatedTdx.load_or_create(data, now=NOW)
    key_path, cert_path = data / ROOT_KEY_FILE, data / ROOT_CERT_FILE
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert first.root_path == cert_path
    assert cert_path.read_bytes() == first.root_pem
    root = x509.load_pem_x509_certificate(first.root_pem)
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    second = SimulatedTdx.load_or_create(data, now=NOW + dt.timedelta(days=3))
    assert second.root_pem == first.root_pem
    # ... but every process has its own PCK leaf and attestation key
    assert second.pck_cert != first.pck_cert
    assert second.attestation_public_key != first.attestation_public_key


def test_quote_round_trips_report_data(tee: SimulatedTdx) -> None:
    report_data = os.urandom(64)
    q = parse_quote(tee.quote(report_data))
    assert q.report_data == report_data
    assert q.version == 4 and q.header.tee_type == 0x81 and q.header.att_key_type == 2
    assert q.trailing == b""
    with pytest.raises(ValueError, match="64 bytes"):
        tee.quote(b"short")


def test_documented_development_values(tee: SimulatedTdx) -> None:
    q = parse_quote(tee.quote(bytes(64)))
    label = b"enclaved simulated TDX: "
    assert q.mrtd == hashlib.sha384(label + b"MRTD").digest()
    # RTMR0-3 and MRCONFIGID: those of the default simulated deployment's event log
    # (tests/test_simulated_evidence.py replays it by hand).
    default = SimulatedDeployment()
    assert q.rtmrs == default.rtmrs
    assert q.mrconfigid == b"\x01" + default.compose_hash + bytes(15)
    assert q.body.mrowner == q.body.mrownerconfig == bytes(48)
    assert q.mrseam == hashlib.sha384(label + b"MRSEAM").digest()
    assert q.body.mrsignerseam == bytes(48)
    assert not q.debug and q.body.sept_ve_disable and not q.body.migratable
    assert q.td_attributes == bytes.fromhex("0000001000000000")
    assert q.tee_tcb_svn == bytes([7, 1, 3]) + bytes(13)
    assert q.qe_report.mrsigner == hashlib.sha256(label + b"QE MRSIGNER").digest()
    assert (q.qe_report.isvprodid, q.qe_report.isvsvn) == (2, 4)


def test_qe_report_binds_the_attestation_key_like_hardware(tee: SimulatedTdx) -> None:
    q = parse_quote(tee.quote(bytes(64)))
    assert q.attestation_key == tee.attestation_public_key
    assert q.qe_auth_data == bytes(range(32))
    rd = q.qe_report.report_data
    assert rd[:32] == hashlib.sha256(q.attestation_key + q.qe_auth_data).digest()
    assert rd[32:] == bytes(32)


def test_pck_leaf_carries_the_sgx_extension(tee: SimulatedTdx) -> None:
    q = parse_quote(tee.quote(bytes(64)))
    assert [c.public_bytes(Encoding.DER) for c in q.pck_chain] == [
        c.public_bytes(Encoding.DER) for c in (tee.pck_cert, tee.intermediate_cert, tee.root_cert)
    ]
    ext = pck_extensions(q.pck_leaf)
    assert ext.fmspc == DEV_FMSPC and ext.pce_id == b"\x00\x00" and ext.pcesvn == 13
    assert len(ext.tcb_components) == 16 and len(ext.ppid) == 16
    assert pck_ca(q.pck_leaf) == "platform"
    for cert in q.pck_chain:
        key = cert.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)


def test_verifies_with_the_development_root_trusted(tee: SimulatedTdx) -> None:
    checks = verify_quote(
        tee.quote(bytes(64)), trust_roots=[tee.root_cert], collateral=None, now=NOW
    )
    assert [c.id for c in checks] == list(CHECK_IDS)
    assert failing(checks) == set(CHECK_IDS[5:])  # only the collateral checks, skipped
    assert all(c.status is Status.SKIPPED for c in checks[5:])


def test_development_collateral_runs_every_check(tee: SimulatedTdx) -> None:
    checks = verify_quote(
        tee.quote(bytes(64)), trust_roots=[tee.root_cert], collateral=tee.collateral(NOW), now=NOW
    )
    assert failing(checks) == set()


def test_intels_root_alone_rejects_it(tee: SimulatedTdx) -> None:
    checks = verify_quote(tee.quote(bytes(64)), collateral=None, now=NOW)
    assert failing(checks) - set(CHECK_IDS[5:]) == {"tdx.pck.chain"}
    assert "not a trusted root" in checks[1].reason
    checks = verify_quote(tee.quote(bytes(64)), collateral=tee.collateral(NOW), now=NOW)
    assert {"tdx.pck.chain", "tdx.collateral.tcb_info.signature"} <= failing(checks)


def test_td_values_can_be_chosen(tee: SimulatedTdx) -> None:
    td = SimulatedTd(mrconfigid=b"\x42" * 48, td_attributes=(1).to_bytes(8, "little"))
    q = parse_quote(tee.quote(bytes(64), td=td))
    assert q.mrconfigid == b"\x42" * 48
    assert q.debug
    with pytest.raises(ValueError, match="mrtd must be 48 bytes"):
        SimulatedTd(mrtd=b"short")


def test_build_quote_signs_with_the_keys_given(tee: SimulatedTdx) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    raw = build_quote(
        bytes(64), attestation_key=other, pck_key=other, pck_chain_pem=tee.pck_chain_pem
    )
    checks = verify_quote(raw, trust_roots=[tee.root_cert], collateral=None, now=NOW)
    # the attestation key is bound and signs; the PCK leaf did not sign this QE report
    assert failing(checks) - set(CHECK_IDS[5:]) == {"tdx.qe_report.signature"}


def test_broken_root_files_are_config_errors(tmp_path: Path) -> None:
    data = tmp_path / "data"
    SimulatedTdx.load_or_create(data, now=NOW)
    other = tmp_path / "other"
    SimulatedTdx.load_or_create(other, now=NOW)
    (data / ROOT_CERT_FILE).write_bytes((other / ROOT_CERT_FILE).read_bytes())
    with pytest.raises(ConfigError, match="does not belong"):
        SimulatedTdx.load_or_create(data, now=NOW)
    (data / ROOT_KEY_FILE).write_bytes(b"-----END PRIVATE KEY-----")
    with pytest.raises(ConfigError, match="not a PEM private key"):
        SimulatedTdx.load_or_create(data, now=NOW)


def test_permissive_key_mode_is_tightened(tmp_path: Path) -> None:
    data = tmp_path / "data"
    SimulatedTdx.load_or_create(data, now=NOW)
    (data / ROOT_KEY_FILE).chmod(0o644)
    SimulatedTdx.load_or_create(data, now=NOW)
    assert stat.S_IMODE((data / ROOT_KEY_FILE).stat().st_mode) == 0o600


def test_missing_certificate_is_recreated_for_the_same_key(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = SimulatedTdx.load_or_create(data, now=NOW)
    (data / ROOT_CERT_FILE).unlink()
    second = SimulatedTdx.load_or_create(data, now=NOW)
    assert second.root_cert.public_key() == first.root_cert.public_key()
    assert (data / ROOT_CERT_FILE).exists()
