"""A hostile node's own text in the clear-text fields of an E2EE stream: refused.

Under E2EE the answer's text is sealed, but ``delta.role``,
``choices[].index``, ``finish_reason`` and an error's ``type`` travel in the
clear. The client used to check none of them: a node (or the engine behind
it) could hand the caller any text there, beside the envelopes. Now a
stream whose clear fields hold anything but the values of
:mod:`enclaved.protocol.clear_fields` raises :class:`APIError` (code ``invalid_stream``),
and neither the event nor the value reaches the caller.

The node is the in-memory :class:`FakeNode`; it signs what it sends, so it
is the client's field check - not the response signature - that stops these.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httpx
import openai
import pytest
from client_fakes import E2EE_MODEL, BindingVerifier, FakeNode
from openai.types.chat import ChatCompletionMessageParam

from enclaved.client import AsyncEnclavedTransport, EnclavedTransport
from enclaved.errors import APIError

BASE = "http://node.test/v1"
ANSWER = ["The", " answer", " is", " sealed"]
MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "user", "content": "a question the node must not read"}
]

Edit = Callable[[dict[str, Any]], None]


def sync_client(node: FakeNode) -> openai.OpenAI:
    transport = EnclavedTransport(
        httpx.MockTransport(node), verifier=BindingVerifier(), sleep=lambda s: None
    )
    return openai.OpenAI(
        base_url=BASE,
        api_key="k",
        http_client=httpx.Client(transport=transport),  # type: ignore[arg-type]  # openai types httpx2, takes httpx
        max_retries=0,
    )


def _choices(doc: dict[str, Any]) -> list[dict[str, Any]]:
    return doc.get("choices") or []


def on_role(value: Any) -> Edit:
    def edit(doc: dict[str, Any]) -> None:
        for c in _choices(doc):
            if "role" in c["delta"]:
                c["delta"]["role"] = value

    return edit


def on_second_text(role: Any = None, **fields: Any) -> Edit:
    """Set ``fields`` of the second content chunk's choice (and its delta's ``role``)."""
    seen = [0]

    def edit(doc: dict[str, Any]) -> None:
        for c in _choices(doc):
            if c["delta"].get("content"):
                seen[0] += 1
                if seen[0] == 2:
                    c.update(fields)
                    if role is not None:
                        c["delta"]["role"] = role

    return edit


def on_finish(value: Any) -> Edit:
    def edit(doc: dict[str, Any]) -> None:
        for c in _choices(doc):
            if c.get("finish_reason") == "stop":
                c["finish_reason"] = value

    return edit


#: (name, a new edit, what the caller may have seen before the refusal, the marker).
HOSTILE: list[tuple[str, Callable[[], Edit], list[str], str]] = [
    ("role with text", lambda: on_role("LEAK_role_a1"), [], "LEAK_role_a1"),
    ("role user", lambda: on_role("user"), [], "user"),
    ("index", lambda: on_second_text(index=918273645), ANSWER[:1], "918273645"),
    ("index as text", lambda: on_second_text(index="LEAK_index_b2"), ANSWER[:1], "LEAK_index_b2"),
    ("index negative", lambda: on_second_text(index=-1), ANSWER[:1], "-1"),
    ("index boolean", lambda: on_second_text(index=True), ANSWER[:1], "True"),
    ("finish_reason", lambda: on_finish("LEAK_finish_c3"), ANSWER, "LEAK_finish_c3"),
    ("finish_reason list", lambda: on_finish(["stop"]), ANSWER, "['stop']"),
    (
        "role beside text",
        lambda: on_second_text(role="LEAK_role_d4"),
        ANSWER[:1],
        "LEAK_role_d4",
    ),
]


@pytest.mark.parametrize(("name", "edit", "shown", "marker"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_stream_with_a_malformed_clear_field_raises(
    name: str, edit: Callable[[], Edit], shown: list[str], marker: str
) -> None:
    node = FakeNode(list(ANSWER))
    node.chunk_edit = edit()
    got: list[str] = []
    with pytest.raises(APIError) as info:
        stream = sync_client(node).chat.completions.create(
            model=E2EE_MODEL,
            messages=MESSAGES,
            stream=True,
        )
        for chunk in stream:
            for choice in chunk.choices:
                got.append(choice.delta.content or "")
                assert marker not in (str(choice.delta.role), str(choice.index))
                assert marker not in str(choice.finish_reason)
    assert info.value.code == "invalid_stream"
    assert marker not in str(info.value)
    assert "".join(got) == "".join(shown)  # what came before it; never the event itself


@pytest.mark.parametrize(("name", "edit", "shown", "marker"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_a_non_streaming_answer_with_a_malformed_clear_field_raises(
    name: str, edit: Callable[[], Edit], shown: list[str], marker: str
) -> None:
    node = FakeNode(list(ANSWER))
    node.chunk_edit = edit()
    with pytest.raises(APIError) as info:
        sync_client(node).chat.completions.create(
            model=E2EE_MODEL,
            messages=MESSAGES,
        )
    assert info.value.code == "invalid_stream" and marker not in str(info.value)


def test_an_error_event_of_an_undocumented_type_raises_without_it() -> None:
    node = FakeNode(list(ANSWER))
    node.error_event = {"message": "engine died", "type": "LEAK_type_e5", "code": "upstream_error"}
    with pytest.raises(APIError) as info:
        stream = sync_client(node).chat.completions.create(
            model=E2EE_MODEL,
            messages=MESSAGES,
            stream=True,
        )
        list(stream)
    assert info.value.code == "invalid_stream"
    assert info.value.type is None and "LEAK" not in str(info.value)


def test_the_async_client_refuses_them_too() -> None:
    node = FakeNode(list(ANSWER))
    node.chunk_edit = on_finish("LEAK_finish_f6")

    async def go() -> None:
        transport = AsyncEnclavedTransport(httpx.MockTransport(node), verifier=BindingVerifier())
        client = openai.AsyncOpenAI(
            base_url=BASE,
            api_key="k",
            http_client=httpx.AsyncClient(transport=transport),  # type: ignore[arg-type]  # openai types httpx2, takes httpx
            max_retries=0,
        )
        stream = await client.chat.completions.create(
            model=E2EE_MODEL,
            messages=MESSAGES,
            stream=True,
        )
        async for _ in stream:
            pass

    with pytest.raises(APIError) as info:
        asyncio.run(go())
    assert info.value.code == "invalid_stream" and "LEAK" not in str(info.value)


@pytest.mark.parametrize(
    "edit",
    [
        lambda: on_second_text(index=0),
        lambda: on_second_text(index=15),
        lambda: on_finish("length"),
        lambda: on_finish("content_filter"),
        lambda: on_role(None),
    ],
    ids=["index 0", "index 15", "length", "content_filter", "role null"],
)
def test_every_allowed_value_goes_through(edit: Callable[[], Edit]) -> None:
    node = FakeNode(list(ANSWER))
    node.chunk_edit = edit()
    stream = sync_client(node).chat.completions.create(
        model=E2EE_MODEL,
        messages=MESSAGES,
        stream=True,
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "".join(ANSWER)
