"""Response signatures (PROTOCOL.md, "Response signatures").

For each completion that ends cleanly the node signs::

    text = sha256_hex(request body as received) + ":" + sha256_hex(response body as sent)

with EIP-191 ``personal_sign`` and its node key, and stores a
:class:`SignatureRecord` under the completion id.

"As sent" is literal: :class:`ResponseHasher` is fed the very ``bytes``
objects handed to the ASGI ``send`` (every SSE event, ciphertext included,
through ``data: [DONE]``), and nothing re-serializes a response after
hashing it. Transfer framing (HTTP/1.1 chunk sizes) is not part of the body
and not hashed; enclaved adds no compression, so the body a client reads is
the body hashed here.
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Any

import orjson

from ..crypto import KeyPair, binding_text, eip191_sign, sha256_hex


@dataclasses.dataclass(frozen=True)
class SignatureRecord:
    """The ``GET /tee/signature`` document for one completion."""

    text: str
    signature: str
    signing_address: str
    request_id: str
    model: str
    signing_algo: str = "ecdsa"
    #: The answer's signed ACI receipt (docs/server.md, "Attested Confidential Inference").
    receipt: dict[str, Any] | None = None
    #: SHA-256 hex of the API key that made the request (spec §7.6), never served;
    #: ``None``: an unauthenticated request, whose receipt anyone may fetch.
    api_key_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The served document: PROTOCOL.md's fields in its order, then the receipt."""
        d: dict[str, Any] = {
            "text": self.text,
            "signature": self.signature,
            "signing_address": self.signing_address,
            "signing_algo": self.signing_algo,
            "request_id": self.request_id,
            "model": self.model,
        }
        if self.receipt is not None:
            d["receipt"] = self.receipt
        return d

    def to_json(self) -> bytes:
        """The stored form: :meth:`to_dict` plus the API key digest."""
        d = self.to_dict()
        if self.api_key_sha256 is not None:
            d["api_key_sha256"] = self.api_key_sha256
        return orjson.dumps(d)

    @classmethod
    def from_json(cls, data: bytes | str) -> SignatureRecord:
        d = orjson.loads(data)
        return cls(
            text=d["text"],
            signature=d["signature"],
            signing_address=d["signing_address"],
            signing_algo=d.get("signing_algo", "ecdsa"),
            request_id=d["request_id"],
            model=d["model"],
            receipt=d.get("receipt"),
            api_key_sha256=d.get("api_key_sha256"),
        )


class ResponseHasher:
    """SHA-256 over the response body, fed with exactly the bytes written."""

    __slots__ = ("_h",)

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def update(self, data: bytes) -> None:
        self._h.update(data)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


class ResponseSigner:
    """Signs completions with the node key. Holds no other state."""

    __slots__ = ("_key",)

    def __init__(self, node_key: KeyPair) -> None:
        self._key = node_key

    @property
    def address(self) -> str:
        return self._key.address

    def sign(
        self, *, request_id: str, model: str, request_body: bytes, response_sha256: str
    ) -> SignatureRecord:
        text = sha256_hex(request_body) + ":" + response_sha256
        return SignatureRecord(
            text=text,
            signature=eip191_sign(self._key, text),
            signing_address=self._key.address,
            request_id=request_id,
            model=model,
        )

    def bind(
        self, *, request_body: bytes, client_public_key: bytes, response_public_key: bytes
    ) -> str:
        """The signature binding a response's ephemeral key to its request
        (:func:`~enclaved.crypto.binding_text`; docs/server.md, "Authenticated E2EE streams")."""
        text = binding_text(
            sha256_hex(request_body), client_public_key.hex(), response_public_key.hex()
        )
        return eip191_sign(self._key, text)
