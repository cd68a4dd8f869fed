"""Fleet-wide balancing: W worker processes sharing one PTU, each with its own client, in-memory vs Redis state.

    python benchmarks/bench_fleet.py [--quick]     # needs openai, redis-py and redis-server

Fake Azure OpenAI servers (a PTU with a request budget per window, two pay-as-you-go deployments
with room to spare) run in a process of their own, one ``redis-server`` in another, both on
127.0.0.1. For W = 1, 4 and 8 worker processes (spawned), each with its own
``openai_lb.AsyncAzureOpenAI`` and either its own ``InMemoryHealthStore`` or a ``RedisHealthStore``
on that server, an open-loop load (Poisson arrivals, the total rate split evenly over the workers)
above the PTU's budget but within the total capacity runs for several windows. Every worker that
has not heard of the PTU's 429 yet spends one request on learning it: with state in memory that is
about W per window, with a shared store about one.

Also measured: how long a block written in one process takes to reach another through Redis
(propagation), and what a ``RedisHealthStore`` costs on the hot path against an
``InMemoryHealthStore`` in the isolated transport benchmark.
"""

from __future__ import annotations

import argparse
import logging
import math
import multiprocessing
import os
import random
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from typing import Any

import httpx
import openai
from _measure import COMPLETION, InMemory, balancing, interleaved, per_request_seconds, spread
from _redis_server import RedisProcess
from _servers import ServerProcess
from _systems import API_KEY, API_VERSION
from bench_spillover import Outcome, Scenario, _analyse, _drive_async, _percentile

import openai_lb
from openai_lb import BackendCooled, HealthStore, InMemoryHealthStore, RedisHealthStore

WORKERS = (1, 4, 8)
STORES = ("memory", "redis")
FLEET = Scenario(
    "PTU + 2 pay-as-you-go, shared by a fleet",
    [("ptu", 1, 20), ("paygo-a", 2, 40), ("paygo-b", 2, 40)],
    window=1.0,
    rate=40,
    duration=10,
)
CONNECT_TIMEOUT = 15.0
"""Seconds a worker waits for its store to reach Redis before the run is called off."""


def rejections_per_window(answers: list[tuple[float, int]], window: float, until: float) -> list[int]:
    """The 429s a budgeted backend answered in each of its whole windows that end by ``until``.

    ``answers`` are (moment, status); the windows tile time from the backend's first answer, as
    Azure's (and the fake server's) fixed windows do from the first request.
    """
    if not answers:
        return []
    start = min(t for t, _ in answers)
    counts = [0] * max(0, math.floor((until - start) / window + 1e-9))
    for moment, status in answers:
        index = math.floor((moment - start) / window)
        if status == 429 and 0 <= index < len(counts):
            counts[index] += 1
    return counts


def _connected(store: RedisHealthStore) -> None:
    deadline = time.monotonic() + CONNECT_TIMEOUT
    while not store.connected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the store did not reach {store.url} within {CONNECT_TIMEOUT:g} s")
        time.sleep(0.005)


@dataclass(frozen=True)
class Job:
    """What a worker process is told for one configuration: its place in the fleet, its store, the servers."""

    index: int
    workers: int
    store: str
    redis_url: str
    namespace: str
    urls: dict[str, str]
    duration: float


def _warm_up() -> None:
    """One call through the SDK and the balancer over an in-memory transport: the SDK's lazy imports and
    model building take a good part of a second, which must not land in the first window's requests."""
    inner = httpx.MockTransport(lambda request: httpx.Response(200, json=COMPLETION))
    transport = openai_lb.HTTPXTransport(
        [openai_lb.Backend("https://warm-up.example.com")], transport=inner, health_store=InMemoryHealthStore()
    )
    client = openai.AsyncAzureOpenAI(
        azure_endpoint="https://warm-up.example.com",
        api_key=API_KEY,
        api_version=API_VERSION,
        http_client=httpx.AsyncClient(transport=transport),
    )
    _drive_async(client, replace(FLEET, rate=1000, duration=0.002), start=time.monotonic())


