"""Reading stateful requests and answers: routes, the ids a body names, created ids, not-here answers, streams."""

from __future__ import annotations

import json
from itertools import pairwise
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from openai_lb._affinity import (
    ROUTES,
    FirstId,
    Stateful,
    body_references,
    created_id,
    names_objects,
    not_here,
    route_of,
    stateful,
)
from openai_lb._rewrite import RequestTemplate, lowered

JSON_HEADERS = lowered([(b"content-type", b"application/json"), (b"content-length", b"1")])
# Deeper than any JSON parser here goes: json.loads raises RecursionError long before.
DEEP = 100_000
# Plain st.text() builds Hypothesis's unicode tables on a cold cache (about 1.5 s, once).
SLOW_START = settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)


def affinity_of(method: str, path: str, body: object = None) -> Stateful | None:
    """What a request means for affinity, read as the request template reads it."""
    found = route_of(path.encode())
    if found is None:
        return None
    return stateful(method, *found, () if body is None else body_references(body))


def nested(depth: int, leaf: object = None) -> object:
    """``leaf`` inside ``depth`` lists, built without recursion."""
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


# -- route_of and stateful: which requests are about objects held by one backend


@pytest.mark.parametrize("prefix", ["/openai", "/openai/v1", "/openai/deployments/gpt-4o"])
def test_azure_v1_and_deployment_paths_lead_to_the_same_route(prefix: str) -> None:
    found = route_of(f"{prefix}/responses/resp_1/input_items".encode())
    assert found is not None, f"{prefix}/responses/... is a stateful path"
    route, rest = found
    assert route.collection == ("responses",)
    assert rest == ["resp_1", "input_items"], "the segments after the collection"


@pytest.mark.parametrize(
    "path",
    [
        "/openai/deployments/gpt-4o/chat/completions",
        "/openai/deployments/gpt-4o/embeddings",
        "/openai/v1/chat/completions",
        "/openai/v1/embeddings",
        "/openai/v1/models",
        "/openai/deployments/gpt-4o",
        "/openai/deployments/",
        "/openai/v1/fine_tuning/checkpoints",
        "/openai/v1/fine_tuning",
        "/openai/v1/responsesX/resp_1",
        "/v1/responses/resp_1",
        "/responses/resp_1",
        "/openai",
        "",
    ],
)
def test_stateless_and_foreign_paths_have_no_route(path: str) -> None:
    assert route_of(path.encode()) is None, f"{path!r} is balanced like any stateless call"


CREATES = ("id",)
V1 = "/openai/v1"

