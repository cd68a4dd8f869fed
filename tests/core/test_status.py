"""balancer.status(): immutable per-backend snapshots of state, cooldowns and counters."""

from __future__ import annotations

import dataclasses
import json

import pytest
from helpers import FakeClock

from openai_lb import Backend, InMemoryHealthStore, Policy
from openai_lb._core import Attempt, Balancer

PTU = Backend("https://ptu.example.com", priority=1, name="ptu", api_key="SECRET-PTU-KEY")
PAYGO = Backend("https://paygo.example.com", priority=2, name="paygo")
NOT_FOUND = json.dumps({"error": {"code": "DeploymentNotFound"}}).encode()


def make(clock: FakeClock) -> Balancer:
    return Balancer(
        [PTU, PAYGO],
        store=InMemoryHealthStore(),
        clock=clock,
        wall_clock=clock.wall,
        policy=Policy(breaker_base=5),
    )


def step(balancer: Balancer, deployment: str = "gpt-4o") -> tuple[object, Attempt]:
    call = balancer.begin(deployment)
    attempt = call.next()
    assert isinstance(attempt, Attempt)
    return call, attempt


def by_name(balancer: Balancer) -> dict[str, object]:
    return {status.name: status for status in balancer.status()}


def test_a_new_balancer_reports_every_backend_available_with_zero_counters(clock: FakeClock) -> None:
    ptu, paygo = make(clock).status()
    assert (ptu.name, ptu.url, ptu.priority, ptu.weight, ptu.state) == (
        "ptu",
        "https://ptu.example.com",
        1,
        1,
        "available",
    )
    assert (ptu.attempts, ptu.successes, ptu.rate_limited, ptu.failures, ptu.in_flight) == (0, 0, 0, 0, 0)
    assert ptu.last_failure is None
    assert paygo.state == "available"


def test_counters_follow_attempts_answers_and_failovers(clock: FakeClock) -> None:
    balancer = make(clock)
    call, attempt = step(balancer)
    assert by_name(balancer)["ptu"].in_flight == 1
    call.report(attempt, 429, {"retry-after": "30"}, None)
    follow = call.next()
    assert isinstance(follow, Attempt)
    call.report(follow, 200, {}, None)
    call, attempt = step(balancer)
    call.report(attempt, 400, {}, None)
    ptu, paygo = by_name(balancer)["ptu"], by_name(balancer)["paygo"]
    assert (ptu.attempts, ptu.rate_limited, ptu.failovers_away, ptu.in_flight) == (1, 1, 1, 0)
    assert (ptu.last_failure, ptu.last_failure_at) == ("HTTP 429", clock.wall_now)
    assert (paygo.attempts, paygo.successes, paygo.client_errors, paygo.in_flight) == (2, 1, 1, 0)


def test_a_rate_limited_deployment_shows_as_cooling_with_its_seconds_left(clock: FakeClock) -> None:
    balancer = make(clock)
    call, attempt = step(balancer)
    call.report(attempt, 429, {"retry-after-ms": "4000"}, None)
    clock.advance(1)
    ptu = by_name(balancer)["ptu"]
    assert ptu.state == "cooling"
    assert ptu.seconds_until_available == 0, "other deployments of the PTU are still usable"
    (cooldown,) = ptu.deployments
    assert (cooldown.deployment, cooldown.reason, cooldown.seconds_left) == ("gpt-4o", "rate_limited", 3.0)
    clock.advance(3)
    assert by_name(balancer)["ptu"].state == "available"


def test_the_breaker_shows_open_then_probing_then_available(clock: FakeClock) -> None:
    balancer = make(clock)
    call, attempt = step(balancer)
    call.report_error(attempt, TimeoutError())
    ptu = by_name(balancer)["ptu"]
    assert (ptu.state, ptu.seconds_until_available, ptu.last_failure) == ("circuit_open", 5.0, "TimeoutError")
    clock.advance(5)
    assert by_name(balancer)["ptu"].state == "probing"
    call, attempt = step(balancer)
    call.report(attempt, 200, {}, None)
    assert by_name(balancer)["ptu"].state == "available"


def test_missing_deployments_are_listed_with_their_reason(clock: FakeClock) -> None:
    balancer = make(clock)
    call, attempt = step(balancer)
    call.report(attempt, 404, {}, NOT_FOUND)
    (cooldown,) = by_name(balancer)["ptu"].deployments
    assert cooldown.reason == "deployment_missing"
    assert by_name(balancer)["ptu"].last_failure == "DeploymentNotFound"


def test_a_snapshot_is_immutable_and_holds_no_credential(clock: FakeClock) -> None:
    snapshot = make(clock).status()
    with pytest.raises(dataclasses.FrozenInstanceError):
        snapshot[0].state = "cooling"  # type: ignore[misc]
    assert "SECRET-PTU-KEY" not in repr(snapshot)


def test_released_attempts_leave_no_request_in_flight(clock: FakeClock) -> None:
    balancer = make(clock)
    call, attempt = step(balancer)
    call.release(attempt)
    assert by_name(balancer)["ptu"].in_flight == 0
    assert by_name(balancer)["ptu"].failures == 0, "a local error is no verdict on the backend"