def _worker(conn: Connection) -> None:
    """A process of the fleet, kept for every configuration: per job its own client and store, its share
    of the load from the shared start."""
    logging.getLogger("openai_lb").setLevel(logging.ERROR)  # every 429 would be a line otherwise
    _warm_up()
    conn.send("ready")
    while (job := conn.recv()) is not None:
        store: HealthStore
        if job.store == "redis":
            store = RedisHealthStore(job.redis_url, namespace=job.namespace)
            _connected(store)
        else:
            store = InMemoryHealthStore()
        client = openai_lb.AsyncAzureOpenAI(
            backends=[openai_lb.Backend(job.urls[name], priority=priority) for name, priority, _ in FLEET.tiers],
            health_store=store,
            api_key=API_KEY,
            api_version=API_VERSION,
        )
        conn.send("ready")
        share = replace(FLEET, rate=FLEET.rate / job.workers, duration=job.duration)
        outcomes = _drive_async(client, share, seed=1000 * job.workers + job.index, start=conn.recv())
        if isinstance(store, RedisHealthStore):
            store.close()
        conn.send([(o.arrived, o.finished, o.ok) for o in outcomes])


def _gather(conns: list[Connection], timeout: float, what: str) -> list[Any]:
    deadline = time.monotonic() + timeout
    received = []
    for conn in conns:
        if not conn.poll(max(0.0, deadline - time.monotonic())):
            raise RuntimeError(f"a worker process sent no {what} within {timeout:g} s")
        received.append(conn.recv())
    return received


class Pool:
    """``size`` worker processes (spawned), started once and given one job per configuration."""

    def __init__(self, size: int) -> None:
        context = multiprocessing.get_context("spawn")
        pipes = [context.Pipe() for _ in range(size)]
        self._conns = [parent for parent, _ in pipes]
        self._processes = [context.Process(target=_worker, args=(child,), daemon=True) for _, child in pipes]
        for process in self._processes:
            process.start()
        _gather(self._conns, 60 + 10 * size, "ready signal")

    def run(self, jobs: list[Job]) -> list[Outcome]:
        """Every job at once, from one start; the outcomes of all of them."""
        conns = self._conns[: len(jobs)]
        for conn, job in zip(conns, jobs, strict=True):
            conn.send(job)
        _gather(conns, 30, "ready signal")
        start = time.monotonic() + 0.2
        for conn in conns:
            conn.send(start)
        answered = _gather(conns, max(job.duration for job in jobs) + 60, "outcomes")
        return [Outcome(*row) for rows in answered for row in rows]

    def close(self) -> None:
        for conn in self._conns:
            conn.send(None)
        for process in self._processes:
            process.join(10)
            if process.is_alive():
                process.kill()

    def __enter__(self) -> Pool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def run_fleet(pool: Pool, workers: int, kind: str, redis_url: str, duration: float) -> dict[str, Any]:
    """One configuration: W workers over fresh fake servers; the spill-over metrics plus PTU 429s per window."""
    servers = [
        {"name": name, "path_prefix": f"/{name}", "budget": budget, "window": FLEET.window}
        for name, _, budget in FLEET.tiers
    ]
    namespace = f"bench-fleet-{uuid.uuid4().hex[:8]}"  # nothing from an earlier run is shared
    with ServerProcess(servers, group=True) as server:
        outcomes = pool.run(
            [Job(i, workers, kind, redis_url, namespace, server.urls, duration) for i in range(workers)]
        )
        stats = server.stats()
    result = _analyse(replace(FLEET, duration=duration), outcomes, stats)
    del result["timeline"]
    by_window = rejections_per_window(
        [(t, status) for t, status in stats["ptu"]["answers"]], FLEET.window, max(o.arrived for o in outcomes)
    )
    result.update(
        {
            "workers": workers,
            "store": kind,
            "ptu_429s_by_window": by_window,
            "ptu_429s_per_window": statistics.mean(by_window) if by_window else None,
        }
    )
    return result


