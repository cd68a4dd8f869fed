"""on_event hooks in the core, with a fake clock: which events, in which order, with what in them."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable

import pytest
from helpers import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

from openai_lb import (
    AllBackendsCooling,
    AttemptFinished,
    AttemptStarted,
    Backend,
    BackendCooled,
    BackendRecovered,
    ConfigurationError,
    Event,
    InMemoryHealthStore,
    NoBackendCanServe,
    Policy,
)
from openai_lb._core import Attempt, Balancer, Call, SyntheticResponse

PTU = Backend("https://ptu.example.com", priority=1, name="ptu", api_key="SECRET-PTU-KEY")
PAYGO = Backend("https://paygo.example.com", priority=2, name="paygo", deployments={"gpt-4o": "gpt-4o-paygo"})
NOT_FOUND = json.dumps({"error": {"code": "DeploymentNotFound"}}).encode()


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def __call__(self, event: Event) -> None:
        self.events.append(event)

    def take(self) -> list[Event]:
        taken, self.events = self.events, []
        return taken


def make(clock: FakeClock, *hooks: object, backends: tuple[Backend, ...] = (PTU, PAYGO)) -> Balancer:
    return Balancer(
        list(backends),
        store=InMemoryHealthStore(),
        clock=clock,
        wall_clock=clock.wall,
        policy=Policy(breaker_base=5, default_cooldown=7),
        on_event=list(hooks),  # type: ignore[arg-type]
    )


def begin(balancer: Balancer) -> tuple[Call, Attempt]:
    call = balancer.begin("gpt-4o")
    attempt = call.next()
    assert isinstance(attempt, Attempt), f"expected an attempt, got {attempt}"
    return call, attempt


def test_a_429_then_a_success_tells_the_whole_story_in_order(clock: FakeClock) -> None:
    events = Recorder()
    call, first = begin(make(clock, events))
    clock.advance(0.25)
    assert not call.report(first, 429, {"retry-after-ms": "1500"}, None)
    second = call.next()
    assert isinstance(second, Attempt)
    clock.advance(0.5)
    assert call.report(second, 200, {}, None)
    assert events.take() == [
        AttemptStarted("ptu", "https://ptu.example.com", "gpt-4o", 1),
        AttemptFinished("ptu", "https://ptu.example.com", "gpt-4o", 1, "rate_limited", 429, None, 0.25),
        BackendCooled("ptu", "https://ptu.example.com", "gpt-4o", "rate_limited", 1.5, "retry-after-ms", 0),
        AttemptStarted("paygo", "https://paygo.example.com", "gpt-4o-paygo", 2),
        AttemptFinished("paygo", "https://paygo.example.com", "gpt-4o-paygo", 2, "success", 200, None, 0.5),
    ]


def test_a_429_without_usable_headers_cools_for_the_default_with_no_source(clock: FakeClock) -> None:
    events = Recorder()
    call, attempt = begin(make(clock, events))
    call.report(attempt, 429, {"retry-after": "soon"}, None)
    cooled = [e for e in events.take() if isinstance(e, BackendCooled)]
    assert cooled == [BackendCooled("ptu", "https://ptu.example.com", "gpt-4o", "rate_limited", 7, None, 0)]


def test_a_5xx_finishes_as_a_failure_and_opens_the_breaker_with_its_streak(clock: FakeClock) -> None:
    events = Recorder()
    balancer = make(clock, events)
    for streak, seconds in ((1, 5.0), (2, 10.0)):
        call, attempt = begin(balancer)
        assert attempt.backend is PTU
        call.report(attempt, 503, {}, None)
        finished, cooled = events.take()[1:3]
        assert isinstance(finished, AttemptFinished)
        assert (finished.outcome, finished.status, finished.error, finished.failed_over) == ("failure", 503, None, True)
        assert cooled == BackendCooled("ptu", "https://ptu.example.com", None, "failure", seconds, None, streak)
        clock.advance(seconds)


def test_a_transport_error_finishes_as_a_failure_naming_the_exception_type_only(clock: FakeClock) -> None:
    events = Recorder()
    call, attempt = begin(make(clock, events))
    call.report_error(attempt, ConnectionRefusedError("secret detail"))
    finished = events.take()[1]
    assert isinstance(finished, AttemptFinished)
    assert (finished.outcome, finished.status, finished.error) == ("failure", None, "ConnectionRefusedError")
    assert "secret detail" not in repr(finished)


def test_failures_of_one_outage_cool_the_backend_once(clock: FakeClock) -> None:
    events = Recorder()
    balancer = make(clock, events)
    pairs = [begin(balancer) for _ in range(3)]
    for call, attempt in pairs:
        call.report(attempt, 500, {}, None)
    assert sum(isinstance(e, BackendCooled) for e in events.events) == 1, events.events
    assert sum(isinstance(e, AttemptFinished) and e.outcome == "failure" for e in events.events) == 3


def test_a_missing_deployment_cools_for_the_cap(clock: FakeClock) -> None:
    events = Recorder()
    call, attempt = begin(make(clock, events))
    call.report(attempt, 404, {}, NOT_FOUND)
    finished, cooled = events.take()[1:3]
    assert isinstance(finished, AttemptFinished)
    assert (finished.outcome, finished.status) == ("deployment_missing", 404)
    assert cooled == BackendCooled("ptu", "https://ptu.example.com", "gpt-4o", "deployment_missing", 300.0, None, 0)


def test_a_client_error_is_delivered_and_finishes_as_such(clock: FakeClock) -> None:
    events = Recorder()
    call, attempt = begin(make(clock, events))
    assert call.report(attempt, 400, {}, None)
    finished = events.take()[-1]
    assert isinstance(finished, AttemptFinished)
    assert (finished.outcome, finished.failed_over) == ("client_error", False)


def test_the_first_success_after_a_cooldown_ends_is_a_recovery_and_the_next_is_not(clock: FakeClock) -> None:
    events = Recorder()
    balancer = make(clock, events)
    call, attempt = begin(balancer)
    call.report(attempt, 429, {"retry-after": "2"}, None)
    clock.advance(2)
    for _ in range(2):
        call, attempt = begin(balancer)
        assert attempt.backend is PTU
        call.report(attempt, 200, {}, None)
    recovered = [e for e in events.events if isinstance(e, BackendRecovered)]
    assert recovered == [BackendRecovered("ptu", "https://ptu.example.com", "gpt-4o")]


def test_a_success_while_the_cooldown_still_runs_is_not_a_recovery(clock: FakeClock) -> None:
    events = Recorder()
    balancer = make(clock, events)
    (late_call, late), (call, attempt) = begin(balancer), begin(balancer)
    call.report(attempt, 429, {"retry-after": "30"}, None)
    late_call.report(late, 200, {}, None)  # sent before the 429 arrived, answered after
    assert not any(isinstance(e, BackendRecovered) for e in events.events)
    assert balancer.store.blocked(PTU.key, "gpt-4o", clock.now) is not None, "the cooldown still stands"
    clock.advance(30)
    call, attempt = begin(balancer)
    call.report(attempt, 200, {}, None)
    assert isinstance(events.events[-1], BackendRecovered)


def test_the_first_success_after_the_breaker_is_a_recovery_of_the_backend(clock: FakeClock) -> None:
    events = Recorder()
    balancer = make(clock, events)
    call, attempt = begin(balancer)
    call.report(attempt, 502, {}, None)
    clock.advance(5)
    call, attempt = begin(balancer)
    call.report(attempt, 200, {}, None)
    assert events.events[-1] == BackendRecovered("ptu", "https://ptu.example.com", None), "the backend recovered"
    assert balancer.status()[0].state == "available"


def test_an_old_attempt_succeeding_while_the_breaker_is_open_is_no_recovery(clock: FakeClock) -> None:
    events = Recorder()
    balancer = make(clock, events)
    (old_call, old), (call, attempt) = begin(balancer), begin(balancer)
    clock.advance(0.1)
    call.report(attempt, 503, {}, None)
    old_call.report(old, 200, {}, None)  # sent before the trip, answered after
    assert not any(isinstance(e, BackendRecovered) for e in events.events), events.events
    assert balancer.status()[0].state == "circuit_open"
    clock.advance(5)
    for _ in range(2):
        call, attempt = begin(balancer)
        call.report(attempt, 200, {}, None)
    recovered = [e for e in events.events if isinstance(e, BackendRecovered)]
    assert recovered == [BackendRecovered("ptu", "https://ptu.example.com", None)], "once, when the breaker closed"


def test_every_backend_cooling_is_announced_with_the_soonest(clock: FakeClock) -> None:
    events = Recorder()
    balancer = make(clock, events)
    call, attempt = begin(balancer)
    call.report(attempt, 429, {"retry-after": "20"}, None)
    second = call.next()
    assert isinstance(second, Attempt)
    call.report(second, 429, {"retry-after": "8"}, None)
    answer = call.next()
    assert isinstance(answer, SyntheticResponse)
    assert events.events[-1] == AllBackendsCooling("gpt-4o", 8.0, "paygo", 2)


def test_a_skipped_and_an_abandoned_attempt_each_finish_once(clock: FakeClock) -> None:
    events = Recorder()
    balancer = make(clock, events)
    call, attempt = begin(balancer)
    call.skip(attempt, RuntimeError("token endpoint said no"))
    other = call.next()
    assert isinstance(other, Attempt)
    call.release(other, KeyboardInterrupt())
    finished = [e for e in events.events if isinstance(e, AttemptFinished)]
    assert [(e.backend, e.outcome, e.error, e.failed_over) for e in finished] == [
        ("ptu", "skipped", "RuntimeError", True),
        ("paygo", "abandoned", "KeyboardInterrupt", False),
    ]


def test_a_hook_interrupting_an_attempt_start_leaves_nothing_in_flight(clock: FakeClock) -> None:
    def interrupt(event: Event) -> None:
        if isinstance(event, AttemptStarted):
            raise KeyboardInterrupt

    balancer = make(clock, interrupt)
    with pytest.raises(KeyboardInterrupt):
        balancer.begin("gpt-4o").next()
    assert [s.in_flight for s in balancer.status()] == [0, 0]


def test_every_hook_gets_every_event_and_a_raising_one_is_logged_not_raised(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    first, last = Recorder(), Recorder()

    def broken(event: Event) -> None:
        raise RuntimeError("hook bug")

    call, attempt = begin(make(clock, first, broken, last))
    with caplog.at_level(logging.ERROR, logger="openai_lb"):
        assert call.report(attempt, 200, {}, None)
    assert first.events == last.events
    assert len(first.events) == 2
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2, messages
    assert all("raised on Attempt" in m and "ignored" in m for m in messages), messages
    assert all(r.exc_info is not None for r in caplog.records), "the traceback is logged"


def test_a_single_hook_may_be_given_without_a_list(clock: FakeClock) -> None:
    events = Recorder()
    balancer = Balancer([PTU], store=InMemoryHealthStore(), clock=clock, on_event=events)
    begin(balancer)
    assert len(events.events) == 1


@pytest.mark.parametrize("bad", [["not callable"], [print, 3]])
def test_a_hook_that_is_not_callable_is_refused_at_construction(bad: list[object]) -> None:
    with pytest.raises(ConfigurationError, match="on_event takes a callable or a list of callables"):
        Balancer([PTU], on_event=bad)  # type: ignore[arg-type]


def test_a_hook_with_attach_is_attached_once_to_each_balancer(clock: FakeClock) -> None:
    class Attaching(Recorder):
        def __init__(self) -> None:
            super().__init__()
            self.balancers: list[Balancer] = []

        def attach(self, balancer: Balancer) -> None:
            self.balancers.append(balancer)

    hook = Attaching()
    one, two = make(clock, hook), make(clock, hook)
    assert hook.balancers == [one, two]


def test_events_are_frozen_and_never_carry_a_credential(clock: FakeClock) -> None:
    events = Recorder()
    balancer = make(clock, events)
    call, attempt = begin(balancer)
    call.report(attempt, 429, {"retry-after": "1"}, None)
    follow = call.next()
    assert isinstance(follow, Attempt)
    call.report(follow, 200, {}, None)
    clock.advance(1)
    call, attempt = begin(balancer)
    call.report(attempt, 200, {}, None)
    assert {type(e).__name__ for e in events.events} >= {
        "AttemptStarted",
        "AttemptFinished",
        "BackendCooled",
        "BackendRecovered",
    }
    for event in events.events:
        assert "SECRET-PTU-KEY" not in repr(event), event
        with pytest.raises(dataclasses.FrozenInstanceError):
            event.backend = "changed"  # type: ignore[misc]


outcomes = st.sampled_from(["ok", "429", "500", "error", "deployment_missing", "400", "skip", "release"])


@given(script=st.lists(outcomes, max_size=40), advance=st.floats(min_value=0, max_value=100))
@settings(max_examples=200, deadline=None)
def test_every_started_attempt_finishes_exactly_once_before_the_next_starts(script: list[str], advance: float) -> None:
    clock = FakeClock()
    events = Recorder()
    backends = tuple(Backend(f"https://b{i}.example.com", priority=i % 2) for i in range(4))
    balancer = make(clock, events, backends=backends)
    feed = iter(script)
    for _ in range(4):
        call = balancer.begin("gpt-4o")
        while isinstance(step := call.next(), Attempt):
            outcome = next(feed, "ok")
            if outcome == "error":
                call.report_error(step, OSError())
            elif outcome == "skip":
                call.skip(step, OSError())
            elif outcome == "release":
                call.release(step)
                break
            else:
                status, body = {"ok": (200, None), "429": (429, None), "500": (500, None), "400": (400, None)}.get(
                    outcome, (404, NOT_FOUND)
                )
                if call.report(step, status, {}, body):
                    break
        clock.advance(advance)
    open_attempt: AttemptStarted | None = None
    for event in events.events:
        if isinstance(event, AttemptStarted):
            assert open_attempt is None, f"{event} started before {open_attempt} finished"
            open_attempt = event
        elif isinstance(event, AttemptFinished):
            assert open_attempt is not None, f"{event} finished without a start"
            assert (event.backend, event.number) == (open_attempt.backend, open_attempt.number)
            assert event.failed_over == (event.outcome not in ("success", "client_error", "abandoned"))
            open_attempt = None
    assert open_attempt is None, f"{open_attempt} never finished"
    assert all(status.in_flight == 0 for status in balancer.status())


def both_end(
    balancer: Balancer, first: Callable[[Call, Attempt], None], second: Callable[[Call, Attempt], None]
) -> SyntheticResponse:
    """Both backends tried, each ended by its callable: the answer the caller gets."""
    call, attempt = begin(balancer)
    first(call, attempt)
    other = call.next()
    assert isinstance(other, Attempt), f"expected a second attempt, got {other}"
    second(call, other)
    answer = call.next()
    assert isinstance(answer, SyntheticResponse), f"expected the caller's answer, got {answer}"
    return answer


def test_no_token_for_any_backend_answers_401_naming_the_exception_types_not_a_429(clock: FakeClock) -> None:
    events = Recorder()
    answer = both_end(
        make(clock, events),
        lambda call, attempt: call.skip(attempt, PermissionError("secret-detail")),
        lambda call, attempt: call.skip(attempt, TimeoutError("secret-detail")),
    )
    assert answer.status == 401, f"a credential outage must not look like throttling: {answer}"
    error = json.loads(answer.body)["error"]
    assert error["code"] == "TokenProviderFailed"
    assert "'ptu' (PermissionError)" in error["message"]
    assert "'paygo' (TimeoutError)" in error["message"]
    assert "secret-detail" not in error["message"], "the provider's message may hold a secret"
    assert events.events[-1] == NoBackendCanServe("gpt-4o", 401, "credentials", 2)


def test_a_skipped_backend_beside_a_cooling_one_answers_the_cooling_ones_wait(clock: FakeClock) -> None:
    answer = both_end(
        make(clock),
        lambda call, attempt: call.skip(attempt, RuntimeError()),
        lambda call, attempt: call.report(attempt, 429, {"retry-after": "9"}, None),
    )
    assert answer.status == 429, "waiting for the cooling backend may help"
    assert dict(answer.headers)["retry-after"] == "9"


def test_no_backend_having_the_deployment_is_announced(clock: FakeClock) -> None:
    events = Recorder()
    missing = lambda call, attempt: call.report(attempt, 404, {}, NOT_FOUND)  # noqa: E731
    answer = both_end(make(clock, events), missing, missing)
    assert answer.status == 404
    assert events.events[-1] == NoBackendCanServe("gpt-4o", 404, "deployment_missing", 2)


def test_logging_is_a_hook_that_costs_no_event_while_the_logger_is_quiet(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    built: list[str] = []

    def counting(cls: type) -> None:
        original = cls.__init__

        def init(self: object, *args: object, **kwargs: object) -> None:
            built.append(cls.__name__)
            original(self, *args, **kwargs)

        monkeypatch.setattr(cls, "__init__", init)

    for cls in (AttemptStarted, AttemptFinished, BackendCooled, BackendRecovered):
        counting(cls)
    balancer = make(clock)
    with caplog.at_level(logging.WARNING, logger="openai_lb"):
        call, attempt = begin(balancer)
        call.report(attempt, 503, {}, None)
        second = call.next()
        assert isinstance(second, Attempt)
        call.report(second, 200, {}, None)
    assert built == [], f"events were built for a quiet logger and no hooks: {built}"
    with caplog.at_level(logging.INFO, logger="openai_lb"):
        call, attempt = begin(balancer)
        call.report(attempt, 429, {"retry-after": "3"}, None)
    assert "AttemptFinished" in built
    assert "BackendCooled" in built
    assert "AttemptStarted" not in built, "attempt starts are logged at DEBUG only"
    assert any("answered 429: cooling 3.000 s" in r.getMessage() for r in caplog.records)


@given(st.text(min_size=1, max_size=40))
@settings(max_examples=150, deadline=None)
def test_no_deployment_name_can_forge_a_log_line(name: str) -> None:
    clock = FakeClock()
    balancer = make(clock)
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("openai_lb")
    handler, level = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        call = balancer.begin(name)
        attempt = call.next()
        assert isinstance(attempt, Attempt)
        call.report(attempt, 429, {}, None)
        second = call.next()
        assert isinstance(second, Attempt)
        call.report(second, 404, {}, NOT_FOUND)
        call.next()
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    assert records
    for record in records:
        message = record.getMessage()
        assert message.isprintable(), f"a control character from the caller reached the log: {message!r}"
