"""Stream chunks folded into one ``chat.completion`` document.

A non-streaming answer is assembled from a stream on both sides: the node
collects its engine's (rewritten) chunks when the caller did not ask for a
stream, and the client collects the decrypted chunks of an E2EE stream
(E2EE requires streaming) for a caller that did not. One fold for both:

- ``content`` and the reasoning (``reasoning_content``, or vLLM's newer
  ``reasoning``) are concatenated, pieces that are empty skipped (the
  client keeps an empty reasoning string: ``keep_empty_reasoning``);
- tool calls are merged by their ``index`` (``id``, ``type`` set by the
  first piece that has them; ``function.name`` / ``arguments`` concatenated);
- ``logprobs.content`` lists are concatenated;
- the last ``finish_reason`` wins (``"stop"`` when none came);
- the message's role is the one sent (``"assistant"`` when none came).

What this does NOT do: check the chunks. The node's chunks were rebuilt by
``server/chat/rewrite.py`` and the client's checked and decrypted by
``client/_stream.py`` before they get here.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

__all__ = ["ChoiceAssembler", "CompletionAssembler"]

#: The delta fields that carry reasoning text, in the order they are read.
_REASONING = ("reasoning_content", "reasoning")
#: The chunk fields the document takes from the first chunk that has them.
_HEAD = ("id", "created", "model", "system_fingerprint")


class ChoiceAssembler:
    """One choice of a streamed completion, folded into a ``message``."""

    __slots__ = (
        "_keep_empty_reasoning",
        "content",
        "finish_reason",
        "logprobs",
        "reasoning",
        "role",
        "tool_calls",
    )

    def __init__(self, *, keep_empty_reasoning: bool = False) -> None:
        self._keep_empty_reasoning = keep_empty_reasoning
        self.role: str | None = None
        self.content: list[str] = []
        self.reasoning: list[str] = []
        self.tool_calls: dict[int, dict[str, Any]] = {}
        self.logprobs: list[Any] = []
        self.finish_reason: str | None = None

    def add(self, choice: Mapping[str, Any]) -> None:
        """Fold one ``choices[]`` element of a chunk in."""
        d = choice.get("delta") or {}
        if d:
            role = d.get("role")
            if role is not None and isinstance(role, str):
                self.role = role
            text = d.get("content")
            if text:
                self.content.append(text)
            for key in _REASONING:
                text = d.get(key)
                if text or (self._keep_empty_reasoning and isinstance(text, str)):
                    self.reasoning.append(text)
            calls = d.get("tool_calls")
            if calls:
                for call in calls:
                    self._merge_tool_call(call)
        lp = choice.get("logprobs")
        if lp is not None and isinstance(lp, dict) and isinstance(lp.get("content"), list):
            self.logprobs.extend(lp["content"])
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]

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

    def choice(self, index: int) -> dict[str, Any]:
        """The ``chat.completion`` choice: ``index``, ``message``, ``logprobs``, ``finish_reason``."""
        message: dict[str, Any] = {
            "role": self.role or "assistant",
            "content": "".join(self.content),
        }
        if self.reasoning:
            message["reasoning_content"] = "".join(self.reasoning)
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i] for i in sorted(self.tool_calls)]
            if not self.content:
                message["content"] = None
        return {
            "index": index,
            "message": message,
            "logprobs": {"content": self.logprobs} if self.logprobs else None,
            "finish_reason": self.finish_reason or "stop",
        }


class CompletionAssembler:
    """A whole streamed completion, folded into one ``chat.completion`` document.

    ``only_index``: keep that choice and ignore the others (the node serves
    ``n=1``: choice 0). ``keep_empty_reasoning``: a reasoning piece ``""``
    still gives the message a ``reasoning_content`` (``""`` if nothing
    else came): what the client has always done; the node skips it.
    """

    __slots__ = ("_keep_empty_reasoning", "_only", "choices", "head", "usage")

    def __init__(
        self, *, only_index: int | None = None, keep_empty_reasoning: bool = False
    ) -> None:
        self._only = only_index
        self._keep_empty_reasoning = keep_empty_reasoning
        self.head: dict[str, Any] = {}
        self.usage: Any = None
        self.choices: dict[int, ChoiceAssembler] = {}

    def add(self, chunk: Mapping[str, Any]) -> None:
        """Fold one ``chat.completion.chunk`` in: its head, usage and choices."""
        for key in _HEAD:
            if key not in self.head and chunk.get(key) is not None:
                self.head[key] = chunk[key]
        if chunk.get("usage") is not None:
            self.usage = chunk["usage"]
        self.add_choices(chunk.get("choices") or ())

    def add_choices(self, choices: Iterable[Mapping[str, Any]]) -> None:
        """Fold the ``choices`` of one chunk in."""
        for c in choices:
            index = c.get("index", 0)
            if type(index) is not int and not isinstance(index, int):
                index = 0
            if self._only is not None and index != self._only:
                continue
            slot = self.choices.get(index)
            if slot is None:
                slot = ChoiceAssembler(keep_empty_reasoning=self._keep_empty_reasoning)
                self.choices[index] = slot
            slot.add(c)

    def choice(self, index: int) -> dict[str, Any]:
        """One choice of the document (empty if no chunk carried it)."""
        return self.choices.get(index, ChoiceAssembler()).choice(index)

    def document(self) -> dict[str, Any]:
        """The ``chat.completion``: head fields from the chunks, every choice, the usage."""
        doc: dict[str, Any] = {
            "id": self.head.get("id", ""),
            "object": "chat.completion",
            "created": self.head.get("created", 0),
            "model": self.head.get("model", ""),
            "choices": [self.choices[i].choice(i) for i in sorted(self.choices)],
        }
        if "system_fingerprint" in self.head:
            doc["system_fingerprint"] = self.head["system_fingerprint"]
        if self.usage is not None:
            doc["usage"] = self.usage
        return doc
