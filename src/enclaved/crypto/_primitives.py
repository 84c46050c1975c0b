"""Raw primitives. Private: use the recipes in :mod:`enclaved.crypto`.

Every secp256k1 operation goes through libsecp256k1 (coincurve): it is over
ten times faster than OpenSSL's generic-curve code here, which matters once
per streamed chunk. AES-GCM and HKDF come from ``cryptography`` (OpenSSL).
Keccak-256 comes from pycryptodome, because hashlib's ``sha3_256`` is the
NIST-padded SHA-3, not the Keccak that Ethereum addresses use.
"""

from __future__ import annotations

import hashlib

from coincurve import PrivateKey, PublicKey
from Crypto.Hash import keccak as _keccak
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import InvalidKeyError

#: HKDF ``info`` of the E2EE envelope (PROTOCOL.md, "Envelope").
HKDF_INFO = b"ecdsa_encryption"


def keccak256(data: bytes) -> bytes:
    return _keccak.new(data=data, digest_bits=256).digest()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def ethereum_address(uncompressed: bytes) -> str:
    """``0x`` + the last 20 bytes of keccak256(x || y), lowercase hex.

    ``uncompressed`` is a 65-byte ``04 || x || y`` key; the caller has
    checked that it is one (this only hashes).
    """
    return "0x" + keccak256(uncompressed[1:])[-20:].hex()


def parse_public_key(data: bytes) -> PublicKey:
    """A secp256k1 point from its 65-byte uncompressed encoding.

    Rejects every other length and prefix, and points off the curve: the
    E2EE protocol only ever uses the uncompressed form.
    """
    if len(data) != 65 or data[0] != 0x04:
        raise InvalidKeyError("public key must be 65 bytes, uncompressed (04...)")
    try:
        return PublicKey(data)
    except Exception as exc:  # coincurve raises ValueError / TypeError
        raise InvalidKeyError("public key is not a point on secp256k1") from exc


def ecdh_x(private: PrivateKey, public: PublicKey) -> bytes:
    """The x-coordinate of private * public: the protocol's raw ECDH secret.

    coincurve's ``PrivateKey.ecdh`` hashes the shared point with SHA-256
    (libsecp256k1's default), which is not what the protocol uses; a
    constant-time scalar multiplication of the peer point gives the raw x.
    """
    shared = public.multiply(private.secret)
    return shared.format(compressed=True)[1:]


def hkdf_sha256(ikm: bytes, *, info: bytes = HKDF_INFO, salt: bytes | None = None, length: int = 32) -> bytes:
    """HKDF-SHA256 (RFC 5869). The envelope uses no salt, info = HKDF_INFO, 32 bytes out."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)