# (method, path, what a request means) for every route: each create learns, each id is named, DELETE forgets.
ROUTE_TABLE: list[tuple[str, str, Stateful | None]] = [
    ("POST", "/responses", Stateful((), CREATES, None)),
    ("GET", "/responses/resp_1", Stateful(("resp_1",), None, None)),
    ("DELETE", "/responses/resp_1", Stateful(("resp_1",), None, "resp_1")),
    ("POST", "/responses/resp_1/cancel", Stateful(("resp_1",), None, None)),
    ("GET", "/responses/resp_1/input_items", Stateful(("resp_1",), None, None)),
    ("POST", "/responses/input_tokens", Stateful((), None, None)),
    ("POST", "/responses/compact", Stateful((), None, None)),
    ("POST", "/conversations", Stateful((), CREATES, None)),
    ("GET", "/conversations/conv_1/items", Stateful(("conv_1",), None, None)),
    ("DELETE", "/conversations/conv_1/items/msg_1", Stateful(("conv_1",), None, None)),
    ("DELETE", "/conversations/conv_1", Stateful(("conv_1",), None, "conv_1")),
    ("POST", "/files", Stateful((), CREATES, None)),
    ("GET", "/files/file-1", Stateful(("file-1",), None, None)),
    ("GET", "/files/file-1/content", Stateful(("file-1",), None, None)),
    ("DELETE", "/files/file-1", Stateful(("file-1",), None, "file-1")),
    ("POST", "/uploads", Stateful((), CREATES, None)),
    ("POST", "/uploads/upload_1/parts", Stateful(("upload_1",), None, None)),
    ("POST", "/uploads/upload_1/complete", Stateful(("upload_1",), ("file", "id"), None)),
    ("POST", "/uploads/upload_1/cancel", Stateful(("upload_1",), None, None)),
    ("POST", "/batches", Stateful((), CREATES, None)),
    ("GET", "/batches/batch_1", Stateful(("batch_1",), None, None)),
    ("POST", "/batches/batch_1/cancel", Stateful(("batch_1",), None, None)),
    ("POST", "/vector_stores", Stateful((), CREATES, None)),
    ("POST", "/vector_stores/vs_1/files", Stateful(("vs_1",), None, None)),
    ("DELETE", "/vector_stores/vs_1/files/file-1", Stateful(("vs_1",), None, None)),
    ("POST", "/vector_stores/vs_1/file_batches", Stateful(("vs_1",), None, None)),
    ("GET", "/vector_stores/vs_1/file_batches/vsfb_1/files", Stateful(("vs_1",), None, None)),
    ("DELETE", "/vector_stores/vs_1", Stateful(("vs_1",), None, "vs_1")),
    ("POST", "/containers", Stateful((), CREATES, None)),
    ("GET", "/containers/cntr_1/files/cfile_1/content", Stateful(("cntr_1",), None, None)),
    ("POST", "/fine_tuning/jobs", Stateful((), CREATES, None)),
    ("GET", "/fine_tuning/jobs/ftjob-1/events", Stateful(("ftjob-1",), None, None)),
    ("POST", "/fine_tuning/jobs/ftjob-1/cancel", Stateful(("ftjob-1",), None, None)),
    ("POST", "/assistants", Stateful((), CREATES, None)),
    ("POST", "/assistants/asst_1", Stateful(("asst_1",), None, None)),
    ("DELETE", "/assistants/asst_1", Stateful(("asst_1",), None, "asst_1")),
    ("POST", "/threads", Stateful((), CREATES, None)),
    ("POST", "/threads/runs", Stateful((), ("thread_id",), None)),
    ("POST", "/threads/thread_1/runs", Stateful(("thread_1",), ("thread_id",), None)),
    ("GET", "/threads/thread_1/runs/run_1/steps", Stateful(("thread_1",), None, None)),
    ("POST", "/threads/thread_1/messages", Stateful(("thread_1",), None, None)),
    ("GET", "/threads/thread_1/messages/msg_1", Stateful(("thread_1",), None, None)),
    ("DELETE", "/threads/thread_1", Stateful(("thread_1",), None, "thread_1")),
    # A listing is balanced like a stateless call.
    ("GET", "/responses", None),
    ("GET", "/files", None),
    ("GET", "/batches", None),
    ("GET", "/vector_stores", None),
    ("GET", "/fine_tuning/jobs", None),
    ("GET", "/assistants", None),
]


@pytest.mark.parametrize(("method", "path", "expected"), ROUTE_TABLE)
def test_each_route_names_its_objects_and_says_what_an_answer_creates_or_deletes(
    method: str, path: str, expected: Stateful | None
) -> None:
    assert affinity_of(method, V1 + path) == expected, f"{method} {path}"
    assert affinity_of(method, "/openai" + path) == expected, f"{method} {path} on the Azure path"


def test_the_route_table_covers_every_route() -> None:
    covered = {found[0].collection for _, path, _ in ROUTE_TABLE if (found := route_of((V1 + path).encode()))}
    assert covered == {route.collection for route in ROUTES}, "every route in ROUTES has a row above"


def test_percent_encoded_ids_are_decoded() -> None:
    assert affinity_of("GET", f"{V1}/files/file%2Dabc") == Stateful(("file-abc",), None, None)
    assert affinity_of("GET", f"{V1}/files/caf%C3%A9") == Stateful(("café",), None, None)


@pytest.mark.parametrize("segment", ["a%2Fb", "%20file-1", "file-1%20", "file%0A1", "%00", "x" * 513], ids=repr)
def test_a_segment_that_cannot_be_an_id_names_nothing(segment: str) -> None:
    assert affinity_of("GET", f"{V1}/files/{segment}") is None


def test_a_trailing_slash_names_nothing_more() -> None:
    assert affinity_of("DELETE", f"{V1}/files/file-1/") == Stateful(("file-1",), None, "file-1"), "the DELETE forgets"
    assert affinity_of("POST", f"{V1}/files/") == Stateful((), CREATES, None), "still a create on the collection"
    assert affinity_of("GET", f"{V1}/files/") is None, "still a listing"


