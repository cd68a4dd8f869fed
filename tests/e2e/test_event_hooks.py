"""on_event hooks through the real SDK against fake Azure OpenAI servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from e2e_helpers import Recorder, content

import openai_lb
from openai_lb import (
    AllBackendsCooling,
    AttemptFinished,
    AttemptStarted,
    Backend,
    BackendCooled,
    BackendRecovered,
    Event,
)
from openai_lb.testing import Reply, Stall, closed_port_url

MESSAGES = [{"role": "user", "content": "hi"}]


def test_a_429_failover_and_a_refused_backend_reach_the_hook_as_typed_events(servers, balanced) -> None:
    ptu, paygo = servers("ptu", api_keys={"ptu-secret"}), servers("paygo")
    events = Recorder()
    client = balanced(
        [
            Backend(closed_port_url(), priority=0, name="down"),
            Backend(ptu.url, priority=1, name="ptu", api_key="ptu-secret"),
            Backend(paygo.url, priority=2, name="paygo"),
        ],
        on_event=events,
    )
    ptu.script(Reply(429, headers={"retry-after-ms": "30000"}))
    raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    assert content(raw) == "paygo:gpt-4o"
    finished = events.of(AttemptFinished)
    assert [(e.backend, e.number, e.outcome, e.status, e.error) for e in finished] == [
        ("down", 1, "failure", None, "ConnectError"),
        ("ptu", 2, "rate_limited", 429, None),
        ("paygo", 3, "success", 200, None),
    ]
    assert all(e.latency > 0 for e in finished), finished
    cooled = events.of(BackendCooled)
    assert [(e.backend, e.deployment, e.reason, e.source) for e in cooled] == [
        ("down", None, "failure", None),
        ("ptu", "gpt-4o", "rate_limited", "retry-after-ms"),
    ]
    assert cooled[1].seconds == 30.0
    assert len(events.of(AttemptStarted)) == 3
    assert not any("secret" in repr(e) or "client-key" in repr(e) for e in events.events), "no credential"


def test_every_backend_cooling_and_the_recovery_are_reported(servers, balanced, clock) -> None:
    ptu = servers("ptu")
    events = Recorder()
    client = balanced([Backend(ptu.url, name="ptu")], on_event=events, clock=clock)
    ptu.script(Reply(429, headers={"retry-after": "3"}))
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert events.events[-1] == AllBackendsCooling("gpt-4o", 3.0, "ptu", 1)
    clock.advance(3)
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert events.events[-1] == BackendRecovered("ptu", ptu.url, "gpt-4o")


def test_a_raising_hook_never_breaks_a_request(servers, balanced, caplog) -> None:
    ptu = servers("ptu")
    calls = Counter[str]()

    def broken(event: Event) -> None:
        calls[type(event).__name__] += 1
        raise ValueError("bug in a hook")

    client = balanced([Backend(ptu.url, name="ptu")], on_event=[broken])
    with caplog.at_level(logging.ERROR, logger="openai_lb"):
        answer = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    assert answer.choices[0].message.content == "ptu:gpt-4o"
    assert calls == {"AttemptStarted": 1, "AttemptFinished": 1}
    assert sum("ignored" in r.getMessage() for r in caplog.records) == 2


def test_patch_gives_its_hooks_to_the_clients_the_application_builds(servers) -> None:
    ptu = servers("ptu")
    events = Recorder()
    with openai_lb.patch([Backend(ptu.url, name="ptu")], on_event=events):
        client = openai.AzureOpenAI(azure_endpoint="https://app.example.com", api_key="k", api_version="2024-10-21")
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        client.close()
    assert [type(e).__name__ for e in events.events] == ["AttemptStarted", "AttemptFinished"]


def test_starts_and_finishes_pair_up_across_many_threads(servers, balanced) -> None:
    ptu = servers("ptu", budget=20, window=60)
    paygo = servers("paygo")
    events = Recorder()
    client = balanced([Backend(ptu.url, priority=1, name="ptu"), Backend(paygo.url, priority=2)], on_event=events)

    def work(_: int) -> None:
        for _ in range(4):
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(work, range(16)))
    started, finished = events.of(AttemptStarted), events.of(AttemptFinished)
    assert len(started) == len(finished) == ptu.served + ptu.rejected + paygo.served
    assert sum(e.outcome == "success" for e in finished) == 64
    assert sum(e.outcome == "rate_limited" for e in finished) == ptu.rejected


@pytest.mark.anyio
async def test_starts_and_finishes_pair_up_across_many_tasks_even_when_cancelled(servers, balanced) -> None:
    ptu = servers("ptu", budget=25, window=60)
    paygo = servers("paygo")
    events = Recorder()
    client = balanced(
        [Backend(ptu.url, priority=1, name="ptu"), Backend(paygo.url, priority=2, name="paygo")],
        is_async=True,
        on_event=events,
    )
    results = await asyncio.gather(
        *(client.chat.completions.create(model="gpt-4o", messages=MESSAGES) for _ in range(150))
    )
    assert len(results) == 150
    paygo.script(Stall(5))
    slow = asyncio.ensure_future(client.chat.completions.create(model="gpt-4o", messages=MESSAGES))
    while len(events.of(AttemptStarted)) <= len(events.of(AttemptFinished)):
        await asyncio.sleep(0.01)
    slow.cancel()
    with pytest.raises(asyncio.CancelledError):
        await slow
    started, finished = events.of(AttemptStarted), events.of(AttemptFinished)
    assert len(started) == len(finished), "a cancelled attempt finishes too"
    assert finished[-1].outcome == "abandoned"
    assert finished[-1].error == "CancelledError"
    await client.close()
