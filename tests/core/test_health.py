"""InMemoryHealthStore: what a success forgets, that its bookkeeping never drifts, and the owners of objects."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from helpers import FakeClock
from hypothesis import given, settings
from hypothesis import strategies as st

from openai_lb import Backend, InMemoryHealthStore, Policy, Reason
from openai_lb._core import Balancer

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
    assert store.blocked(KEY, "gpt-4o", 2.0) == (6.0, "failure"), "the breaker stays open until its time"
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


def test_ended_blocks_of_names_never_used_again_are_forgotten_down_to_what_the_store_keeps() -> None:
    store = InMemoryHealthStore(max_entries=1000)  # keeps up to 100 ended blocks for their recoveries
    largest = 0
    for second in range(10_000):
        now = float(second)
        store.block(KEY, f"typo-{second}", now + 5, "rate_limited")
        store.count_success(KEY, "gpt-4o", now)  # traffic that works gives the store the time
        largest = max(largest, store.size)
    assert largest <= 100 + 6, f"{largest} blocks held for 5 running and up to 100 kept"
    assert_consistent(store)
    assert len(store._ends) <= 2 * store.size + 64, f"the heap kept {len(store._ends)} items for {store.size} blocks"


def test_a_snapshot_forgets_ended_blocks_of_its_backend_when_writes_brought_no_time() -> None:
    store = InMemoryHealthStore(max_entries=1000)
    for number in range(1000):
        store.block(KEY, f"typo-{number}", 10.0, "deployment_missing")
    assert store.size == 1000
    assert store.snapshot(KEY, 11.0).deployments == {}
    assert store.size == 100, f"ended blocks beyond the 100 kept should be gone, {store.size} held"
    store.block(KEY, "next", 20.0, "rate_limited")
    store.block(KEY, "after", 20.0, "rate_limited")
    assert store.size == 100, "each write forgets up to two more ended blocks, judged by the snapshot's time"
    assert_consistent(store)


def test_a_few_ended_blocks_stay_until_their_success_reports_the_recovery() -> None:
    store = InMemoryHealthStore()
    for name in ("gpt-4o", "mini", "o3"):
        store.block(KEY, name, 10.0, "rate_limited")
    store.snapshot(KEY, 50.0)
    store.trip(KEY, 50.0, 50.0, lambda _: 5.0)
    store.block(KEY, "other", 100.0, "rate_limited")
    assert [store.count_success(KEY, name, 60.0) for name in ("gpt-4o", "mini", "o3")] == [
        ("gpt-4o", None),
        ("mini",),
        ("o3",),
    ], "below a tenth of the bound an ended block is no clutter: its first success reports it"


def test_the_bound_holds_under_100000_distinct_deployments_and_evicts_the_soonest_to_end() -> None:
    store = InMemoryHealthStore(max_entries=10_000)
    for number in range(100_000):
        store.block(KEY, f"name-{number}", 1_000.0 + number, "rate_limited")
    assert store.size == 10_000
    assert_consistent(store)
    assert len(store._ends) <= 2 * store.size + 64, f"the heap kept {len(store._ends)} items"
    assert store.blocked(KEY, "name-99999", 0.0) == (100_999.0, "rate_limited"), "the latest-ending block stays"
    assert store.blocked(KEY, "name-90000", 0.0) == (91_000.0, "rate_limited")
    assert store.blocked(KEY, "name-89999", 0.0) is None, "evicted: it was the next to end"


def test_a_bound_block_extended_again_and_again_leaves_no_heap_behind() -> None:
    store = InMemoryHealthStore(max_entries=10)
    for second in range(10_000):
        store.block(KEY, "gpt-4o", float(second), "rate_limited")
    assert store.size == 1
    assert len(store._ends) <= 2 + 64, f"stale heap items pile up: {len(store._ends)}"


def test_eviction_never_evicts_a_circuit_breaker() -> None:
    store = InMemoryHealthStore(max_entries=3)
    store.trip(KEY, 0.0, 0.0, lambda _: 5.0)  # ends before every deployment block below
    store.trip("https://other.example.com", 0.0, 0.0, lambda _: 5.0)
    for number in range(100):
        store.block(KEY, f"name-{number}", 100.0 + number, "rate_limited")
    assert store.size == 3
    assert store.snapshot(KEY, 1.0).open_until == 5.0, "the breaker was evicted"
    assert store.blocked("https://other.example.com", "gpt-4o", 1.0) == (5.0, "failure")


class Watched(dict[str | None, tuple[float, Reason]]):
    """One backend's blocks, counting how many of them a reader goes through."""

    def __init__(self, blocks: dict[str | None, tuple[float, Reason]], *, forbidden: bool = False) -> None:
        super().__init__(blocks)
        self.forbidden = forbidden
        self.touched = 0

    def items(self) -> Iterator[tuple[str | None, tuple[float, Reason]]]:  # type: ignore[override]
        assert not self.forbidden, "a snapshot read the blocks of another backend"
        for item in super().items():
            self.touched += 1
            yield item


