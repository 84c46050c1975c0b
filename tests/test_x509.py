"""One certification path validator for Intel's and NVIDIA's chains.

The TDX verifier and the NVIDIA verifier used to validate X.509 chains with
two rule sets: a CA certificate without keyUsage, or with an unknown critical
extension, passed the PCK chain check and failed the GPU one; a GPU leaf that
was itself a CA passed. Now both call :func:`enclaved.attestation._x509.path_problem`.

These tests hold the rule set in one place:

- the real chains (Intel's PCK, TCB signer and PCK CRL signer chains, every
  GPU's chain of both captures) pass at capture time, and every CA in them
  carries keyUsage with keyCertSign, the premise of refusing a CA without it;
- each defective chain below fails the same way three times: in the validator
  itself, in ``tdx.pck.chain`` (a TDX quote carrying that chain) and in
  ``nvidia.gpu[0].cert_chain`` (a GPU payload carrying it).
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import struct
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from attestation_captures import ALL, Capture
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from enclaved.attestation._x509 import path_problem
from enclaved.attestation.checks import Check
from enclaved.attestation.nvidia import parse_nvidia_payload, verify_gpus
from enclaved.attestation.nvidia.verify import nvidia_device_root
from enclaved.attestation.tdx import (
    DirectoryCollateral,
    collateral_for,
    decode_quote_text,
    parse_quote,
    verify_quote,
)
from enclaved.attestation.tdx.roots import intel_sgx_root_ca
from enclaved.evidence.simulated import build_quote

T0 = datetime.fromisoformat("2026-04-24T00:00:00+00:00")

# --- the real chains -------------------------------------------------------------------


@pytest.mark.parametrize("cap", ALL, ids=lambda c: c.name)
def test_the_real_intel_and_nvidia_chains_pass_the_one_validator(cap: Capture) -> None:
    doc = cap.doc()
    quote = parse_quote(decode_quote_text(doc["intel_quote"]))
    collateral = collateral_for(quote, DirectoryCollateral(cap.responses))
    intel = [intel_sgx_root_ca()]
    assert path_problem(quote.pck_chain, intel, cap.at, intermediates=1) == (None, intel[0])
    for chain in (collateral.tcb_info_issuer_chain, collateral.qe_identity_issuer_chain):
        assert path_problem(chain, intel, cap.at, intermediates=0) == (None, intel[0])
    crl_signer = collateral.pck_crl_issuer_chain
    assert path_problem(crl_signer, intel, cap.at, intermediates=0, leaf="crl_issuer")[0] is None
    nvidia = [nvidia_device_root()]
    gpus = parse_nvidia_payload(doc["nvidia_payload"]).gpus
    assert gpus
    for gpu in gpus:
        assert path_problem(gpu.certificates, nvidia, cap.at) == (None, nvidia[0])


@pytest.mark.parametrize("cap", ALL, ids=lambda c: c.name)
def test_every_real_ca_certificate_carries_key_cert_sign(cap: Capture) -> None:
    """The premise of refusing a CA without keyUsage: no real chain has one."""
    doc = cap.doc()
    quote = parse_quote(decode_quote_text(doc["intel_quote"]))
    certs = list(quote.pck_chain)
    for gpu in parse_nvidia_payload(doc["nvidia_payload"]).gpus:
        certs += gpu.certificates
    cas = [c for c in certs if _is_ca(c)]
    assert len(cas) >= 6  # Intel: PCK CA, root; NVIDIA: BROM, ICA, identity, root
    for cert in cas:
        assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign


@pytest.mark.parametrize("cap", ALL, ids=lambda c: c.name)
def test_the_real_chains_are_judged_at_the_injected_time(cap: Capture) -> None:
    doc = cap.doc()
    quote = parse_quote(decode_quote_text(doc["intel_quote"]))
    gpu = parse_nvidia_payload(doc["nvidia_payload"]).gpus[0]
    intel, nvidia = [intel_sgx_root_ca()], [nvidia_device_root()]
    before = datetime.fromisoformat("2015-01-01T00:00:00+00:00")
    problem, _ = path_problem(quote.pck_chain, intel, before, intermediates=1)
    assert problem is not None and "not yet valid" in problem
    problem, _ = path_problem(gpu.certificates, nvidia, before)
    assert problem is not None and "not yet valid" in problem
    # Intel's PCK leaf lives for years, not for ever (NVIDIA's chain: to 9999).
    later = datetime.fromisoformat("2100-01-01T00:00:00+00:00")
    problem, _ = path_problem(quote.pck_chain, intel, later, intermediates=1)
    assert problem is not None and "expired" in problem


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


# --- a small PKI with one defect at a time ---------------------------------------------


def _usage(**granted: bool) -> x509.KeyUsage:
    names = [
        "digital_signature",
        "content_commitment",
        "key_encipherment",
        "data_encipherment",
        "key_agreement",
        "key_cert_sign",
        "crl_sign",
        "encipher_only",
        "decipher_only",
    ]
    return x509.KeyUsage(**{n: granted.get(n, False) for n in names})


CA_USAGE = _usage(key_cert_sign=True, crl_sign=True)
LEAF_USAGE = _usage(digital_signature=True)


@dataclasses.dataclass(frozen=True)
class Shape:
    """How one certificate of the test PKI is made; the defaults make a good one."""

    ca: bool | None  # basicConstraints cA; None: no basicConstraints at all
    usage: x509.KeyUsage | None  # None: no keyUsage extension
    path_length: int | None = None
    not_before: datetime = T0 - timedelta(days=1)
    not_after: datetime = T0 + timedelta(days=365)
    critical_extra: bool = False
    signed_by_stranger: bool = False


GOOD_ROOT = Shape(ca=True, usage=CA_USAGE, path_length=1)
GOOD_CA = Shape(ca=True, usage=CA_USAGE, path_length=0)
GOOD_LEAF = Shape(ca=False, usage=LEAF_USAGE)


def _cert(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[str, ec.EllipticCurvePrivateKey],
    shape: Shape,
    curve: ec.EllipticCurve,
) -> x509.Certificate:
    issuer_name, issuer_key = issuer
    if shape.signed_by_stranger:
        issuer_key = ec.generate_private_key(curve)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer_name)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(shape.not_before)
        .not_valid_after(shape.not_after)
    )
    if shape.ca is not None:
        constraints = x509.BasicConstraints(ca=shape.ca, path_length=shape.path_length)
        builder = builder.add_extension(constraints, critical=True)
    if shape.usage is not None:
        builder = builder.add_extension(shape.usage, critical=True)
    if shape.critical_extra:
        unknown = x509.UnrecognizedExtension(x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\5\0")
        builder = builder.add_extension(unknown, critical=True)
    digest = hashes.SHA384() if isinstance(curve, ec.SECP384R1) else hashes.SHA256()
    return builder.sign(issuer_key, digest)


@dataclasses.dataclass(frozen=True)
class Pki:
    root: x509.Certificate
    chain: list[x509.Certificate]  # leaf, CA, root as sent
    leaf_key: ec.EllipticCurvePrivateKey

    @property
    def pem(self) -> bytes:
        return b"".join(c.public_bytes(Encoding.PEM) for c in self.chain)


def _pki(
    curve: ec.EllipticCurve,
    root: Shape = GOOD_ROOT,
    ca: Shape = GOOD_CA,
    leaf: Shape = GOOD_LEAF,
    *,
    foreign_root_in_chain: bool = False,
) -> Pki:
    root_key, ca_key, leaf_key = (ec.generate_private_key(curve) for _ in range(3))
    root_cert = _cert("Test Root", root_key, ("Test Root", root_key), root, curve)
    ca_cert = _cert("Test CA", ca_key, ("Test Root", root_key), ca, curve)
    leaf_cert = _cert("Test Leaf", leaf_key, ("Test CA", ca_key), leaf, curve)
    sent_root = root_cert
    if foreign_root_in_chain:  # same name, another key: not the trusted root
        stranger = ec.generate_private_key(curve)
        sent_root = _cert("Test Root", stranger, ("Test Root", stranger), root, curve)
    return Pki(root=root_cert, chain=[leaf_cert, ca_cert, sent_root], leaf_key=leaf_key)


def _tdx_row(**defects: object) -> Check:
    """``tdx.pck.chain`` for a TDX quote whose PCK chain is the test PKI's (P-256)."""
    pki = _pki(ec.SECP256R1(), **defects)  # type: ignore[arg-type]
    raw = build_quote(
        bytes(64),
        attestation_key=ec.generate_private_key(ec.SECP256R1()),
        pck_key=pki.leaf_key,
        pck_chain_pem=pki.pem,
    )
    rows = verify_quote(raw, trust_roots=[pki.root], collateral=None, now=T0)
    return {c.id: c for c in rows}["tdx.pck.chain"]


