"""Telling a whole body from one cut short when only the closing connection framed it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from openai_lb._framing import EventStreamEnd, Framing, framing_of, has_terminal_event, json_complete

CHAT = b'data: {"choices":[{"delta":{"content":"hi"}}]}\n\n' * 3 + b"data: [DONE]\n\n"
RESPONSES = (
    b'event: response.created\ndata: {"type":"response.created"}\n\n'
    b'event: response.output_text.delta\ndata: {"delta":"hi"}\n\n'
    b'event: response.completed\ndata: {"type":"response.completed","response":{"id":"r"}}\n\n'
)


def fed(stream: bytes, cuts: list[int]) -> EventStreamEnd:
    end = EventStreamEnd()
    points = sorted({min(c, len(stream)) for c in cuts})
    start = 0
    for point in [*points, len(stream)]:
        end.feed(stream[start:point])
        start = point
    return end


@given(st.sampled_from([CHAT, RESPONSES]), st.lists(st.integers(0, 400), max_size=12))
def test_a_whole_event_stream_is_complete_however_it_was_chunked(stream: bytes, cuts: list[int]) -> None:
    assert fed(stream, cuts).complete()


@given(st.sampled_from([CHAT, RESPONSES]), st.data())
def test_every_stream_cut_before_its_last_byte_is_incomplete(stream: bytes, data: st.DataObject) -> None:
    length = data.draw(st.integers(0, len(stream) - 1), label="length")
    cuts = data.draw(st.lists(st.integers(0, length), max_size=8), label="cuts")
    assert not fed(stream[:length], cuts).complete(), f"{stream[:length]!r} was taken for a whole stream"


def test_a_stream_without_a_terminal_event_is_incomplete_even_at_an_event_boundary() -> None:
    assert not fed(CHAT[: CHAT.index(b"data: [DONE]")], []).complete()


def test_json_is_complete_only_when_it_parses() -> None:
    assert json_complete(b'{"data": [1, 2]}')
    assert not json_complete(b'{"data": [1, ')
    assert not json_complete(b""), "nothing at all is a cut before the first byte"


def named(**headers: str) -> dict[bytes, bytes]:
    return {name.replace("_", "-").encode(): value.encode() for name, value in headers.items()}


def test_only_http1_without_length_or_chunking_is_close_delimited() -> None:
    assert framing_of({}).close_delimited("HTTP/1.1")
    assert not framing_of(named(content_length="3")).close_delimited("HTTP/1.1")
    assert not framing_of(named(transfer_encoding="chunked")).close_delimited("HTTP/1.1")
    assert not framing_of({}).close_delimited("HTTP/2")


def test_the_media_type_is_read_without_its_parameters() -> None:
    assert framing_of(named(content_type="Application/JSON; charset=utf-8")) == Framing(b"application/json", False)
    assert framing_of(named(content_type="text/event-stream", content_length="9")).media_type == b"text/event-stream"


def test_only_streams_with_a_known_terminal_event_are_judged() -> None:
    assert has_terminal_event("/openai/deployments/gpt-4o/chat/completions")
    assert has_terminal_event("/team/openai/v1/responses")
    assert not has_terminal_event("/openai/deployments/dall-e/images/generations")
    assert not has_terminal_event("/openai/v1/audio/speech")


def test_a_json_answer_nested_deeper_than_the_parser_goes_counts_as_complete() -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    assert json_complete(deep), "a complete answer must be delivered, not raise RecursionError out of the transport"
