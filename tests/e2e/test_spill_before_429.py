"""Spilling before the 429, through the real SDK against fake Azure deployments with token budgets on 127.0.0.1.

Every test runs with a sync and an async client (``balanced_over``); its body is written once, as a
coroutine (``done``). Where the counts depend on time, the fake servers' meters and the balancer read
one ``FakeClock``: nothing drains, refills or ages unless the test moves the clock, so a loaded machine
sees the same numbers (those balancers sit under the SDK's own class, the README's "bring your own
http client" recipe; the other tests use ``openai_lb.AzureOpenAI`` / ``AsyncAzureOpenAI``).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import openai
import pytest
from e2e_helpers import Balanced, content, done, statuses
from helpers import FakeClock

from openai_lb import (
    AllBackendsCooling,
    AttemptFinished,
    AttemptStarted,
    Backend,
    BackendCooled,
    Event,
    Policy,
)
from openai_lb.testing import FakeAzureOpenAI, Reply

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

MESSAGES = [{"role": "user", "content": "hi"}]
LONG = [{"role": "user", "content": "word " * 2_000}]
"""About 2,500 prompt tokens by the fake's count."""
OUTPUT = 100
"""Each request's max_tokens: the fake charges it 108 tokens (8 of prompt), the balancer estimates a few more."""
ROOMY = 10_000_000
"""Tokens a minute of a deployment no test fills."""

Servers = Callable[..., FakeAzureOpenAI]
Clients = Callable[..., Balanced]


def create(client: Any, model: str = "gpt-4o", **options: Any) -> Any:
    """One chat completion, raw (its headers and ``parse()``); a coroutine for an async client."""
    options.setdefault("messages", MESSAGES)
    options.setdefault("max_tokens", OUTPUT)
    return client.chat.completions.with_raw_response.create(model=model, **options)


async def ask(client: Any, model: str = "gpt-4o", **options: Any) -> Any:
    return await done(create(client, model, **options))


def started(lb: Balanced) -> list[AttemptStarted]:
    return lb.events.of(AttemptStarted)


# -- a PTU and a pay-as-you-go deployment, one request after another

PTU_TPM = 12_000
"""The PTU drains 200 tokens a second: more than one request (108) within the 1 s headroom horizon."""
PREFILL = 10_000
"""The first request's max_tokens: the PTU starts at 83 %, so that it fills within a few requests."""
STEP = 0.2
REQUESTS = 100


@dataclass
class Saturated:
    """One run of the sequential load: the fakes, the client, and the PTU's lowest utilisation once it spilled."""

    ptu: FakeAzureOpenAI
    paygo: FakeAzureOpenAI
    lb: Balanced
    lowest: float | None
    """None if nothing spilled."""


async def saturate(servers: Servers, balanced_over: Clients, policy: Policy) -> Saturated:
    """A request every ``STEP`` seconds (more than the PTU drains), each sent once the one before is answered."""
    clock = FakeClock()
    ptu = servers("ptu", tokens_per_minute=PTU_TPM, provisioned=True, clock=clock)
    paygo = servers("paygo", tokens_per_minute=ROOMY, clock=clock)
    backends = [Backend(ptu.url, priority=1, name="ptu"), Backend(paygo.url, priority=2, name="paygo")]
    lb = balanced_over(backends, clock=clock, policy=policy)
    await ask(lb.client, max_tokens=PREFILL)
    levels: list[float] = []
    for _ in range(REQUESTS):
        clock.advance(STEP)
        answer = await ask(lb.client)
        if levels or content(answer) == "paygo:gpt-4o":
            levels.append(ptu.utilization("gpt-4o"))
    return Saturated(ptu, paygo, lb, min(levels) if levels else None)


