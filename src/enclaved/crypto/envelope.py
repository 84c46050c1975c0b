"""The E2EE envelope (PROTOCOL.md, "E2EE").

    hex( eph_pub (65, uncompressed) || iv (12) || AES-256-GCM(plaintext) || tag (16) )
    key = HKDF-SHA256(ikm = x(ECDH(eph, peer)), salt = none, info = "ecdsa_encryption")

Three recipes:

- :func:`seal`: one message, a fresh ephemeral key (what clients do per
  user/system message).
- :class:`Sealer`: one response. By default one ephemeral key for the whole
  response and a fresh random IV per chunk - PROTOCOL.md allows this and it
  saves a key generation and an ECDH per chunk; ``per_chunk=True`` makes a
  fresh ephemeral key for every chunk instead. A client can make the
  sealers of its next messages ahead of time (:mod:`enclaved.crypto.reserve`).
- :class:`Opener`: the recipient. Caches the derived AES key per ephemeral
  public key, so a response sealed with one ephemeral key costs one ECDH.

Every failure to open - bad hex, short input, bad point, wrong key, bad tag
- raises the same :class:`~enclaved.errors.DecryptionError` with the same
message. Callers must not add detail.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from coincurve import PrivateKey, PublicKey
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import DecryptionError, InvalidKeyError
from ._primitives import ecdh_x, hkdf_sha256, new_ephemeral, parse_public_key
from .keys import KeyPair

PUB_LEN = 65
IV_LEN = 12
TAG_LEN = 16
#: The shortest valid envelope, in hex characters (an empty plaintext).
MIN_HEX_LEN = 2 * (PUB_LEN + IV_LEN + TAG_LEN)  # 186

RandomBytes = Callable[[int], bytes]


def _derive(private: PrivateKey | bytes, public: PublicKey) -> AESGCM:
    return AESGCM(hkdf_sha256(ecdh_x(private, public)))


def seal(
    plaintext: bytes | str, recipient: bytes | PublicKey, *, random: RandomBytes = os.urandom
) -> str:
    """Encrypt one message to ``recipient`` (65-byte public key) with a fresh ephemeral key."""
    return Sealer(recipient, per_chunk=True, random=random).seal(plaintext)


class Sealer:
    """Encrypts the chunks of one response to one recipient.

    ``random`` supplies IVs and (when given) ephemeral secrets; tests inject it.
    """

    __slots__ = ("_aead", "_per_chunk", "_prefix", "_random", "_recipient")

    def __init__(
        self,
        recipient: bytes | PublicKey,
        *,
        per_chunk: bool = False,
        random: RandomBytes = os.urandom,
    ) -> None:
        self._recipient = (
            recipient if isinstance(recipient, PublicKey) else parse_public_key(recipient)
        )
        self._per_chunk = per_chunk
        self._random = random
        self._prefix = b""
        self._aead: AESGCM | None = None
        if not per_chunk:
            self._prefix, self._aead = self._fresh_key()

    def _fresh_key(self) -> tuple[bytes, AESGCM]:
        secret, public = new_ephemeral(self._random)
        return public, _derive(secret, self._recipient)

    @property
    def public_key(self) -> bytes | None:
        """The response's ephemeral public key (65 bytes), or ``None`` with ``per_chunk``
        (a fresh one in every envelope)."""
        return self._prefix or None

    def seal(self, plaintext: bytes | str) -> str:
        """One envelope, lowercase hex."""
        if isinstance(plaintext, str):
            plaintext = plaintext.encode("utf-8")
        if self._aead is None:  # per_chunk: a fresh ephemeral key for every chunk
            prefix, aead = self._fresh_key()
        else:
            prefix, aead = self._prefix, self._aead
        iv = self._random(IV_LEN)
        return (prefix + iv + aead.encrypt(iv, plaintext, None)).hex()


class Opener:
    """Decrypts envelopes addressed to one key pair.

    Keeps a small cache of derived AES keys per ephemeral public key: servers
    that use one ephemeral key per response cost one ECDH per response.
    """

    __slots__ = ("_cache", "_cache_size", "_keypair")

    def __init__(self, keypair: KeyPair, *, cache_size: int = 64) -> None:
        self._keypair = keypair
        self._cache: dict[bytes, AESGCM] = {}
        self._cache_size = cache_size

    def open(self, envelope: str | bytes) -> bytes:
        """The plaintext of one envelope (hex string or raw bytes).

        Raises :class:`DecryptionError` - always the same one - on any failure.
        """
        try:
            raw = bytes.fromhex(envelope) if isinstance(envelope, str) else bytes(envelope)
        except ValueError:
            raise DecryptionError() from None
        if len(raw) < PUB_LEN + IV_LEN + TAG_LEN:
            raise DecryptionError()
        eph = raw[:PUB_LEN]
        aead = self._cache.get(eph)
        if aead is None:
            try:
                point = parse_public_key(eph)
            except InvalidKeyError:
                raise DecryptionError() from None
            aead = _derive(self._keypair._secret, point)
            if len(self._cache) >= self._cache_size:
                self._cache.pop(next(iter(self._cache)))
            self._cache[eph] = aead
        try:
            return aead.decrypt(raw[PUB_LEN : PUB_LEN + IV_LEN], raw[PUB_LEN + IV_LEN :], None)
        except InvalidTag:
            raise DecryptionError() from None

    def open_text(self, envelope: str | bytes) -> str:
        """:meth:`open`, decoded as UTF-8 (a non-UTF-8 plaintext is a DecryptionError too)."""
        try:
            return self.open(envelope).decode("utf-8")
        except UnicodeDecodeError:
            raise DecryptionError() from None

    def clear(self) -> None:
        """Forget every derived key (end of a session)."""
        self._cache.clear()


def looks_like_envelope(text: str) -> bool:
    """The seed document's ``isValidEncrypted``: >= 186 hex chars, all hex, even length."""
    if len(text) < MIN_HEX_LEN or len(text) % 2:
        return False
    try:
        bytes.fromhex(text)
    except ValueError:
        return False
    return True
