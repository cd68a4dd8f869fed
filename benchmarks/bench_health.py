"""The health store when callers name a new deployment per request: its memory and ``status()``'s time.

    python benchmarks/bench_health.py           # on its own: a table, about a minute
    python benchmarks/bench_health.py --quick   # checkpoints up to 10,000 calls

Also part of ``run.py``. Every call goes through a ``Balancer`` (one backend, a fake clock moving
10 ms per call, no network) and names a deployment no call named before, answered by a 429 with
``retry-after: 1``: each cooldown ends 100 calls later and that name is never used again. In the
``mixed`` traffic every 10th call also succeeds on a deployment that exists (working traffic, which
gives the store the time); in the ``flood`` nothing else happens. After 0, 1,000, 10,000 and
100,000 such calls: the store's memory (tracemalloc, in a pass of its own) and ``status()``'s time,
for the current store and for ``PreviousHealthStore``, a frozen copy of the store before it forgot
ended cooldowns.
"""

from __future__ import annotations

import argparse
import gc
import math
import threading
import timeit
import tracemalloc
from collections.abc import Callable
from typing import Any

from openai_lb import Backend, HealthStore, InMemoryHealthStore, Policy, Reason
from openai_lb._core import Attempt, Balancer
from openai_lb._health import BACKEND_WIDE, BackendHealth

CHECKPOINTS = (0, 1_000, 10_000, 100_000)
BACKEND = Backend("https://backend.example.com")
RATE_LIMITED = {"retry-after": "1"}


class PreviousHealthStore:
    """The previous implementation, frozen for comparison: one dict keyed by (backend, deployment),
    a block forgotten only when a success on that same pair finds it ended, snapshots scanning every
    block of every backend."""

    def __init__(self) -> None:
        self._blocks: dict[tuple[str, str | None], tuple[float, Reason]] = {}
        self._slots: dict[str, int] = {}
        self._failures: dict[str, int] = {}
        self._tripped_at: dict[str, float] = {}
        self._lock = threading.RLock()  # trip() blocks through block()

    def blocked(self, key: str, deployment: str, now: float) -> tuple[float, Reason] | None:
        own = self._blocks.get((key, deployment))
        own = own if own is not None and own[0] > now else None
        wide = self._blocks.get((key, BACKEND_WIDE))
        wide = wide if wide is not None and wide[0] > now else None
        if own is not None and (own[1] == "deployment_missing" or wide is None or own[0] >= wide[0]):
            return own
        return wide

    def block(self, key: str, deployment: str | None, until: float, reason: Reason) -> None:
        with self._lock:
            current = self._blocks.get((key, deployment))
            if current is None:
                self._slots[key] = self._slots.get(key, 0) + 1
            if current is None or current[0] < until:
                self._blocks[(key, deployment)] = (until, reason)

    def trip(self, key: str, started: float, now: float, cooldown: Callable[[int], float]) -> tuple[int, float] | None:
        with self._lock:
            if started > self._tripped_at.get(key, -math.inf):
                self._failures[key] = count = self._failures.get(key, 0) + 1
                self._tripped_at[key], seconds = now, cooldown(count)
                self.block(key, BACKEND_WIDE, now + seconds, "failure")
                return count, seconds
            return None

    def count_success(self, key: str, deployment: str, now: float) -> tuple[str | None, ...]:
        own, wide = (key, deployment), (key, BACKEND_WIDE)
        if not self._failures.get(key) and not (self._slots.get(key) and (own in self._blocks or wide in self._blocks)):
            return ()
        recovered: list[str | None] = []
        with self._lock:
            failing = self._failures.pop(key, 0) > 0
            for slot in (own, wide):
                found = self._blocks.get(slot)
                if found is not None and found[0] <= now:
                    del self._blocks[slot]
                    self._slots[key] -= 1
                    recovered.append(slot[1])
                elif found is not None and slot is wide:
                    failing = False
            if failing and BACKEND_WIDE not in recovered:
                recovered.append(BACKEND_WIDE)
        return tuple(recovered)

    def snapshot(self, key: str, now: float) -> BackendHealth:
        open_until, deployments = None, {}
        with self._lock:
            blocks = list(self._blocks.items())
            failures = self._failures.get(key, 0)
        for (owner, deployment), (until, reason) in blocks:
            if owner == key and until > now:
                if deployment is BACKEND_WIDE:
                    open_until = until
                else:
                    deployments[deployment] = (until, reason)
        return BackendHealth(failures, open_until, deployments)

    def clear(self) -> None:
        with self._lock:
            self._blocks.clear()
            self._slots.clear()
            self._failures.clear()
            self._tripped_at.clear()


