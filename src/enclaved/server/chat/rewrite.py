"""Step 7a: engine chunks rewritten for the wire, and sealed under E2EE.

:class:`ChunkWriter` rebuilds every chunk an engine sends from an
allow-list of fields: ``id``, ``model`` and ``created`` are the
completion's; content and reasoning are sealed when a sealer is set; role,
index and finish_reason are relayed only with a value
:mod:`enclaved.protocol.clear_fields` allows, else the completion fails.
It also merges runs of text pieces that arrived together (:meth:`ChunkWriter.batch`,
see :mod:`.batching`) and writes the final usage chunk.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from typing import Any

import orjson

from ...crypto import Sealer
from ...protocol import sse
from ...protocol.clear_fields import ASSISTANT, choice_problem
from ...protocol.headers import BINDING_SIGNATURE, RESPONSE_KEY
from ..backends.base import BackendError
from ..node import Node
from . import e2ee
from .batching import text_piece
from .validate import Prepared

__all__ = [
    "ChunkWriter",
    "binding_headers",
    "carries_text",
    "new_completion_id",
    "response_sealer",
    "role_only",
]


def new_completion_id() -> str:
    """``chatcmpl-`` + 32 random hex characters (128 bits): unguessable, so a
    signature id reveals nothing and cannot be enumerated."""
    return "chatcmpl-" + secrets.token_hex(16)


def response_sealer(node: Node, prepared: Prepared) -> Sealer | None:
    """The sealer of one response under E2EE (``None`` for plain TEE use)."""
    if prepared.e2ee is None:
        return None
    return e2ee.new_sealer(prepared.e2ee, per_chunk=node.config.e2ee_key_per_chunk)


def binding_headers(
    node: Node, prepared: Prepared, sealer: Sealer | None
) -> list[tuple[bytes, bytes]]:
    """The response headers that bind this response's ephemeral key to its
    request (docs/server.md, "Authenticated E2EE streams"), as ASGI pairs.

    None for plain TEE use, nor with ``e2ee_key_per_chunk`` (no one response
    key to bind: such a stream is authenticated only at its end, as before).
    """
    if sealer is None or prepared.e2ee is None:
        return []
    response_key = sealer.public_key
    if response_key is None:
        return []
    signature = node.signer.bind(
        request_body=prepared.body,
        client_public_key=prepared.e2ee.client_public_key,
        response_public_key=response_key,
    )
    return [
        (_RESPONSE_KEY, response_key.hex().encode()),
        (_BINDING_SIGNATURE, signature.encode()),
    ]


_RESPONSE_KEY = RESPONSE_KEY.lower().encode()
_BINDING_SIGNATURE = BINDING_SIGNATURE.lower().encode()


class ChunkWriter:
    """Rebuilds backend chunks for the wire: one per completion.

    Only allow-listed fields survive (a backend cannot leak a plaintext field
    past the E2EE layer by inventing one), and the clear ones only with the
    values :mod:`enclaved.protocol.clear_fields` allows (nor by filling one with its own
    text: :meth:`choices` raises :class:`BackendError` instead); ``id``,
    ``model`` and ``created`` are the completion's; content and reasoning
    are sealed when a sealer is set.
    """

    __slots__ = ("_content_chunks", "_prefix", "_sealer", "created", "id", "model", "usage")

    def __init__(self, completion_id: str, model: str, created: int, sealer: Sealer | None) -> None:
        self.id = completion_id
        self.model = model
        self.created = created
        self._sealer = sealer
        self.usage: dict[str, Any] | None = None
        self._content_chunks = 0
        # Every event starts with the same bytes: encoded once. orjson writes
        # a dict's keys in order and without spaces, so prefix + choices + "}"
        # is byte for byte what encoding the whole chunk would give.
        head = orjson.dumps(
            {
                "id": completion_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
            }
        )
        self._prefix = sse.DATA + head[:-1] + b',"choices":'

    def choices(self, chunk: Mapping[str, Any], *, pieces: int = 1) -> list[dict[str, Any]]:
        """The rewritten choices of one backend chunk; remembers its usage.

        ``pieces``: how many engine chunks ``chunk`` stands for (merged text,
        see :meth:`batch`); the usage estimate counts them.
        """
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = usage
        out: list[dict[str, Any]] = []
        sealer = self._sealer
        for c in chunk.get("choices") or ():
            # The clear-text fields (role, index, finish_reason) are relayed
            # only when they hold one of the values clear_fields allows: an engine
            # must not put text of its own on the wire beside the envelopes.
            if not isinstance(c, dict) or not isinstance(c.get("delta") or {}, dict):
                raise _malformed("choices[]")
            problem = choice_problem(c)
            if problem is not None:
                raise _malformed(problem)
            delta = c.get("delta") or {}
            d: dict[str, Any] = {}
            if delta.get("role") is not None:
                d["role"] = ASSISTANT
            content = delta.get("content")
            if content is not None:
                if content:
                    self._content_chunks += pieces
                    if sealer is not None:
                        content = sealer.seal(content)
                d["content"] = content
            reasoning = delta.get("reasoning_content")
            if reasoning is None:
                reasoning = delta.get("reasoning")  # vLLM's newer name for the same field
            if reasoning is not None:
                d["reasoning_content"] = (
                    sealer.seal(reasoning) if (sealer is not None and reasoning) else reasoning
                )
            choice: dict[str, Any] = {"index": c.get("index", 0), "delta": d}
            if sealer is None:
                # Plain TEE use only: under E2EE these were refused at the door,
                # and a backend that produced them anyway is not trusted to.
                if delta.get("tool_calls"):
                    d["tool_calls"] = delta["tool_calls"]
                if c.get("logprobs") is not None:
                    choice["logprobs"] = c["logprobs"]
            choice["finish_reason"] = c.get("finish_reason")
            out.append(choice)
        return out

    def event(self, choices: list[dict[str, Any]]) -> bytes:
        """One SSE event: ``data: {id, object, created, model, choices}``."""
        return self._prefix + orjson.dumps(choices) + b"}\n\n"

    def batch(self, chunks: list[dict[str, Any]]) -> bytes:
        """The events of chunks that arrived together, to be written at once.

        Each run of consecutive chunks that are nothing but a piece of text of
        the same kind (:func:`~enclaved.server.batching.text_piece`) becomes
        one chunk carrying the run's text (one envelope under E2EE); every
        other chunk - role, finish reason, usage, tool calls, logprobs - is
        written on its own, in order, exactly as :meth:`choices` rewrites it.
        """
        out: list[bytes] = []
        n = len(chunks)
        pieces = [text_piece(chunk) for chunk in chunks]
        i = 0
        while i < n:
            piece = pieces[i]
            j = i + 1
            if piece is not None:
                field = piece[0]
                while j < n and (other := pieces[j]) is not None and other[0] == field:
                    j += 1
            if j - i > 1:
                assert piece is not None
                text = "".join(p[1] for p in pieces[i:j] if p is not None)
                merged = {"choices": [{"index": 0, "delta": {piece[0]: text}}]}
                choices = self.choices(merged, pieces=j - i)
            else:
                choices = self.choices(chunks[i])
            if choices:
                out.append(self.event(choices))
            i = j
        return b"".join(out)

    def final_usage(self) -> dict[str, int]:
        """The backend's token counts, or an estimate (one token per content
        chunk of the engine's, merged or not)."""
        u = self.usage or {}
        prompt = u.get("prompt_tokens")
        completion = u.get("completion_tokens")
        prompt = prompt if isinstance(prompt, int) and not isinstance(prompt, bool) else 0
        completion = (
            completion
            if isinstance(completion, int) and not isinstance(completion, bool)
            else self._content_chunks
        )
        return {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }

    def usage_event(self) -> bytes:
        return sse.event(
            orjson.dumps(
                {
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [],
                    "usage": self.final_usage(),
                }
            )
        )


def _malformed(field: str) -> BackendError:
    """The engine sent a chunk whose ``field`` breaks the rules of :mod:`enclaved.protocol.clear_fields`.

    The message names the field, never its value: the value is the engine's
    text, and this message reaches the client and the log.
    """
    return BackendError(f"the engine sent a malformed chunk ({field})", code="upstream_error")


def carries_text(choices: list[dict[str, Any]]) -> bool:
    """Whether rewritten choices hold a token: non-empty content or reasoning."""
    for c in choices:
        d = c["delta"]
        if d.get("content") or d.get("reasoning_content"):
            return True
    return False


def role_only(choices: list[dict[str, Any]]) -> bool:
    """Whether rewritten choices say nothing but the role (and empty text)."""
    for c in choices:
        if c["finish_reason"] is not None or len(c) > 3:  # index, delta, finish_reason
            return False
        for key, value in c["delta"].items():
            if key != "role" and value:
                return False
    return True