def test_ids_the_body_names_follow_the_paths_own_each_once() -> None:
    body = {"assistant_id": "asst_1", "file_ids": ["thread_1", "file-1"]}
    assert affinity_of("POST", f"{V1}/threads/thread_1/runs", body) == Stateful(
        ("thread_1", "asst_1", "file-1"), ("thread_id",), None
    )
    assert affinity_of("GET", f"{V1}/files", {"file_id": "file-1"}) == Stateful(("file-1",), None, None), (
        "a listing naming an object in its body goes where that object is"
    )


# -- body_references: the ids a JSON body names


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"previous_response_id": "resp_1"}, ("resp_1",)),
        ({"conversation": "conv_1"}, ("conv_1",)),
        ({"conversation": {"id": "conv_1"}}, ("conv_1",)),
        ({"input_file_id": "file-1"}, ("file-1",)),
        ({"file_id": "file-1"}, ("file-1",)),
        ({"file_ids": ["file-1", "file-2"]}, ("file-1", "file-2")),
        ({"vector_store_ids": ["vs_1"]}, ("vs_1",)),
        ({"training_file": "file-t", "validation_file": "file-v"}, ("file-t", "file-v")),
        ({"assistant_id": "asst_1"}, ("asst_1",)),
        ({"tools": [{"type": "code_interpreter", "container": "cntr_1"}]}, ("cntr_1",)),
        (
            {
                "tool_resources": {
                    "code_interpreter": {"file_ids": ["file-1"]},
                    "file_search": {"vector_store_ids": ["vs_1"]},
                }
            },
            ("file-1", "vs_1"),
        ),
        (
            {
                "input": [
                    {
                        "role": "user",
                        "content": [{"type": "input_text", "text": "hi"}, {"type": "input_file", "file_id": "file-1"}],
                    }
                ]
            },
            ("file-1",),
        ),
        ({"role": "user", "attachments": [{"file_id": "file-1", "tools": [{"type": "file_search"}]}]}, ("file-1",)),
    ],
)
def test_every_reference_key_is_read_at_any_depth(body: dict[str, Any], expected: tuple[str, ...]) -> None:
    assert body_references(body) == expected
    assert names_objects(json.dumps(body).encode()), "the quick check lets this body through to be read"


@pytest.mark.parametrize(
    "body",
    [
        {"metadata": {"file_id": "file-x", "previous_response_id": "resp_x"}},
        {"text": {"format": {"type": "json_schema", "schema": {"file_id": "file-x"}}}},
        {"tools": [{"type": "function", "parameters": {"previous_response_id": "resp_x"}}]},
        {"schema": {"properties": {"conversation": "conv_x"}}},
        {"previous_response_id": None, "file_id": 7, "conversation": {"id": None}, "container": {"type": "auto"}},
        {"file_ids": "file-1", "vector_store_ids": [1, None, {"id": "vs_1"}]},
        {"previous_response_id": "", "file_id": "a/b", "assistant_id": " asst_1", "training_file": "x" * 513},
        {"model": "gpt-4o", "input": "previous_response_id file_id"},
        ["file_id", {"unrelated": "resp_1"}],
        "previous_response_id",
        None,
    ],
    ids=repr,
)
def test_the_callers_own_structures_and_values_that_are_not_ids_name_nothing(body: object) -> None:
    assert body_references(body) == ()


def test_references_come_once_each_in_the_order_met_top_level_first() -> None:
    body = {
        "previous_response_id": "resp_1",
        "input": [{"content": [{"file_id": "file-2"}, {"file_id": "file-1"}]}],
        "tools": [{"vector_store_ids": ["vs_1", "resp_1"]}, {"file_ids": ["file-2", "file-3"]}],
        "file_id": "file-1",
    }
    assert body_references(body) == ("resp_1", "file-1", "file-2", "vs_1", "file-3")


def test_a_body_without_reference_keys_is_not_read_at_all() -> None:
    assert not names_objects(b'{"model": "gpt-4o", "input": "hello", "metadata": {"file": "x"}}')
    assert names_objects(b'{"tools": [{"file_ids": []}]}')


# -- created_id: the id of the object a 2xx answer created


