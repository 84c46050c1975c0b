"""NVIDIA GPU evidence: the production captures verify; every signed byte matters.

Ground truth: both captures in ``shared/testdata/captures`` carry the
``nvidia_payload`` of an 8-GPU Hopper node, verified at capture time (the
``Date`` of the attestation response). Facts we parse are cross-checked with
what NVIDIA's own service (NRAS) said about the same GPUs.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import struct
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from importlib import resources
from pathlib import Path
from typing import Any

import jwt
import pytest
from conftest import REPORT_CAPTURES
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from enclaved.attestation.checks import Check, Status
from enclaved.attestation.nvidia import (
    NVIDIA_DEVICE_ROOT_SHA256,
    gpu_facts,
    no_payload_check,
    nvidia_device_root,
    parse_nvidia_payload,
    parse_spdm_evidence,
    verify_gpus,
)
from enclaved.errors import EvidenceParseError

CAPTURES = [c / "manifest.json" for c in REPORT_CAPTURES]


@dataclasses.dataclass(frozen=True)
class Capture:
    name: str
    payload: str
    nonce: bytes
    now: datetime
    nras_answer: list[Any]


def load(manifest: Path) -> Capture:
    responses = manifest.parent / "responses"
    report = json.loads(next(responses.glob("0001_*.body")).read_bytes())
    headers = json.loads(next(responses.glob("0001_*.json")).read_bytes())["headers"]
    return Capture(
        name=manifest.parent.name,
        payload=report["nvidia_payload"],
        nonce=bytes.fromhex(json.loads(manifest.read_bytes())["nonce_hex"]),
        now=parsedate_to_datetime(headers["Date"][0]),
        nras_answer=json.loads(next(responses.glob("0006_*.body")).read_bytes()),
    )


@pytest.fixture(scope="module", params=CAPTURES, ids=lambda p: p.parent.name.split("_")[0])
def capture(request: pytest.FixtureRequest) -> Capture:
    return load(request.param)


@pytest.fixture(scope="module")
def venice() -> Capture:
    return load(next(p for p in CAPTURES if p.parent.name.startswith("venice")))


def failed_ids(checks: list[Check]) -> set[str]:
    return {c.id for c in checks if c.status is not Status.PASS}


def expected_ids(n: int) -> list[str]:
    ids = ["nvidia.payload.nonce"]
    for i in range(n):
        ids += [f"nvidia.gpu[{i}].{s}" for s in ("cert_chain", "spdm.signature", "nonce", "fwid")]
    return ids + ["nvidia.gpus"]


# -- the pinned root -------------------------------------------------------


def test_pinned_root_is_nvidias_device_identity_ca() -> None:
    pem = resources.files("enclaved.attestation.nvidia").joinpath("verifier_device_root.pem")
    # The file is verifier/certs/verifier_device_root.pem of nv-local-gpu-verifier 2.7.3, byte for byte.
    assert hashlib.sha256(pem.read_bytes()).hexdigest() == (
        "6e6e91e84068cb7de2c715ca73d6df168a16b23d96a895b42e553b297a471bfc"
    )
    root = nvidia_device_root()
    assert (
        NVIDIA_DEVICE_ROOT_SHA256
        == "102bf659d5419614c9d8e6aecebc80454eb26b1df6a769ac720b9a690b167b48"
    )
    assert root.fingerprint(hashes.SHA256()).hex() == NVIDIA_DEVICE_ROOT_SHA256
    assert root.subject.rfc4514_string() == "O=NVIDIA,CN=NVIDIA Device Identity CA"
    assert root.subject == root.issuer


# -- the captures verify -----------------------------------------------------


def test_capture_verifies_at_capture_time(capture: Capture) -> None:
    checks = verify_gpus(capture.payload, expected_nonce=capture.nonce, now=capture.now)
    assert [c.id for c in checks] == expected_ids(8)
    assert failed_ids(checks) == set(), "\n".join(f"{c.id}: {c.reason}" for c in checks)
    aggregate = checks[-1]
    assert "8 GPU(s)" in aggregate.reason and "HOPPER" in aggregate.reason


def test_parsed_capture_matches_what_nras_said(capture: Capture) -> None:
    payload = parse_nvidia_payload(capture.payload)
    assert payload.nonce == capture.nonce and payload.arch == "HOPPER"
    assert payload.raw_json == capture.payload  # what goes to NRAS, byte for byte
    gpu_claims = capture.nras_answer[1]
    for gpu in payload.gpus:
        claims = jwt.decode(gpu_claims[f"GPU-{gpu.index}"], options={"verify_signature": False})
        assert gpu.arch == "HOPPER"
        assert len(gpu.certificates) == 5
        assert gpu.spdm.request.nonce == capture.nonce
        assert gpu.spdm.request.param2 == 0xFF  # all measurements
        assert len(gpu.spdm.response.blocks) == 64
        assert [b.index for b in gpu.spdm.response.blocks] == list(range(1, 65))
        assert all(len(b.value) == 48 for b in gpu.spdm.response.blocks)  # SHA-384 digests
        assert len(gpu.spdm.response.signature) == 96
        # Outside ground truth: NRAS read the same values from the same evidence.
        assert gpu.ueid == claims["ueid"]
        assert gpu.driver_version == claims["x-nvidia-gpu-driver-version"] == "570.172.08"
        assert gpu.vbios_version == claims["x-nvidia-gpu-vbios-version"] == "96.00.CF.00.02"


def test_gpu_facts(capture: Capture) -> None:
    facts = gpu_facts(capture.payload)
    assert facts.gpu_count == 8 and facts.arch == "HOPPER" and facts.archs == {"HOPPER"}
    assert {g.driver_version for g in facts.gpus} == {"570.172.08"}
    assert len({g.ueid for g in facts.gpus}) == 8


def test_warm_verification_takes_a_few_ms(venice: Capture) -> None:
    payload = parse_nvidia_payload(venice.payload)
    verify_gpus(payload, expected_nonce=venice.nonce, now=venice.now)  # warm the caches
    best = min(
        _timed(lambda: verify_gpus(payload, expected_nonce=venice.nonce, now=venice.now))
        for _ in range(5)
    )
    assert best < 0.025, f"warm verification of 8 GPUs took {best * 1000:.1f} ms"


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# -- single-byte flips in every signed region ---------------------------------

Doc = dict[str, Any]


def _evidence(doc: Doc, gpu: int) -> bytes:
    return base64.b64decode(doc["evidence_list"][gpu]["evidence"])


def _set_evidence(doc: Doc, gpu: int, data: bytes) -> None:
    doc["evidence_list"][gpu]["evidence"] = base64.b64encode(data).decode()


def flip_evidence(gpu: int, offset: Callable[[bytes], int]) -> Callable[[Doc], None]:
    """Flip one bit of the byte at ``offset(evidence)`` in GPU ``gpu``'s SPDM evidence."""

    def mutate(doc: Doc) -> None:
        data = bytearray(_evidence(doc, gpu))
        data[offset(bytes(data))] ^= 0x01
        _set_evidence(doc, gpu, bytes(data))

    return mutate


