"""Steps 6-8 for a non-streamed answer.

The engine's chunks are rewritten as for a stream (never sealed: E2EE
requires streaming), folded into one ``chat.completion`` document, signed
and sent.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from ...protocol.headers import TEE_RESPONSE_HEADERS_RAW as TEE_HEADERS
from ..backends.base import BackendError
from ..errors import internal_error
from ..node import Node
from ..signing import ResponseHasher
from .asgi import Connection, Send, send_error, send_json
from .engine import aclose, backend_http_error
from .rewrite import ChunkWriter, new_completion_id
from .sign import forget, sign
from .validate import Prepared

__all__ = ["respond"]

log = logging.getLogger("enclaved.server")


async def respond(node: Node, prepared: Prepared, send: Send, conn: Connection) -> None:
    """Steps 6-8 for a non-streamed answer: collect, sign, send."""
    writer = ChunkWriter(new_completion_id(), prepared.model.id, int(node.clock()), None)
    stream: AsyncIterator[dict[str, Any]] | None = None
    collector = _Collector()
    try:
        stream = prepared.backend.stream(prepared.request)
        async for chunk in stream:
            collector.add(writer.choices(chunk))
    except BackendError as exc:
        log.warning("backend failed (%s): %s", exc.code, exc.message)
        await send_error(send, backend_http_error(exc), TEE_HEADERS)
        return
    except Exception as exc:  # noqa: BLE001 - any failure, reported by type only
        log.error("completion failed: %s", type(exc).__name__)
        await send_error(send, internal_error(), TEE_HEADERS)
        return
    finally:
        if stream is not None:
            await aclose(stream)

    body = orjson.dumps(
        {
            "id": writer.id,
            "object": "chat.completion",
            "created": writer.created,
            "model": writer.model,
            "choices": [collector.choice()],
            "usage": writer.final_usage(),
        }
    )
    conn.finishing = True
    if not conn.disconnected:
        hasher = ResponseHasher()
        hasher.update(body)
        record = await sign(node, prepared, writer.id, hasher.hexdigest())
        if conn.disconnected:
            await forget(node, record)
    await send_json(send, 200, body, TEE_HEADERS)


class _Collector:
    """Folds rewritten stream choices into one ``chat.completion`` choice."""

    def __init__(self) -> None:
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.logprobs: list[Any] = []
        self.finish_reason: str | None = None

    def add(self, choices: list[dict[str, Any]]) -> None:
        for c in choices:
            if c.get("index", 0) != 0:
                continue
            d = c["delta"]
            if d.get("content"):
                self.content.append(d["content"])
            if d.get("reasoning_content"):
                self.reasoning.append(d["reasoning_content"])
            for call in d.get("tool_calls") or ():
                self._merge_tool_call(call)
            lp = c.get("logprobs")
            if isinstance(lp, dict) and isinstance(lp.get("content"), list):
                self.logprobs.extend(lp["content"])
            if c.get("finish_reason"):
                self.finish_reason = c["finish_reason"]

    def _merge_tool_call(self, call: Mapping[str, Any]) -> None:
        index = call.get("index", len(self.tool_calls))
        entry = self.tool_calls.setdefault(
            index, {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
        )
        if call.get("id"):
            entry["id"] = call["id"]
        if call.get("type"):
            entry["type"] = call["type"]
        fn = call.get("function") or {}
        if fn.get("name"):
            entry["function"]["name"] += fn["name"]
        if fn.get("arguments"):
            entry["function"]["arguments"] += fn["arguments"]

    def choice(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": "".join(self.content)}
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
            if not self.content:
                message["content"] = None
        return {
            "index": 0,
            "message": message,
            "logprobs": {"content": self.logprobs} if self.logprobs else None,
            "finish_reason": self.finish_reason or "stop",
        }