@pytest.mark.parametrize(
    ("learns", "body", "expected"),
    [
        (CREATES, b'{"id": "resp_1", "object": "response"}', "resp_1"),
        (CREATES, b' \n{\n  "id" : "resp_1",\n  "object": "response"\n}', "resp_1"),
        (CREATES, b'{"object": "file", "id": "file-1"}', "file-1"),
        (CREATES, b'{"id": "a\\"b", "object": "x"}', 'a"b'),
        (CREATES, b'{"id": "caf\\u00e9"}', "caf\u00e9"),
        (CREATES, '{"id": "café"}'.encode(), "café"),
        (CREATES, b'{"id": 5}', None),
        (CREATES, b'{"id": null}', None),
        (CREATES, b'{"id": ""}', None),
        (CREATES, b'{"id": "a/b"}', None),
        (CREATES, b'{"id": "a\\nb"}', None),
        (CREATES, b'{"id": "' + b"x" * 513 + b'"}', None),
        (CREATES, b'{"id": "' + b"x" * 512 + b'"}', "x" * 512),
        (CREATES, b'{"object": "list"}', None),
        (CREATES, b'[{"id": "resp_1"}]', None),
        (CREATES, b"<html>busy</html>", None),
        (CREATES, b"", None),
        (CREATES, None, None),
        (("file", "id"), b'{"id": "upload_1", "object": "upload", "file": {"id": "file-1"}}', "file-1"),
        (("file", "id"), b'{"id": "upload_1", "file": null}', None),
        (("thread_id",), b'{"id": "run_1", "object": "thread.run", "thread_id": "thread_1"}', "thread_1"),
        (("thread_id",), b'{"id": "run_1"}', None),
    ],
)
def test_the_created_id_is_read_where_the_route_says(
    learns: tuple[str, ...], body: bytes | None, expected: str | None
) -> None:
    assert created_id(learns, body) == expected


def test_a_large_answer_is_not_parsed_to_learn_its_leading_id() -> None:
    # Not JSON past its id: only a reading of the leading id learns it.
    body = b'{"id": "resp_1", "output": [' + b"1," * 100_000
    assert created_id(CREATES, body) == "resp_1"


# Text an answer can carry: UTF-8 has no form for a lone surrogate.
def texts(max_size: int) -> st.SearchStrategy[str]:
    return st.text(st.characters(exclude_categories=("Cs",)), max_size=max_size)


json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | texts(8)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts(4), inner, max_size=3),
    max_leaves=6,
)
id_values = (
    st.from_regex(r"[A-Za-z0-9_\-]{1,40}", fullmatch=True)
    | texts(20)
    | st.text(alphabet='"\\/ \t\n\x7f\u00e9\u2028x', max_size=6)
    | st.integers(min_value=500, max_value=600).map(lambda n: "x" * n)
    | st.integers(min_value=170, max_value=260).map(lambda n: "\u00e9" * n)
    | json_values
)
dump_styles = st.fixed_dictionaries(
    {
        "ensure_ascii": st.booleans(),
        "indent": st.sampled_from([None, 0, 2, "\t"]),
        "separators": st.sampled_from([None, (",", ":"), (" , ", " : ")]),
    }
)


@SLOW_START
@given(
    first=st.one_of(st.none(), id_values),
    rest=st.dictionaries(texts(4).filter(lambda key: key != "id"), json_values, max_size=3),
    id_last=st.booleans(),
    style=dump_styles,
    lead=st.text(alphabet=" \t\r\n", max_size=3),
)
@example(first="resp_1", rest={}, id_last=False, style={}, lead="")
@example(first="x" * 512, rest={}, id_last=False, style={}, lead="")
@example(first="\u00e9" * 300, rest={}, id_last=False, style={"ensure_ascii": False}, lead="")
def test_reading_the_leading_id_agrees_with_parsing_the_whole_answer(
    first: object, rest: dict[str, object], id_last: bool, style: dict[str, Any], lead: str
) -> None:
    answer = dict(rest) if first is None else {**rest, "id": first} if id_last else {"id": first, **rest}
    body = (lead + json.dumps(answer, **style)).encode()
    parsed = created_id(("wrapped", "id"), b'{"wrapped": ' + body + b"}")  # this path always parses
    assert created_id(CREATES, body) == parsed, f"{body!r}: the leading id disagrees with the parsed one"


# -- not_here: an answer saying the object is not on this backend


