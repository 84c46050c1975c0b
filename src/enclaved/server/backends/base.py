"""What the server needs from an inference engine.

A backend turns plaintext chat messages into a stream of OpenAI
``chat.completion.chunk`` dicts. It knows nothing of E2EE, signatures,
attestation or HTTP routes: the server layer rewrites ids and model names,
encrypts deltas, signs and serializes. That keeps engines swappable (the
embedded llama.cpp model, any OpenAI-compatible upstream such as vLLM).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any, Protocol, runtime_checkable

from ...errors import Error


class BackendError(Error):
    """The engine failed. ``status`` is the HTTP status to report when the
    failure happens before the first byte; mid-stream it becomes an SSE error event.
    ``message`` must never contain prompt or completion content."""

    def __init__(self, message: str, *, status: int = 502, code: str = "upstream_error") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code


@dataclasses.dataclass(frozen=True)
class ChatRequest:
    """A chat request as the backend sees it: plaintext, already validated."""

    #: OpenAI messages, plaintext (the E2EE layer has decrypted them).
    messages: list[dict[str, Any]]
    #: OpenAI sampling parameters the backend may honour: temperature, top_p,
    #: max_tokens / max_completion_tokens, stop, seed, presence_penalty,
    #: frequency_penalty, n (1 only), tools (never under E2EE), ...
    params: dict[str, Any] = dataclasses.field(default_factory=dict)


@runtime_checkable
class Backend(Protocol):
    #: What actually serves the model (``model_name`` / ``upstream_model``).
    model_name: str

    async def start(self) -> None:
        """Load weights / open connections. Called once before serving."""

    async def close(self) -> None:
        """Release everything. Called once at shutdown."""

    def stream(self, request: ChatRequest) -> AsyncIterator[dict[str, Any]]:
        """Yield OpenAI ``chat.completion.chunk`` dicts as the engine produces them.

        Content arrives in ``choices[0].delta.content`` (and
        ``delta.reasoning_content`` where the engine reasons). The last chunk
        should carry ``usage`` (prompt/completion/total tokens) with
        ``choices: []``; if the engine gives none, the server computes it.
        Raises :class:`BackendError` on failure, before or during the stream.
        Cancellation (client gone) must stop generation promptly.
        """
        ...
