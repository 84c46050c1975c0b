"""The client's side of authenticated E2EE streams, without a network:
:func:`check_binding` (every failure the same error) and the decoder that
refuses an envelope under any key but the signed one."""

from __future__ import annotations

import json

import pytest

from enclaved.client._signature import BINDING_FAILED, check_binding
from enclaved.client._stream import UNBOUND_CHUNK, ResponseDecoder
from enclaved.crypto import KeyPair, Opener, Sealer, binding_text, eip191_sign, seal, sha256_hex
from enclaved.errors import DecryptionError, VerificationError

NODE = KeyPair.generate()
SESSION = KeyPair.generate()
REQUEST = sha256_hex(b'{"model":"e2ee-x"}')


def _bound(response_key: str, *, signer: KeyPair = NODE, request: str = REQUEST) -> str:
    return eip191_sign(signer, binding_text(request, SESSION.public_key_hex, response_key))


def _check(key: str | None, signature: str | None) -> str | None:
    return check_binding(
        key,
        signature,
        request_sha256=REQUEST,
        client_public_key=SESSION.public_key_hex,
        expected_address=NODE.address,
    )


def test_a_binding_by_the_attested_key_gives_the_response_key() -> None:
    response = KeyPair.generate().public_key_hex
    assert _check(response, _bound(response)) == response
    assert _check(response.upper(), _bound(response)) == response
    assert _check(None, None) is None  # no extension: nothing to pin


@pytest.mark.parametrize(
    "case",
    [
        "key-only",
        "signature-only",
        "other-signer",
        "other-request",
        "other-session-key",
        "short-key",
        "compressed-key",
        "off-curve",
        "bad-signature-hex",
        "short-signature",
    ],
)
def test_every_bad_binding_is_the_same_error(case: str) -> None:
    response = KeyPair.generate().public_key_hex
    other = KeyPair.generate()
    key: str | None = response
    sig: str | None = _bound(response)
    if case == "key-only":
        sig = None
    elif case == "signature-only":
        key = None
    elif case == "other-signer":
        sig = _bound(response, signer=other)
    elif case == "other-request":
        sig = _bound(response, request=sha256_hex(b"another body"))
    elif case == "other-session-key":
        sig = eip191_sign(NODE, binding_text(REQUEST, other.public_key_hex, response))
    elif case == "short-key":
        key = response[:128]
    elif case == "compressed-key":
        key = "02" + response[2:66]
    elif case == "off-curve":
        key = "04" + "11" * 64
    elif case == "bad-signature-hex":
        sig = "0x" + "zz" * 65
    elif case == "short-signature":
        sig = (sig or "")[:-2]
    with pytest.raises(VerificationError) as info:
        _check(key, sig)
    assert str(info.value) == BINDING_FAILED


def _event(content: str) -> bytes:
    chunk = {"id": "chatcmpl-1", "choices": [{"index": 0, "delta": {"content": content}}]}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def test_the_decoder_refuses_any_other_key_before_opening_it() -> None:
    sealer = Sealer(SESSION.public_key)
    assert sealer.public_key is not None
    decoder = ResponseDecoder(Opener(SESSION))
    decoder.pin_response_key(sealer.public_key.hex())
    assert decoder.authenticated
    assert len(list(decoder.feed(_event(sealer.seal("genuine"))))) == 1
    forged = seal("FORGED", SESSION.public_key)  # decrypts fine, under another key
    with pytest.raises(VerificationError) as info:
        list(decoder.feed(_event(forged)))
    assert str(info.value) == UNBOUND_CHUNK


def test_the_decoder_refuses_an_envelope_seen_before() -> None:
    sealer = Sealer(SESSION.public_key)
    assert sealer.public_key is not None
    decoder = ResponseDecoder(Opener(SESSION))
    decoder.pin_response_key(sealer.public_key.hex())
    envelope = sealer.seal("once")
    assert len(list(decoder.feed(_event(envelope)))) == 1
    with pytest.raises(VerificationError, match="not sealed under"):
        list(decoder.feed(_event(envelope)))


def test_a_bad_tag_under_the_signed_key_is_still_the_opaque_decryption_error() -> None:
    sealer = Sealer(SESSION.public_key)
    assert sealer.public_key is not None
    decoder = ResponseDecoder(Opener(SESSION))
    decoder.pin_response_key(sealer.public_key.hex())
    envelope = sealer.seal("tampered")
    envelope = envelope[:-2] + ("00" if envelope[-2:] != "00" else "11")
    with pytest.raises(DecryptionError) as info:
        list(decoder.feed(_event(envelope)))
    assert str(info.value) == "failed to decrypt"


def test_a_sealer_with_a_key_per_chunk_has_no_response_key() -> None:
    assert Sealer(SESSION.public_key, per_chunk=True).public_key is None
    sealer = Sealer(SESSION.public_key)
    assert sealer.public_key is not None and len(sealer.public_key) == 65
    assert sealer.seal("x")[:130] == sealer.public_key.hex()
