"""secp256k1 identities: the node key, session keys, Ethereum addresses; the
Ed25519 receipt key of ACI."""

from __future__ import annotations

from typing import NoReturn

from coincurve import PrivateKey
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ..errors import InvalidKeyError
from ._primitives import ethereum_address, new_ephemeral, parse_public_key, public_key_of


def address_from_public_key(public_key: bytes | str) -> str:
    """Ethereum address of a secp256k1 public key: ``0x`` + 40 lowercase hex.

    Takes the 65-byte uncompressed key (``04...``), as bytes or hex, or the
    64-byte form without the ``04`` prefix (PROTOCOL.md "Keys").
    """
    return ethereum_address(normalize_public_key(public_key))


def normalize_public_key(public_key: bytes | str) -> bytes:
    """The 65-byte uncompressed form of a key given as bytes or hex, with or without ``04``.

    Validates that the point is on the curve.
    """
    if isinstance(public_key, str):
        text = public_key.strip()
        if text[:2] in ("0x", "0X"):
            text = text[2:]
        try:
            raw = bytes.fromhex(text)
        except ValueError as exc:
            raise InvalidKeyError("public key is not valid hex") from exc
    else:
        raw = bytes(public_key)
    if len(raw) == 64:
        raw = b"\x04" + raw
    parse_public_key(raw)
    return raw


class KeyPair:
    """A secp256k1 key pair held only in memory.

    The private scalar is never exposed as a property, never part of
    ``repr``, and never written anywhere; the objects that need it
    (:class:`~enclaved.crypto.envelope.Opener`, signing) take the key pair.

    Cheap to make: one libsecp256k1 key generation (a client makes one per
    request). The Ethereum address and coincurve's signing object are
    derived the first time they are needed.
    """

    __slots__ = ("_address", "_secret", "_signing", "public_key", "public_key_hex")

    def __init__(self, secret: bytes | None = None) -> None:
        """A fresh key pair, or the one of ``secret`` (32 bytes: tests and vectors)."""
        if secret is None:
            secret, public_key = new_ephemeral()
        else:
            secret = bytes(secret) if isinstance(secret, bytes | bytearray) else b""
            derived = public_key_of(secret)
            if derived is None:  # not 32 bytes, zero, or >= the group order
                raise InvalidKeyError("invalid secp256k1 private key")
            public_key = derived
        self._secret = secret
        self._signing: PrivateKey | None = None
        self._address: str | None = None
        #: 65-byte uncompressed public key.
        self.public_key: bytes = public_key
        #: lowercase hex of :attr:`public_key`, 130 chars, ``04...``.
        self.public_key_hex: str = public_key.hex()

    @classmethod
    def generate(cls) -> KeyPair:
        return cls()

    @classmethod
    def from_secret(cls, secret: bytes) -> KeyPair:
        """For tests and vectors only: a key pair from a known 32-byte scalar."""
        return cls(secret)

    @property
    def address(self) -> str:
        """``0x`` + 40 lowercase hex."""
        if self._address is None:
            self._address = ethereum_address(self.public_key)
        return self._address

    def _signing_key(self) -> PrivateKey:
        """coincurve's key object, for signing (made once: it costs two key generations)."""
        if self._signing is None:
            self._signing = PrivateKey(self._secret)
        return self._signing

    def __repr__(self) -> str:
        return f"KeyPair(address={self.address})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("key pairs cannot be pickled")


#: The node's identity: one per serving node, made in memory at start.
NodeKey = KeyPair


class Ed25519KeyPair:
    """An Ed25519 key pair held only in memory: the ACI receipt-signing key.

    Like :class:`KeyPair`: the private key is never exposed, never part of
    ``repr``, never pickled or written anywhere. :meth:`sign` is the only
    use of it.
    """

    __slots__ = ("_private", "public_key", "public_key_hex")

    def __init__(self, secret: bytes | None = None) -> None:
        """A fresh key pair, or the one of ``secret`` (32 bytes: tests and vectors)."""
        if secret is None:
            private = Ed25519PrivateKey.generate()
        else:
            if not isinstance(secret, bytes | bytearray) or len(secret) != 32:
                raise InvalidKeyError("invalid Ed25519 private key")
            private = Ed25519PrivateKey.from_private_bytes(bytes(secret))
        self._private = private
        #: The 32-byte raw public key.
        self.public_key: bytes = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        #: lowercase hex of :attr:`public_key`, 64 characters.
        self.public_key_hex: str = self.public_key.hex()

    @classmethod
    def generate(cls) -> Ed25519KeyPair:
        return cls()

    @classmethod
    def from_secret(cls, secret: bytes) -> Ed25519KeyPair:
        """For tests and vectors only: a key pair from a known 32-byte seed."""
        return cls(secret)

    @property
    def private_key(self) -> Ed25519PrivateKey:
        """The ``cryptography`` key object, for a signer that takes one."""
        return self._private

    def sign(self, message: bytes) -> bytes:
        """The 64-byte RFC 8032 signature of ``message``."""
        return self._private.sign(message)

    def __repr__(self) -> str:
        return f"Ed25519KeyPair(public_key={self.public_key_hex})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("key pairs cannot be pickled")