async def test_one_request_after_another_spills_to_paygo_before_the_ptu_answers_429(
    servers: Servers, balanced_over: Clients
) -> None:
    """What the design guarantees here: sent one after another, each request meets the PTU's reading of the
    answer before it, and a reading at (or, with the learned rate, heading past) the 95 % threshold passes the
    PTU over until it is a horizon old. A request is 0.9 % of the PTU, under the 5 % between the threshold and
    the 100 % at which it refuses, and the PTU drains more than a request in a horizon, so the request sent
    once the reading has aged finds it below 100 % too: no 429, from the first request on. (A PTU that drains
    less than one request per horizon can answer that request 429.)"""
    ahead = await saturate(servers, balanced_over, Policy())
    reactive = await saturate(servers, balanced_over, Policy(headroom=False))

    assert ahead.ptu.throttled == 0, f"the PTU answered {ahead.ptu.throttled} 429s with headroom"
    assert reactive.ptu.throttled >= 10, f"without headroom the same load met {reactive.ptu.throttled} 429s"
    spills = [event for event in started(ahead.lb) if event.backend == "paygo"]
    assert spills, "the PTU filled up: some requests went to paygo"
    assert {(event.number, event.passed_over) for event in spills} == {(1, ("ptu",))}, (
        "every spill is a first attempt that passed the PTU over, not a failover after a 429"
    )
    ptu = statuses(ahead.lb.client)["ptu"]
    assert (ptu.passed_over, ptu.rate_limited, ptu.state) == (len(spills), 0, "available")
    assert not ahead.lb.events.of(BackendCooled), "nothing cooled"
    assert ahead.lowest is not None
    assert ahead.lowest >= 90, f"the PTU idled down to {ahead.lowest:.1f} % once it spilled"
    assert ahead.ptu.tokens_used >= 0.9 * reactive.ptu.tokens_used, (
        f"the PTU took {ahead.ptu.tokens_used} tokens with headroom, {reactive.ptu.tokens_used} without: "
        "held below the threshold instead of at 100 %, it should lose a few percent of its capacity, once"
    )


# -- a hundred requests at once

BURST = 100
TIGHT_TPM = 1_100
"""About ten requests' worth: after the first, nine more fit by the fake's count."""


class Gate:
    """A hook holding each first attempt, once armed, until ``parties`` of them are chosen: every request of a
    burst of threads is chosen before any answer comes back, as each of a burst of tasks on one event loop is
    (a task chooses before it first waits on the network)."""

    def __init__(self, parties: int) -> None:
        self.armed = False
        self._barrier = threading.Barrier(parties, timeout=20)

    def __call__(self, event: Event) -> None:
        if self.armed and isinstance(event, AttemptStarted) and event.number == 1:
            self._barrier.wait()


@dataclass
class Burst:
    tight: FakeAzureOpenAI
    lb: Balanced
    answered: list[str]
    """Which server and deployment answered each request of the burst."""
    took: int
    """Requests of the burst the tight deployment served."""


async def burst(servers: Servers, balanced_over: Clients, policy: Policy, roomy_priority: int) -> Burst:
    """One request, until the tight deployment has answered one (its reading in hand, as in a steady stream),
    then ``BURST`` at once: tasks for an async client, threads for a sync one."""
    clock = FakeClock()
    tight = servers("tight", tokens_per_minute=TIGHT_TPM, clock=clock)
    roomy = servers("roomy", tokens_per_minute=ROOMY, clock=clock)
    gate = Gate(BURST)
    backends = [Backend(tight.url, priority=1, name="tight"), Backend(roomy.url, priority=roomy_priority, name="roomy")]
    lb = balanced_over(backends, clock=clock, policy=policy, hooks=(gate,))
    for _ in range(20):
        if tight.served:
            break
        await ask(lb.client)
    assert tight.served == 1, "the tight deployment answered a first request"
    if isinstance(lb.client, openai.AsyncAzureOpenAI):
        answers = await asyncio.gather(*(ask(lb.client) for _ in range(BURST)))
    else:
        gate.armed = True
        with ThreadPoolExecutor(BURST) as pool:
            answers = list(pool.map(lambda _: create(lb.client), range(BURST), timeout=20))
    return Burst(tight, lb, [content(answer) for answer in answers], tight.served - 1)