def _watcher(redis_url: str, namespace: str, conn: Connection) -> None:
    """Process B: the moment its store has applied each block that another process wrote."""
    logging.getLogger("openai_lb").setLevel(logging.ERROR)
    seen: dict[str, float] = {}

    def note(event: object) -> None:
        # Called by the store's listener right after its memory holds the block: from then on, a
        # balancer's blocked() in this process sees it.
        if isinstance(event, BackendCooled) and event.origin == "fleet" and event.deployment is not None:
            seen.setdefault(event.deployment, time.monotonic())

    with RedisHealthStore(redis_url, namespace=namespace, on_event=note) as store:
        _connected(store)
        conn.send("ready")
        expected = conn.recv()
        deadline = time.monotonic() + 10
        while len(seen) < expected and time.monotonic() < deadline:
            time.sleep(0.01)
    conn.send(dict(seen))


def propagation(samples: int, redis_url: str, spacing: float = 0.01) -> dict[str, Any]:
    """Process A (this one) blocks a deployment; process B notes when its store knows. ms, A's call to B's memory."""
    namespace = f"bench-propagation-{uuid.uuid4().hex[:8]}"
    parent, child = multiprocessing.get_context("spawn").Pipe()
    watcher = multiprocessing.get_context("spawn").Process(target=_watcher, args=(redis_url, namespace, child))
    watcher.start()
    try:
        _gather([parent], 60, "ready signal")
        sent: dict[str, float] = {}
        with RedisHealthStore(redis_url, namespace=namespace) as store:
            _connected(store)
            for i in range(samples):
                deployment = f"deployment-{i}"
                sent[deployment] = time.monotonic()  # one clock for both processes: CLOCK_MONOTONIC
                store.block("https://ptu.example.com", deployment, sent[deployment] + 60, "rate_limited")
                time.sleep(spacing * random.uniform(0.5, 1.5))  # no phase lock with the listener's poll
            parent.send(samples)
            seen = _gather([parent], 30, "arrival times")[0]
    finally:
        watcher.join(10)
        if watcher.is_alive():
            watcher.kill()
    delays = [(seen[d] - t) * 1e3 for d, t in sent.items() if d in seen]
    return {
        "samples": samples,
        "received": len(delays),
        "p50_ms": _percentile(delays, 0.5) if delays else None,
        "p99_ms": _percentile(delays, 0.99) if delays else None,
        "max_ms": max(delays) if delays else None,
    }


def hot_path(rounds: int, calls: int, redis_url: str) -> dict[str, Any]:
    """The isolated transport benchmark (3 backends, PTU + spares) with each store, side by side."""
    shared = RedisHealthStore(redis_url, namespace=f"bench-hot-{uuid.uuid4().hex[:8]}")
    _connected(shared)
    cases: dict[str, Callable[[], httpx.BaseTransport]] = {
        "inner alone": InMemory,
        "InMemoryHealthStore": lambda: balancing(3, tiered=True, store=InMemoryHealthStore()),
        "RedisHealthStore": lambda: balancing(3, tiered=True, store=shared),
    }
    try:
        samples: dict[str, list[float]] = per_request_seconds(rounds, calls, cases)
        calls_alone = store_calls(
            4 * rounds, 5 * calls, {"InMemoryHealthStore": InMemoryHealthStore(), "RedisHealthStore": shared}
        )
    finally:
        shared.close()
    inner = samples["inner alone"]
    paired = zip(samples["RedisHealthStore"], samples["InMemoryHealthStore"], strict=True)
    return {
        "calls_per_round": calls,
        "rounds": rounds,
        "inner_us": spread([v * 1e6 for v in inner]),
        "added_us": {
            name: spread([(v - i) * 1e6 for v, i in zip(samples[name], inner, strict=True)])
            for name in ("InMemoryHealthStore", "RedisHealthStore")
        },
        "redis_minus_memory_us": spread([(r - m) * 1e6 for r, m in paired]),
        "best_round_us": {name: min(samples[name]) * 1e6 for name in samples},
        "store_calls_ns": {name: spread([v * 1e9 for v in values]) for name, values in calls_alone.items()},
        "store_calls_redis_minus_memory_ns": spread(
            [
                (r - m) * 1e9
                for r, m in zip(calls_alone["RedisHealthStore"], calls_alone["InMemoryHealthStore"], strict=True)
            ]
        ),
    }


