"""The clear-text fields of a chat-completion stream, and what each may hold.

Under E2EE the model's text is sealed, but some fields of every chunk stay
in the clear (PROTOCOL.md, "E2EE"): ``delta.role``, ``choices[].index``,
``finish_reason``, and the ``type`` of an error event. An engine that could
put its own text there would have a channel around the encryption - to the
wire, to a man in the middle, to the node's log. So the node relays only
these values (``server/chat/rewrite.py``, ``server/backends/upstream.py``),
and the client refuses a stream that carries anything else
(``client/_stream.py``). One rule, both sides:

- ``delta.role``: ``"assistant"``, or absent (``null`` counts as absent);
- ``choices[].index``: an integer (not a boolean) from 0 to
  :data:`MAX_CHOICE_INDEX` (enclaved serves ``n=1``, so in practice 0);
- ``finish_reason``: one of OpenAI's :data:`FINISH_REASONS`, or ``null``;
- an error's ``type``: one of the documented :data:`ERROR_TYPES`
  (``docs/errors.md``, :mod:`.errors`); mid-stream it is always ``server_error``.

The checks say which field is wrong, never the value (it is text that
should not have been there).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .errors import ERROR_TYPES

__all__ = [
    "ASSISTANT",
    "ERROR_TYPES",
    "FINISH_REASONS",
    "MAX_CHOICE_INDEX",
    "choice_problem",
    "valid_index",
]

ASSISTANT = "assistant"
#: OpenAI's finish reasons (``function_call`` is the deprecated form of ``tool_calls``).
FINISH_REASONS = frozenset({"stop", "length", "tool_calls", "content_filter", "function_call"})
#: The largest ``choices[].index`` accepted: a small bound, so that the index
#: can carry a few bits at most, never a message.
MAX_CHOICE_INDEX = 15


def valid_index(value: Any) -> bool:
    """Whether ``value`` is a well-formed ``choices[].index``."""
    return type(value) is int and 0 <= value <= MAX_CHOICE_INDEX


def choice_problem(choice: Mapping[str, Any]) -> str | None:
    """The name of the first malformed clear-text field of one streamed choice, or None.

    ``choice`` is one element of a chunk's ``choices``; an absent ``index``
    counts as 0.
    """
    if "index" in choice and not valid_index(choice["index"]):
        return "choices[].index"
    delta = choice.get("delta")
    if isinstance(delta, Mapping):
        role = delta.get("role")
        if role is not None and role != ASSISTANT:
            return "delta.role"
    finish_reason = choice.get("finish_reason")
    if finish_reason is not None and (
        not isinstance(finish_reason, str) or finish_reason not in FINISH_REASONS
    ):
        return "finish_reason"
    return None
