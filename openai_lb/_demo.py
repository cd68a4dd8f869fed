"""The offline demo: a PTU and two pay-as-you-go backends, all fake Azure OpenAI servers on 127.0.0.1.

It shows the three things openai_lb is for: requests go to the PTU first, spill over to
pay-as-you-go once the PTU's headroom headers say it is full (or it answers 429), and return to
the PTU as soon as its window resets.

`run_demo` owns the run and what it counts; a `DemoView` only shows it. `PlainView` prints
one line per request (for pipes and CI); the CLI adds a live terminal table over the same events.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from ._clients import AzureOpenAI
from ._config import Backend, Policy
from ._health import InMemoryHealthStore
from ._shell import BACKEND_HEADER
from ._status import BackendStatus
from .testing import FakeAzureOpenAI

__all__ = [
    "BACKENDS",
    "DemoResult",
    "DemoSettings",
    "DemoStep",
    "DemoView",
    "PlainView",
    "intro",
    "run_demo",
    "step_line",
]

PTU, EAST, WEST = "ptu-eastus", "paygo-eastus", "paygo-westus"
BACKENDS = (PTU, EAST, WEST)


@dataclass(frozen=True)
class DemoSettings:
    requests: int = 36
    interval: float = 0.1
    """Seconds between requests (a steady load above what the PTU's budget allows)."""
    budget: int = 5
    """Requests the PTU accepts per window before it answers 429."""
    window: float = 1.5


@dataclass(frozen=True, slots=True)
class DemoStep:
    """One answered request, and every backend right after it."""

    number: int
    elapsed: float
    """Seconds since the first request was sent."""
    backend: str
    """The backend that answered (from the ``x-openai-lb-backend`` header)."""
    note: str
    """Why that backend, when it is worth saying ("" otherwise)."""
    served: Mapping[str, int]
    """Requests answered so far per backend name."""
    status: tuple[BackendStatus, ...]
    """``client.balancer.status()`` right after this request."""


@dataclass(frozen=True, slots=True)
class DemoResult:
    requests: int
    served: Mapping[str, int]
    ptu_asked: int
    """Requests that reached the PTU server, refused ones included."""
    ptu_rejected: int
    """How many of those it answered with 429."""

    @property
    def answered(self) -> int:
        return sum(self.served.values())

    @property
    def ok(self) -> bool:
        return self.answered == self.requests

    def summary(self) -> str:
        shares = ", ".join(f"{name} {self.served.get(name, 0)}" for name in BACKENDS)
        return (
            f"{self.answered} of {self.requests} requests answered: {shares}.\n"
            f"The PTU was asked {_times(self.ptu_asked)} and answered 429 {_times(self.ptu_rejected)}: "
            f"openai_lb sent it nothing while it was cooling."
        )


def _times(count: int) -> str:
    return "once" if count == 1 else f"{count} times"


def intro(settings: DemoSettings) -> str:
    return (
        f"openai_lb demo: PTU {PTU!r} (priority 1, {settings.budget} requests per {settings.window:g} s window), "
        f"pay-as-you-go {EAST!r} and {WEST!r} (priority 2), all fake Azure OpenAI on 127.0.0.1.\n"
        f"One request every {settings.interval:g} s."
    )


def step_line(step: DemoStep) -> str:
    """One request as a line: number, time, backend, note (the plain output, and the live table's log)."""
    return f"{step.number:3d}  {step.elapsed:5.2f}s  {step.backend:<13}  {step.note}".rstrip()


class DemoView(Protocol):
    """What `run_demo` tells as it goes; called from the thread running the demo."""

    def started(self, settings: DemoSettings, status: tuple[BackendStatus, ...]) -> None: ...

    def stepped(self, step: DemoStep) -> None: ...

    def finished(self, result: DemoResult) -> None: ...


class PlainView:
    """One line per request, for output that is not a terminal."""

    def __init__(self, out: Callable[[str], None] = print) -> None:
        self._out = out

    def started(self, settings: DemoSettings, status: tuple[BackendStatus, ...]) -> None:
        self._out(intro(settings) + "\n")
        self._out("  req    time  served by      what happened")

    def stepped(self, step: DemoStep) -> None:
        self._out("  " + step_line(step))

    def finished(self, result: DemoResult) -> None:
        self._out("\n" + result.summary())


def run_demo(settings: DemoSettings, view: DemoView | None = None) -> DemoResult:
    """Run the demo, telling ``view`` (plain lines on stdout by default) about every request."""
    view = view if view is not None else PlainView()
    with (
        FakeAzureOpenAI(name=PTU, budget=settings.budget, window=settings.window) as ptu,
        FakeAzureOpenAI(name=EAST) as east,
        FakeAzureOpenAI(name=WEST) as west,
    ):
        client = AzureOpenAI(
            backends=[
                Backend(ptu.url, priority=1, name=PTU),
                Backend(east.url, priority=2, name=EAST),
                Backend(west.url, priority=2, name=WEST),
            ],
            api_key="demo-key",
            api_version="2024-10-21",
            max_retries=0,
            health_store=InMemoryHealthStore(),
            # The PTU's answers say when its window refills, which ends a reading of "0 left" there; but a
            # reading counts for at most the horizon, and the default (1 s), shorter than the demo's window,
            # would end it before the refill: the next request would learn it from a 429.
            policy=Policy(headroom_horizon=settings.window),
        )
        balancer = client.balancer
        if balancer is None:  # pragma: no cover - the client above always builds its own balancer
            raise RuntimeError("the demo client has no balancer")
        view.started(settings, balancer.status())
        served: Counter[str] = Counter()
        start = due = time.monotonic()
        previous = ""
        with client:
            for number in range(1, settings.requests + 1):
                time.sleep(max(0.0, due - time.monotonic()))
                # Paced from each send, never caught up: after a slow answer (the SDK's first request
                # loads a lot) a burst would fill the PTU's window before the demo's story could unfold.
                due = time.monotonic() + settings.interval
                rejected_before = ptu.rejected
                passed_before = balancer.status()[0].passed_over
                raw = client.chat.completions.with_raw_response.create(
                    model="gpt-4o", messages=[{"role": "user", "content": f"request {number}"}]
                )
                backend = raw.headers[BACKEND_HEADER]
                served[backend] += 1
                if backend == PTU:
                    note = "PTU first" if number == 1 else "window reset: back on the PTU" if previous != PTU else ""
                elif ptu.rejected > rejected_before:
                    note = "PTU answered 429: spilled over at once"
                elif balancer.status()[0].passed_over > passed_before:
                    note = "PTU full by its headroom headers: spilled over before a 429"
                else:
                    note = "PTU cooling until its Retry-After: pay-as-you-go"
                elapsed = time.monotonic() - start
                view.stepped(DemoStep(number, elapsed, backend, note, dict(served), balancer.status()))
                previous = backend
        result = DemoResult(settings.requests, dict(served), len(ptu.requests), ptu.rejected)
        view.finished(result)
        return result