def error(code: object = None, message: object = None) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (404, None, True),
        (404, b"", True),
        (404, error("not_found", "No response found with id 'resp_1'."), True),
        (400, error("previous_response_not_found", "Previous response 'resp_1' was not found."), True),
        (400, error("previous_response_not_found"), True),
        (400, error("conversation_not_found"), True),
        (400, error("file_not_found"), True),
        (400, error("invalid_request_error", "File with id 'file-1' not found."), True),
        (400, error(None, "No such vector store: 'vs_1'"), True),
        (400, error(None, "The assistant asst_1 does not exist."), True),
        (400, error(["file_not_found"], "Bad request"), False),
        (400, error({"code": "file_not_found"}, "Bad request"), False),
        (400, error(7, None), False),
        (400, error("invalid_request_error", "Invalid value for 'temperature'."), False),
        (400, error("context_length_exceeded", "This model's maximum context length is 128000 tokens."), False),
        (400, error(None, "notfound, nonexistent, foundation"), False),
        (400, json.dumps({"error": "file_not_found"}).encode(), False),
        (400, b'{"code": "file_not_found"}', False),
        (400, b"[]", False),
        (400, b"not json", False),
        (400, b"", False),
        (400, None, False),
        (500, error("file_not_found", "not found"), False),
        (200, error("file_not_found", "not found"), False),
    ],
)
def test_not_here_reads_404s_and_400s_that_name_a_missing_object(
    status: int, body: bytes | None, expected: bool
) -> None:
    assert not_here(status, body) is expected, f"{status} {body!r}"


# -- FirstId: the created id from the first events of a stream

RESPONSE_EVENTS = [
    b'event: response.created\ndata: {"type": "response.created", "sequence_number": 0, '
    b'"response": {"id": "resp_1", "object": "response", "status": "in_progress"}}\n\n',
    b'event: response.in_progress\ndata: {"type": "response.in_progress", "response": {"id": "resp_1"}}\n\n',
    b'event: response.output_text.delta\ndata: {"type": "response.output_text.delta", "delta": "Hi"}\n\n',
]
RESPONSE_STREAM = b"".join(RESPONSE_EVENTS)


def found_in(stream_chunks: list[bytes], learns: tuple[str, ...] = CREATES) -> list[str]:
    """Every id a fresh FirstId gives while fed ``stream_chunks`` in order."""
    finder = FirstId(learns)
    return [found for chunk in stream_chunks if (found := finder.feed(chunk)) is not None]


def test_a_responses_stream_names_its_response_in_response_created() -> None:
    finder = FirstId(CREATES)
    assert finder.feed(RESPONSE_STREAM) == "resp_1"
    assert finder.done, "once found, nothing more is read"
    assert finder.feed(RESPONSE_EVENTS[0]) is None, "found once only"


@pytest.mark.parametrize("newline", [b"\n", b"\r\n"], ids=["LF", "CRLF"])
def test_the_id_is_found_wherever_the_stream_is_cut(newline: bytes) -> None:
    stream = RESPONSE_STREAM.replace(b"\n", newline)
    for cut in range(len(stream) + 1):
        assert found_in([stream[:cut], stream[cut:]]) == ["resp_1"], f"cut at byte {cut} of {stream!r}"


@given(cuts=st.lists(st.integers(min_value=0, max_value=len(RESPONSE_STREAM)), max_size=12))
def test_the_id_is_found_in_a_stream_cut_into_any_pieces(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(RESPONSE_STREAM)]
    pieces = [RESPONSE_STREAM[start:end] for start, end in pairwise(bounds)]
    assert found_in(pieces) == ["resp_1"], f"pieces {pieces!r}"


def test_an_assistants_stream_names_the_thread_its_run_was_created_on() -> None:
    stream = [
        b'event: thread.created\ndata: {"id": "thread_1", "object": "thread"}\n\n',
        b'event: thread.run.created\ndata: {"id": "run_1", "object": "thread.run", "thread_id": "thread_1"}\n\n',
    ]
    assert found_in(stream, ("thread_id",)) == ["thread_1"]


def test_data_split_over_several_lines_is_joined_as_one_document() -> None:
    assert found_in([b'data:{"response":\ndata: {"id": "resp_1"}}\n\n']) == ["resp_1"]


