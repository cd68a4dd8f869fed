"""Stateful affinity in the decision core, with a fake clock: pinning, discovery, forgetting, context failover."""

from __future__ import annotations

import json

import pytest
from helpers import FakeClock, make_balancer, next_answer, next_attempt, respond
from hypothesis import given, settings
from hypothesis import strategies as st

from openai_lb import (
    AttemptFinished,
    AttemptStarted,
    Backend,
    BackendCooled,
    Event,
    InMemoryHealthStore,
    NoBackendCanServe,
    OwnerDiscovered,
    Policy,
)
from openai_lb._affinity import body_references, route_of, stateful
from openai_lb._core import Balancer, Call, SyntheticResponse

PTU = Backend("https://ptu.example.com", priority=1, name="ptu")
PAYGO_A = Backend("https://paygo-a.example.com", priority=2, name="paygo-a")
PAYGO_B = Backend("https://paygo-b.example.com", priority=2, name="paygo-b")
FAR = Backend("https://far.example.com", priority=3, name="far")
HOUR = 3600.0


def error(code: str | None, message: str = "") -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


NOT_FOUND = error("not_found", "No response found with id 'resp_1'.")
PREVIOUS_NOT_FOUND = error("previous_response_not_found", "Previous response with id 'resp_1' not found.")
TOO_LONG = error("context_length_exceeded", "This model's maximum context length is 8192 tokens.")
SSE = {"content-type": "text/event-stream"}


def begin(balancer: Balancer, method: str, path: str, body: object = None) -> Call:
    """A call for an SDK request on a stateful route, read as the request template reads it."""
    found = route_of(path.encode())
    assert found is not None, f"{path} is a stateful path"
    return balancer.begin("gpt-4o", stateful(method, *found, () if body is None else body_references(body)))


def held(balancer: Balancer, object_id: str, backend: Backend) -> None:
    """The store already knows ``backend`` holds ``object_id`` (for an hour)."""
    balancer.store.remember((object_id,), backend.key, balancer.clock() + HOUR, 1000)


def owner(balancer: Balancer, object_id: str) -> str | None:
    return balancer.store.owner(object_id, balancer.clock())


def follow_up(balancer: Balancer, object_id: str = "resp_1") -> Call:
    return begin(balancer, "GET", f"/openai/v1/responses/{object_id}")


def cooled(events: list[Event]) -> list[BackendCooled]:
    return [event for event in events if isinstance(event, BackendCooled)]


def finished(events: list[Event]) -> list[tuple[str, str, int | None, str | None]]:
    """Each attempt's end as (backend, outcome, status, affinity)."""
    return [(e.backend, e.outcome, e.status, e.affinity) for e in events if isinstance(e, AttemptFinished)]


# -- pinned: a known object's requests go to its backend only


def test_a_created_object_is_remembered_where_it_was_created_and_follow_ups_go_there(clock: FakeClock) -> None:
    events: list[Event] = []
    balancer = make_balancer([PTU, PAYGO_A], clock, on_event=events.append)
    create = begin(balancer, "POST", "/openai/v1/responses", {"model": "gpt-4o", "input": "hi"})
    assert respond(create, 429, headers={"retry-after-ms": "1000"})[1] is False
    step, delivered = respond(create, 200, b'{"id": "resp_1", "object": "response", "output": []}')
    assert (step.backend, delivered) == (PAYGO_A, True)
    assert owner(balancer, "resp_1") == PAYGO_A.key, "the id is remembered where the answer came from"
    clock.advance(2)  # the PTU is available (and preferred) again
    assert next_attempt(balancer.begin("gpt-4o")).backend is PTU, "stateless calls prefer the PTU again"
    for _ in range(10):
        assert next_attempt(follow_up(balancer)).backend is PAYGO_A, "a GET of the response goes where it lives"
        chained = begin(balancer, "POST", "/openai/v1/responses", {"previous_response_id": "resp_1", "input": "more"})
        assert next_attempt(chained).backend is PAYGO_A, "so does a response chained on it"
    started = [event.affinity for event in events if isinstance(event, AttemptStarted)]
    assert started[:3] == [None, None, None], "a create and a stateless call name no object"
    assert set(started[3:]) == {"pinned"}, f"every follow-up is pinned: {started}"


