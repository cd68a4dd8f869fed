"""InMemoryHealthStore: what a success forgets, and that its bookkeeping never drifts."""

from __future__ import annotations

import threading

from hypothesis import given, settings
from hypothesis import strategies as st

from openai_lb import InMemoryHealthStore

KEY = "https://ptu.example.com"


def test_a_success_forgets_ended_blocks_of_its_deployment_and_of_the_backend_only() -> None:
    store = InMemoryHealthStore()
    store.block(KEY, "gpt-4o", 10.0, "rate_limited")
    store.block(KEY, "other", 10.0, "rate_limited")
    store.trip(KEY, 0.0, 1.0, lambda _: 5.0)
    assert store.count_success(KEY, "gpt-4o", 10.0) == ("gpt-4o", None), "the deployment and the backend recovered"
    assert store.count_success(KEY, "gpt-4o", 10.0) == (), "nothing left to forget"
    health = store.snapshot(KEY, 9.0)
    assert health.failures == 0
    assert set(health.deployments) == {"other"}, "another deployment's block is its own business"
    assert store.count_success(KEY, "other", 10.0) == ("other",)


def test_a_success_while_the_breaker_is_open_resets_the_streak_but_recovers_only_once_it_closed() -> None:
    store = InMemoryHealthStore()
    store.trip(KEY, 0.0, 1.0, lambda _: 5.0)
    assert store.count_success(KEY, "gpt-4o", 2.0) == (), "an attempt sent before the trip succeeded: still open"
    assert store.snapshot(KEY, 2.0).failures == 0
    assert store.blocked(KEY, "gpt-4o", 2.0) == (6.0, "failing"), "the breaker stays open until its time"
    assert store.count_success(KEY, "gpt-4o", 6.0) == (None,), "the first success after it closed"


def test_a_success_during_a_running_block_leaves_it_in_place() -> None:
    store = InMemoryHealthStore()
    store.block(KEY, "gpt-4o", 30.0, "rate_limited")
    assert store.count_success(KEY, "gpt-4o", 5.0) == ()
    assert store.blocked(KEY, "gpt-4o", 5.0) == (30.0, "rate_limited")


operations = st.lists(
    st.tuples(
        st.sampled_from(["block", "trip", "success", "clear"]),
        st.sampled_from(["a", "b"]),
        st.sampled_from(["gpt-4o", "mini", None]),
        st.floats(min_value=0, max_value=100),
    ),
    max_size=60,
)


Op = tuple[str, str, str | None, float]


def assert_consistent(store: InMemoryHealthStore) -> None:
    """The bookkeeping behind the bound: the count of deployment blocks, and a heap item for each."""
    held = [
        (until, key, deployment)
        for key, blocks in store._by_key.items()
        for deployment, (until, _) in blocks.items()
        if deployment is not None
    ]
    assert store.size == len(held), f"size {store.size} but {len(held)} deployment blocks held"
    assert store.size <= store.max_entries, f"{store.size} blocks held beyond the bound {store.max_entries}"
    missing = set(held) - set(store._ends)
    assert not missing, f"blocks the eviction heap does not know: {sorted(missing)[:5]}"


@given(ops=operations, max_entries=st.sampled_from([1, 2, 10_000]))
@settings(max_examples=300, deadline=None)
def test_a_success_reports_a_recovery_exactly_when_something_ended(ops: list[Op], max_entries: int) -> None:
    store = InMemoryHealthStore(max_entries=max_entries)
    now = 0.0
    for op, key, deployment, value in ops:
        now += value / 10
        if op == "block":
            store.block(key, deployment, now + value, "rate_limited")
        elif op == "trip":
            store.trip(key, now, now, lambda _, seconds=value: seconds)
        elif op == "clear":
            store.clear()
        else:
            slot = deployment or ""
            running, every = store.snapshot(key, now), store.snapshot(key, -1.0)  # -1: ended entries too
            slot_ended = slot in every.deployments and slot not in running.deployments
            backend_ended = every.open_until is not None and running.open_until is None
            expected: list[str | None] = [slot] if slot_ended else []
            if backend_ended or (running.failures > 0 and running.open_until is None):
                expected.append(None)
            assert store.count_success(key, slot, now) == tuple(expected), (op, key, slot, now)
        assert_consistent(store)


def test_concurrent_successes_report_one_recovery() -> None:
    store = InMemoryHealthStore()
    store.trip(KEY, 0.0, 0.0, lambda _: 1.0)
    store.block(KEY, "gpt-4o", 1.0, "rate_limited")
    barrier = threading.Barrier(16)
    results: list[tuple[str | None, ...]] = []

    def succeed() -> None:
        barrier.wait()
        results.append(store.count_success(KEY, "gpt-4o", 2.0))

    threads = [threading.Thread(target=succeed) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results.count(("gpt-4o", None)) == 1, f"one recovery, told once: {results}"
    assert results.count(()) == 15, results