def _spdm(nonce: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    """A signed SPDM GET_MEASUREMENTS request + MEASUREMENTS response (one block)."""
    request = bytes([0x11, 0xE0, 0x01, 0xFF]) + nonce + b"\x00"
    value = hashlib.sha384(b"block").digest()
    record = struct.pack("<BBHBH", 1, 1, 3 + len(value), 0x01, len(value)) + value
    opaque = struct.pack("<HH", 3, 11) + b"570.172.08\0"
    response = (
        bytes([0x11, 0x60, 0x00, 0x00, 1])
        + len(record).to_bytes(3, "little")
        + record
        + bytes(range(32))
        + struct.pack("<H", len(opaque))
        + opaque
    )
    r, s = decode_dss_signature(key.sign(request + response, ec.ECDSA(hashes.SHA384())))
    return request + response + r.to_bytes(48, "big") + s.to_bytes(48, "big")


def _nvidia_row(**defects: object) -> Check:
    """``nvidia.gpu[0].cert_chain`` for a GPU payload whose chain is the test PKI's (P-384)."""
    pki = _pki(ec.SECP384R1(), **defects)  # type: ignore[arg-type]
    nonce = bytes(range(32))
    entry = {
        "arch": "HOPPER",
        "certificate": base64.b64encode(pki.pem).decode(),
        "evidence": base64.b64encode(_spdm(nonce, pki.leaf_key)).decode(),
    }
    payload = json.dumps({"nonce": nonce.hex(), "arch": "HOPPER", "evidence_list": [entry]})
    rows = verify_gpus(payload, expected_nonce=nonce, now=T0, root=pki.root)
    return {c.id: c for c in rows}["nvidia.gpu[0].cert_chain"]


def _validator(**defects: object) -> str | None:
    pki = _pki(ec.SECP256R1(), **defects)  # type: ignore[arg-type]
    return path_problem(pki.chain, [pki.root], T0)[0]


PATHS: list[tuple[str, Callable[..., object]]] = [
    ("validator", _validator),
    ("tdx.pck.chain", _tdx_row),
    ("nvidia cert_chain", _nvidia_row),
]


def _problem(outcome: object) -> str | None:
    if isinstance(outcome, Check):
        return None if outcome.ok else outcome.reason
    assert outcome is None or isinstance(outcome, str)
    return outcome


@pytest.mark.parametrize(("path", "run"), PATHS, ids=[p[0] for p in PATHS])
def test_a_well_formed_chain_passes_everywhere(path: str, run: Callable[..., object]) -> None:
    assert _problem(run()) is None


@pytest.mark.parametrize(("path", "run"), PATHS, ids=[p[0] for p in PATHS])
def test_a_leaf_without_key_usage_passes_everywhere(path: str, run: Callable[..., object]) -> None:
    """RFC 5280 puts no MUST on an end-entity's keyUsage: absent means unrestricted."""
    assert _problem(run(leaf=Shape(ca=False, usage=None))) is None


DEFECTS: list[tuple[str, dict[str, object], str]] = [
    ("CA without keyUsage", {"ca": Shape(ca=True, usage=None)}, "without keyUsage"),
    (
        "CA keyUsage without keyCertSign",
        {"ca": Shape(ca=True, usage=_usage(crl_sign=True))},
        "keyCertSign",
    ),
    ("root without keyUsage", {"root": Shape(ca=True, usage=None)}, "without keyUsage"),
    ("issuer not a CA", {"ca": Shape(ca=False, usage=CA_USAGE)}, "not a CA"),
    ("issuer without basicConstraints", {"ca": Shape(ca=None, usage=CA_USAGE)}, "basicConstraints"),
    (
        "root pathLen 0 with a CA below",
        {"root": Shape(ca=True, usage=CA_USAGE, path_length=0)},
        "pathLenConstraint 0 exceeded",
    ),
    (
        "CA expired",
        {"ca": dataclasses.replace(GOOD_CA, not_after=T0 - timedelta(seconds=1))},
        "expired",
    ),
    (
        "leaf not yet valid",
        {"leaf": dataclasses.replace(GOOD_LEAF, not_before=T0 + timedelta(days=1))},
        "not yet valid",
    ),
    (
        "unknown critical extension on the CA",
        {"ca": dataclasses.replace(GOOD_CA, critical_extra=True)},
        "unknown critical extension",
    ),
    ("leaf is a CA", {"leaf": Shape(ca=True, usage=CA_USAGE)}, "is a CA certificate"),
    (
        "leaf keyUsage without digitalSignature",
        {"leaf": Shape(ca=False, usage=_usage(key_agreement=True))},
        "may not sign",
    ),
    (
        "CA signed by another key",
        {"ca": dataclasses.replace(GOOD_CA, signed_by_stranger=True)},
        "signature does not verify",
    ),
    ("root in the chain is not the trusted one", {"foreign_root_in_chain": True}, "trusted root"),
]


@pytest.mark.parametrize(("path", "run"), PATHS, ids=[p[0] for p in PATHS])
@pytest.mark.parametrize(("name", "defect", "reason"), DEFECTS, ids=[d[0] for d in DEFECTS])
def test_each_defect_fails_the_same_way_in_both_verifiers(
    path: str, run: Callable[..., object], name: str, defect: dict[str, object], reason: str
) -> None:
    problem = _problem(run(**defect))
    assert problem is not None, f"{path} accepted a chain with {name}"
    assert reason in problem
