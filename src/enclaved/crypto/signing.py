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


def recover_public_key(signature: bytes, digest: bytes, *, max_recovery_id: int = 1) -> PublicKey:
    """The secp256k1 key that made ``signature`` over the 32-byte ``digest``.

    ``signature`` is ``r || s || v`` (65 bytes), ``v`` a recovery id from 0 to
    ``max_recovery_id`` or the same plus 27 (Ethereum's form). Raises
    :class:`CryptoError` for any other length or ``v``, or a signature that
    recovers to no key. Shared by EIP-191, aci/1 rev-a receipts (ids up to 3)
    and dstack's KMS chains.
    """
    if len(signature) != 65:
        raise CryptoError("signature must be 65 bytes (r || s || v)")
    v = signature[64]
    if v >= 27:
        v -= 27
    if not 0 <= v <= max_recovery_id:
        raise CryptoError(f"signature recovery id must be 0-{max_recovery_id} (or 27 more)")
    try:
        return PublicKey.from_signature_and_message(
            signature[:64] + bytes([v]), digest, hasher=None
        )
    except Exception as exc:
        raise CryptoError("signature does not recover to a public key") from exc


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
    pub = recover_public_key(sig, eip191_hash(message))
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