STORES: dict[str, Callable[[], HealthStore]] = {"current": InMemoryHealthStore, "previous": PreviousHealthStore}


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _traffic(store: HealthStore, mixed: bool) -> tuple[Balancer, Callable[[int], None]]:
    clock = _Clock()
    balancer = Balancer([BACKEND], store=store, clock=clock, wall_clock=clock, policy=Policy())

    def calls(first: int, last: int) -> None:
        for number in range(first, last):
            clock.now += 0.01
            call = balancer.begin(f"deployment-{number}")
            attempt = call.next()
            assert isinstance(attempt, Attempt), attempt
            call.report(attempt, 429, RATE_LIMITED, None)
            if mixed and number % 10 == 0:
                call = balancer.begin("gpt-4o")
                attempt = call.next()
                assert isinstance(attempt, Attempt), attempt
                call.report(attempt, 200, {}, None)

    done = 0

    def until(count: int) -> None:
        nonlocal done
        calls(done, count)
        done = count

    return balancer, until


def _memory_kib(store_name: str, mixed: bool, checkpoints: tuple[int, ...]) -> list[float]:
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        store = STORES[store_name]()
        _, run_until = _traffic(store, mixed)
        sizes = []
        for count in checkpoints:
            run_until(count)
            gc.collect()
            sizes.append((tracemalloc.get_traced_memory()[0] - before) / 1024)
        return sizes
    finally:
        tracemalloc.stop()


def _status_us(store_name: str, mixed: bool, checkpoints: tuple[int, ...], repeat: int) -> list[dict[str, float]]:
    store = STORES[store_name]()
    balancer, run_until = _traffic(store, mixed)
    times = []
    for count in checkpoints:
        run_until(count)
        balancer.status()  # the first status() after the calls forgets what it finds ended
        runs = timeit.repeat(balancer.status, number=1, repeat=repeat)
        times.append({"min": min(runs) * 1e6, "median": sorted(runs)[len(runs) // 2] * 1e6})
    return times


def health(checkpoints: tuple[int, ...] = CHECKPOINTS, repeat: int = 20) -> dict[str, Any]:
    """Memory (KiB) and ``status()`` time (µs) after each checkpoint, per traffic and store."""
    results: dict[str, Any] = {"checkpoints": list(checkpoints), "traffic": {}}
    for traffic in ("mixed", "flood"):
        by_store = {}
        for store_name in STORES:
            mixed = traffic == "mixed"
            by_store[store_name] = {
                "memory_kib": _memory_kib(store_name, mixed, checkpoints),
                "status_us": _status_us(store_name, mixed, checkpoints, repeat),
            }
        results["traffic"][traffic] = by_store
    results["max_entries"] = InMemoryHealthStore().max_entries
    return results


def table(results: dict[str, Any]) -> str:
    """The results as a Markdown table, one row per traffic and store."""
    checkpoints = results["checkpoints"]
    header = ["traffic", "store", *(f"after {c:,}: KiB / status() µs" for c in checkpoints)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for traffic, by_store in results["traffic"].items():
        for store_name, measured in by_store.items():
            cells = [
                f"{kib:,.0f} / {status['median']:,.1f}"
                for kib, status in zip(measured["memory_kib"], measured["status_us"], strict=True)
            ]
            lines.append("| " + " | ".join([traffic, store_name, *cells]) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="checkpoints up to 10,000 calls")
    args = parser.parse_args()
    print(table(health(CHECKPOINTS[:-1] if args.quick else CHECKPOINTS, 5 if args.quick else 20)))


if __name__ == "__main__":
    main()