@pytest.mark.parametrize("roomy_priority", [1, 2], ids=["roomy-in-the-same-tier", "roomy-in-the-next-tier"])
async def test_a_burst_of_a_hundred_sends_the_tight_deployment_only_what_fits(
    servers: Servers, balanced_over: Clients, roomy_priority: int
) -> None:
    """Each request reserves its estimate against the tight deployment's reading until its answer comes, so the
    hundred, chosen together, leave it no more than it has room for; the estimate (the body's bytes / 4 plus
    max_tokens) is above the fake's charge, so none of those meets a 429."""
    ahead = await burst(servers, balanced_over, Policy(), roomy_priority)
    reactive = await burst(servers, balanced_over, Policy(headroom=False), roomy_priority)

    for run in (ahead, reactive):
        assert len(run.answered) == BURST, "every request was answered"
        assert set(run.answered) <= {"tight:gpt-4o", "roomy:gpt-4o"}, set(run.answered)
    assert ahead.tight.throttled == 0, f"the tight deployment answered {ahead.tight.throttled} 429s with headroom"
    assert reactive.tight.throttled >= 30, f"without headroom it answered {reactive.tight.throttled} 429s"
    assert 5 <= ahead.took <= 9, f"the tight deployment took {ahead.took} of the burst: about what it had room for"
    passing = [event for event in started(ahead.lb) if event.passed_over]
    assert {event.passed_over for event in passing} == {("tight",)}
    assert statuses(ahead.lb.client)["tight"].passed_over == len(passing) >= 20, (
        f"{len(passing)} attempts passed the tight deployment over, status() says "
        f"{statuses(ahead.lb.client)['tight'].passed_over}"
    )
    assert {event.number for event in started(ahead.lb)} == {1}, "no request needed a second attempt"
    assert not ahead.lb.events.of(BackendCooled), "passing over cools nothing"
    assert not [event for event in started(reactive.lb) if event.passed_over], "without headroom nothing is passed over"
    assert [status.passed_over for status in statuses(reactive.lb.client).values()] == [0, 0]


# -- context windows


def contexts(servers: Servers, balanced_over: Clients, first: int, second: int, **kwargs: Any) -> Balanced:
    """Two backends in priority order whose gpt-4o takes prompts of ``first`` and ``second`` tokens."""
    fakes = [servers(name, context_limits={"gpt-4o": limit}) for name, limit in (("short", first), ("long", second))]
    backends = [Backend(fake.url, priority=rank, name=fake.name) for rank, fake in enumerate(fakes, start=1)]
    return balanced_over(backends, **kwargs)


def ends(lb: Balanced) -> list[tuple[str, str, int | None]]:
    """(backend, outcome, status) of every attempt that ended, in order."""
    return [(event.backend, event.outcome, event.status) for event in lb.events.of(AttemptFinished)]


async def test_a_prompt_too_long_for_a_backend_moves_to_the_one_with_the_larger_context(
    servers: Servers, balanced_over: Clients
) -> None:
    lb = contexts(servers, balanced_over, 1_000, 100_000)

    long = await ask(lb.client, messages=LONG)
    short = await ask(lb.client)

    assert (content(long), content(short)) == ("long:gpt-4o", "short:gpt-4o"), "the short backend is not cooled"
    assert ends(lb) == [
        ("short", "context_too_long", 400),
        ("long", "success", 200),
        ("short", "success", 200),
    ]
    assert not lb.events.of(BackendCooled)
    short_status = statuses(lb.client)["short"]
    assert (short_status.state, short_status.failures, short_status.rate_limited) == ("available", 0, 0)


async def test_when_no_backend_takes_the_prompt_the_caller_gets_the_last_400(
    servers: Servers, balanced_over: Clients
) -> None:
    lb = contexts(servers, balanced_over, 1_000, 1_500)

    with pytest.raises(openai.BadRequestError) as refused:
        await ask(lb.client, messages=LONG)

    assert refused.value.code == "context_length_exceeded"
    assert "maximum context length is 1500 tokens" in refused.value.message, "the last backend's answer"
    assert ends(lb) == [("short", "context_too_long", 400), ("long", "client_error", 400)]
    assert not lb.events.of(BackendCooled)
    assert not lb.events.of(AllBackendsCooling), "the caller got the backend's 400, not a 429"