def _response_offsets(evidence: bytes) -> dict[str, int]:
    """Offsets in the evidence of the response's parts (request is 37 bytes)."""
    record_length = int.from_bytes(evidence[37 + 5 : 37 + 8], "little")
    nonce = 37 + 8 + record_length
    opaque_length = int.from_bytes(evidence[nonce + 32 : nonce + 34], "little")
    return {"nonce": nonce, "opaque": nonce + 34, "signature": nonce + 34 + opaque_length}


def _opaque_value_offset(evidence: bytes, field_type: int) -> int:
    offset = _response_offsets(evidence)["opaque"]
    while True:
        kind, size = struct.unpack_from("<HH", evidence, offset)
        if kind == field_type:
            return offset + 4
        offset += 4 + size


def flip_cert(gpu: int, position: int) -> Callable[[Doc], None]:
    """Flip one bit in the serial number (inside the signed TBS) of one certificate."""

    def mutate(doc: Doc) -> None:
        entry = doc["evidence_list"][gpu]
        certs = x509.load_pem_x509_certificates(base64.b64decode(entry["certificate"]))
        der = bytearray(certs[position].public_bytes(serialization.Encoding.DER))
        serial = certs[position].serial_number
        serial_bytes = serial.to_bytes((serial.bit_length() + 8) // 8, "big")
        at = bytes(der).index(serial_bytes) + len(serial_bytes) - 1
        der[at] ^= 0x01
        pems = [c.public_bytes(serialization.Encoding.PEM) for c in certs]
        pems[position] = x509.load_der_x509_certificate(bytes(der)).public_bytes(
            serialization.Encoding.PEM
        )
        entry["certificate"] = base64.b64encode(b"".join(pems)).decode()

    return mutate


def flip_leaf_fwid(gpu: int) -> Callable[[Doc], None]:
    """Flip one bit of the FWID inside the leaf certificate's DICE extension."""

    def mutate(doc: Doc) -> None:
        entry = doc["evidence_list"][gpu]
        certs = x509.load_pem_x509_certificates(base64.b64decode(entry["certificate"]))
        fwid = parse_nvidia_payload(json.dumps(doc)).gpus[gpu].fwid
        assert fwid is not None
        der = bytearray(certs[0].public_bytes(serialization.Encoding.DER))
        der[bytes(der).index(fwid) + 10] ^= 0x01
        pems = [c.public_bytes(serialization.Encoding.PEM) for c in certs]
        pems[0] = x509.load_der_x509_certificate(bytes(der)).public_bytes(
            serialization.Encoding.PEM
        )
        entry["certificate"] = base64.b64encode(b"".join(pems)).decode()

    return mutate


def flip_payload_nonce(doc: Doc) -> None:
    nonce = bytearray.fromhex(doc["nonce"])
    nonce[7] ^= 0x01
    doc["nonce"] = nonce.hex()


def swap_chains(doc: Doc) -> None:
    a, b = doc["evidence_list"][0], doc["evidence_list"][1]
    a["certificate"], b["certificate"] = b["certificate"], a["certificate"]


def gpu(i: int, *names: str) -> set[str]:
    return {f"nvidia.gpu[{i}].{n}" for n in names}


MUTATIONS: list[tuple[str, Callable[[Doc], None], set[str]]] = [
    # The signed SPDM request: its header and the requester nonce.
    ("request param2", flip_evidence(0, lambda e: 3), gpu(0, "spdm.signature")),
    ("request nonce", flip_evidence(2, lambda e: 4 + 9), gpu(2, "spdm.signature", "nonce")),
    ("request slot id", flip_evidence(0, lambda e: 36), gpu(0, "spdm.signature")),
    # The signed response: header, measurement blocks, nonce, opaque data, signature.
    ("response param1", flip_evidence(1, lambda e: 37 + 2), gpu(1, "spdm.signature")),
    (
        "measurement block 2",
        flip_evidence(3, lambda e: 37 + 8 + 55 + 7 + 5),
        gpu(3, "spdm.signature"),
    ),
    (
        "last measurement",
        flip_evidence(7, lambda e: _response_offsets(e)["nonce"] - 1),
        gpu(7, "spdm.signature"),
    ),
    (
        "response nonce",
        flip_evidence(4, lambda e: _response_offsets(e)["nonce"] + 31),
        gpu(4, "spdm.signature"),
    ),
    (
        "driver version",
        flip_evidence(5, lambda e: _opaque_value_offset(e, 3)),
        gpu(5, "spdm.signature"),
    ),
    (
        "reported FWID",
        flip_evidence(6, lambda e: _opaque_value_offset(e, 20) + 47),
        gpu(6, "spdm.signature", "fwid"),
    ),
    (
        "signature r",
        flip_evidence(0, lambda e: _response_offsets(e)["signature"]),
        gpu(0, "spdm.signature"),
    ),
    ("signature s", flip_evidence(1, lambda e: len(e) - 1), gpu(1, "spdm.signature")),
    # The certificate chain: leaf, the GPU's own CA, shared intermediates, the root.
    ("leaf certificate", flip_cert(0, 0), gpu(0, "cert_chain")),
    ("leaf certificate FWID", flip_leaf_fwid(2), gpu(2, "cert_chain", "fwid")),
    ("device CA certificate", flip_cert(1, 1), gpu(1, "cert_chain")),
    ("provisioner ICA certificate", flip_cert(3, 2), gpu(3, "cert_chain")),
    ("GH100 identity certificate", flip_cert(4, 3), gpu(4, "cert_chain")),
    ("root certificate in the chain", flip_cert(5, 4), gpu(5, "cert_chain")),
    # (Every GPU runs the same firmware, so the FWIDs still agree.)
    (
        "chains swapped between GPUs",
        swap_chains,
        gpu(0, "spdm.signature") | gpu(1, "spdm.signature"),
    ),
    # The payload's own nonce.
    ("payload nonce", flip_payload_nonce, {"nvidia.payload.nonce"}),
]


@pytest.mark.parametrize(("name", "mutate", "expected"), MUTATIONS, ids=[m[0] for m in MUTATIONS])
def test_single_byte_flip_fails_the_right_check(
    venice: Capture, name: str, mutate: Callable[[Doc], None], expected: set[str]
) -> None:
    doc = json.loads(venice.payload)
    mutate(doc)
    checks = verify_gpus(json.dumps(doc), expected_nonce=venice.nonce, now=venice.now)
    assert failed_ids(checks) == expected | {"nvidia.gpus"}
    aggregate = checks[-1]
    assert all(i in aggregate.reason for i in expected)


def test_flip_reasons_are_clear(venice: Capture) -> None:
    doc = json.loads(venice.payload)
    flip_cert(1, 1)(doc)
    flip_evidence(2, lambda e: 4)(doc)
    checks = {
        c.id: c for c in verify_gpus(json.dumps(doc), expected_nonce=venice.nonce, now=venice.now)
    }
    assert "GH100 A01 GSP BROM" in checks["nvidia.gpu[1].cert_chain"].reason
    assert "signature does not verify" in checks["nvidia.gpu[1].cert_chain"].reason
    assert "does not verify" in checks["nvidia.gpu[2].spdm.signature"].reason
    assert venice.nonce.hex() in checks["nvidia.gpu[2].nonce"].reason


def test_chain_without_the_root_still_chains_to_the_pinned_root(venice: Capture) -> None:
    doc = json.loads(venice.payload)
    entry = doc["evidence_list"][0]
    certs = x509.load_pem_x509_certificates(base64.b64decode(entry["certificate"]))
    entry["certificate"] = base64.b64encode(
        b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs[:-1])
    ).decode()
    checks = verify_gpus(json.dumps(doc), expected_nonce=venice.nonce, now=venice.now)
    assert failed_ids(checks) == set()