def test_the_holder_wins_over_any_priority_or_weight(clock: FakeClock) -> None:
    light = Backend("https://light.example.com", priority=5, weight=1, name="light")
    heavy = Backend("https://heavy.example.com", priority=5, weight=1000, name="heavy")
    balancer = make_balancer([PTU, heavy, light], clock)
    held(balancer, "file-1", light)
    for _ in range(50):
        assert next_attempt(begin(balancer, "GET", "/openai/v1/files/file-1/content")).backend is light


def test_status_counts_the_attempts_sent_for_the_objects_a_backend_holds(clock: FakeClock) -> None:
    balancer = make_balancer([PTU, PAYGO_A], clock)
    held(balancer, "resp_1", PAYGO_A)
    for _ in range(3):
        respond(follow_up(balancer), 200, b'{"id": "resp_1"}')
    respond(balancer.begin("gpt-4o"), 200)
    pinned = {status.name: (status.pinned, status.attempts) for status in balancer.status()}
    assert pinned == {"ptu": (0, 1), "paygo-a": (3, 3)}, "(pinned, attempts) per backend"


@pytest.mark.parametrize(
    ("status", "headers", "wait_ms"),
    [(429, {"retry-after-ms": "4000"}, 4000), (503, {}, 5000)],
    ids=["rate-limited", "circuit-open"],
)
def test_a_blocked_holder_answers_429_with_its_own_wait_and_nothing_else_is_tried(
    clock: FakeClock, status: int, headers: dict[str, str], wait_ms: int
) -> None:
    events: list[Event] = []
    balancer = make_balancer([PTU, PAYGO_A], clock, policy=Policy(breaker_base=5), on_event=events.append)
    held(balancer, "resp_1", PAYGO_A)
    call = follow_up(balancer)
    step, delivered = respond(call, status, headers=headers)
    assert (step.backend, delivered) == (PAYGO_A, False)
    answer = next_answer(call)
    assert answer.status == 429, "the one backend holding the object is busy: retry later"
    assert dict(answer.headers)["retry-after-ms"] == str(wait_ms)
    clock.advance(1.5)
    later = follow_up(balancer)
    answer = next_answer(later)
    assert dict(answer.headers)["retry-after-ms"] == str(wait_ms - 1500), "the holder's remaining time"
    assert later.attempts == 0
    assert {s.name: s.attempts for s in balancer.status()} == {"ptu": 0, "paygo-a": 1}, "no other backend tried"
    assert all(e.backend == "paygo-a" for e in events if isinstance(e, AttemptStarted))


def test_objects_held_by_different_backends_are_refused_without_sending(clock: FakeClock) -> None:
    events: list[Event] = []
    balancer = make_balancer([PTU, PAYGO_A], clock, on_event=events.append)
    held(balancer, "resp_1", PTU)
    held(balancer, "file-1", PAYGO_A)
    body = {
        "previous_response_id": "resp_1",
        "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}],
    }
    call = begin(balancer, "POST", "/openai/v1/responses", body)
    answer = next_answer(call)
    assert answer.status == 400
    refusal = json.loads(answer.body)["error"]
    assert refusal["code"] == "ObjectsOnDifferentBackends"
    for named in ("'resp_1' on 'ptu'", "'file-1' on 'paygo-a'"):
        assert named in refusal["message"], f"the message names {named}: {refusal['message']}"
    assert events == [NoBackendCanServe("gpt-4o", 400, "objects_apart", 0)], "nothing was attempted"
    assert all(s.attempts == 0 for s in balancer.status())


def test_a_holder_this_client_has_no_backend_for_is_no_help(clock: FakeClock) -> None:
    store = InMemoryHealthStore()
    store.remember(("resp_1",), "https://elsewhere.example.com", clock.now + HOUR, 1000)
    events: list[Event] = []
    balancer = make_balancer([PTU, PAYGO_A], clock, store=store, on_event=events.append)
    assert next_attempt(follow_up(balancer)).backend is PTU
    assert events[0] == AttemptStarted("ptu", PTU.key, "gpt-4o", 1, "discovery"), "looked for instead"


