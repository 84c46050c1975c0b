"""Raw primitives. Private: use the recipes in :mod:`enclaved.crypto`.

Every secp256k1 operation goes through libsecp256k1 (coincurve): it is over
ten times faster than OpenSSL's generic-curve code here, which matters once
per streamed chunk. AES-GCM and HKDF come from ``cryptography`` (OpenSSL).
Keccak-256 comes from pycryptodome, because hashlib's ``sha3_256`` is the
NIST-padded SHA-3, not the Keccak that Ethereum addresses use.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable

from coincurve import PrivateKey, PublicKey
from coincurve._libsecp256k1 import ffi, lib  # type: ignore[import-not-found]
from coincurve.context import GLOBAL_CONTEXT
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


def _pass_x(output: object, x32: object, y32: object, data: object) -> int:
    """libsecp256k1's ECDH "hash function" that returns the x-coordinate as it is."""
    ffi.memmove(output, x32, 32)
    return 1


_CTX = GLOBAL_CONTEXT.ctx

# Module-level: the C callback must live as long as anything may call it.
_copy_x = ffi.callback(
    "int(unsigned char *, const unsigned char *, const unsigned char *, void *)", _pass_x
)


def ecdh_x(private: PrivateKey | bytes, public: PublicKey) -> bytes:
    """The x-coordinate of private * public: the protocol's raw ECDH secret.

    ``private``: a key, or its 32-byte secret. Computed by ``secp256k1_ecdh``,
    libsecp256k1's constant-time scalar multiplication, with a hash function
    that passes x through. Not with coincurve's ``PrivateKey.ecdh`` (it hashes
    the point with SHA-256, which is not what the protocol uses), nor
    ``PublicKey.multiply``: that is ``secp256k1_ec_pubkey_tweak_mul``, whose
    multiplication takes time that depends on the scalar - here the node's
    long-lived private key, applied to points anyone can send in an envelope.
    """
    secret = private if isinstance(private, bytes) else private.secret
    out = ffi.new("unsigned char[32]")
    if not lib.secp256k1_ecdh(_CTX, out, public.public_key, secret, _copy_x, ffi.NULL):
        raise InvalidKeyError("ECDH failed")  # a secret of zero or >= n: never made here
    return bytes(ffi.buffer(out, 32))


def new_ephemeral(random: Callable[[int], bytes] = os.urandom) -> tuple[bytes, bytes]:
    """A fresh key pair: its 32-byte secret and 65-byte uncompressed public key.

    One key generation. coincurve's ``PrivateKey()`` makes two - it derives
    the x-only (Schnorr) public key as well - which is ~40% of the cost of
    sealing with a key per chunk (measured: 30 against 55 us).
    """
    for _ in range(4):
        secret = random(32)
        # Fails only for a secret of zero or >= the group order: 2^-128 for
        # real randomness, so four failures mean a broken random source.
        public = public_key_of(secret)
        if public is not None:
            return secret, public
    raise InvalidKeyError("the random source gave no valid secp256k1 secret")


def public_key_of(secret: bytes) -> bytes | None:
    """The 65-byte uncompressed public key of a 32-byte secret (one key
    generation), or ``None`` when it is no valid secret (zero, >= the group
    order, or not 32 bytes)."""
    point = ffi.new("secp256k1_pubkey *")
    if len(secret) != 32 or not lib.secp256k1_ec_pubkey_create(_CTX, point, secret):
        return None
    out = ffi.new("unsigned char[65]")
    size = ffi.new("size_t *", 65)
    lib.secp256k1_ec_pubkey_serialize(_CTX, out, size, point, lib.SECP256K1_EC_UNCOMPRESSED)
    return bytes(ffi.buffer(out, 65))


def hkdf_sha256(
    ikm: bytes, *, info: bytes = HKDF_INFO, salt: bytes | None = None, length: int = 32
) -> bytes:
    """HKDF-SHA256 (RFC 5869). The envelope uses no salt, info = HKDF_INFO, 32 bytes out."""
    return HKDF(algorithm=hashes.SHA256(), length=length, salt=salt, info=info).derive(ikm)
