"""Tests of the fake server's pure rules and routes: no sockets, no threads, no clock."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openai_lb._headers import parse_reset
from openai_lb.testing import CutStream, ObjectIds, Reply, ResetConnection, Stall
from openai_lb.testing import _objects as objects_module
from openai_lb.testing._meters import Window, spend
from openai_lb.testing._routes import Exchange, Incoming, inner_path, normalize_prefix, parse
from openai_lb.testing._rules import (
    Config,
    Cut,
    Decision,
    EventStream,
    JsonBody,
    RawBody,
    Reset,
    Response,
    State,
    Wait,
    decide,
    scripted,
)

CHAT = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
HI = [{"role": "user", "content": "hi"}]
CONFIG = Config(name="ptu", deployments=frozenset({"gpt-4o"}), api_keys=frozenset({"k1"}), path_prefix="/gw")


def exchange(
    target: str = "/gw" + CHAT,
    *,
    body: object = None,
    key: str | None = "k1",
    method: str = "POST",
    prefix: str = "/gw",
) -> Exchange:
    headers = (("Content-Type", "application/json"),) + ((("Api-Key", key),) if key is not None else ())
    raw = b"" if body is None else json.dumps(body).encode()
    return parse(Incoming(method, target, headers, raw), prefix)


def error_of(decision: Decision) -> tuple[int, str]:
    body = decision.response.body
    assert isinstance(body, JsonBody), f"expected a JSON error, got {decision.response}"
    assert isinstance(body.value, dict)
    return decision.response.status, body.value["error"]["code"]


def chat_body(deployment: str = "gpt-4o") -> dict[str, object]:
    return {"model": deployment, "messages": HI}


# -- Azure's order of checks ----------------------------------------------------------------


def test_a_path_outside_the_prefix_is_404_before_any_other_check() -> None:
    # Bad key, unknown route and no body: the prefix is still what answers.
    decision = decide(exchange("/other/nowhere", key="bad"), CONFIG, State(), now=0.0)

    assert error_of(decision) == (404, "404")


def test_a_bad_key_is_401_whatever_the_route_deployment_or_body() -> None:
    for target in ("/gw/nowhere", "/gw/openai/deployments/missing/chat/completions", "/gw" + CHAT):
        decision = decide(exchange(target, body={}, key="bad"), CONFIG, State(), now=0.0)
        assert error_of(decision) == (401, "401"), f"{target} with a bad key"


def test_an_unknown_route_with_a_good_key_is_resource_not_found() -> None:
    for method, target in (("POST", "/gw/openai/deployments/gpt-4o/completions"), ("GET", "/gw" + CHAT)):
        decision = decide(exchange(target, method=method, body=chat_body()), CONFIG, State(), now=0.0)
        assert error_of(decision) == (404, "404"), f"{method} {target}"


def test_a_missing_deployment_is_deployment_not_found_before_the_body_is_validated() -> None:
    decision = decide(exchange("/gw/openai/deployments/missing/chat/completions", body={}), CONFIG, State(), now=0.0)

    assert error_of(decision) == (404, "DeploymentNotFound")


def test_a_body_that_is_not_a_json_object_is_400_before_the_deployment() -> None:
    decision = decide(exchange("/gw/openai/deployments/missing/chat/completions", body=[1]), CONFIG, State(), now=0.0)

    assert error_of(decision) == (400, "BadRequest")


def test_a_v1_request_without_model_is_400() -> None:
    decision = decide(exchange("/gw/openai/v1/chat/completions", body={"messages": HI}), CONFIG, State(), now=0.0)

    assert error_of(decision) == (400, "BadRequest")


def test_a_hosted_deployment_with_a_body_without_messages_is_400_and_spends_no_budget() -> None:
    config = Config(deployments=frozenset({"gpt-4o"}), budget=1)

    decision = decide(exchange(CHAT, body={}, prefix=""), config, State(), now=5.0)

    assert error_of(decision) == (400, "BadRequest")
    body = decision.response.body
    assert isinstance(body, JsonBody)
    assert isinstance(body.value, dict)
    assert "'messages'" in body.value["error"]["message"], "the message names the missing field"
    assert decision.state == State(), "a refused body must not open or use a budget window"


def test_an_exhausted_budget_is_429_with_retry_after_until_the_window_ends() -> None:
    config = Config(budget=1, window=10.0)
    request = exchange(CHAT, body=chat_body(), prefix="")

    first = decide(request, config, State(), now=100.0)
    second = decide(request, config, first.state, now=103.0)

    assert first.response.status == 200
    assert first.response.headers == {"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "10.0"}
    assert not first.over_budget
    assert error_of(second) == (429, "429")
    assert second.over_budget, "the fake counts budget 429s as rejected"
    assert second.response.headers["retry-after"] == "7", "the window opened at t=100 ends at t=110"
    assert second.response.headers["retry-after-ms"] == "7000"
    assert second.state == first.state, "a rejected request uses nothing"


def test_budget_answers_say_when_the_window_refills_so_a_reading_of_0_ends_with_it() -> None:
    config = Config(budget=2, window=1.5)
    request = exchange(CHAT, body=chat_body(), prefix="")

    first = decide(request, config, State(), now=100.0)
    last = decide(request, config, first.state, now=100.4)
    refused = decide(request, config, last.state, now=100.9)
    refilled = decide(request, config, refused.state, now=101.5)

    def reading(decision: Decision) -> tuple[str, float | None]:
        headers = decision.response.headers
        return headers["x-ratelimit-remaining-requests"], parse_reset(headers["x-ratelimit-reset-requests"])

    assert reading(first) == ("1", 1.5), "the window opened by this request ends 1.5 s later"
    assert reading(last) == ("0", 1.1), "the last request of the window learns it refills 1.1 s later"
    assert refused.response.status == 429
    assert reading(refused) == ("0", 0.6), "a refused request hears the same end of the window"
    assert reading(refilled) == ("1", 1.5), "a new window: its first request is let in"


def test_a_normal_answer_names_server_and_deployment() -> None:
    decision = decide(exchange(body=chat_body()), CONFIG, State(), now=0.0)

    body = decision.response.body
    assert decision.response.status == 200
    assert isinstance(body, JsonBody)
    assert isinstance(body.value, dict)
    assert body.value["choices"][0]["message"]["content"] == "ptu:gpt-4o"
    assert decision.response.headers == {}, "no budget, no ratelimit headers"


def test_a_streamed_answer_carries_the_configured_pacing() -> None:
    config = Config(stream_chunks=2, chunk_delay=0.5)

    decision = decide(exchange(CHAT, body={**chat_body(), "stream": True}, prefix=""), config, State(), now=0.0)

    body = decision.response.body
    assert isinstance(body, EventStream)
    assert body.delay == 0.5
    assert body.events[-1] == b"data: [DONE]\n\n"


# -- scripted actions ------------------------------------------------------------------------


def test_scripted_actions_skip_every_check() -> None:
    refused = exchange("/gw/openai/deployments/missing/chat/completions", key="bad", body={})

    reply = scripted(Reply(200), refused, CONFIG)
    cut = scripted(CutStream(after=0, framing="close"), refused, CONFIG)

    assert reply == Response(200, JsonBody({})), "a 2xx reply the endpoint cannot answer gets {}"
    assert isinstance(cut, Cut)
    assert (cut.after, cut.framing) == (0, "close")
    assert scripted(ResetConnection(), refused, CONFIG) == Reset()
    assert scripted(Stall(2.0), refused, CONFIG) == Wait(2.0, refused)


def test_a_scripted_error_without_json_gets_azures_error_body() -> None:
    response = scripted(Reply(429, headers={"retry-after": "3"}), exchange(body=chat_body()), CONFIG)

    assert isinstance(response, Response)
    assert isinstance(response.body, JsonBody)
    assert isinstance(response.body.value, dict)
    assert "retry after 3 seconds" in response.body.value["error"]["message"]
    assert response.headers == {"retry-after": "3"}


# -- budget windows and routes ---------------------------------------------------------------


@given(
    budget=st.integers(min_value=0, max_value=5),
    length=st.floats(min_value=0.5, max_value=100.0),
    steps=st.lists(st.floats(min_value=0.0, max_value=50.0), max_size=30),
)
def test_budget_windows_never_let_more_than_the_budget_through(budget: int, length: float, steps: list[float]) -> None:
    window, now = Window(), 1000.0
    accepted: dict[float, int] = {}
    for step in steps:
        now += step
        window, wait = spend(window, budget, length, now)
        assert window.start is not None
        assert window.start <= now < window.start + length, f"{now} is outside the window from {window.start}"
        if wait is None:
            accepted[window.start] = accepted.get(window.start, 0) + 1
        else:
            assert 0 < wait <= length, f"a wait of {wait} in a window of {length}"
            assert window.used == budget
    assert all(count <= budget for count in accepted.values()), accepted


@given(st.text(alphabet="/ab", max_size=8), st.text(alphabet="/ab", max_size=8))
def test_inner_path_strips_the_prefix_only_at_a_slash(prefix: str, path: str) -> None:
    prefix = normalize_prefix(prefix)
    inner = inner_path(prefix, path)

    if inner is None:
        assert prefix
        assert path != prefix
        assert not path.startswith(prefix + "/")
    else:
        assert prefix + inner == path


def test_parse_records_the_deployment_and_joins_repeated_headers() -> None:
    incoming = Incoming(
        "POST",
        "/gw/openai/v1/responses?api-version=preview",
        (("X-Tag", "a"), ("x-tag", "b")),
        json.dumps({"model": "gpt-4o", "input": "hi"}).encode(),
    )

    parsed = parse(incoming, "/gw")

    assert parsed.request.path == "/gw/openai/v1/responses", "the recorded path keeps the prefix"
    assert parsed.request.query == {"api-version": "preview"}
    assert parsed.request.headers == {"x-tag": "a, b"}
    assert parsed.request.deployment == "gpt-4o", "the v1 routes take the deployment from the model field"
    assert parsed.route is not None
    assert parsed.route.kind == "responses"
    assert parsed.operation == "Responses_Create"


# -- stored objects --------------------------------------------------------------------------

RESPONSES = "/openai/responses?api-version=2025-04-01-preview"
V1 = "/openai/v1"
PLAIN = Config()


def objects_call(method: str, target: str, state: State, body: object = None, *, config: Config = PLAIN) -> Decision:
    return decide(exchange(target, method=method, body=body, prefix=""), config, state, now=0.0)


def json_of(decision: Decision) -> dict[str, Any]:
    body = decision.response.body
    assert isinstance(body, JsonBody), f"expected JSON, got {decision.response}"
    assert isinstance(body.value, dict)
    return body.value


def turn(state: State, previous: str | None = None, *, target: str = RESPONSES) -> Decision:
    body: dict[str, object] = {"model": "gpt-4o", "input": "hi"}
    if previous is not None:
        body["previous_response_id"] = previous
    return objects_call("POST", target, state, body)


def upload(state: State, data: bytes = b'{"custom_id": "1"}\n', purpose: str = "batch") -> Decision:
    multipart = (
        b'--B\r\nContent-Disposition: form-data; name="purpose"\r\n\r\n' + purpose.encode() + b"\r\n"
        b'--B\r\nContent-Disposition: form-data; name="file"; filename="in.jsonl"\r\n\r\n' + data + b"\r\n--B--\r\n"
    )
    incoming = Incoming("POST", "/openai/files", (("content-type", "multipart/form-data; boundary=B"),), multipart)
    return decide(parse(incoming, ""), Config(), state, now=0.0)


def object_error_of(decision: Decision) -> tuple[int, str | None, str]:
    error = json_of(decision)["error"]
    assert error["type"] == "invalid_request_error", f"the object APIs' error shape: {error}"
    return decision.response.status, error["code"], error["message"]


def test_a_response_is_stored_under_a_fresh_id_and_a_chain_counts_its_turns() -> None:
    first = turn(State())
    second = turn(first.state, json_of(first)["id"])
    third = turn(second.state, json_of(second)["id"], target=V1 + "/responses")

    answers = [json_of(decision) for decision in (first, second, third)]
    ids = [answer["id"] for answer in answers]
    assert all(response_id.startswith("resp_") for response_id in ids), ids
    assert len(set(ids)) == 3, f"each response gets a fresh id: {ids}"
    assert [answer["previous_response_id"] for answer in answers] == [None, ids[0], ids[1]]
    assert [answer["metadata"]["turn"] for answer in answers] == ["1", "2", "3"]
    assert answers[2]["output"][0]["content"][0]["text"] == "fake:gpt-4o", "the text still names server and deployment"
    assert third.state.objects.ids().responses == frozenset(ids)


def test_a_previous_response_the_server_does_not_hold_is_400_and_stores_nothing() -> None:
    held = turn(State()).state

    refused = turn(held, "resp_elsewhere")

    status, code, message = object_error_of(refused)
    assert (status, code) == (400, "previous_response_not_found")
    assert message == "Previous response with id 'resp_elsewhere' not found."
    assert json_of(refused)["error"]["param"] == "previous_response_id"
    assert refused.state == held, "a refused turn must not be stored"


def test_the_callers_metadata_is_kept_next_to_the_turn() -> None:
    decision = objects_call("POST", RESPONSES, State(), {"model": "m", "input": "hi", "metadata": {"user": "ann"}})

    assert json_of(decision)["metadata"] == {"user": "ann", "turn": "1"}


def test_a_stored_response_is_retrieved_listed_and_deleted_then_unknown() -> None:
    created = turn(State())
    response_id = json_of(created)["id"]

    retrieved = objects_call("GET", f"/openai/responses/{response_id}?api-version=preview", created.state)
    items = objects_call("GET", f"{V1}/responses/{response_id}/input_items", created.state)
    deleted = objects_call("DELETE", f"{V1}/responses/{response_id}", created.state)
    after = objects_call("GET", f"{V1}/responses/{response_id}", deleted.state)
    chained = turn(deleted.state, response_id)

    assert json_of(retrieved) == json_of(created), "retrieve answers the stored object"
    assert [item["content"] for item in json_of(items)["data"]] == [[{"type": "input_text", "text": "hi"}]]
    assert json_of(deleted) == {"id": response_id, "object": "response", "deleted": True}
    assert object_error_of(after)[:2] == (404, None)
    assert object_error_of(chained)[:2] == (400, "previous_response_not_found"), "a deleted response ends its chain"


def test_input_items_are_newest_first_unless_asked_otherwise() -> None:
    given = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}, {"role": "user", "content": "c"}]
    created = objects_call("POST", RESPONSES, State(), {"model": "m", "input": given})
    response_id = json_of(created)["id"]

    default = json_of(objects_call("GET", f"{V1}/responses/{response_id}/input_items", created.state))
    ascending = json_of(objects_call("GET", f"{V1}/responses/{response_id}/input_items?order=asc", created.state))

    def texts(page: dict[str, Any]) -> list[str]:
        return [item["content"][0]["text"] for item in page["data"]]

    assert texts(default) == ["c", "b", "a"]
    assert texts(ascending) == ["a", "b", "c"]
    assert ascending["first_id"] == ascending["data"][0]["id"]
    assert ascending["data"][1]["content"][0]["type"] == "output_text", "assistant items are output text"


def test_a_streamed_response_starts_with_created_carrying_the_id_it_is_stored_under() -> None:
    decision = objects_call("POST", RESPONSES, State(), {"model": "m", "input": "hi", "stream": True})

    body = decision.response.body
    assert isinstance(body, EventStream)
    events = [json.loads(event.split(b"data: ", 1)[1]) for event in body.events]
    assert [events[0]["type"], events[-1]["type"]] == ["response.created", "response.completed"]
    response_id = events[0]["response"]["id"]
    assert events[-1]["response"]["id"] == response_id
    assert "output_text.delta" in events[4]["type"]
    assert decision.state.objects.ids().responses == {response_id}


def test_files_keep_their_bytes_and_batches_need_a_held_input_file() -> None:
    uploaded = upload(State(), data=b"\x00line\r\n")
    file_id = json_of(uploaded)["id"]
    batch_body = {"input_file_id": file_id, "endpoint": "/chat/completions", "completion_window": "24h"}

    content = objects_call("GET", f"{V1}/files/{file_id}/content", uploaded.state)
    batch = objects_call("POST", V1 + "/batches", uploaded.state, batch_body)
    unknown_input = objects_call("POST", V1 + "/batches", uploaded.state, {**batch_body, "input_file_id": "file-x"})
    no_input = objects_call("POST", V1 + "/batches", uploaded.state, {"endpoint": "/chat/completions"})

    assert file_id.startswith("file-")
    assert content.response.body == RawBody(b"\x00line\r\n"), "the content is the uploaded bytes, exactly"
    assert json_of(batch)["status"] == "validating"
    assert json_of(batch)["input_file_id"] == file_id
    assert object_error_of(unknown_input) == (404, None, "No such File object: file-x")
    assert error_of(no_input) == (400, "BadRequest")
    assert unknown_input.state == uploaded.state, "a refused batch is not stored"


def test_a_cancelled_batch_answers_cancelling_then_stays_cancelled() -> None:
    uploaded = upload(State())
    batch = objects_call("POST", V1 + "/batches", uploaded.state, {"input_file_id": json_of(uploaded)["id"]})
    batch_id = json_of(batch)["id"]

    cancel = objects_call("POST", f"{V1}/batches/{batch_id}/cancel", batch.state)
    later = objects_call("GET", f"{V1}/batches/{batch_id}", cancel.state)
    again = objects_call("POST", f"{V1}/batches/{batch_id}/cancel", cancel.state)

    assert json_of(cancel)["status"] == "cancelling"
    assert json_of(later)["status"] == "cancelled"
    assert json_of(later)["cancelled_at"] is not None
    assert json_of(again)["status"] == "cancelled", "cancelling twice changes nothing"


def test_unknown_ids_are_404_in_the_object_error_shape() -> None:
    for method, target, unknown in (
        ("GET", "/openai/responses/resp_x?api-version=preview", "resp_x"),
        ("DELETE", V1 + "/responses/resp_x", "resp_x"),
        ("GET", V1 + "/responses/resp_x/input_items", "resp_x"),
        ("GET", V1 + "/files/file-x", "file-x"),
        ("GET", "/openai/files/file-x/content?api-version=preview", "file-x"),
        ("DELETE", V1 + "/files/file-x", "file-x"),
        ("GET", V1 + "/batches/batch_x", "batch_x"),
        ("POST", V1 + "/batches/batch_x/cancel", "batch_x"),
        ("GET", V1 + "/vector_stores/vs_x", "vs_x"),
        ("DELETE", "/openai/vector_stores/vs_x?api-version=preview", "vs_x"),
    ):
        status, _, message = object_error_of(objects_call(method, target, State()))
        assert status == 404, f"{method} {target}"
        assert unknown in message, f"{message!r} must name {unknown}"


def test_vector_stores_are_created_retrieved_and_deleted() -> None:
    created = objects_call("POST", V1 + "/vector_stores", State(), {"name": "docs"})
    store_id = json_of(created)["id"]

    retrieved = objects_call("GET", f"{V1}/vector_stores/{store_id}", created.state)
    deleted = objects_call("DELETE", f"{V1}/vector_stores/{store_id}", created.state)

    assert store_id.startswith("vs_")
    assert json_of(retrieved)["name"] == "docs"
    assert json_of(deleted) == {"id": store_id, "object": "vector_store.deleted", "deleted": True}
    assert deleted.state.objects.ids() == ObjectIds()


def test_a_request_over_budget_stores_nothing() -> None:
    config = Config(budget=1)
    first = objects_call("POST", RESPONSES, State(), {"model": "m", "input": "hi"}, config=config)

    over = objects_call("POST", RESPONSES, first.state, {"model": "m", "input": "hi"}, config=config)

    assert over.response.status == 429
    assert over.state.objects == first.state.objects


def test_scripted_answers_read_the_objects_but_store_nothing() -> None:
    created = turn(State())
    response_id = json_of(created)["id"]
    retrieve = exchange(f"/openai/v1/responses/{response_id}", method="GET", prefix="")

    reply = scripted(Reply(200), retrieve, Config(), created.state.objects)

    assert isinstance(reply, Response)
    assert reply.body == JsonBody(json_of(created)), "a scripted 200 answers the stored object"


def test_the_oldest_object_of_a_kind_is_forgotten_beyond_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(objects_module, "MAX_PER_KIND", 2)
    state, ids = State(), []
    for _ in range(3):
        decision = turn(state)
        state = decision.state
        ids.append(json_of(decision)["id"])

    assert state.objects.ids().responses == {ids[1], ids[2]}, "the first response was forgotten"


@given(st.lists(st.sampled_from(["create", "chain", "delete"]), max_size=12))
def test_held_responses_are_exactly_those_created_and_not_deleted(steps: list[str]) -> None:
    state, held, last = State(), set[str](), None
    for step in steps:
        if step == "delete" and last is not None:
            state = objects_call("DELETE", f"{V1}/responses/{last}", state).state
            held.discard(last)
            last = None
            continue
        decision = turn(state, last if step == "chain" else None)
        if step == "chain" and last is None:
            # No previous response to continue: the turn is an ordinary first turn.
            assert json_of(decision)["metadata"]["turn"] == "1"
        state, last = decision.state, json_of(decision)["id"]
        held.add(last)
    assert state.objects.ids().responses == held


def test_object_routes_are_parsed_on_azure_and_v1_paths() -> None:
    for target in ("/openai/files/file-a%2Fb/content?api-version=preview", "/openai/v1/files/file-a%2Fb/content"):
        route = parse(Incoming("GET", target, (), b""), "").route
        assert route is not None, target
        assert (route.kind, route.op, route.object_id) == ("files", "content", "file-a/b")
    assert parse(Incoming("PUT", "/openai/v1/files/file-a", (), b""), "").route is None, "no such method"
    assert parse(Incoming("GET", "/openai/v1/batches/b/input_items", (), b""), "").route is None, "no such sub-path"
