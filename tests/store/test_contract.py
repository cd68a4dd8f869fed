"""The ``HealthStore`` contract, run against every implementation: this process's memory and Redis.

Times are a fake clock's readings; a ``RedisHealthStore`` is given the same fake clocks, so what
it answers from its memory follows them exactly while it writes to Redis in the background.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from helpers import FakeClock

from openai_lb import BackendHealth, Block, HealthStore, InMemoryHealthStore, Reason, Trip

pytestmark = pytest.mark.timeout(60)

A = "https://a.example.com"
B = "https://b.example.com"


def doubling(failures: int) -> float:
    return 5.0 * 2 ** (failures - 1)


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest, clock: FakeClock) -> HealthStore:
    if request.param == "memory":
        return InMemoryHealthStore()
    make: Callable[..., Any] = request.getfixturevalue("redis_store")
    made: HealthStore = make(clock=clock, wall_clock=clock.wall)
    return made


def test_a_block_holds_until_its_deadline_and_names_its_reason(store: HealthStore, clock: FakeClock) -> None:
    store.block(A, "gpt-4o", clock.now + 10, "rate_limited")
    found = store.blocked(A, "gpt-4o", clock.now)
    assert found == Block(clock.now + 10, "rate_limited"), found
    assert isinstance(found, Block)
    assert (found.until, found.reason) == tuple(found), "a Block is not the tuple (until, reason)"
    assert store.blocked(A, "mini", clock.now) is None, "another deployment was blocked too"
    assert store.blocked(B, "gpt-4o", clock.now) is None, "another backend was blocked too"
    clock.advance(10)
    assert store.blocked(A, "gpt-4o", clock.now) is None, "the block outlived its deadline"


RL, MISSING, FAILURE = "rate_limited", "deployment_missing", "failure"


@pytest.mark.parametrize(
    ("writes", "expected"),
    [
        pytest.param([("gpt-4o", 10, RL), ("gpt-4o", 3, RL)], (10, RL), id="an earlier deadline never shortens"),
        pytest.param([("gpt-4o", 10, RL), ("gpt-4o", 3, RL), ("gpt-4o", 20, RL)], (20, RL), id="a later one extends"),
        pytest.param([("gpt-4o", 5, RL), (None, 8, FAILURE)], (8, FAILURE), id="the breaker ends later"),
        pytest.param([(None, 8, FAILURE), ("gpt-4o", 30, RL)], (30, RL), id="the deployment ends later"),
        pytest.param(
            [("gpt-4o", 5, MISSING), (None, 50, FAILURE)], (5, MISSING), id="missing shows through the breaker"
        ),
    ],
)
def test_the_block_reported_is_the_latest_running_one_but_a_missing_deployment_comes_first(
    store: HealthStore, clock: FakeClock, writes: list[tuple[str | None, float, Reason]], expected: tuple[float, Reason]
) -> None:
    for deployment, seconds, reason in writes:
        store.block(A, deployment, clock.now + seconds, reason)
    assert store.blocked(A, "gpt-4o", clock.now) == (clock.now + expected[0], expected[1]), writes


def test_the_breaker_blocks_every_deployment_of_its_backend_only(store: HealthStore, clock: FakeClock) -> None:
    store.block(A, None, clock.now + 50, "failure")
    assert store.blocked(A, "mini", clock.now) == (clock.now + 50, "failure")
    assert store.blocked(A, "", clock.now) == (clock.now + 50, "failure"), "a request naming no deployment got through"
    assert store.blocked(B, "mini", clock.now) is None


def test_each_trip_grows_the_streak_and_blocks_the_backend_for_its_cooldown(
    store: HealthStore, clock: FakeClock
) -> None:
    first = store.trip(A, clock.now, clock.now, doubling)
    assert isinstance(first, Trip)
    assert first == Trip(1, 5.0), first
    assert store.blocked(A, "any", clock.now) == (clock.now + 5.0, "failure")
    clock.advance(6)
    second = store.trip(A, clock.now, clock.now, doubling)
    assert second is not None
    assert (second.failures, second.seconds) == (2, 10.0), second
    assert store.blocked(B, "any", clock.now) is None, "another backend was tripped too"


def test_an_attempt_sent_before_the_last_trip_does_not_count_again(store: HealthStore, clock: FakeClock) -> None:
    sent = clock.now
    clock.advance(1)
    assert store.trip(A, sent, clock.now, doubling) == (1, 5.0)
    clock.advance(2)
    assert store.trip(A, sent, clock.now, doubling) is None, "a straggler of the same outage counted again"
    assert store.snapshot(A, clock.now).failures == 1


def test_concurrent_trips_of_attempts_sent_together_count_once(store: HealthStore, clock: FakeClock) -> None:
    sent = clock.now
    clock.advance(1)
    results: list[Trip | None] = []
    barrier = threading.Barrier(8)

    def fail() -> None:
        barrier.wait(5)
        results.append(store.trip(A, sent, clock.now, doubling))

    threads = [threading.Thread(target=fail) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    counted = [result for result in results if result is not None]
    assert counted == [Trip(1, 5.0)], f"one outage made {counted}"


def test_a_success_resets_the_streak_but_a_running_breaker_stands_and_recovers_once_it_closed(
    store: HealthStore, clock: FakeClock
) -> None:
    store.trip(A, clock.now, clock.now, doubling)
    assert store.count_success(A, "gpt-4o", clock.now) == (), "a success during the open breaker is no recovery"
    assert store.snapshot(A, clock.now).failures == 0, "the success did not reset the streak"
    assert store.blocked(A, "gpt-4o", clock.now) == (clock.now + 5.0, "failure"), "the running breaker was lifted"
    clock.advance(5)
    assert store.count_success(A, "gpt-4o", clock.now) == (None,)
    assert store.count_success(A, "gpt-4o", clock.now) == (), "one outage recovered twice"


def test_a_success_reports_the_deployment_and_the_backend_whose_blocks_ended(
    store: HealthStore, clock: FakeClock
) -> None:
    store.block(A, "gpt-4o", clock.now + 2, "rate_limited")
    store.block(A, "mini", clock.now + 2, "rate_limited")
    store.trip(A, clock.now, clock.now, doubling)
    clock.advance(5)
    assert store.count_success(A, "gpt-4o", clock.now) == ("gpt-4o", None)
    assert store.count_success(A, "mini", clock.now) == ("mini",)
    assert store.count_success(A, "mini", clock.now) == ()


def test_a_snapshot_shows_the_streak_the_breaker_and_the_running_deployment_blocks(
    store: HealthStore, clock: FakeClock
) -> None:
    assert store.snapshot(A, clock.now) == BackendHealth(0, None, {})
    store.block(A, "gpt-4o", clock.now + 10, "rate_limited")
    store.block(A, "old", clock.now + 1, "rate_limited")
    store.trip(A, clock.now, clock.now, doubling)
    clock.advance(2)
    health = store.snapshot(A, clock.now)
    assert health.failures == 1
    assert health.open_until == clock.now + 3.0
    assert dict(health.deployments) == {"gpt-4o": Block(clock.now + 8, "rate_limited")}, "an ended block is shown"
    assert store.snapshot(B, clock.now) == BackendHealth(0, None, {})


def test_clear_forgets_blocks_streaks_and_trips(store: HealthStore, clock: FakeClock) -> None:
    sent = clock.now
    store.block(A, "gpt-4o", clock.now + 10, "rate_limited")
    store.trip(A, sent, clock.now, doubling)
    store.clear()
    assert store.blocked(A, "gpt-4o", clock.now) is None
    assert store.snapshot(A, clock.now) == BackendHealth(0, None, {})
    assert store.trip(A, sent, clock.now, doubling) == (1, 5.0), "the last trip was remembered after clear()"


DAY = 86_400.0


def test_a_remembered_owner_answers_until_its_deadline(store: HealthStore, clock: FakeClock) -> None:
    assert store.owner("resp_1", clock.now) is None, "an id never remembered has an owner"
    store.remember((object_id for object_id in ("resp_1", "file-1")), A, clock.now + DAY, 10)
    assert store.owner("resp_1", clock.now) == A
    assert store.owner("file-1", clock.now) == A
    assert store.owner("resp_2", clock.now) is None, "an id never remembered has an owner"
    clock.advance(DAY - 1)
    assert store.owner("resp_1", clock.now) == A, "the owner was forgotten before its deadline"
    clock.advance(1)
    assert store.owner("resp_1", clock.now) is None, "the owner outlived its deadline"
    assert store.owner("file-1", clock.now) is None, "the owner outlived its deadline"


def test_remembering_an_id_again_moves_it_to_the_new_owner_and_deadline(store: HealthStore, clock: FakeClock) -> None:
    store.remember(["resp_1"], A, clock.now + 10, 10)
    store.remember(["resp_1"], B, clock.now + 20, 10)
    assert store.owner("resp_1", clock.now) == B
    clock.advance(15)
    assert store.owner("resp_1", clock.now) == B, "the first deadline still applied"


def test_a_forgotten_owner_is_unknown_and_forgetting_an_unknown_id_changes_nothing(
    store: HealthStore, clock: FakeClock
) -> None:
    store.remember(["resp_1", "resp_2"], A, clock.now + DAY, 10)
    store.forget("resp_1")
    store.forget("never-seen")
    assert store.owner("resp_1", clock.now) is None, "a forgotten id kept its owner"
    assert store.owner("resp_2", clock.now) == A, "forgetting one id forgot another"


def test_beyond_the_capacity_the_least_recently_used_owner_goes_first(store: HealthStore, clock: FakeClock) -> None:
    store.remember(["resp_1", "resp_2", "resp_3"], A, clock.now + DAY, 3)
    assert store.owner("resp_1", clock.now) == A  # a use: resp_2 is now the least recently used
    store.remember(["resp_4"], B, clock.now + DAY, 3)
    found = {object_id: store.owner(object_id, clock.now) for object_id in ("resp_1", "resp_2", "resp_3", "resp_4")}
    assert found == {"resp_1": A, "resp_2": None, "resp_3": A, "resp_4": B}, found


def test_clear_forgets_the_owners(store: HealthStore, clock: FakeClock) -> None:
    store.remember(["resp_1"], A, clock.now + DAY, 10)
    store.clear()
    assert store.owner("resp_1", clock.now) is None, "clear() kept an owner"