# -- discovery: an id not seen before is looked for


def test_an_unknown_id_is_looked_for_without_cooling_anything(clock: FakeClock) -> None:
    events: list[Event] = []
    balancer = make_balancer([PTU, PAYGO_A, FAR], clock, on_event=events.append)
    call = begin(balancer, "POST", "/openai/v1/responses", {"previous_response_id": "resp_1", "input": "more"})
    step, delivered = respond(call, 400, PREVIOUS_NOT_FOUND)
    assert (step.backend, delivered) == (PTU, False), "not here: look on"
    step, delivered = respond(call, 200, b'{"id": "resp_2", "object": "response"}')
    assert (step.backend, delivered) == (PAYGO_A, True)
    assert finished(events) == [
        ("ptu", "not_here", 400, "discovery"),
        ("paygo-a", "success", 200, "discovery"),
    ]
    assert [e for e in events if isinstance(e, OwnerDiscovered)] == [
        OwnerDiscovered("paygo-a", PAYGO_A.key, ("resp_1",), 2)
    ]
    assert cooled(events) == [], "a backend without the object is not at fault"
    assert (owner(balancer, "resp_1"), owner(balancer, "resp_2")) == (PAYGO_A.key, PAYGO_A.key), (
        "the found object and the one created are remembered"
    )
    status = {s.name: s for s in balancer.status()}
    assert (status["paygo-a"].discovered, status["ptu"].discovered) == (1, 0)
    assert status["ptu"].state == "available"
    assert (status["ptu"].failures, status["ptu"].rate_limited, status["ptu"].failovers_away) == (0, 0, 1)
    assert next_attempt(balancer.begin("gpt-4o")).backend is PTU, "stateless calls still go to the PTU"
    assert next_attempt(follow_up(balancer)).backend is PAYGO_A, "and the response's follow-ups to its holder"


def test_when_no_backend_holds_it_the_caller_gets_the_last_answer(clock: FakeClock) -> None:
    events: list[Event] = []
    balancer = make_balancer([PTU, PAYGO_A, FAR], clock, on_event=events.append)
    call = follow_up(balancer)
    assert respond(call, 404, NOT_FOUND)[1] is False
    assert respond(call, 404, NOT_FOUND)[1] is False
    step, delivered = respond(call, 404, NOT_FOUND)
    assert (step.backend, delivered) == (FAR, True), "the last backend's 404 goes to the caller"
    assert [outcome for _, outcome, _, _ in finished(events)] == ["not_here", "not_here", "client_error"]
    assert cooled(events) == []
    assert owner(balancer, "resp_1") is None
    assert not [e for e in events if isinstance(e, OwnerDiscovered)]


@pytest.mark.parametrize("when", ["in-this-call", "before-this-call"])
def test_a_backend_that_was_only_busy_may_hold_it_so_the_call_ends_in_its_429(clock: FakeClock, when: str) -> None:
    balancer = make_balancer([PTU, PAYGO_A, FAR], clock)
    if when == "before-this-call":
        respond(balancer.begin("gpt-4o"), 429, headers={"retry-after-ms": "3000"})
    call = follow_up(balancer)
    if when == "in-this-call":
        step, _ = respond(call, 429, headers={"retry-after-ms": "3000"})
        assert step.backend is PTU
    clock.advance(0.5)
    step, delivered = respond(call, 404, NOT_FOUND)
    assert (step.backend, delivered) == (PAYGO_A, False), "not here: looks on"
    step, delivered = respond(call, 404, NOT_FOUND)
    assert (step.backend, delivered) == (FAR, False), "the busy PTU is left: the 404 is not the last word"
    answer = next_answer(call)
    assert answer.status == 429
    assert dict(answer.headers)["retry-after-ms"] == "2500", "the PTU's remaining wait"