def test_events_that_are_not_json_or_name_no_id_are_passed_over() -> None:
    stream = [b": keep-alive\n\n", b"data: [DONE]\n\n", b"event: ping\n\n", b'data: {"id": ""}\n\n', RESPONSE_EVENTS[0]]
    assert found_in(stream) == ["resp_1"]


def test_the_search_gives_up_after_eight_events() -> None:
    quiet = b'data: {"type": "ping"}\n\n'
    assert found_in([quiet * 7, RESPONSE_EVENTS[0]]) == ["resp_1"], "the eighth event is still read"
    finder = FirstId(CREATES)
    assert finder.feed(quiet * 8) is None
    assert finder.done, "eight events without an id: the stream costs nothing more"
    assert finder.feed(RESPONSE_EVENTS[0]) is None


def test_the_search_gives_up_on_an_event_longer_than_64_kib() -> None:
    padding = b" " * 70_000
    finder = FirstId(CREATES)
    assert finder.feed(b'data: {"response": {"id": "resp_1"},' + padding) is None
    assert finder.done, "nothing is held beyond 64 KiB"
    assert finder.feed(b'"end": 1}\n\n') is None
    short = b" " * 60_000
    assert found_in([b'data: {"response": {"id": "resp_1"},' + short, b'"end": 1}\n\n']) == ["resp_1"]


def test_deeply_nested_json_is_read_without_raising() -> None:
    deep = b"[" * DEEP
    assert created_id(CREATES, deep) is None
    assert created_id(("file", "id"), b'{"file": ' + deep) is None
    assert not_here(400, b'{"error": ' + deep) is False
    assert found_in([b"data: " + deep + b"\n\n", RESPONSE_EVENTS[0]]) == ["resp_1"], "the next event still counts"
    assert body_references({"previous_response_id": "resp_1", "input": nested(DEEP, "file-x")}) == ("resp_1",)
    assert body_references(nested(DEEP, {"file_id": "file-x"})) == ()


@pytest.mark.parametrize(
    "path",
    [b"/openai/v1/responses", b"/openai/deployments/gpt-4o/responses", b"/openai/v1/threads/thread_1/runs"],
)
def test_a_deeply_nested_request_body_never_raises(path: bytes) -> None:
    for body in (
        b'{"model": "gpt-4o", "previous_response_id": "resp_1", "input": ' + b"[" * DEEP + b"]" * DEEP + b"}",
        b'{"model": "gpt-4o", "previous_response_id": "resp_1", "pad": "'
        + b" " * (1 << 20)
        + b'", "input": '
        + b"[" * DEEP
        + b"]" * DEEP
        + b"}",
    ):
        template = RequestTemplate(path, JSON_HEADERS, body, method="POST", affinity=True)
        assert template.stateful is not None, "still a request on a stateful route"


# -- the request template reads a request's affinity once


def template(path: bytes, body: bytes = b"", *, method: str = "POST", **kwargs: Any) -> RequestTemplate:
    return RequestTemplate(path, JSON_HEADERS if body else [], body, method=method, **kwargs)


def test_the_template_reads_the_path_and_body_only_when_affinity_is_on() -> None:
    body = b'{"model": "gpt-4o", "previous_response_id": "resp_1", "input": "hi"}'
    on = template(b"/openai/v1/responses?api-version=preview", body, affinity=True)
    assert on.stateful == Stateful(("resp_1",), CREATES, None)
    assert on.deployment == "gpt-4o", "the model is read from the same parse"
    assert template(b"/openai/v1/responses", body).stateful is None, "affinity off: nothing is read"


def test_the_template_reads_the_method_and_a_client_endpoints_prefix() -> None:
    deleting = template(b"/team/openai/v1/files/file-1?api-version=preview", method="DELETE", affinity=True)
    assert deleting.stateful == Stateful(("file-1",), None, "file-1")
    listing = template(b"/openai/v1/files", method="GET", affinity=True)
    assert listing.stateful is None


def test_a_body_that_is_not_json_names_nothing() -> None:
    body = b'{"previous_response_id": "resp_1"}'
    form = RequestTemplate(
        b"/openai/v1/responses",
        lowered([(b"content-type", b"multipart/form-data; boundary=x"), (b"content-length", b"1")]),
        body,
        affinity=True,
    )
    assert form.stateful == Stateful((), CREATES, None)


