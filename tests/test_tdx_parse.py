"""TDX quote parsing: real production quotes, dcap-qvl's v5 samples, broken bytes.

Field offsets are pinned by facts outside the parser: the captured nonce and
signing address sit in REPORTDATA, MRTD/RTMRs match what the service
reports separately (``info.tcb_info``), the QE's MRSIGNER is the one Intel's
QE identity names, and the FMSPC is the one the capture fetched TCB info for.
"""

from __future__ import annotations

import base64
import json
import struct
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
from conftest import CAPTURES, REPORT_CAPTURES

from enclaved.attestation.tdx import (
    TdAttributes,
    decode_quote_text,
    parse_quote,
    pck_ca,
    pck_extensions,
    td_attributes_debug,
)
from enclaved.attestation.tdx.parse import INTEL_QE_VENDOR_ID, BodyType
from enclaved.errors import EvidenceParseError

DCAP_QVL = Path(__file__).resolve().parent / "data" / "dcap_qvl"
CAPTURE_NAMES = [p.name for p in REPORT_CAPTURES]

needs_captures = pytest.mark.skipif(not CAPTURE_NAMES, reason="shared/testdata/captures missing")


def capture_document(name: str) -> dict[str, Any]:
    body = next((CAPTURES / name / "responses").glob("0001_*.body"))
    doc: dict[str, Any] = json.loads(body.read_bytes())
    return doc


def capture_quote(name: str) -> bytes:
    return decode_quote_text(capture_document(name)["intel_quote"])


@needs_captures
@pytest.mark.parametrize("name", CAPTURE_NAMES)
def test_capture_header_and_layout(name: str) -> None:
    raw = capture_quote(name)
    q = parse_quote(raw)
    assert q.header.version == 4
    assert q.header.att_key_type == 2
    assert q.header.tee_type == 0x81
    assert q.header.qe_vendor_id == INTEL_QE_VENDOR_ID
    assert q.body.body_type is BodyType.TD_REPORT10
    # header (48) + TD 1.0 body (584) is what the attestation key signs
    assert q.signed_region == raw[:632]
    # the production quotes are zero-padded to 5010 bytes: tolerated, kept apart
    assert q.raw + q.trailing == raw
    assert q.trailing and not any(q.trailing)
    assert q.body.tee_tcb_svn2 is None and q.body.mrservicetd is None


@needs_captures
@pytest.mark.parametrize("name", CAPTURE_NAMES)
def test_capture_measurements_match_what_the_service_reports(name: str) -> None:
    doc = capture_document(name)
    q = parse_quote(decode_quote_text(doc["intel_quote"]))
    tcb_info = doc["info"]["tcb_info"]
    if isinstance(tcb_info, str):
        tcb_info = json.loads(tcb_info)
    assert q.mrtd.hex() == tcb_info["mrtd"]
    assert q.body.mrtd == q.mrtd
    assert [r.hex() for r in q.rtmrs] == [tcb_info[f"rtmr{i}"] for i in range(4)]
    assert (q.body.rtmr0, q.body.rtmr1, q.body.rtmr2, q.body.rtmr3) == q.rtmrs


@needs_captures
@pytest.mark.parametrize("name", CAPTURE_NAMES)
def test_capture_report_data_holds_the_nonce(name: str) -> None:
    manifest = json.loads((CAPTURES / name / "manifest.json").read_text())
    q = parse_quote(capture_quote(name))
    assert q.report_data[32:].hex() == manifest["nonce_hex"]


@needs_captures
def test_venice_report_data_holds_the_signing_address() -> None:
    (name,) = [n for n in CAPTURE_NAMES if n.startswith("venice")]
    doc = capture_document(name)
    q = parse_quote(decode_quote_text(doc["intel_quote"]))
    assert q.report_data[:20] == bytes.fromhex(doc["signing_address"][2:])
    assert q.report_data[20:32] == bytes(12)


