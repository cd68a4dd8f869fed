"""Test helpers importable from every test module (``tests`` is on pytest's pythonpath)."""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from types import ModuleType

from openai_lb import Backend, Event, InMemoryHealthStore, Policy
from openai_lb._core import Balancer
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


def balancer_on(
    backends: Sequence[Backend],
    clock: FakeClock,
    *,
    policy: Policy | None = None,
    rng: random.Random | None = None,
    limit: float = 120.0,
    on_event: Sequence[Callable[[Event], None]] | None = None,
) -> Balancer:
    """A balancer on a fake clock with a store (and so headroom readings) of its own."""
    return Balancer(
        backends,
        policy=policy,
        store=InMemoryHealthStore(),
        clock=clock,
        wall_clock=clock.wall,
        rng=rng or random.Random(7),
        client_wait_limit=limit,
        on_event=on_event,
    )