def test_the_holder_answering_not_here_forgets_what_the_request_named(clock: FakeClock) -> None:
    events: list[Event] = []
    balancer = make_balancer([PTU, PAYGO_A], clock, on_event=events.append)
    held(balancer, "resp_1", PAYGO_A)
    step, delivered = respond(follow_up(balancer), 404, NOT_FOUND)
    assert (step.backend, delivered) == (PAYGO_A, True), "the holder's answer goes to the caller"
    assert owner(balancer, "resp_1") is None, "deleted elsewhere or expired: forgotten"
    assert cooled(events) == []
    assert next_attempt(follow_up(balancer)).backend is PTU, "the next request looks for it again"
    assert events[-1] == AttemptStarted("ptu", PTU.key, "gpt-4o", 1, "discovery")


def test_the_holder_answering_not_here_keeps_what_it_holds_when_a_new_id_was_named(clock: FakeClock) -> None:
    balancer = make_balancer([PTU, PAYGO_A], clock)
    held(balancer, "resp_1", PAYGO_A)
    body = {"previous_response_id": "resp_1", "input": [{"content": [{"type": "input_file", "file_id": "file-9"}]}]}
    step, delivered = respond(begin(balancer, "POST", "/openai/v1/responses", body), 400, error("file_not_found"))
    assert (step.backend, delivered) == (PAYGO_A, True)
    assert owner(balancer, "resp_1") == PAYGO_A.key, "the new file may be the one missing"


def test_a_successful_delete_forgets_the_object_and_a_refused_one_does_not(clock: FakeClock) -> None:
    balancer = make_balancer([PTU, PAYGO_A], clock)
    held(balancer, "file-1", PAYGO_A)
    step, _ = respond(begin(balancer, "DELETE", "/openai/v1/files/file-1"), 409, error("conflict"))
    assert step.backend is PAYGO_A
    assert owner(balancer, "file-1") == PAYGO_A.key, "a refused delete deletes nothing"
    step, _ = respond(begin(balancer, "DELETE", "/openai/v1/files/file-1/"), 200, b'{"id": "file-1", "deleted": true}')
    assert step.backend is PAYGO_A
    assert owner(balancer, "file-1") is None


def test_a_completed_upload_teaches_where_its_file_is(clock: FakeClock) -> None:
    balancer = make_balancer([PTU, PAYGO_A], clock)
    held(balancer, "upload_1", PAYGO_A)
    answer = b'{"id": "upload_1", "object": "upload", "status": "completed", "file": {"id": "file-1"}}'
    respond(begin(balancer, "POST", "/openai/v1/uploads/upload_1/complete"), 200, answer)
    assert owner(balancer, "file-1") == PAYGO_A.key


def test_what_is_learned_is_forgotten_after_the_ttl(clock: FakeClock) -> None:
    balancer = make_balancer([PTU, PAYGO_A], clock, policy=Policy(affinity_ttl=60))
    create = begin(balancer, "POST", "/openai/v1/files")
    respond(create, 503)
    respond(create, 200, b'{"id": "file-1", "object": "file"}')
    clock.advance(59.9)
    assert next_attempt(begin(balancer, "GET", "/openai/v1/files/file-1")).backend is PAYGO_A
    clock.advance(0.1)
    assert next_attempt(begin(balancer, "GET", "/openai/v1/files/file-1")).backend is PTU, "expired: looked for"


def test_a_streamed_answer_teaches_the_id_its_first_event_names(clock: FakeClock) -> None:
    balancer = make_balancer([PTU, PAYGO_A], clock)
    create = begin(balancer, "POST", "/openai/v1/responses", {"stream": True})
    respond(create, 429, headers={"retry-after": "1"})
    step, delivered = respond(create, 200, headers=SSE)
    assert (step.backend, delivered) == (PAYGO_A, True)
    tap = create.stream_tap(step, 200)
    assert tap is not None, "a successful stream that creates an object is watched"
    created = (
        b'event: response.created\ndata: {"type": "response.created", "sequence_number": 0, '
        b'"response": {"id": "resp_1", "object": "response"}}\n\n'
    )
    assert tap(created[:40]) is True, "still looking"
    assert owner(balancer, "resp_1") is None
    assert tap(created[40:]) is False, "found: the tap is done"
    assert owner(balancer, "resp_1") == PAYGO_A.key