def test_the_same_gpu_twice_does_not_count_as_two(venice: Capture) -> None:
    doc = json.loads(venice.payload)
    doc["evidence_list"][5] = doc["evidence_list"][2]
    checks = verify_gpus(json.dumps(doc), expected_nonce=venice.nonce, now=venice.now)
    assert failed_ids(checks) == {"nvidia.gpus"}  # each entry verifies on its own
    assert "GPU 5 is the same device as GPU 2" in checks[-1].reason


def test_wrong_nonce_fails_every_nonce_check_and_nothing_else(venice: Capture) -> None:
    wrong = bytes(32)
    checks = verify_gpus(venice.payload, expected_nonce=wrong, now=venice.now)
    assert failed_ids(checks) == (
        {"nvidia.payload.nonce", "nvidia.gpus"} | {f"nvidia.gpu[{i}].nonce" for i in range(8)}
    )
    reason = next(c.reason for c in checks if c.id == "nvidia.gpu[0].nonce")
    assert venice.nonce.hex() in reason and wrong.hex() in reason


def test_before_the_certificates_were_issued_fails_the_chain(venice: Capture) -> None:
    checks = verify_gpus(
        venice.payload, expected_nonce=venice.nonce, now=datetime(2019, 1, 1, tzinfo=UTC)
    )
    assert failed_ids(checks) == {f"nvidia.gpu[{i}].cert_chain" for i in range(8)} | {"nvidia.gpus"}
    assert "not yet valid" in checks[1].reason


