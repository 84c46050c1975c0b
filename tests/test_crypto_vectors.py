"""The E2EE envelope's primitives against outside vectors.

- HKDF-SHA256: RFC 5869 (appendix A) and Wycheproof.
- secp256k1 ECDH: Wycheproof, including invalid-curve and invalid points.
- AES-256-GCM (96-bit IV, 128-bit tag, the envelope's parameters): Wycheproof.
- EIP-191 personal_sign: the web3.js documentation's worked example.
- Ethereum addresses: private key 1's well-known address.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from coincurve import PrivateKey
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from enclaved.crypto import (
    KeyPair,
    address_from_public_key,
    eip191_hash,
    eip191_recover_address,
    eip191_sign,
)
from enclaved.crypto._primitives import ecdh_x, hkdf_sha256, parse_public_key
from enclaved.errors import InvalidKeyError

WYCHEPROOF = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "wycheproof"


def _cases(name: str) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    data = json.loads((WYCHEPROOF / name).read_text())
    for group in data["testGroups"]:
        for test in group["tests"]:
            yield group, test


# --- HKDF -------------------------------------------------------------------

RFC5869_SHA256 = [
    # (IKM, salt, info, L, OKM) - RFC 5869 appendix A, test cases 1-3
    (
        "0b" * 22,
        "000102030405060708090a0b0c",
        "f0f1f2f3f4f5f6f7f8f9",
        42,
        "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
    ),
    (
        bytes(range(0x50)).hex(),
        bytes(range(0x60, 0xB0)).hex(),
        bytes(range(0xB0, 0x100)).hex(),
        82,
        (
            "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
            "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
            "cc30c58179ec3e87c14c01d5c1f3434f1d87"
        ),
    ),
    # Test case 3: zero-length salt and info - the envelope's shape (no salt).
    (
        "0b" * 22,
        "",
        "",
        42,
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
    ),
]


@pytest.mark.parametrize("ikm,salt,info,length,okm", RFC5869_SHA256)
def test_hkdf_rfc5869(ikm: str, salt: str, info: str, length: int, okm: str) -> None:
    out = hkdf_sha256(
        bytes.fromhex(ikm),
        salt=bytes.fromhex(salt) or None,
        info=bytes.fromhex(info),
        length=length,
    )
    assert out.hex() == okm


def test_hkdf_wycheproof() -> None:
    ran = 0
    for _group, t in _cases("hkdf_sha256_test.json"):
        size = int(t["size"])
        ikm, salt, info = (bytes.fromhex(t[k]) for k in ("ikm", "salt", "info"))
        if t["result"] == "valid":
            okm = hkdf_sha256(ikm, salt=salt or None, info=info, length=size)
            assert okm.hex() == t["okm"], t["tcId"]
        else:  # an output longer than 255 * HashLen must be refused
            with pytest.raises(ValueError):
                hkdf_sha256(ikm, salt=salt or None, info=info, length=size)
        ran += 1
    assert ran > 50


def test_envelope_kdf_shape() -> None:
    # The envelope derives with no salt and info "ecdsa_encryption" (PROTOCOL.md).
    ikm = bytes(range(32))
    assert hkdf_sha256(ikm) == hkdf_sha256(ikm, salt=None, info=b"ecdsa_encryption", length=32)
    assert hkdf_sha256(ikm) != hkdf_sha256(ikm, info=b"")


# --- secp256k1 ECDH ---------------------------------------------------------


def _point_from_spki(der_hex: str) -> bytes:
    """The raw point at the end of a SubjectPublicKeyInfo (the wire protocol carries raw points)."""
    der = bytes.fromhex(der_hex)
    if len(der) >= 65 and der[-65] == 0x04:
        return der[-65:]
    return der[-33:]


def _private(hex_scalar: str) -> PrivateKey:
    return PrivateKey(int(hex_scalar, 16).to_bytes(32, "big"))


VALID_FLAGS = {
    "Normal",
    "AdditionChain",
    "EdgeCaseDoubling",
    "EdgeCaseEphemeralKey",
    "EdgeCaseSharedSecret",
}


def test_ecdh_secp256k1_valid_vectors() -> None:
    ran = 0
    for _group, t in _cases("ecdh_secp256k1_test.json"):
        if t["result"] != "valid" or not set(t["flags"]) <= VALID_FLAGS:
            continue
        point = parse_public_key(_point_from_spki(t["public"]))
        assert ecdh_x(_private(t["private"]), point).hex() == t["shared"], t["tcId"]
        ran += 1
    assert ran >= 400


def test_ecdh_secp256k1_rejects_points_off_the_curve() -> None:
    ran = 0
    for _group, t in _cases("ecdh_secp256k1_test.json"):
        flags = set(t["flags"])
        if not flags & {"InvalidCurveAttack", "InvalidCompressedPublic"}:
            continue
        with pytest.raises(InvalidKeyError):
            parse_public_key(_point_from_spki(t["public"]))
        ran += 1
    assert ran == 17


def test_ecdh_rejects_every_non_uncompressed_form() -> None:
    kp = KeyPair.generate()
    compressed = PrivateKey().public_key.format(compressed=True)
    for bad in (
        compressed,
        kp.public_key[1:],
        b"\x02" + kp.public_key[1:],
        kp.public_key + b"\x00",
        b"",
    ):
        with pytest.raises(InvalidKeyError):
            parse_public_key(bad)


# --- AES-256-GCM (the envelope's parameters) --------------------------------


def test_aes_gcm_wycheproof_envelope_parameters() -> None:
    ran = 0
    for g, t in _cases("aes_gcm_test.json"):
        if (g["keySize"], g["ivSize"], g["tagSize"]) != (256, 96, 128) or t["aad"]:
            continue
        aead = AESGCM(bytes.fromhex(t["key"]))
        iv, ct = bytes.fromhex(t["iv"]), bytes.fromhex(t["ct"] + t["tag"])
        if t["result"] == "valid":
            assert aead.encrypt(iv, bytes.fromhex(t["msg"]), None) == ct, t["tcId"]
            assert aead.decrypt(iv, ct, None).hex() == t["msg"]
        elif t["result"] == "invalid":
            with pytest.raises(InvalidTag):
                aead.decrypt(iv, ct, None)
        ran += 1
    assert ran >= 10


# --- addresses and EIP-191 --------------------------------------------------


def test_address_of_private_key_one() -> None:
    kp = KeyPair.from_secret((1).to_bytes(32, "big"))
    assert kp.address == "0x7e5f4552091a69125d5dfcb7b8c2659029395bdf"
    assert address_from_public_key(kp.public_key_hex) == kp.address
    assert address_from_public_key(kp.public_key_hex[2:]) == kp.address  # 128-hex form


def test_eip191_web3js_vector() -> None:
    # web3.eth.accounts.sign('Some data', '0x4c0883a6...') in the web3.js 1.x documentation.
    kp = KeyPair.from_secret(
        bytes.fromhex("4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318")
    )
    assert kp.address == "0x2c7536e3605d9c16a7a3d7b1898e529396a65c23"
    assert (
        eip191_hash("Some data").hex()
        == "1da44b586eb0729ff70a73c326926f6ed5a25f5b056e7f47fbc6e58d86871655"
    )
    sig = eip191_sign(kp, "Some data")
    assert sig == (
        "0xb91467e570a6466aa9e9876cbcd013baba02900b8979d43fe208a4a4f339f5fd"
        "6007e74cd82e037b800186422fc2da167c747ef045e5d18a5f5d4300f8e1a0291c"
    )
    assert eip191_recover_address("Some data", sig) == kp.address
    assert eip191_recover_address("Some datA", sig) != kp.address