def test_only_successful_streams_that_create_are_watched(clock: FakeClock) -> None:
    balancer = make_balancer([PTU], clock)
    create = begin(balancer, "POST", "/openai/v1/responses")
    assert create.stream_tap(next_attempt(create), 500) is None, "an error answer created nothing"
    held(balancer, "resp_1", PTU)
    call = begin(balancer, "POST", "/openai/v1/responses/resp_1/cancel")
    assert call.stream_tap(next_attempt(call), 200) is None, "a cancel creates nothing"
    chat = balancer.begin("gpt-4o")
    assert chat.stream_tap(next_attempt(chat), 200) is None, "a stateless call is not watched"


def test_affinity_off_balances_stateful_requests_like_any_other(clock: FakeClock) -> None:
    events: list[Event] = []
    balancer = make_balancer([PTU, PAYGO_A], clock, policy=Policy(affinity=False), on_event=events.append)
    held(balancer, "resp_1", PAYGO_A)
    assert next_attempt(follow_up(balancer)).backend is PTU
    create = begin(balancer, "POST", "/openai/v1/responses")
    respond(create, 200, b'{"id": "resp_2"}')
    assert create.stream_tap(next_attempt(begin(balancer, "POST", "/openai/v1/responses")), 200) is None
    assert owner(balancer, "resp_2") is None, "nothing is learned"
    assert {e.affinity for e in events if isinstance(e, (AttemptStarted, AttemptFinished))} == {None}


# -- context failover: a prompt too long for one deployment moves on


def test_a_prompt_too_long_moves_to_the_next_backend_without_cooling_anything(clock: FakeClock) -> None:
    events: list[Event] = []
    balancer = make_balancer([PTU, PAYGO_A, FAR], clock, on_event=events.append)
    call = balancer.begin("gpt-4o")
    step, delivered = respond(call, 400, TOO_LONG)
    assert (step.backend, delivered) == (PTU, False)
    step, delivered = respond(call, 200)
    assert (step.backend, delivered) == (PAYGO_A, True)
    assert finished(events) == [("ptu", "context_too_long", 400, None), ("paygo-a", "success", 200, None)]
    assert cooled(events) == []
    assert next(s for s in balancer.status() if s.name == "ptu").state == "available"
    assert next_attempt(balancer.begin("gpt-4o")).backend is PTU, "shorter prompts still go to the PTU"


def test_when_every_backend_is_too_short_the_caller_gets_the_last_400(clock: FakeClock) -> None:
    balancer = make_balancer([PTU, PAYGO_A, FAR], clock)
    call = balancer.begin("gpt-4o")
    tried = []
    for _ in range(3):
        step, delivered = respond(call, 400, TOO_LONG)
        tried.append((step.backend.name, delivered))
    assert tried == [("ptu", False), ("paygo-a", False), ("far", True)], "each backend once, the last 400 delivered"


def test_a_backend_that_was_only_busy_may_have_the_larger_window_so_the_call_ends_in_its_429(
    clock: FakeClock,
) -> None:
    balancer = make_balancer([PTU, PAYGO_A], clock)
    call = balancer.begin("gpt-4o")
    respond(call, 429, headers={"retry-after-ms": "2000"})
    step, delivered = respond(call, 400, TOO_LONG)
    assert (step.backend, delivered) == (PAYGO_A, False)
    answer = next_answer(call)
    assert (answer.status, dict(answer.headers)["retry-after-ms"]) == (429, "2000")


def test_context_failover_off_hands_the_first_400_over(clock: FakeClock) -> None:
    balancer = make_balancer([PTU, PAYGO_A], clock, policy=Policy(context_failover=False))
    step, delivered = respond(balancer.begin("gpt-4o"), 400, TOO_LONG)
    assert (step.backend, delivered) == (PTU, True)


@pytest.mark.parametrize(
    "body",
    [
        error("invalid_request_error", "context_length_exceeded is not our problem"),
        b'{"error": {"code": ["context_length_exceeded"]}}',
        b"context_length_exceeded",
        None,
    ],
    ids=repr,
)
def test_other_400s_are_handed_over(clock: FakeClock, body: bytes | None) -> None:
    balancer = make_balancer([PTU, PAYGO_A], clock)
    step, delivered = respond(balancer.begin("gpt-4o"), 400, body)
    assert (step.backend, delivered) == (PTU, True), "not a context window's 400: the caller's to read"


