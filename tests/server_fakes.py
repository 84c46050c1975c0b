"""A scripted backend for the server layer's unit tests (never for end-to-end tests).

:class:`FakeBackend` implements :class:`enclaved.server.backends.base.Backend`:
it streams fixed pieces of text, records the plaintext requests it was
given, and can fail before the first chunk, mid-stream, or hang until
cancelled.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from enclaved.server.backends.base import BackendError, ChatRequest
from enclaved.server.config import ServerConfig

E2EE_MODEL = "e2ee-fake-1"
TEE_MODEL = "tee-fake-1"
TOOLS_MODEL = "tee-tools-1"


class FakeBackend:
    model_name = "Fake/Model-1B"

    def __init__(
        self,
        pieces: Sequence[str] = ("Hello", ", ", "wörld", "!"),
        *,
        reasoning: Sequence[str] = (),
        usage: dict[str, int] | None = None,
        fail_before: bool = False,
        fail_after: int | None = None,
        crash_after: int | None = None,
        hang_after: int | None = None,
        delay: float = 0.0,
    ) -> None:
        self.pieces = list(pieces)
        self.reasoning = list(reasoning)
        self.usage = (
            usage
            if usage is not None
            else {
                "prompt_tokens": 7,
                "completion_tokens": len(pieces),
                "total_tokens": 7 + len(pieces),
            }
        )
        self.fail_before = fail_before
        self.fail_after = fail_after
        self.crash_after = crash_after
        self.hang_after = hang_after
        self.delay = delay
        self.requests: list[ChatRequest] = []
        self.starts = 0
        self.closes = 0
        self.cancellations = 0

    async def start(self) -> None:
        self.starts += 1

    async def close(self) -> None:
        self.closes += 1

    @staticmethod
    def _chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": "engine-id",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "engine-model",
            "system_fingerprint": "leak-me-not",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "stop_reason": "x"}],
        }

    async def stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        self.requests.append(request)
        if self.fail_before:
            raise BackendError("engine unavailable", status=503, code="model_unavailable")
        try:
            yield self._chunk({"role": "assistant", "content": ""})
            for text in self.reasoning:
                yield self._chunk({"reasoning_content": text})
            for i, text in enumerate(self.pieces):
                if self.fail_after is not None and i == self.fail_after:
                    raise BackendError("engine failed mid-stream", code="upstream_error")
                if self.crash_after is not None and i == self.crash_after:
                    raise RuntimeError("secret prompt text must not be logged")
                if self.hang_after is not None and i == self.hang_after:
                    await asyncio.sleep(3600)
                if self.delay:
                    await asyncio.sleep(self.delay)
                yield self._chunk({"content": text})
            yield self._chunk({}, "stop")
            if self.usage:
                yield {
                    "id": "engine-id",
                    "object": "chat.completion.chunk",
                    "choices": [],
                    "usage": self.usage,
                }
        except asyncio.CancelledError:
            self.cancellations += 1
            raise
        except GeneratorExit:
            self.cancellations += 1
            raise


def fake_config(tmp_path: Path, **changes: Any) -> ServerConfig:
    """Two fake models (one e2ee, one tee) plus one tee model with function calling."""
    data: dict[str, Any] = {
        "data_dir": str(tmp_path),
        "models": [
            {"id": E2EE_MODEL, "backend": "embedded", "name": "Fake E2EE"},
            {"id": TEE_MODEL, "backend": "embedded", "name": "Fake TEE"},
            {
                "id": TOOLS_MODEL,
                "backend": "embedded",
                "name": "Fake Tools",
                "capabilities": {"supportsFunctionCalling": True, "supportsReasoning": True},
            },
        ],
    }
    data.update(changes)
    return ServerConfig.from_dict(data)


def fake_backends(backend: FakeBackend | None = None) -> dict[str, FakeBackend]:
    b = backend or FakeBackend()
    return {E2EE_MODEL: b, TEE_MODEL: b, TOOLS_MODEL: b}


# -- a client written from the seed document, with `cryptography` only --------------
# Deliberately not enclaved.crypto: it stands for a third-party client, so the
# server is checked against the document's recipe rather than against itself.

import json as _json
import os as _os

from cryptography.hazmat.primitives import hashes as _hashes
from cryptography.hazmat.primitives.asymmetric import ec as _ec
from cryptography.hazmat.primitives.ciphers.aead import AESGCM as _AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF as _HKDF
from cryptography.hazmat.primitives.serialization import Encoding as _Enc
from cryptography.hazmat.primitives.serialization import PublicFormat as _Fmt


def _aes_key(private: _ec.EllipticCurvePrivateKey, peer_uncompressed: bytes) -> bytes:
    peer = _ec.EllipticCurvePublicKey.from_encoded_point(_ec.SECP256K1(), peer_uncompressed)
    shared_x = private.exchange(_ec.ECDH(), peer)
    return _HKDF(algorithm=_hashes.SHA256(), length=32, salt=None, info=b"ecdsa_encryption").derive(
        shared_x
    )


class SeedClient:
    """The seed document's E2EE client: a session key, encryptMessage, decryptChunk."""

    def __init__(self) -> None:
        self._private = _ec.generate_private_key(_ec.SECP256K1())
        self.public_key_hex = (
            self._private.public_key().public_bytes(_Enc.X962, _Fmt.UncompressedPoint).hex()
        )

    @staticmethod
    def encrypt(plaintext: str | bytes, model_public_key_hex: str) -> str:
        eph = _ec.generate_private_key(_ec.SECP256K1())
        key = _aes_key(eph, bytes.fromhex(model_public_key_hex))
        iv = _os.urandom(12)
        data = plaintext.encode() if isinstance(plaintext, str) else plaintext
        eph_pub = eph.public_key().public_bytes(_Enc.X962, _Fmt.UncompressedPoint)
        return (eph_pub + iv + _AESGCM(key).encrypt(iv, data, None)).hex()

    def decrypt(self, envelope_hex: str) -> str:
        raw = bytes.fromhex(envelope_hex)
        key = _aes_key(self._private, raw[:65])
        return _AESGCM(key).decrypt(raw[65:77], raw[77:], None).decode("utf-8")

    def headers(self, model_public_key_hex: str) -> dict[str, str]:
        return {
            "X-Venice-TEE-Client-Pub-Key": self.public_key_hex,
            "X-Venice-TEE-Model-Pub-Key": model_public_key_hex,
            "X-Venice-TEE-Signing-Algo": "ecdsa",
        }


