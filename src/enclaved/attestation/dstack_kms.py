"""dstack KMS key custody: the signature chain that says a key was released to an app.

A dstack CVM gets its keys from the KMS (``GetKey(path, purpose)``), each
with a two-link chain of recoverable secp256k1 signatures (65 bytes,
``r || s || v``, over Keccak-256):

1. the app key signs ``"<purpose>:<hex of the derived public key>"`` (for a
   secp256k1 key its 33-byte compressed SEC1 form, for Ed25519 its 32 bytes);
2. the KMS root key signs ``b"dstack-kms-issued:" + app_id (20 bytes) +
   the app public key (33-byte compressed SEC1)``.

Recovering both signers gives the app key and the KMS root. The chain
proves custody only together with two things it does not carry: the
``app_id``, which must be the one the TD measured (the ``app-id`` event of
an event log replayed to the quote), and the root, which must be one the
relying party pinned (the KMS contract's ``kmsInfo`` publishes it). The
KMS releases an app's keys only to a TD whose measurements its on-chain
policy accepts: that policy, and whoever controls the KMS, is what this
trusts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import coincurve

from ..crypto import keccak256, recover_public_key
from ..crypto.keys import address_from_public_key
from ..errors import CryptoError

__all__ = ["ChainLink", "kms_root_address", "verify_chain"]

_ISSUED = b"dstack-kms-issued:"


@dataclasses.dataclass(frozen=True)
class ChainLink:
    """One key's chain, verified as far as it goes."""

    role: str
    #: The derived key, normalized: compressed SEC1 hex (secp256k1) or 32-byte hex (Ed25519).
    public_key: str
    #: ``0x`` address of the KMS root the chain recovers to; ``None`` if it does not recover.
    root: str | None
    #: The app key (compressed hex) the first link recovers to; ``None`` if it does not.
    app_key: str | None


def normalize_key(public_key: str, algo: str) -> str | None:
    """A key as the chain's first link names it; ``None`` if it is not one.
    ``algo`` as listed: ``ed25519``, else a secp256k1 key (any of its names)."""
    text = public_key.strip().lower().removeprefix("0x")
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        return None
    if algo == "ed25519":
        return raw.hex() if len(raw) == 32 else None
    if len(raw) == 64:  # X || Y without the 04 prefix (the "ecdsa" listing)
        raw = b"\x04" + raw
    try:
        return coincurve.PublicKey(raw).format(compressed=True).hex()
    except ValueError:
        return None


def _recover(signature: bytes, message: bytes) -> coincurve.PublicKey | None:
    """The signer of a 65-byte ``r || s || v`` over Keccak-256(message), or ``None``."""
    try:
        return recover_public_key(signature, keccak256(message))
    except CryptoError:
        return None


def verify_chain(entry: Mapping[str, Any], app_id: bytes) -> ChainLink | None:
    """Recover ``entry``'s chain (a ``key_custody.keys[]`` item: ``role``,
    ``purpose``, ``algo``, ``public_key``, ``signature_chain``) for the
    measured ``app_id``. ``None`` when the entry is malformed."""
    algo = str(entry.get("algo", ""))
    key = normalize_key(str(entry.get("public_key", "")), algo)
    chain = entry.get("signature_chain")
    purpose = entry.get("purpose")
    if key is None or not isinstance(purpose, str) or not isinstance(chain, Sequence):
        return None
    role = str(entry.get("role", ""))
    try:
        first, second = (bytes.fromhex(str(s)) for s in chain)
    except ValueError:  # not two hex strings
        return ChainLink(role, key, None, None)
    app = _recover(first, f"{purpose}:{key}".encode())
    if app is None:
        return ChainLink(role, key, None, None)
    app_key = app.format(compressed=True)
    root = _recover(second, _ISSUED + app_id + app_key)
    if root is None:
        return ChainLink(role, key, None, app_key.hex())
    return ChainLink(role, key, kms_root_address(root.format(compressed=False)), app_key.hex())


def kms_root_address(public_key: bytes | str) -> str:
    """The ``0x`` address of a KMS root key (as policies pin it)."""
    return address_from_public_key(public_key).lower()