def test_naive_clock_is_refused(venice: Capture) -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        verify_gpus(venice.payload, expected_nonce=venice.nonce, now=datetime(2026, 4, 24))


def test_no_payload_row_and_empty_evidence_list(venice: Capture) -> None:
    row = no_payload_check()
    assert (row.id, row.status, row.reason) == ("nvidia.gpus", Status.SKIPPED, "no nvidia_payload")
    doc = json.loads(venice.payload)
    doc["evidence_list"] = []
    checks = verify_gpus(json.dumps(doc), expected_nonce=venice.nonce, now=venice.now)
    assert [c.id for c in checks] == ["nvidia.payload.nonce", "nvidia.gpus"]
    assert checks[-1].status is Status.FAIL


# -- synthetic evidence: the real layout, our own keys and clock ---------------

P384 = ec.SECP384R1()
T0 = datetime(2026, 4, 24, tzinfo=UTC)
FWID = hashlib.sha384(b"firmware").digest()


def _der(tag: int, content: bytes) -> bytes:
    n = len(content)
    length = (
        bytes([n])
        if n < 0x80
        else bytes([0x80 | ((n.bit_length() + 7) // 8)])
        + n.to_bytes((n.bit_length() + 7) // 8, "big")
    )
    return bytes([tag]) + length + content


def _fwid_extension(key: ec.EllipticCurvePrivateKey, fwid: bytes) -> x509.UnrecognizedExtension:
    """The Hopper shape: SEQUENCE { INTEGER 1, SPKI, SEQUENCE { OID sha384, OCTET STRING } }."""
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    sha384 = _der(0x06, bytes.fromhex("608648016503040202"))
    value = _der(0x30, _der(0x02, b"\x01") + spki + _der(0x30, sha384 + _der(0x04, fwid)))
    return x509.UnrecognizedExtension(x509.ObjectIdentifier("2.23.133.5.4.1"), value)


def _cert(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool | None,
    not_after: datetime,
    key_cert_sign: bool = True,
    extra: tuple[tuple[x509.ExtensionType, bool], ...] = (),
) -> x509.Certificate:
    issuer_name, issuer_key = issuer if issuer else (name, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(T0 - timedelta(days=1))
        .not_valid_after(not_after)
    )
    if ca is not None:
        builder = builder.add_extension(
            x509.BasicConstraints(ca=ca, path_length=None), critical=True
        )
    usage = dict.fromkeys(
        [
            "content_commitment",
            "key_encipherment",
            "data_encipherment",
            "key_agreement",
            "crl_sign",
            "encipher_only",
            "decipher_only",
        ],
        False,
    )
    builder = builder.add_extension(
        x509.KeyUsage(digital_signature=not ca, key_cert_sign=bool(ca and key_cert_sign), **usage),
        critical=True,
    )
    for ext, critical in extra:
        builder = builder.add_extension(ext, critical=critical)
    return builder.sign(issuer_key, hashes.SHA384())


def _spdm(nonce: bytes, key: ec.EllipticCurvePrivateKey, fwid: bytes = FWID) -> bytes:
    request = bytes([0x11, 0xE0, 0x01, 0xFF]) + nonce + b"\x00"
    blocks = [(i, 0x01, hashlib.sha384(bytes([i])).digest()) for i in (1, 2, 3)]
    record = b"".join(struct.pack("<BBHBH", i, 1, 3 + len(v), t, len(v)) + v for i, t, v in blocks)
    opaque = b"".join(
        struct.pack("<HH", t, len(v)) + v for t, v in [(3, b"570.172.08\0"), (20, fwid)]
    )
    response = (
        bytes([0x11, 0x60, 0x00, 0x00, len(blocks)])
        + len(record).to_bytes(3, "little")
        + record
        + bytes(range(32))
        + struct.pack("<H", len(opaque))
        + opaque
    )
    r, s = decode_dss_signature(key.sign(request + response, ec.ECDSA(hashes.SHA384())))
    return request + response + r.to_bytes(48, "big") + s.to_bytes(48, "big")


@dataclasses.dataclass
class Synthetic:
    root: x509.Certificate
    payload: str


def synthetic(
    nonce: bytes,
    *,
    leaf_days: int = 1,
    ca: bool | None = True,
    key_cert_sign: bool = True,
    ca_extra: tuple[tuple[x509.ExtensionType, bool], ...] = (),
) -> Synthetic:
    root_key, ca_key, leaf_key = (ec.generate_private_key(P384) for _ in range(3))
    far = T0 + timedelta(days=3650)
    root = _cert("Test Root", root_key, None, ca=True, not_after=far)
    device_ca = _cert(
        "Test Device CA",
        ca_key,
        ("Test Root", root_key),
        ca=ca,
        key_cert_sign=key_cert_sign,
        not_after=far,
        extra=ca_extra,
    )
    leaf = _cert(
        "Test GPU leaf",
        leaf_key,
        ("Test Device CA", ca_key),
        ca=None,
        not_after=T0 + timedelta(days=leaf_days),
        extra=((_fwid_extension(leaf_key, FWID), False),),
    )
    pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (leaf, device_ca, root))
    entry = {
        "arch": "HOPPER",
        "certificate": base64.b64encode(pem).decode(),
        "evidence": base64.b64encode(_spdm(nonce, leaf_key)).decode(),
    }
    doc = {"nonce": nonce.hex(), "arch": "HOPPER", "evidence_list": [entry]}
    return Synthetic(root=root, payload=json.dumps(doc))


NONCE = bytes(range(32))


def test_synthetic_evidence_verifies_under_its_own_root() -> None:
    s = synthetic(NONCE)
    assert failed_ids(verify_gpus(s.payload, expected_nonce=NONCE, now=T0, root=s.root)) == set()


def test_synthetic_evidence_fails_against_the_pinned_nvidia_root() -> None:
    s = synthetic(NONCE)
    checks = verify_gpus(s.payload, expected_nonce=NONCE, now=T0)
    assert failed_ids(checks) == {"nvidia.gpu[0].cert_chain", "nvidia.gpus"}
    assert "NVIDIA Device Identity CA" in checks[1].reason


def test_expired_leaf_fails_the_chain_with_a_clear_reason() -> None:
    s = synthetic(NONCE, leaf_days=1)
    later = T0 + timedelta(days=30)
    checks = verify_gpus(s.payload, expected_nonce=NONCE, now=later, root=s.root)
    assert failed_ids(checks) == {"nvidia.gpu[0].cert_chain", "nvidia.gpus"}
    reason = checks[1].reason
    assert "expired" in reason and "Test GPU leaf" in reason and "notAfter" in reason


@pytest.mark.parametrize(
    ("kwargs", "reason"),
    [
        ({"ca": False}, "not a CA"),
        ({"ca": None}, "no basicConstraints"),
        ({"key_cert_sign": False}, "may not sign certificates"),
        (
            {
                "ca_extra": (
                    (
                        x509.UnrecognizedExtension(x509.ObjectIdentifier("1.2.3.4"), b"\x05\x00"),
                        True,
                    ),
                )
            },
            "unknown critical extension",
        ),
    ],
    ids=[
        "issuer not a CA",
        "issuer without basicConstraints",
        "issuer without keyCertSign",
        "unknown critical extension",
    ],
)
def test_ca_constraints(kwargs: dict[str, Any], reason: str) -> None:
    s = synthetic(NONCE, **kwargs)
    checks = verify_gpus(s.payload, expected_nonce=NONCE, now=T0, root=s.root)
    assert failed_ids(checks) == {"nvidia.gpu[0].cert_chain", "nvidia.gpus"}
    assert reason in checks[1].reason


# -- structural problems are parse errors, never "forged" ----------------------


def _edit_spdm(edit: Callable[[bytearray], bytes]) -> Callable[[Doc], None]:
    def mutate(doc: Doc) -> None:
        _set_evidence(doc, 0, edit(bytearray(_evidence(doc, 0))))

    return mutate


def _set_byte(offset: int, value: int) -> Callable[[bytearray], bytes]:
    def edit(data: bytearray) -> bytes:
        data[offset] = value
        return bytes(data)

    return edit


PARSE_ERRORS: list[tuple[str, Callable[[Doc], None], str]] = [
    ("SPDM 1.2", _edit_spdm(_set_byte(0, 0x12)), "unsupported SPDM version"),
    ("not GET_MEASUREMENTS", _edit_spdm(_set_byte(1, 0x81)), "GET_MEASUREMENTS"),
    ("no signature requested", _edit_spdm(_set_byte(2, 0x00)), "signature"),
    ("response version differs", _edit_spdm(_set_byte(37, 0x10)), "version"),
    ("not MEASUREMENTS", _edit_spdm(_set_byte(38, 0x61)), "MEASUREMENTS"),
    ("block count", _edit_spdm(_set_byte(37 + 4, 63)), "announces 63"),
    ("not DMTF", _edit_spdm(_set_byte(37 + 9, 0x02)), "DMTF"),
    ("record length", _edit_spdm(_set_byte(37 + 5, 0xC1)), "SPDM"),
    ("extra byte", _edit_spdm(lambda d: bytes(d) + b"\0"), "97 bytes"),
    ("short signature", _edit_spdm(lambda d: bytes(d[:-1])), "95 bytes"),
    ("truncated", _edit_spdm(lambda d: bytes(d[:30])), "too short"),
    (
        "evidence not base64",
        lambda doc: doc["evidence_list"][0].update(evidence="%%%"),
        "not base64",
    ),
    (
        "certificate not PEM",
        lambda doc: doc["evidence_list"][0].update(certificate="aGVsbG8="),
        "PEM",
    ),
    ("nonce not hex", lambda doc: doc.update(nonce="xyz"), "not hex"),
    ("no arch", lambda doc: doc.pop("arch"), "arch"),
    ("no evidence_list", lambda doc: doc.pop("evidence_list"), "evidence_list"),
    ("entry not an object", lambda doc: doc["evidence_list"].__setitem__(0, "x"), "not an object"),
]


@pytest.mark.parametrize(
    ("name", "mutate", "message"), PARSE_ERRORS, ids=[p[0] for p in PARSE_ERRORS]
)
def test_structural_problems_raise_parse_errors(
    venice: Capture, name: str, mutate: Callable[[Doc], None], message: str
) -> None:
    doc = json.loads(venice.payload)
    mutate(doc)
    with pytest.raises(EvidenceParseError, match=message):
        parse_nvidia_payload(json.dumps(doc))


@pytest.mark.parametrize("raw", ["not json", "[]", b"\xff", '"a string"'])
def test_not_a_payload(raw: str | bytes) -> None:
    with pytest.raises(EvidenceParseError):
        parse_nvidia_payload(raw)


def test_payload_as_object_and_bytes(venice: Capture) -> None:
    as_object = parse_nvidia_payload(json.loads(venice.payload))
    as_bytes = parse_nvidia_payload(venice.payload.encode())
    assert as_object.gpus == as_bytes.gpus
    assert json.loads(as_object.raw_json) == json.loads(venice.payload)


def test_spdm_signed_bytes_are_request_and_response_without_signature(venice: Capture) -> None:
    raw = base64.b64decode(json.loads(venice.payload)["evidence_list"][0]["evidence"])
    spdm = parse_spdm_evidence(raw)
    assert spdm.signed_bytes == raw[:-96]
    assert spdm.request.raw == raw[:37] and spdm.response.signature == raw[-96:]