def test_a_snapshot_goes_through_the_blocks_of_its_own_backend_only() -> None:
    store = InMemoryHealthStore()
    other = "https://other.example.com"
    for number in range(5000):
        store.block(other, f"name-{number}", 100.0, "rate_limited")
    store.block(KEY, "gpt-4o", 100.0, "rate_limited")
    store.block(KEY, "mini", 100.0, "deployment_missing")
    own = store._by_key[KEY] = Watched(store._by_key[KEY])
    store._by_key[other] = Watched(store._by_key[other], forbidden=True)
    health = store.snapshot(KEY, 1.0)
    assert health.deployments == {"gpt-4o": (100.0, "rate_limited"), "mini": (100.0, "deployment_missing")}
    assert own.touched == 2, f"a snapshot of 2 blocks went through {own.touched}"


def test_a_balancers_status_reads_only_its_own_backends_in_a_shared_store() -> None:
    store = InMemoryHealthStore()
    other = "https://other.example.com"
    for number in range(5000):
        store.block(other, f"name-{number}", 100.0, "rate_limited")
    balancer = Balancer([Backend(KEY)], store=store, clock=lambda: 1.0)
    store.block(KEY, "gpt-4o", 100.0, "rate_limited")
    own = store._by_key[KEY] = Watched(store._by_key[KEY])
    store._by_key[other] = Watched(store._by_key[other], forbidden=True)
    (status,) = balancer.status()
    assert [d.deployment for d in status.deployments] == ["gpt-4o"]
    assert own.touched == 1


lookups = st.tuples(st.sampled_from(["a", "b"]), st.sampled_from(["gpt-4o", "mini", "o3", "", "x"]))
changes = st.lists(
    st.one_of(
        st.tuples(st.just("block"), lookups, st.floats(0, 50), st.sampled_from(["rate_limited", "deployment_missing"])),
        st.tuples(st.just("trip"), lookups, st.floats(0, 50), st.just("failure")),
        st.tuples(st.just("success"), lookups, st.just(0.0), st.just("")),
        st.tuples(st.just("snapshot"), lookups, st.just(0.0), st.just("")),
        st.tuples(st.just("wait"), lookups, st.floats(0, 30), st.just("")),
    ),
    max_size=80,
)


@given(steps=changes, max_entries=st.sampled_from([1, 2, 3, 5, 8]))
@settings(max_examples=400, deadline=None)
def test_while_running_blocks_fit_the_bound_the_store_answers_like_one_that_forgets_nothing(
    steps: list[tuple[str, tuple[str, str], float, str]], max_entries: int
) -> None:
    store = InMemoryHealthStore(max_entries=max_entries)
    model: dict[tuple[str, str | None], tuple[float, Reason]] = {}  # every block ever, never forgotten
    tripped_at: dict[str, float] = {}
    now = 0.0

    def expected(key: str, deployment: str) -> tuple[float, Reason] | None:
        own, wide = model.get((key, deployment)), model.get((key, None))
        own = own if own is not None and own[0] > now else None
        wide = wide if wide is not None and wide[0] > now else None
        if own is not None and own[1] == "deployment_missing":
            return own
        running = [block for block in (own, wide) if block is not None]
        return max(running, key=lambda block: block[0]) if running else None

    def keep_later(slot: tuple[str, str | None], block: tuple[float, Reason]) -> None:
        if slot not in model or model[slot][0] < block[0]:
            model[slot] = block

    for op, (key, deployment), value, reason in steps:
        if op == "wait":
            now += value
        elif op == "block":
            keep_later((key, deployment), (now + value, reason))  # type: ignore[arg-type]
            store.block(key, deployment, now + value, reason)  # type: ignore[arg-type]
        elif op == "trip":
            now += 0.5  # an attempt sent after the last trip
            if tripped_at.get(key, -1.0) < now:
                tripped_at[key] = now
                keep_later((key, None), (now + value, "failure"))
            store.trip(key, now, now, lambda _, seconds=value: seconds)
        elif op == "success":
            store.count_success(key, deployment, now)
        else:
            health = store.snapshot(key, now)
            running = {d: b for (k, d), b in model.items() if k == key and d is not None and b[0] > now}
            if len(running) <= max_entries:
                assert health.deployments == running, f"snapshot of {key} at {now}"
        running_blocks = sum(1 for (_, d), b in model.items() if d is not None and b[0] > now)
        if running_blocks > max_entries:
            return  # a running block may have been evicted: only a wasted attempt, and no longer comparable
        for asked in [(k, d) for k in ("a", "b") for d in ("gpt-4o", "mini", "o3", "", "x")]:
            assert store.blocked(*asked, now) == expected(*asked), f"blocked{asked} at {now} after {op}"
        assert_consistent(store)


