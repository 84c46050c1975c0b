"""E2EE and signing recipes. The raw primitives stay private underneath.

>>> from enclaved.crypto import KeyPair, seal, Opener
>>> node = KeyPair.generate()
>>> Opener(node).open_text(seal("hi", node.public_key))
'hi'
"""

from ._primitives import keccak256, sha256_hex
from .envelope import MIN_HEX_LEN, Opener, Sealer, looks_like_envelope, seal
from .keys import Ed25519KeyPair, KeyPair, NodeKey, address_from_public_key, normalize_public_key
from .signing import (
    binding_text,
    eip191_hash,
    eip191_recover_address,
    eip191_sign,
    recover_public_key,
    signature_text,
)

__all__ = [
    "MIN_HEX_LEN",
    "Ed25519KeyPair",
    "KeyPair",
    "NodeKey",
    "Opener",
    "Sealer",
    "address_from_public_key",
    "binding_text",
    "eip191_hash",
    "eip191_recover_address",
    "eip191_sign",
    "keccak256",
    "looks_like_envelope",
    "normalize_public_key",
    "recover_public_key",
    "seal",
    "sha256_hex",
    "signature_text",
]
