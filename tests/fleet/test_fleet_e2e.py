"""Fleet-wide balancing end to end: worker processes, each with its own SDK client, one Redis, fake Azure servers.

The fake servers are threads of this process on 127.0.0.1; the workers (`fleet_worker`, started with
``spawn``) build ``openai_lb.AzureOpenAI(..., health_store=<redis url>)`` and report through a queue.
Where it proves the feature, one job runs a client over per-process memory beside one over Redis,
against servers of their own, so the same load shows the difference.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
from fleet_worker import Fleet, Job, Outcome, Plan, Turn
from redis_server import RedisServer, require_redis, wait_until

import openai_lb
from openai_lb.testing import FakeAzureOpenAI, Reply, closed_port_url

WORKERS = 4
WINDOW = 1.0
"""Seconds of the PTU's budget windows."""


@pytest.fixture(scope="module")
def fleet() -> Iterator[Fleet]:
    """Four worker processes for the whole module: importing the SDK in each costs seconds."""
    require_redis()
    with FakeAzureOpenAI(name="warmup", deployments={"gpt-4o"}) as warmup, Fleet(WORKERS, warmup.url) as workers:
        yield workers


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A server per test: its URL is a new store in every worker, and nothing is left from another test."""
    with RedisServer() as server:
        yield server


def no_errors(results: list[list[Outcome]]) -> None:
    errors = [(worker, error) for worker, outcomes in enumerate(results) for o in outcomes for error in o.errors]
    assert not errors, f"requests failed: {errors[:5]} ({len(errors)} in all)"


def rejections_per_window(ptu: FakeAzureOpenAI) -> tuple[float, int]:
    """(the PTU's 429s per budget window that ran out, how many windows ran out).

    Windows tile time from the PTU's first budgeted answer; only windows that ran out count, so the
    run's ragged ends don't thin the average.
    """
    answers = ptu.answers
    assert answers, "the PTU got no request"
    first = answers[0][0]
    per_window = Counter(math.floor((at - first) / WINDOW) for at, status in answers if status == 429)
    if not per_window:
        return 0.0, 0
    return sum(per_window.values()) / len(per_window), len(per_window)


def side_by_side(
    preferred: tuple[str, str, str],
    fallback: tuple[str, str],
    store: str,
    *,
    requests: int,
    interval: float,
    breaker: float = 5.0,
) -> Job:
    """The same load through a client on per-process memory and one on the Redis ``store``.

    ``preferred`` is (name, URL for the memory client, URL for the Redis client) at priority 1, so each
    client has a server of its own to count on; ``fallback`` (name, URL) is shared, at priority 2.
    """
    name, memory_url, redis_url = preferred
    plans = tuple(
        Plan(((name, url, 1), (*fallback, 2)), store=where, breaker=breaker)
        for url, where in ((memory_url, None), (redis_url, store))
    )
    return Job(plans, requests=requests, interval=interval, stagger=interval / WORKERS)


@pytest.mark.timeout(90)
def test_ptu_429s_fall_to_about_one_per_window_across_the_fleet_with_redis(
    fleet: Fleet, redis_server: RedisServer, servers: Any
) -> None:
    budget = 2
    ptu_memory = servers("ptu-memory", budget=budget, window=WINDOW)
    ptu_redis = servers("ptu-redis", budget=budget, window=WINDOW)
    payg = servers("payg")
    interval, requests = 0.2, 40  # 5 requests a second per worker and client, for 8 s: 8 windows
    ptu = ("ptu", ptu_memory.url, ptu_redis.url)
    job = side_by_side(ptu, ("payg", payg.url), redis_server.url, requests=requests, interval=interval)
    results = fleet.run(job, timeout=60)
    no_errors(results)
    for worker, (memory, shared) in enumerate(results):
        assert sum(memory.answered_by.values()) == sum(shared.answered_by.values()) == requests, (worker, results)
    memory_rate, memory_windows = rejections_per_window(ptu_memory)
    redis_rate, redis_windows = rejections_per_window(ptu_redis)
    measured = (
        f"429s per window: memory {memory_rate:.2f} over {memory_windows}, Redis {redis_rate:.2f} over {redis_windows}"
    )
    print(measured)  # shown with -s, and on failure
    assert min(memory_windows, redis_windows) >= 5, f"the load ran out too few budget windows: {measured}"
    assert redis_rate <= 1.5, f"the fleet did not share the PTU's cooldown: {measured}"
    # Each process learning alone: about one 429 per worker per window. This proves the test can fail.
    assert memory_rate >= WORKERS * 0.6, f"per-process memory should pay about one 429 per worker: {measured}"
    assert ptu_redis.served >= budget * redis_windows, "the PTU was not used up to its budget with Redis"
    shared_429s = sum(o[1].rate_limited["ptu"] for o in results)
    assert shared_429s == ptu_redis.rejected, "the clients' status() and the server disagree on the 429s"


@pytest.mark.timeout(90)
def test_a_refused_backend_is_skipped_by_every_worker_after_one_worker_saw_it(
    fleet: Fleet, redis_server: RedisServer, servers: Any
) -> None:
    healthy = servers("healthy")
    breaker, interval, requests = 1.0, 0.1, 30
    refused = ("refused", closed_port_url(), closed_port_url())
    job = side_by_side(
        refused, ("healthy", healthy.url), redis_server.url, requests=requests, interval=interval, breaker=breaker
    )
    results = fleet.run(job, timeout=60)
    no_errors(results)
    for worker, (memory, shared) in enumerate(results):
        assert memory.answered_by == shared.answered_by == {"healthy": requests}, (worker, results)
    memory_attempts = sum(outcomes[0].attempts["refused"] for outcomes in results)
    redis_attempts = sum(outcomes[1].attempts["refused"] for outcomes in results)
    periods = (requests * interval) / breaker  # breaker periods the run lasts, about
    measured = (
        f"connection attempts to the refused backend over {periods:.0f} breaker periods, {WORKERS} workers: "
        f"memory {memory_attempts}, Redis {redis_attempts}"
    )
    print(measured)  # shown with -s, and on failure
    # One worker's trip opens the circuit everywhere: about one attempt per period for the whole fleet.
    assert redis_attempts <= 1.5 * (periods + 1), f"the workers did not share the open circuit: {measured}"
    assert redis_attempts < WORKERS * requests / 10
    # Alone, each worker pays for every period itself.
    assert memory_attempts >= WORKERS * periods * 0.75, f"per-process memory should retry per worker: {measured}"


@pytest.mark.timeout(120)
def test_redis_killed_and_restarted_mid_run_fails_no_request_and_sharing_resumes(
    fleet: Fleet, redis_server: RedisServer, servers: Any
) -> None:
    ptu = servers("ptu", budget=3, window=WINDOW)
    payg = servers("payg")
    canary = servers("canary")
    interval, requests = 0.1, 40
    backends = (("ptu", ptu.url, 1), ("payg", payg.url, 2), ("canary", canary.url, 3))
    job = Job(
        plans=(Plan(backends, store=redis_server.url, max_retries=2, watch="canary"),),
        requests=requests,
        interval=interval,
        stagger=interval / WORKERS,
        watch_timeout=30.0,
    )
    fleet.start(job)
    time.sleep(1.0)
    redis_server.kill()
    time.sleep(1.0)
    redis_server.start()
    # This process is one more of the fleet: after the restart, a cooldown it learns must reach the workers.
    client = openai_lb.AzureOpenAI(
        backends=[
            openai_lb.Backend(canary.url, name="canary", priority=1),
            openai_lb.Backend(payg.url, name="payg", priority=2),
        ],
        health_store=redis_server.url,
        api_key="fleet-key",
        api_version="2024-10-21",
        max_retries=0,
    )
    store: Any = client.balancer.store
    try:
        wait_until(lambda: store.connected, 20, "this process's store connecting to the restarted server")
        canary.script(Reply(429, headers={"retry-after-ms": "60000"}))
        raw = client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
        assert raw.headers["x-openai-lb-backend"] == "payg"
        results = fleet.results(timeout=60)
    finally:
        client.close()
        store.close()
    no_errors(results)
    for worker, (outcome,) in enumerate(results):
        assert sum(outcome.answered_by.values()) == requests, f"worker {worker} lost requests: {outcome}"
        assert outcome.learned_after is not None, f"worker {worker} never learned the canary's cooldown: {outcome}"
        assert outcome.attempts["canary"] == 0, "the canary was only to be learned about, never used"
        # Proof that the worker went through the outage, failing open with one warning.
        assert len(outcome.warnings) == 1, f"worker {worker}: {outcome.warnings}"
        assert "health store" in outcome.warnings[0], outcome.warnings
    print("seconds after its requests until each worker learned the cooldown:", [o[0].learned_after for o in results])


@pytest.mark.timeout(60)
def test_a_wrong_password_fails_open_with_one_warning_and_never_shows_the_password(
    servers: Any, caplog: pytest.LogCaptureFixture
) -> None:
    secret, wrong = "Fleet-Server-Secret-1", "Fleet-Wrong-Secret-2"
    payg = servers("payg")
    with RedisServer(password=secret) as server:
        url = server.url.replace(secret, wrong)
        with caplog.at_level(logging.DEBUG, logger="openai_lb"):
            client = openai_lb.AzureOpenAI(
                backends=[openai_lb.Backend(payg.url, name="payg")],
                health_store=url,
                api_key="fleet-key",
                api_version="2024-10-21",
                max_retries=0,
            )
            store: Any = client.balancer.store
            try:
                for _ in range(5):
                    answer = client.chat.completions.create(
                        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
                    )
                    assert answer.choices[0].message.content == "payg:gpt-4o"
                wait_until(lambda: any(r.levelno >= logging.WARNING for r in caplog.records), 10, "the warning")
                time.sleep(0.5)  # reconnection attempts go on, and must not warn again
                seen = [repr(store), store.url, repr(client.balancer), *map(repr, client.balancer.status())]
                with pytest.raises(openai_lb.ConfigurationError) as raised:
                    openai_lb.AzureOpenAI(
                        backends=[openai_lb.Backend(payg.url)], health_store=url.replace("redis://", "redis+x://")
                    )
                seen.append(str(raised.value))
                assert not store.connected
            finally:
                client.close()
                store.close()
        warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]
        assert warnings[0].name == "openai_lb"
        assert "health store" in warnings[0].getMessage(), warnings[0].getMessage()
        assert "AuthenticationError" in warnings[0].getMessage(), warnings[0].getMessage()
        seen += [r.getMessage() for r in caplog.records] + [repr(r.args) for r in caplog.records]
        for text in seen:
            assert wrong not in text, f"the client's password leaked: {text!r}"
            assert secret not in text, f"the server's password leaked: {text!r}"


@pytest.mark.timeout(60)
def test_garbage_in_the_namespace_is_ignored_and_counted_and_clients_keep_sharing(
    redis_server: RedisServer, servers: Any
) -> None:
    ptu = servers("ptu")
    payg = servers("payg")
    prefix = "openai_lb:v1:"  # a URL's store uses the default namespace
    key = openai_lb.Backend(ptu.url).key
    redis: Any = redis_server.client()
    planted = {
        "block:bytes": b"\x80\xff not json",
        "block:list": "[1, 2]",
        "block:newer": json.dumps({"v": 2, "kind": "block", "key": key, "until": 1e15}),
        "breaker:words": json.dumps({"v": 1, "kind": "breaker", "key": key, "until": "soon", "by": "x"}),
        "block:huge": "x" * 70_000,
    }
    for name, value in planted.items():
        redis.set(prefix + name, value)
    redis.hset(prefix + "block:hash", "until", "1")  # not a string: never read as a value

    def balanced(store: Any) -> Any:
        return openai_lb.AzureOpenAI(
            backends=[
                openai_lb.Backend(ptu.url, name="ptu", priority=1),
                openai_lb.Backend(payg.url, name="payg", priority=2),
            ],
            health_store=store,
            api_key="fleet-key",
            api_version="2024-10-21",
            max_retries=0,
        )

    one = balanced(redis_server.url)
    # A second store on the same server stands for another process.
    other_store = openai_lb.RedisHealthStore(redis_server.url)
    other = balanced(other_store)
    stores: list[Any] = [one.balancer.store, other_store]
    try:
        wait_until(lambda: all(s.connected for s in stores), 10, "both stores connecting")
        assert [s.ignored for s in stores] == [len(planted)] * 2, "the planted values were not all ignored on sync"
        junk: list[Any] = [b"junk", b"{}", json.dumps({"v": 1, "kind": "block", "key": 1, "until": 1, "by": "x"})]
        for message in junk:
            redis.publish(other_store.channel, message)
        expected = len(planted) + len(junk)
        wait_until(lambda: all(s.ignored == expected for s in stores), 10, "the published junk being ignored")
        assert all(s.blocked(key, "gpt-4o", time.monotonic()) is None for s in stores), "garbage cooled the PTU"
        assert chat(other) == "ptu"
        ptu.script(Reply(429, headers={"retry-after-ms": "60000"}))
        assert chat(one) == "payg"
        wait_until(lambda: other_store.blocked(key, "gpt-4o", time.monotonic()) is not None, 10, "the cooldown sharing")
        sent = len(ptu.requests)
        assert chat(other) == "payg"
        assert len(ptu.requests) == sent, "the other client tried the PTU it had learned was cooling"
    finally:
        for client in (one, other):
            client.close()
        for store in stores:
            store.close()
        redis.close()


@pytest.mark.timeout(90)
def test_a_response_created_in_one_process_is_continued_in_another_on_its_backend_without_discovery(
    fleet: Fleet, redis_server: RedisServer, servers: Any
) -> None:
    east, west, north = servers("east"), servers("west"), servers("north")
    # The creator prefers east; the continuer prefers the two others, where a chain it could only
    # look for would be looked for first.
    creator = Plan((("east", east.url, 1), ("west", west.url, 2), ("north", north.url, 2)), store=redis_server.url)
    continuer = Plan((("east", east.url, 2), ("west", west.url, 1), ("north", north.url, 1)), store=redis_server.url)
    alone = Plan(continuer.backends, store=None)  # the same preferences over this process's memory only
    fleet.begin({0: creator, 1: continuer, 2: alone})
    try:
        first = fleet.turn(0, Turn())
        assert (first.backend, first.turn) == ("east", "1"), first
        second = fleet.turn(1, Turn(first.response_id))
        looked_elsewhere = [(server.name, r.path) for server in (west, north) for r in server.requests]
        control = fleet.turn(2, Turn(first.response_id, wait=False))
    finally:
        fleet.end((0, 1, 2))
    print(f"the continuing process knew the response's backend {second.waited:.3f} s after it was created")
    assert (second.backend, second.turn) == ("east", "2"), f"the chain was not continued on its backend: {second}"
    assert not looked_elsewhere, f"the continuing process looked for the response elsewhere: {looked_elsewhere}"
    east_counts = second.counts["east"]
    assert (east_counts["attempts"], east_counts["pinned"], east_counts["discovered"]) == (1, 1, 0), second.counts
    assert sum(counts["failovers_away"] for counts in second.counts.values()) == 0, second.counts
    assert second.response_id in east.objects, "the continued response is not on east"
    # Proof that the test can fail: a process that was not told looks on its preferred backends first.
    assert (control.backend, control.counts["east"]["discovered"]) == ("east", 1), control
    assert control.counts["west"]["failovers_away"] + control.counts["north"]["failovers_away"] == 2, control.counts


def chat(client: Any) -> str:
    """The backend that answered one chat completion."""
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    backend: str = raw.headers["x-openai-lb-backend"]
    return backend