def test_a_template_on_a_stateless_path_has_no_affinity() -> None:
    chat = template(b"/openai/deployments/gpt-4o/chat/completions", b'{"file_id": "file-1"}', affinity=True)
    assert chat.stateful is None


REFERENCE_KEYS = [
    "previous_response_id",
    "conversation",
    "input_file_id",
    "file_id",
    "file_ids",
    "vector_store_ids",
    "training_file",
    "validation_file",
    "assistant_id",
    "container",
    "metadata",
    "schema",
    "id",
]
bodies = st.recursive(
    st.one_of(json_scalars, st.from_regex(r"[a-z]{2,5}_[0-9]{1,3}", fullmatch=True)),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(REFERENCE_KEYS) | texts(3), inner, max_size=4)
    ),
    max_leaves=12,
)


@SLOW_START
@given(body=bodies)
def test_a_body_naming_objects_always_passes_the_quick_check_and_names_only_its_own_strings(body: object) -> None:
    found = body_references(body)
    text = json.dumps(body)
    if found:
        assert names_objects(text.encode()), f"{text} names {found} but the quick check would skip it"
    assert len(set(found)) == len(found), f"{found} repeats an id"
    for object_id in found:
        assert json.dumps(object_id) in text, f"{object_id!r} is not a string of {text}"


# -- none of it raises, whatever comes in

METHODS = st.sampled_from(["GET", "POST", "DELETE", "PATCH", ""])
segments = st.one_of(
    st.sampled_from(
        ["responses", "files", "uploads", "threads", "runs", "complete", "fine_tuning", "jobs", "input_tokens", ""]
    ),
    st.sampled_from(["v1", "deployments", "openai", "%2F", "%", "%C3", "%00", ".."]),
    st.text(max_size=8),
)
paths = st.builds(
    lambda parts, lead: (lead + "/".join(parts)).encode("utf-8", "surrogatepass"),
    st.lists(segments, max_size=6),
    st.sampled_from(["/openai/", "/openai/v1/", "/openai/deployments/", "/", ""]),
)


@SLOW_START
@given(path=st.one_of(paths, st.binary(max_size=64)), method=METHODS, body=json_values)
def test_any_path_gives_a_route_or_none_and_only_well_formed_ids(path: bytes, method: str, body: object) -> None:
    found = route_of(path)
    if found is None:
        return
    meaning = stateful(method, *found, body_references(body))
    for object_id in meaning.ids if meaning is not None else ():
        assert object_id.isprintable(), f"{path!r} gave {object_id!r}"
        assert "/" not in object_id, f"{path!r} gave {object_id!r}"
        assert 0 < len(object_id) <= 512, f"{path!r} gave {object_id!r}"
        assert object_id == object_id.strip(), f"{path!r} gave {object_id!r}"
    assert meaning is None or len(set(meaning.ids)) == len(meaning.ids), "each id once"


@SLOW_START
@given(
    body=st.one_of(st.binary(max_size=200), json_values.map(lambda v: json.dumps(v).encode())),
    learns=st.sampled_from([CREATES, ("file", "id"), ("thread_id",)]),
    status=st.sampled_from([200, 400, 404, 429, 500]),
)
def test_no_answer_body_makes_the_readers_raise(body: bytes, learns: tuple[str, ...], status: int) -> None:
    found = created_id(learns, body)
    assert found is None or (found.isprintable() and "/" not in found), f"{body!r} gave {found!r}"
    assert isinstance(not_here(status, body), bool)
    assert isinstance(names_objects(body), bool)


@SLOW_START
@given(chunks=st.lists(st.binary(max_size=80), max_size=12), learns=st.sampled_from([CREATES, ("thread_id",)]))
def test_no_stream_makes_first_id_raise(chunks: list[bytes], learns: tuple[str, ...]) -> None:
    finder = FirstId(learns)
    for chunk in chunks:
        found = finder.feed(chunk)
        assert found is None or found.isprintable(), f"{chunks!r} gave {found!r}"


@SLOW_START
@given(path=paths, body=st.binary(max_size=200), method=METHODS, json_body=st.booleans())
def test_no_request_makes_the_template_raise(path: bytes, body: bytes, method: str, json_body: bool) -> None:
    headers = JSON_HEADERS if json_body else lowered([(b"content-length", b"1")])
    RequestTemplate(path, headers, body, method=method, affinity=True)