def test_a_pinned_request_too_long_for_its_holder_gets_the_holders_400(clock: FakeClock) -> None:
    balancer = make_balancer([PTU, PAYGO_A], clock)
    held(balancer, "resp_1", PAYGO_A)
    chained = begin(balancer, "POST", "/openai/v1/responses", {"previous_response_id": "resp_1"})
    step, delivered = respond(chained, 400, TOO_LONG)
    assert (step.backend, delivered) == (PAYGO_A, True), "no other backend holds the response"
    assert owner(balancer, "resp_1") == PAYGO_A.key, "too long is not 'not here'"


ANSWERS = {
    "ok": (200, b'{"id": "resp_new"}'),
    "429": (429, None),
    "500": (500, None),
    "missing": (404, json.dumps({"error": {"code": "DeploymentNotFound"}}).encode()),
    "not-here": (404, NOT_FOUND),
    "not-found-400": (400, PREVIOUS_NOT_FOUND),
    "too-long": (400, TOO_LONG),
    "refused": (400, error("invalid_request_error")),
}


@given(
    priorities=st.lists(st.integers(min_value=1, max_value=3), min_size=1, max_size=5),
    holders=st.lists(st.one_of(st.none(), st.integers(min_value=0, max_value=4)), min_size=2, max_size=2),
    script=st.lists(st.sampled_from(sorted(ANSWERS)), max_size=30),
    advance=st.floats(min_value=0, max_value=100),
)
@settings(max_examples=150, deadline=None)
def test_a_stateful_call_never_loops_and_ends_in_a_delivery_or_an_answer(
    priorities: list[int], holders: list[int | None], script: list[str], advance: float
) -> None:
    clock = FakeClock()
    backends = [Backend(f"https://b{i}.example.com", priority=p) for i, p in enumerate(priorities)]
    balancer = make_balancer(backends, clock)
    for object_id, holder in zip(("resp_1", "file-1"), holders, strict=True):
        if holder is not None and holder < len(backends):
            held(balancer, object_id, backends[holder])
    feed = iter(script)
    body = {"previous_response_id": "resp_1", "input": [{"content": [{"type": "input_file", "file_id": "file-1"}]}]}
    for _ in range(3):
        owners = {owner(balancer, object_id) for object_id in ("resp_1", "file-1")} - {None}
        call = begin(balancer, "POST", "/openai/v1/responses", body)
        tried: list[str | None] = []
        while True:
            step = call.next()
            if isinstance(step, SyntheticResponse):
                assert step.status in (400, 404, 429), f"unexpected synthetic {step.status}"
                break
            tried.append(step.backend.key)
            status, answer = ANSWERS[next(feed, "ok")]
            if call.report(step, status, {}, answer):
                break
        assert len(tried) == len(set(tried)) <= len(backends), f"each backend at most once per call: {tried}"
        if len(owners) > 1:
            assert (tried, step.status) == ([], 400), "objects apart: refused without sending"
        elif owners:
            assert set(tried) <= owners, f"pinned to {owners}, tried {tried}"
        assert sum(s.in_flight for s in balancer.status()) == 0, "every attempt was reported"
        clock.advance(advance)


def test_a_delete_found_by_discovery_announces_no_owner(clock: FakeClock) -> None:
    events: list[Event] = []
    balancer = make_balancer([PTU, PAYGO_A], clock, on_event=events.append)
    delete = begin(balancer, "DELETE", "/openai/v1/files/file-1")
    respond(delete, 404, NOT_FOUND)
    step, delivered = respond(delete, 200, b'{"id": "file-1", "deleted": true}')
    assert (step.backend, delivered) == (PAYGO_A, True)
    assert owner(balancer, "file-1") is None, "a deleted object is not remembered"
    assert not [e for e in events if isinstance(e, OwnerDiscovered)], "nothing was discovered: it is gone"
    assert balancer.status()[1].discovered == 0
