"""The E2EE envelope (PROTOCOL.md "E2EE"): layout, interoperability, failure opacity."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from enclaved.crypto import MIN_HEX_LEN, KeyPair, Opener, Sealer, looks_like_envelope, seal
from enclaved.errors import DecryptionError


def _openssl_open(envelope_hex: str, private: ec.EllipticCurvePrivateKey) -> bytes:
    """An independent implementation of the seed document's decryptChunk, on OpenSSL."""
    raw = bytes.fromhex(envelope_hex)
    eph = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256K1(), raw[:65])
    secret = private.exchange(ec.ECDH(), eph)  # OpenSSL returns the raw x-coordinate
    key = HKDF(hashes.SHA256(), 32, None, b"ecdsa_encryption").derive(secret)
    return AESGCM(key).decrypt(raw[65:77], raw[77:], None)


def _openssl_seal(plaintext: bytes, recipient_hex: str) -> str:
    """The seed document's encryptMessage, on OpenSSL."""
    peer = ec.EllipticCurvePublicKey.from_encoded_point(
        ec.SECP256K1(), bytes.fromhex(recipient_hex)
    )
    eph = ec.generate_private_key(ec.SECP256K1())
    key = HKDF(hashes.SHA256(), 32, None, b"ecdsa_encryption").derive(eph.exchange(ec.ECDH(), peer))
    iv = b"\x07" * 12
    pub = eph.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return (pub + iv + AESGCM(key).encrypt(iv, plaintext, None)).hex()


def _openssl_keypair() -> tuple[ec.EllipticCurvePrivateKey, KeyPair]:
    private = ec.generate_private_key(ec.SECP256K1())
    secret = private.private_numbers().private_value.to_bytes(32, "big")
    return private, KeyPair.from_secret(secret)


def test_layout_and_lowercase_hex() -> None:
    node = KeyPair.generate()
    env = seal("hello", node.public_key)
    raw = bytes.fromhex(env)
    assert env == env.lower()
    assert raw[0] == 0x04 and len(raw) == 65 + 12 + len("hello") + 16
    assert looks_like_envelope(env)
    assert len(seal("", node.public_key)) == MIN_HEX_LEN == 186


def test_sealed_by_us_opened_by_openssl() -> None:
    private, ours = _openssl_keypair()
    for text in ["", "hi", "ünïcødé 🔐", "x" * 5000]:
        assert _openssl_open(seal(text, ours.public_key), private).decode() == text
        sealer = Sealer(ours.public_key)
        assert _openssl_open(sealer.seal(text), private).decode() == text


def test_sealed_by_openssl_opened_by_us() -> None:
    _private, ours = _openssl_keypair()
    env = _openssl_seal(b"the seed document's client", ours.public_key_hex)
    assert Opener(ours).open_text(env) == "the seed document's client"


def test_one_key_per_response_fresh_iv_per_chunk() -> None:
    client = KeyPair.generate()
    sealer = Sealer(client.public_key)
    chunks = [bytes.fromhex(sealer.seal(t)) for t in ["a", "b", "c"]]
    assert len({c[:65] for c in chunks}) == 1  # one ephemeral key for the response
    assert len({c[65:77] for c in chunks}) == 3  # a fresh IV each time
    opener = Opener(client)
    assert [opener.open_text(c.hex()) for c in chunks] == ["a", "b", "c"]


def test_per_chunk_keys_option() -> None:
    client = KeyPair.generate()
    sealer = Sealer(client.public_key, per_chunk=True)
    chunks = [bytes.fromhex(sealer.seal("x")) for _ in range(3)]
    assert len({c[:65] for c in chunks}) == 3
    assert all(Opener(client).open(c) == b"x" for c in chunks)


def test_every_failure_is_the_same_opaque_error() -> None:
    client, other = KeyPair.generate(), KeyPair.generate()
    env = seal("secret", client.public_key)
    raw = bytearray(bytes.fromhex(env))
    tampered_tag = bytes(raw[:-1]) + bytes([raw[-1] ^ 1])
    tampered_iv = bytes(raw[:70]) + bytes([raw[70] ^ 1]) + bytes(raw[71:])
    off_curve = bytes(raw[:10]) + bytes([raw[10] ^ 1]) + bytes(raw[11:])
    bad_inputs = [
        "zz" + env[2:],  # not hex
        env[:-1],  # odd length
        env[:184],  # too short
        tampered_tag.hex(),
        tampered_iv.hex(),
        off_curve.hex(),
    ]
    messages = set()
    for bad in bad_inputs:
        with pytest.raises(DecryptionError) as info:
            Opener(client).open(bad)
        messages.add(str(info.value))
    with pytest.raises(DecryptionError) as info:
        Opener(other).open(env)  # the wrong key
    messages.add(str(info.value))
    assert messages == {"failed to decrypt"}


def test_non_utf8_plaintext_is_a_decryption_error_for_text() -> None:
    client = KeyPair.generate()
    env = seal(b"\xff\xfe", client.public_key)
    assert Opener(client).open(env) == b"\xff\xfe"
    with pytest.raises(DecryptionError):
        Opener(client).open_text(env)


def test_opener_cache_is_bounded() -> None:
    client = KeyPair.generate()
    opener = Opener(client, cache_size=4)
    for _ in range(10):
        assert opener.open(seal("x", client.public_key)) == b"x"
    assert len(opener._cache) == 4
    opener.clear()
    assert not opener._cache


def test_looks_like_envelope() -> None:
    assert not looks_like_envelope("a" * 185)
    assert not looks_like_envelope("g" * 186)
    assert not looks_like_envelope("Hello, world! " * 20)
    assert looks_like_envelope("A" * 186)  # the seed document accepts either case


def test_keypair_does_not_leak_its_secret() -> None:
    kp = KeyPair.generate()
    assert "address" in repr(kp) and kp._secret.hex() not in repr(kp)
    import pickle

    with pytest.raises(TypeError):
        pickle.dumps(kp)


def test_ephemeral_keys_are_what_openssl_derives_from_their_secrets() -> None:
    """The sealer's own key generation (one libsecp256k1 call, no coincurve
    objects) gives the public key OpenSSL computes from the same secret, and
    a broken random source is refused rather than looped on."""
    from enclaved.crypto._primitives import new_ephemeral
    from enclaved.errors import InvalidKeyError

    for _ in range(20):
        secret, public = new_ephemeral()
        expected = ec.derive_private_key(int.from_bytes(secret, "big"), ec.SECP256K1())
        point = expected.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        assert public == point
    with pytest.raises(InvalidKeyError):
        new_ephemeral(lambda n: b"\x00" * n)  # zero is not a secret
    with pytest.raises(InvalidKeyError):
        new_ephemeral(lambda n: b"\xff" * n)  # nor is anything >= the group order
