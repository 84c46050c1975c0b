"""``enclaved.protocol``: the pieces both sides share, pinned where they differ per side."""

from __future__ import annotations

import pytest

from enclaved.errors import APIError
from enclaved.protocol import sse
from enclaved.protocol.assemble import CompletionAssembler


def test_a_blank_line_after_crlf_or_lf_ends_an_event_on_both_sides() -> None:
    """``\\r`` after a line end is a blank line (the HTML grammar): the client's
    old splitter joined the two events below into one."""
    body = b"data: a\r\n\rdata: b\n\rdata: c\n\n"
    assert sse.SSEDecoder().feed(body) == [("", b"a"), ("", b"b"), ("", b"c")]
    assert [e.data for e in sse.SSEParser().feed(body)] == ["a", "b", "c"]


def test_the_client_parser_dispatches_an_unterminated_last_event_the_engine_reader_does_not() -> (
    None
):
    decoder = sse.SSEDecoder()
    assert decoder.feed(b"data: [DONE]") == [] and decoder.flush() == []
    parser = sse.SSEParser()
    assert parser.feed(b"data: [DONE]") == []
    assert [e.data for e in parser.close()] == ["[DONE]"]


@pytest.mark.parametrize(
    "body",
    [b": \xff keep-alive\n\ndata: x\n\n", b"data: \xc3", b"event: \xff\ndata: x\n\n"],
    ids=["comment", "truncated", "event-name"],
)
def test_the_client_parser_refuses_any_byte_that_is_not_utf8(body: bytes) -> None:
    parser = sse.SSEParser()
    with pytest.raises(APIError) as info:
        parser.feed(body)
        parser.close()
    assert info.value.code == "invalid_stream"


def test_the_client_parser_refuses_an_event_that_never_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sse, "MAX_EVENT_BYTES", 64)
    parser = sse.SSEParser()
    parser.feed(b"data: " + b"x" * 40 + b"\n")
    with pytest.raises(APIError, match="larger than"):
        parser.feed(b"data: " + b"x" * 40 + b"\n")


def test_framing() -> None:
    assert sse.event(b'{"a":1}') == b'data: {"a":1}\n\n'
    assert sse.event_lines("a\nb") == b"data: a\ndata: b\n\n"
    assert sse.DONE == b"data: [DONE]\n\n"
    assert sse.error_event("boom", "internal_error") == (
        b'data: {"error":{"message":"boom","type":"server_error","code":"internal_error"}}\n\n'
    )


def test_an_empty_reasoning_piece_is_kept_by_the_client_only() -> None:
    chunk = {"choices": [{"index": 0, "delta": {"content": "hi", "reasoning_content": ""}}]}
    node = CompletionAssembler(only_index=0)
    node.add(chunk)
    client = CompletionAssembler(keep_empty_reasoning=True)
    client.add(chunk)
    assert "reasoning_content" not in node.choice(0)["message"]
    assert client.document()["choices"][0]["message"]["reasoning_content"] == ""


def test_the_node_keeps_choice_zero_only() -> None:
    node = CompletionAssembler(only_index=0)
    node.add_choices(
        [{"index": 1, "delta": {"content": "other"}}, {"index": 0, "delta": {"content": "mine"}}]
    )
    assert node.choice(0)["message"]["content"] == "mine"
    assert list(node.choices) == [0]