def sse_events(raw: bytes) -> list[Any]:
    """Every ``data:`` event of an SSE body: parsed JSON, or the string ``"[DONE]"``."""
    events: list[Any] = []
    for block in raw.decode("utf-8").split("\n\n"):
        if not block:
            continue
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        events.append(data if data == "[DONE]" else _json.loads(data))
    return events


# -- a node over a real socket ------------------------------------------------------------

import contextlib as _contextlib
import dataclasses as _dataclasses
from collections.abc import Iterator as _Iterator

from enclaved.crypto import KeyPair as _KeyPair


@_dataclasses.dataclass
class NodeHandle:
    url: str
    key: _KeyPair
    backend: FakeBackend
    store: Any
    app: Any

    @property
    def api(self) -> str:
        return self.url + "/api/v1"


@_contextlib.contextmanager
def fake_node(
    tmp_path: Path,
    *,
    backend: FakeBackend | None = None,
    store: Any = None,
    key: _KeyPair | None = None,
    clock: Any = None,
    **config_changes: Any,
) -> _Iterator[NodeHandle]:
    """A node with fake backends (real key, real store, real simulated TEE) on 127.0.0.1.

    Without ``store`` the node opens the one its config names (SQLite in
    ``tmp_path`` by default) and closes it at shutdown.
    """
    from conftest import running_server

    from enclaved.server.app import create_app

    backend = backend or FakeBackend()
    key = key or _KeyPair.generate()
    app = create_app(
        fake_config(tmp_path, **config_changes),
        node_key=key,
        store=store,
        backends=fake_backends(backend),
        clock=clock,
    )
    with running_server(app) as url:
        yield NodeHandle(url=url, key=key, backend=backend, store=app.state.node.store, app=app)
