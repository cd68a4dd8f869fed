"""The offline demo: a PTU and two pay-as-you-go backends, all fake Azure OpenAI servers on 127.0.0.1.

It shows the three things openai_lb is for: requests go to the PTU first, spill over to
pay-as-you-go while the PTU answers 429, and return to the PTU as soon as its window resets.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from ._clients import AzureOpenAI
from ._config import Backend
from ._health import InMemoryHealthStore
from ._shell import BACKEND_HEADER
from .testing import FakeAzureOpenAI

__all__ = ["DemoSettings", "run_demo"]

PTU, EAST, WEST = "ptu-eastus", "paygo-eastus", "paygo-westus"


@dataclass(frozen=True)
class DemoSettings:
    requests: int = 36
    interval: float = 0.1
    """Seconds between requests (a steady load above what the PTU's budget allows)."""
    budget: int = 5
    """Requests the PTU accepts per window before it answers 429."""
    window: float = 1.5


def run_demo(settings: DemoSettings, out: Callable[[str], None] = print) -> Counter[str]:
    """Run the demo, printing one line per request; returns how many requests each backend served."""
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
        )
        out(
            f"openai_lb demo: PTU {PTU!r} (priority 1, {settings.budget} requests per {settings.window:g} s window), "
            f"pay-as-you-go {EAST!r} and {WEST!r} (priority 2), all fake Azure OpenAI on 127.0.0.1.\n"
            f"One request every {settings.interval:g} s.\n"
        )
        out("  req    time  served by      what happened")
        served: Counter[str] = Counter()
        start = time.monotonic()
        previous = ""
        with client:
            for number in range(1, settings.requests + 1):
                time.sleep(max(0.0, start + (number - 1) * settings.interval - time.monotonic()))
                rejected_before = ptu.rejected
                raw = client.chat.completions.with_raw_response.create(
                    model="gpt-4o", messages=[{"role": "user", "content": f"request {number}"}]
                )
                backend = raw.headers[BACKEND_HEADER]
                served[backend] += 1
                if backend == PTU:
                    note = "PTU first" if number == 1 else "window reset: back on the PTU" if previous != PTU else ""
                elif ptu.rejected > rejected_before:
                    note = "PTU answered 429: spilled over at once"
                else:
                    note = "PTU cooling until its Retry-After: pay-as-you-go"
                out(f"  {number:3d}  {time.monotonic() - start:5.2f}s  {backend:<13}  {note}".rstrip())
                previous = backend
        total = sum(served.values())
        shares = ", ".join(f"{name} {served[name]}" for name in (PTU, EAST, WEST))
        out(f"\n{total} of {settings.requests} requests answered: {shares}.")
        out(
            f"The PTU was asked {len(ptu.requests)} times and answered 429 {ptu.rejected} times: "
            f"openai_lb sent it nothing while it was cooling."
        )
        return served