def store_calls(rounds: int, calls: int, stores: dict[str, HealthStore]) -> dict[str, list[float]]:
    """Seconds per request of the store calls a success makes: ``blocked()`` on 3 backends, then
    ``count_success()`` on the one that answered. Without the transport around them, far less noisy."""
    keys = [f"https://b{i}.example.com" for i in range(3)]

    def per_request(store: HealthStore) -> float:
        started = time.perf_counter()
        for _ in range(calls):
            now = time.monotonic()
            for key in keys:
                store.blocked(key, "gpt-4o", now)
            store.count_success(keys[0], "gpt-4o", now)
        return (time.perf_counter() - started) / calls

    return interleaved(rounds, stores, per_request)


def summarise(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (store, W): the median and range over rounds of each headline metric."""
    rows = []
    for workers in WORKERS:
        for kind in STORES:
            chosen = [r for r in runs if (r["workers"], r["store"]) == (workers, kind)]
            if not chosen:
                continue
            rows.append(
                {
                    "workers": workers,
                    "store": kind,
                    "rounds": len(chosen),
                    **{
                        metric: spread([r[metric] for r in chosen])
                        for metric in ("success_share", "ptu_utilisation", "ptu_429s_per_window")
                        if all(r[metric] is not None for r in chosen)
                    },
                    "p99_ms": spread([r["latency_ms"]["p99"] for r in chosen if r["latency_ms"]]),
                }
            )
    return rows


def fleet(quick: bool) -> dict[str, Any]:
    """Every configuration in one run (random order per round), then propagation and the hot path."""
    rounds, duration = (1, 6.0) if quick else (2, FLEET.duration)
    configurations = [(w, k) for w in WORKERS for k in STORES]
    runs = []
    with RedisProcess() as redis_server, Pool(max(WORKERS)) as pool:
        # Discarded: a fresh process's first requests (connections, code paths) are far slower than the rest.
        for kind in STORES:
            run_fleet(pool, max(WORKERS), kind, redis_server.url, 2.0)
        for round_number in range(rounds):
            for workers, kind in random.sample(configurations, len(configurations)):
                result = run_fleet(pool, workers, kind, redis_server.url, duration)
                result["round"] = round_number
                runs.append(result)
        spread_of_blocks = propagation(50 if quick else 200, redis_server.url)
        # Many short rounds: the stores alternate often, so that other load on the host hits both alike.
        cost = hot_path(10 if quick else 40, 1000 if quick else 2000, redis_server.url)
        load = os.getloadavg()
    return {
        "scenario": FLEET.name,
        "window": FLEET.window,
        "ptu_budget": FLEET.tiers[0][2],
        "paygo_budgets": [budget for _, _, budget in FLEET.tiers[1:]],
        "rate": FLEET.rate,
        "duration": duration,
        "rounds": rounds,
        "runs": runs,
        "summary": summarise(runs),
        "propagation": spread_of_blocks,
        "hot_path": cost,
        "load_average": {"1 min": load[0], "5 min": load[1], "cores": os.cpu_count()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one round of shorter runs")
    args = parser.parse_args()
    import _report

    result = fleet(args.quick)
    print(_report.fleet_markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
