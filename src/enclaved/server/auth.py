"""Optional API keys, configured as SHA-256 hashes.

The configuration holds only ``sha256_hex(key)`` (``enclaved hash-key``
makes one), so a leaked config file does not leak keys. A request presents
``Authorization: Bearer <key>``; the server hashes it and compares the hash
with every configured hash in constant time (all of them, no early exit).

Open routes: ``/models``, ``/tee/attestation``, ``/health``. Chat and
``/tee/signature`` need a key once any key is configured. Keys and the
``Authorization`` header are never logged, and error messages never echo
what was sent.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable

from .errors import AUTHENTICATION, HTTPError

#: Who calls when API keys are off (one rate-limit bucket for everyone).
ANONYMOUS = "anonymous"
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="enclaved"'}


def hash_key(key: str) -> str:
    """The configuration form of an API key: SHA-256, lowercase hex."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_key() -> str:
    """A new random API key (``sk-enclaved-`` + 43 URL-safe characters, 256 bits)."""
    return "sk-enclaved-" + secrets.token_urlsafe(32)


class ApiKeys:
    """The accepted keys. Empty: authentication is off."""

    __slots__ = ("_hashes",)

    def __init__(self, hashes: Iterable[str]) -> None:
        self._hashes = tuple(bytes.fromhex(h) for h in hashes)

    @property
    def enabled(self) -> bool:
        return bool(self._hashes)

    def check(self, authorization: str | None) -> str:
        """Raise a 401 :class:`HTTPError` unless ``authorization`` carries an accepted key.

        Returns who is calling, for the rate limits: the key's configured hash
        (SHA-256 hex, never the key), or ``"anonymous"`` when keys are off.
        """
        if not self._hashes:
            return ANONYMOUS
        if not authorization:
            raise HTTPError(
                401,
                "Missing API key: send it as 'Authorization: Bearer <key>'",
                code="missing_api_key",
                type=AUTHENTICATION,
                headers=_CHALLENGE,
            )
        scheme, _, key = authorization.strip().partition(" ")
        key = key.strip()
        ok = False
        digest = b""
        if scheme.lower() == "bearer" and key:
            digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()
            for h in self._hashes:
                ok |= hmac.compare_digest(digest, h)
        if not ok:
            raise HTTPError(
                401,
                "Invalid API key",
                code="invalid_api_key",
                type=AUTHENTICATION,
                headers=_CHALLENGE,
            )
        return digest.hex()
