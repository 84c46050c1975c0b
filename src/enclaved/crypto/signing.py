"""EIP-191 ``personal_sign`` over the response-signature text (PROTOCOL.md, "Response signatures"),
and over the E2EE response-key binding (docs/server.md, "Authenticated E2EE streams")."""

from __future__ import annotations

from coincurve import PublicKey

from ..errors import CryptoError
from ._primitives import ethereum_address, keccak256, sha256_hex
from .keys import KeyPair


def eip191_hash(message: bytes | str) -> bytes:
    """keccak256("\\x19Ethereum Signed Message:\\n" + len(message) + message)."""
    if isinstance(message, str):
        message = message.encode("utf-8")
    return keccak256(b"\x19Ethereum Signed Message:\n" + str(len(message)).encode() + message)


def eip191_sign(keypair: KeyPair, message: bytes | str) -> str:
    """``0x`` + r || s || v (65 bytes, v in {27, 28}), lowercase hex."""
    sig = keypair._signing_key().sign_recoverable(eip191_hash(message), hasher=None)
    return "0x" + (sig[:64] + bytes([sig[64] + 27])).hex()


def eip191_recover_address(message: bytes | str, signature: str) -> str:
    """The address (``0x`` + 40 lowercase hex) that signed ``message``.

    Accepts v as 27/28 or 0/1. Raises :class:`CryptoError` for a malformed or
    unrecoverable signature. Callers compare the result with the attested address.
    """
    text = signature[2:] if signature[:2] in ("0x", "0X") else signature
    try:
        sig = bytes.fromhex(text)
    except ValueError as exc:
        raise CryptoError("signature is not valid hex") from exc
    if len(sig) != 65:
        raise CryptoError("signature must be 65 bytes (r || s || v)")
    v = sig[64]
    if v >= 27:
        v -= 27
    if v not in (0, 1):
        raise CryptoError("signature recovery id must be 27 or 28")
    try:
        pub = PublicKey.from_signature_and_message(
            sig[:64] + bytes([v]), eip191_hash(message), hasher=None
        )
    except Exception as exc:
        raise CryptoError("signature does not recover to a public key") from exc
    return ethereum_address(pub.format(compressed=False))


def signature_text(request_body: bytes, response_body: bytes) -> str:
    """``sha256_hex(request bytes) + ":" + sha256_hex(response bytes)``."""
    return sha256_hex(request_body) + ":" + sha256_hex(response_body)


#: The first field of :func:`binding_text`: what the signature is about, and its version.
BINDING_DOMAIN = "enclaved-e2ee-binding/1"


def binding_text(request_sha256: str, client_public_key: str, response_public_key: str) -> str:
    """The text a node signs to bind a response's ephemeral key to one request::

        "enclaved-e2ee-binding/1:" + sha256_hex(request body) + ":"
            + client public key + ":" + response public key

    Hashes and keys are lowercase hex; keys are the 130-character uncompressed
    form (``04`` + x + y), the client's as it sent it in
    ``X-Venice-TEE-Client-Pub-Key`` (lowercased). 350 ASCII bytes. It cannot
    be taken for a response-signature text (whose last two fields are
    64-hex hashes), nor the reverse (it starts with the domain).
    """
    request, client, response = (
        request_sha256.lower(),
        client_public_key.lower(),
        response_public_key.lower(),
    )
    return f"{BINDING_DOMAIN}:{request}:{client}:{response}"