@needs_captures
@pytest.mark.parametrize("name", CAPTURE_NAMES)
def test_capture_td_attributes(name: str) -> None:
    q = parse_quote(capture_quote(name))
    assert q.td_attributes == bytes.fromhex("0000001000000000")
    assert q.body.td_attributes_int == 0x10000000
    assert q.body.td_attribute_flags == TdAttributes.SEPT_VE_DISABLE
    assert q.body.sept_ve_disable and not q.body.migratable
    assert not q.debug and not td_attributes_debug(q) and not td_attributes_debug(q.body)
    assert q.body.xfam == bytes.fromhex("e702060000000000")
    assert q.body.tdx_module_version == 1 and q.body.tdx_module_svn == 7


@needs_captures
@pytest.mark.parametrize("name", CAPTURE_NAMES)
def test_capture_qe_report_and_certification_data(name: str) -> None:
    q = parse_quote(capture_quote(name))
    qe_identity = json.loads(
        next((CAPTURES / name / "responses").glob("0003_*.body")).read_bytes()
    )["enclaveIdentity"]
    qe = q.qe_report
    assert qe.mrsigner.hex() == qe_identity["mrsigner"].lower()
    assert qe.isvprodid == qe_identity["isvprodid"] == 2
    assert qe.isvsvn == 6
    assert qe.miscselect == 0
    assert len(qe.raw) == 384 and len(qe.report_data) == 64
    assert q.qe_auth_data == bytes(range(32))
    cd = q.signature_data.certification_data
    assert q.signature_data.certification_data_type == 6
    assert cd.pck_cert_data_type == 5
    assert len(cd.pck_certs_pem) == 3
    assert len(q.attestation_key) == 64 and len(q.signature_data.quote_signature) == 64
    names = [c.subject.rfc4514_string() for c in q.pck_chain]
    assert "CN=Intel SGX PCK Certificate" in names[0]
    assert "CN=Intel SGX PCK Platform CA" in names[1]
    assert "CN=Intel SGX Root CA" in names[2]


@needs_captures
@pytest.mark.parametrize("name", CAPTURE_NAMES)
def test_capture_pck_sgx_extensions(name: str) -> None:
    q = parse_quote(capture_quote(name))
    ext = pck_extensions(q.pck_leaf)
    tcb_meta = json.loads(next((CAPTURES / name / "responses").glob("0002_*.json")).read_text())
    fmspc = urllib.parse.parse_qs(urllib.parse.urlsplit(tcb_meta["url"]).query)["fmspc"][0]
    assert ext.fmspc.hex() == fmspc == "90c06f000000"
    assert ext.pce_id == b"\x00\x00"
    assert ext.pcesvn == 13
    assert ext.tcb_components == (3, 3, 2, 2, 4, 1, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0)
    assert ext.cpusvn == bytes(ext.tcb_components)
    assert len(ext.ppid) == 16
    assert pck_ca(q.pck_leaf) == "platform"


@needs_captures
def test_quote_text_forms_agree() -> None:
    raw = capture_quote(CAPTURE_NAMES[0])
    assert decode_quote_text(raw.hex()) == raw
    assert decode_quote_text(raw.hex().upper()) == raw
    assert decode_quote_text("0x" + raw.hex()) == raw
    assert decode_quote_text(base64.b64encode(raw).decode()) == raw
    assert decode_quote_text(base64.b64encode(raw)) == raw
    assert decode_quote_text(raw) == raw
    with pytest.raises(EvidenceParseError):
        decode_quote_text("not a quote!")


# --- quote v5 (dcap-qvl's samples) ---------------------------------------------------


def test_v5_td15_body() -> None:
    raw = (DCAP_QVL / "tdx_quote_outdated").read_bytes()
    q = parse_quote(raw)
    assert q.version == 5
    assert q.body.body_type is BodyType.TD_REPORT15
    assert struct.unpack_from("<HI", raw, 48) == (3, 648)
    assert q.signed_region == raw[: 48 + 6 + 648]
    assert q.body.tee_tcb_svn2 is not None and len(q.body.tee_tcb_svn2) == 16
    assert q.body.mrservicetd is not None and len(q.body.mrservicetd) == 48
    assert q.body.extension == b""


def test_v5_td15_extended_body() -> None:
    raw = (DCAP_QVL / "tdx_quote_td15ex").read_bytes()
    q = parse_quote(raw)
    assert q.version == 5
    assert q.body.body_type is BodyType.TD_REPORT15_EX
    assert struct.unpack_from("<HI", raw, 48) == (4, 885)
    assert len(q.signed_region) == 48 + 6 + 885
    assert len(q.body.extension) == 885 - 648
    assert q.body.raw == raw[54 : 54 + 885]