async def test_without_context_failover_the_caller_gets_the_first_400(servers: Servers, balanced_over: Clients) -> None:
    lb = contexts(servers, balanced_over, 1_000, 100_000, policy=Policy(context_failover=False))

    with pytest.raises(openai.BadRequestError) as refused:
        await ask(lb.client, messages=LONG)

    assert refused.value.code == "context_length_exceeded"
    assert "maximum context length is 1000 tokens" in refused.value.message, "the first backend's answer"
    assert ends(lb) == [("short", "client_error", 400)], "the long backend was not asked"


# -- Azure's own spillover


@pytest.mark.parametrize("headroom", [True, False], ids=["headroom", "no-headroom"])
async def test_azure_spills_a_full_ptu_to_the_deployment_named_in_the_header_and_it_is_counted(
    servers: Servers, balanced_over: Clients, headroom: bool
) -> None:
    # The fake's own clock stands still: the PTU, once full, stays full.
    east = servers(
        "east",
        deployments={"ptu", "paygo"},
        tokens_per_minute={"ptu": 6_000, "paygo": ROOMY},
        provisioned={"ptu"},
        clock=FakeClock(),
    )
    lb = balanced_over([Backend(east.url, name="east", spillover_deployment="paygo")], policy=Policy(headroom=headroom))

    filling = await ask(lb.client, "ptu", max_tokens=6_000)
    spilled = [await ask(lb.client, "ptu") for _ in range(3)]

    assert content(filling) == "east:ptu"
    assert [content(answer) for answer in spilled] == ["east:paygo"] * 3, "Azure served them from paygo"
    assert {answer.headers["x-ms-spillover-from-deployment"] for answer in spilled} == {"ptu"}
    assert [request.headers.get("x-ms-spillover-deployment") for request in east.requests] == ["paygo"] * 4, (
        "every request names the spillover deployment"
    )
    assert (east.spilled, east.throttled) == (3, 0), "the caller saw no 429"
    assert [event.spilled_to for event in lb.events.of(AttemptFinished)] == [None, "paygo", "paygo", "paygo"]
    status = statuses(lb.client)["east"]
    assert (status.spilled, status.successes, status.rate_limited) == (3, 4, 0)


# -- when every backend is full


async def test_with_every_backend_full_by_its_headers_requests_go_in_the_usual_order(
    servers: Servers, balanced_over: Clients
) -> None:
    """Passing over is a preference: with no backend left that fits, the request is sent as without headroom
    (never a 429 made up from an estimate), and a real 429 fails over as always."""
    a, b = servers("a"), servers("b")
    full = Reply(200, headers={"x-ratelimit-remaining-tokens": "0", "x-ratelimit-remaining-requests": "0"})
    a.script(full)
    b.script(full)
    # Readings count for a minute here, so that a slow machine cannot age them between requests.
    lb = balanced_over(
        [Backend(a.url, priority=1, name="a"), Backend(b.url, priority=2, name="b")],
        policy=Policy(headroom_horizon=60.0),
    )

    first = await ask(lb.client)  # a says it is full
    second = await ask(lb.client)  # a passed over; b says it is full too
    third = await ask(lb.client)
    a.script(Reply(429, headers={"retry-after-ms": "60000"}))
    fourth = await ask(lb.client)

    assert [content(answer) for answer in (first, second, third, fourth)] == [
        "a:gpt-4o",
        "b:gpt-4o",
        "a:gpt-4o",
        "b:gpt-4o",
    ]
    assert [(event.backend, event.number, event.passed_over) for event in started(lb)] == [
        ("a", 1, ()),
        ("b", 1, ("a",)),
        ("a", 1, ()),
        ("a", 1, ()),
        ("b", 2, ()),
    ], "with both full, a first as without headroom; its 429 fails over to b"
    assert not lb.events.of(AllBackendsCooling), "no 429 was made up"
    assert [status.passed_over for status in statuses(lb.client).values()] == [1, 0]
