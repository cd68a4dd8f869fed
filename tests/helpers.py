"""Test helpers importable from every test module (``tests`` is on pytest's pythonpath)."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from types import ModuleType

from openai_lb import Backend, EventHook, InMemoryHealthStore, Policy
from openai_lb._core import Attempt, Balancer, Call, SyntheticResponse
from openai_lb._stacks import sdk_stack


class FakeClock:
    """A monotonic clock and a wall clock that only move when a test says so."""

    def __init__(self, start: float = 1000.0, wall_start: float = 1_700_000_000.0) -> None:
        self.now = start
        self.wall_now = wall_start

    def __call__(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.wall_now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wall_now += seconds


def sdk_http_module() -> ModuleType:
    """The HTTP library the installed SDK is built on: httpx (openai 1.x, 2.x) or httpx2 (3.x)."""
    module: ModuleType = sdk_stack().module
    return module


def make_balancer(
    backends: Sequence[Backend],
    clock: FakeClock,
    *,
    policy: Policy | None = None,
    store: InMemoryHealthStore | None = None,
    rng: random.Random | None = None,
    limit: float = 120.0,
    on_event: EventHook | None = None,
) -> Balancer:
    """A balancer on the fake clock with a store of its own (unless given one) and a seeded rng."""
    return Balancer(
        backends,
        policy=policy,
        store=store if store is not None else InMemoryHealthStore(),
        clock=clock,
        wall_clock=clock.wall,
        rng=rng or random.Random(7),
        client_wait_limit=limit,
        on_event=on_event,
    )


def next_attempt(call: Call) -> Attempt:
    """The call's next step, which must be an attempt."""
    step = call.next()
    assert isinstance(step, Attempt), f"expected an attempt, got {step}"
    return step


def next_answer(call: Call) -> SyntheticResponse:
    """The call's next step, which must be an answer made without sending anything."""
    step = call.next()
    assert isinstance(step, SyntheticResponse), f"expected a synthetic answer, got {step}"
    return step


def respond(
    call: Call, status: int, body: bytes | None = None, headers: Mapping[str, str] | None = None
) -> tuple[Attempt, bool]:
    """Send the call's next attempt and answer it: the attempt, and whether the answer goes to the caller."""
    step = next_attempt(call)
    return step, call.report(step, status, headers or {}, body)