def test_v4_sample() -> None:
    q = parse_quote((DCAP_QVL / "tdx_quote").read_bytes())
    assert q.version == 4 and q.body.body_type is BodyType.TD_REPORT10
    assert pck_extensions(q.pck_leaf).fmspc.hex() == "b0c06f000000"


# --- broken input: always EvidenceParseError, never anything else ----------------------


def _sample() -> bytes:
    return (DCAP_QVL / "tdx_quote").read_bytes()


def test_every_truncation_is_a_parse_error() -> None:
    raw = _sample()
    q = parse_quote(raw)
    end = len(q.raw)
    for n in list(range(0, 700, 7)) + list(range(700, end, 53)) + [end - 1]:
        with pytest.raises(EvidenceParseError):
            parse_quote(raw[:n])


def test_trailing_padding_is_tolerated() -> None:
    raw = _sample()
    q = parse_quote(raw)
    padded = parse_quote(q.raw + bytes(1000))
    assert padded.signed_region == q.signed_region
    assert padded.raw == q.raw and len(padded.trailing) == 1000


@pytest.mark.parametrize(
    ("offset", "fmt", "value", "message"),
    [
        (0, "<H", 3, "unsupported TDX quote version"),
        (0, "<H", 6, "unsupported TDX quote version"),
        (4, "<I", 0, "not a TDX quote"),
        (632 + 4 + 128, "<H", 5, "certification data type 5"),
        (632 + 4 + 128 + 6 + 384 + 64 + 2 + 32, "<H", 1, "QE certification data type 1"),
        (632, "<I", 0xFFFFFFF0, "signature data"),
        (632 + 4 + 128 + 2, "<I", 0xFFFF, "certification data"),
    ],
    ids=["v3", "v6", "sgx-tee", "cert-type", "inner-type", "sig-len", "cert-len"],
)
def test_malformed_fields(offset: int, fmt: str, value: int, message: str) -> None:
    raw = bytearray(_sample())
    struct.pack_into(fmt, raw, offset, value)
    with pytest.raises(EvidenceParseError, match=message):
        parse_quote(bytes(raw))


def test_v5_body_descriptor_must_match() -> None:
    raw = bytearray((DCAP_QVL / "tdx_quote_td15ex").read_bytes())
    raw[50] ^= 1  # body size
    with pytest.raises(EvidenceParseError, match="body type 4 must be 885"):
        parse_quote(bytes(raw))
    raw[50] ^= 1
    struct.pack_into("<H", raw, 48, 9)  # body type
    with pytest.raises(EvidenceParseError, match="unsupported body type 9"):
        parse_quote(bytes(raw))


def test_chain_without_pem_is_a_parse_error() -> None:
    raw = bytearray(_sample())
    q = parse_quote(bytes(raw))
    pem = q.signature_data.certification_data.pck_cert_chain_pem
    start = bytes(raw).index(pem)
    raw[start : start + len(pem)] = b"x" * len(pem)
    with pytest.raises(EvidenceParseError, match="no PEM certificate"):
        parse_quote(bytes(raw))


def test_garbled_certificate_is_a_parse_error() -> None:
    raw = bytearray(_sample())
    q = parse_quote(bytes(raw))
    pem = q.signature_data.certification_data.pck_certs_pem[0]
    start = bytes(raw).index(pem)
    raw[start + 40 : start + 60] = b"A" * 20  # still base64, no longer DER
    with pytest.raises(EvidenceParseError, match="malformed certificate"):
        parse_quote(bytes(raw))


def test_random_corruption_never_escapes_as_another_exception() -> None:
    import random

    rng = random.Random(1234)
    raw = _sample()
    for _ in range(300):
        b = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(0, 1200)] = rng.randrange(256)
        try:
            q = parse_quote(bytes(b))
            pck_extensions(q.pck_leaf)
        except EvidenceParseError:
            pass


def test_pck_extensions_require_the_sgx_extension() -> None:
    q = parse_quote(_sample())
    with pytest.raises(EvidenceParseError, match="no Intel SGX extension"):
        pck_extensions(q.pck_chain[1])
