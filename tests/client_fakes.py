"""An in-memory node that speaks PROTOCOL.md, for the client's unit tests.

:class:`FakeNode` is an ``httpx.MockTransport`` handler (sync and async):
attestation documents, E2EE chat streams sealed to the client's session
key, and EIP-191 response signatures over the exact bytes - with knobs to
misbehave. Its "quote" is a dummy: the tests pair it with
:class:`BindingVerifier`, which checks only what a fake can prove (the
nonce echo and the key -> address binding). The real verifier runs in the
tests against a real enclaved server.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import httpx
import openai
from openai.types.chat import ChatCompletionMessageParam

from enclaved.attestation import binding
from enclaved.attestation.checks import Verdict
from enclaved.attestation.document import AttestationReport
from enclaved.crypto import KeyPair, Opener, Sealer, eip191_sign, sha256_hex

E2EE_MODEL = "e2ee-fake-1"
TEE_MODEL = "tee-fake-1"
PLAIN_MODEL = "plain-fake-1"


class BindingVerifier:
    """Checks the nonce echo and the signing-key binding. Nothing about a quote."""

    def __init__(self) -> None:
        self.calls = 0

    def verify(self, report: AttestationReport, *, nonce: bytes | None = None) -> Verdict:
        self.calls += 1
        return Verdict([binding.check_nonce_echo(report, nonce), binding.check_signing_key(report)])


@dataclasses.dataclass
class Seen:
    """What the node saw of one chat request."""

    headers: httpx.Headers
    body: dict[str, Any]
    plaintext_messages: list[dict[str, Any]]


class FakeNode:
    """A PROTOCOL.md node in memory. Set attributes to make it misbehave."""

    def __init__(self, answer: list[str] | None = None) -> None:
        self.key = KeyPair.generate()
        self.answer = answer if answer is not None else ["Hello", ", ", "world", "!"]
        self.signatures: dict[str, dict[str, Any]] = {}
        self.seen: list[Seen] = []
        self.attestations = 0
        self.counter = 0
        # misbehaviour knobs
        self.stale_times = 0  # answer 421 this many times
        self.plaintext_answer = False  # send deltas unencrypted
        self.drop_done = False
        self.error_event: dict[str, Any] | None = None
        self.tamper_response: Callable[[bytes], bytes] | None = None
        self.sign_with: KeyPair | None = None
        self.signature_404s = 0
        self.report_override: dict[str, Any] = {}
        self.chat_status = 200  # answer chat with this HTTP status (e.g. a forged 203)
        self.attestation_status = 200
        self.response_headers: dict[str, str] = {}  # extra headers on the chat answer
        self.per_chunk_keys = False  # a fresh ephemeral key per chunk (one production node)
        self.signature_prefix: str | None = None  # sign "prefix:req:resp" (NEAR nodes: the model)
        self.omit_ids = False  # chunks without an "id"
        #: Edits every chunk of a stream before it is sent (and signed): a
        #: hostile node putting its own values in the clear-text fields.
        self.chunk_edit: Callable[[dict[str, Any]], None] | None = None

    # -- the routes -------------------------------------------------------------

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path.endswith("/tee/attestation"):
            return self._attestation(request)
        if path.endswith("/tee/signature"):
            return self._signature(request)
        if path.endswith("/chat/completions"):
            return self._chat(request)
        if path.endswith("/models"):
            return httpx.Response(
                200, json={"object": "list", "data": [{"id": E2EE_MODEL, "object": "model"}]}
            )
        return httpx.Response(
            404, json={"error": {"message": "not found", "type": "invalid_request_error"}}
        )

    def _attestation(self, request: httpx.Request) -> httpx.Response:
        self.attestations += 1
        q = parse_qs(request.url.query.decode())
        nonce = q["nonce"][0]
        model = q["model"][0]
        if model not in (E2EE_MODEL, TEE_MODEL):
            return httpx.Response(
                404,
                json={
                    "error": {
                        "message": f"Model {model} not found",
                        "type": "invalid_request_error",
                    }
                },
            )
        doc = {
            "verified": True,
            "nonce": nonce,
            "request_nonce": nonce,
            "nonce_source": "client",
            "model": model,
            "tee_provider": "fake",
            "tee_hardware": "simulated",
            "intel_quote": "00" * 64,
            "nvidia_payload": None,
            "signing_key": self.key.public_key_hex,
            "signing_public_key": self.key.public_key_hex,
            "signing_address": self.key.address,
            "signing_algo": "ecdsa",
            "event_log": [],
        }
        doc.update(self.report_override)
        return httpx.Response(self.attestation_status, json=doc)

    def _signature(self, request: httpx.Request) -> httpx.Response:
        q = parse_qs(request.url.query.decode())
        rid = q["request_id"][0]
        if self.signature_404s > 0:
            self.signature_404s -= 1
            return httpx.Response(404, json={"error": {"message": "not found"}})
        doc = self.signatures.get(rid)
        if doc is None:
            return httpx.Response(404, json={"error": {"message": "not found"}})
        return httpx.Response(200, json=doc)

    def _chat(self, request: httpx.Request) -> httpx.Response:
        raw = request.read()
        body = json.loads(raw)
        client_key = request.headers.get("x-venice-tee-client-pub-key")
        model_key = request.headers.get("x-venice-tee-model-pub-key")
        e2ee = client_key is not None
        if e2ee and model_key != self.key.public_key_hex:
            return httpx.Response(
                421, json={"error": {"message": "stale", "code": "e2ee_attestation_stale"}}
            )
        if self.stale_times > 0:
            self.stale_times -= 1
            return httpx.Response(
                421, json={"error": {"message": "stale", "code": "e2ee_attestation_stale"}}
            )
        if e2ee and body.get("stream") is not True:
            return httpx.Response(400, json={"error": {"message": "E2EE requires streaming"}})
        opener = Opener(self.key)
        plain = []
        for m in body["messages"]:
            if e2ee and m["role"] in ("user", "system", "developer"):
                c = m["content"]
                if isinstance(c, list):
                    c = "\n".join(opener.open_text(p["text"]) for p in c)
                else:
                    c = opener.open_text(c)
                plain.append({**m, "content": c})
            else:
                plain.append(m)
        self.seen.append(Seen(request.headers, body, plain))
        self.counter += 1
        cid = f"chatcmpl-fake{self.counter}"
        if body.get("stream"):
            out = self._stream_bytes(
                cid, body["model"], client_key if e2ee and not self.plaintext_answer else None
            )
            content_type = "text/event-stream"
        else:
            doc = {
                "id": cid,
                "object": "chat.completion",
                "created": 1,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "".join(self.answer)},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7},
            }
            out = json.dumps(doc).encode()
            content_type = "application/json"
        signer = self.sign_with or self.key
        text = sha256_hex(raw) + ":" + sha256_hex(out)
        if self.signature_prefix is not None:
            text = self.signature_prefix + ":" + text
        self.signatures[cid] = {
            "text": text,
            "signature": eip191_sign(signer, text),
            "signing_address": self.key.address,
            "signing_algo": "ecdsa",
            "request_id": cid,
            "model": body["model"],
        }
        if self.tamper_response is not None:
            out = self.tamper_response(out)
        headers = {"content-type": content_type, **self.response_headers}
        return httpx.Response(self.chat_status, headers=headers, content=out)

    def _stream_bytes(self, cid: str, model: str, client_key_hex: str | None) -> bytes:
        sealer = (
            Sealer(bytes.fromhex(client_key_hex), per_chunk=self.per_chunk_keys)
            if client_key_hex
            else None
        )
        events = []

        def chunk(
            delta: dict[str, Any] | None, finish: str | None = None, usage: Any = None
        ) -> None:
            doc: dict[str, Any] = {} if self.omit_ids else {"id": cid}
            doc |= {
                "object": "chat.completion.chunk",
                "created": 1,
                "model": model,
                "choices": []
                if delta is None
                else [{"index": 0, "delta": delta, "finish_reason": finish}],
            }
            if usage is not None:
                doc["usage"] = usage
            if self.chunk_edit is not None:
                self.chunk_edit(doc)
            events.append(b"data: " + json.dumps(doc).encode() + b"\n\n")

        chunk({"role": "assistant", "content": ""})
        for piece in self.answer:
            chunk({"content": sealer.seal(piece) if sealer else piece})
        if self.error_event is not None:
            events.append(b"data: " + json.dumps({"error": self.error_event}).encode() + b"\n\n")
        chunk({}, finish="stop")
        chunk(None, usage={"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7})
        if not self.drop_done:
            events.append(b"data: [DONE]\n\n")
        return b"".join(events)


__all__ = ["E2EE_MODEL", "PLAIN_MODEL", "TEE_MODEL", "BindingVerifier", "FakeNode"]


def answer_text(
    client: openai.OpenAI, model: str, messages: list[ChatCompletionMessageParam], stream: bool
) -> str | None:
    """The answer's text through the official SDK, streamed or as one document."""
    if stream:
        chunks = client.chat.completions.create(model=model, messages=messages, stream=True)
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return client.chat.completions.create(model=model, messages=messages).choices[0].message.content