def test_many_threads_writing_distinct_names_and_reading_leave_a_consistent_bounded_store() -> None:
    store = InMemoryHealthStore(max_entries=500)
    barrier = threading.Barrier(16)
    errors: list[BaseException] = []

    def work(thread: int) -> None:
        try:
            barrier.wait()
            for step in range(1500):
                now = float(step)
                key = KEY if step % 2 else "https://other.example.com"
                store.block(key, f"t{thread}-{step}", now + 20, "rate_limited")
                store.blocked(key, f"t{thread}-{step - 1}", now)
                store.count_success(key, f"t{thread}-{step - 30}", now)
                if step % 100 == 0:
                    store.snapshot(key, now)
                    store.trip(key, now, now, lambda _: 1.0)
        except BaseException as error:  # reported below with the thread's traceback
            errors.append(error)

    threads = [threading.Thread(target=work, args=(number,)) for number in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads), "a thread did not finish within 60 s"
    assert not errors, errors
    assert_consistent(store)
    # The 320 blocks of the last 20 steps end last and fit the bound: none may be missing.
    lost = [
        (thread, step)
        for thread in range(16)
        for step in range(1480, 1500)
        if store.blocked(KEY if step % 2 else "https://other.example.com", f"t{thread}-{step}", 1499.0)
        != (step + 20.0, "rate_limited")
    ]
    assert not lost, f"running blocks lost: {lost[:5]}"


# -- the owners of stateful objects

OTHER = "https://paygo.example.com"


def test_owners_beyond_the_capacity_go_least_recently_used_first() -> None:
    store = InMemoryHealthStore()
    store.remember(["a", "b", "c"], KEY, 100.0, 3)
    assert store.owner("a", 0.0) == KEY, "a read is a use: 'a' is now the most recent"
    store.remember(["d"], OTHER, 100.0, 3)
    assert store.owners == 3
    assert store.owner("b", 0.0) is None, "the least recently used went first"
    assert [store.owner(object_id, 0.0) for object_id in "acd"] == [KEY, KEY, OTHER]


def test_a_smaller_capacity_shrinks_what_is_kept() -> None:
    store = InMemoryHealthStore()
    store.remember([f"id-{i}" for i in range(10)], KEY, 100.0, 10)
    store.remember(["new"], KEY, 100.0, 4)
    assert store.owners == 4
    assert [store.owner(object_id, 0.0) for object_id in ("id-7", "id-8", "id-9", "new")] == [KEY] * 4
    assert store.owner("id-6", 0.0) is None


def test_an_owner_is_forgotten_once_its_time_is_up(clock: FakeClock) -> None:
    store = InMemoryHealthStore()
    store.remember(["a"], KEY, clock.now + 60, 10)
    clock.advance(59.999)
    assert store.owner("a", clock.now) == KEY
    clock.advance(0.001)
    assert store.owner("a", clock.now) is None, "expired at its time"
    assert store.owners == 0, "an expired owner is dropped when read"


def test_remembering_again_moves_the_object_and_renews_its_time() -> None:
    store = InMemoryHealthStore()
    store.remember(["a"], KEY, 10.0, 10)
    store.remember(["a"], OTHER, 20.0, 10)
    assert store.owner("a", 15.0) == OTHER
    assert store.owners == 1


def test_many_objects_keep_the_owners_at_the_capacity() -> None:
    store = InMemoryHealthStore()
    capacity = Policy().affinity_capacity
    for i in range(200_000):
        store.remember((f"resp_{i}",), KEY, 1e9, capacity)
    assert store.owners == capacity, "bounded however many objects pass"
    assert store.owner("resp_0", 0.0) is None
    assert store.owner("resp_199999", 0.0) == KEY


def test_forget_and_clear_drop_owners() -> None:
    store = InMemoryHealthStore()
    store.remember(["a", "b"], KEY, 100.0, 10)
    store.forget("a")
    store.forget("never-seen")
    assert (store.owner("a", 0.0), store.owner("b", 0.0)) == (None, KEY)
    store.clear()
    assert store.owners == 0, "clear() forgets owners too"
