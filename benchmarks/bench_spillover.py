"""The spill-over simulation: an open-loop load above the PTU's budget but within the total.

Backends are fake Azure OpenAI servers on one port of 127.0.0.1, told apart by path prefix (the
existing package can only change a URL's host), each with a request budget per fixed window,
answering 429 with ``retry-after`` / ``retry-after-ms`` exactly as Azure does once it is spent.
Requests arrive at a fixed rate whatever the answers (asyncio tasks, or a thread pool), for
several windows. The SDK keeps its default retries, as in production.
"""

from __future__ import annotations

import asyncio
import math
import random
import statistics
import time
from dataclasses import dataclass
from typing import Any

import openai
from _load import paced_tasks, paced_threads
from _measure import MESSAGES
from _servers import ServerProcess
from _systems import async_client, sync_client


@dataclass(frozen=True)
class Scenario:
    name: str
    tiers: list[tuple[str, int, int]]
    """(backend name, priority, budget per window)"""
    window: float
    rate: float
    """Requests per second offered."""
    duration: float

    @property
    def capacity(self) -> float:
        return sum(budget for _, _, budget in self.tiers) / self.window


TWO_TIERS = Scenario("PTU + 2 pay-as-you-go", [("ptu", 1, 20), ("paygo-a", 2, 20), ("paygo-b", 2, 20)], 2.0, 24, 14)
THREE_TIERS = Scenario(
    "PTU + 2 pay-as-you-go + far region",
    [("ptu", 1, 20), ("paygo-a", 2, 10), ("paygo-b", 2, 10), ("far", 3, 40)],
    2.0,
    30,
    14,
)


def arrival_times(scenario: Scenario, seed: int = 7) -> list[float]:
    """Offsets of a Poisson arrival process at the scenario's rate: no phase lock with the windows."""
    rng = random.Random(seed)
    times, t = [], 0.0
    while True:
        t += rng.expovariate(scenario.rate)
        if t >= scenario.duration:
            return times
        times.append(t)


@dataclass
class Outcome:
    arrived: float
    finished: float
    ok: bool


def _drive_async(
    client: openai.AsyncAzureOpenAI, scenario: Scenario, *, seed: int = 7, start: float | None = None
) -> list[Outcome]:
    """Send the scenario's arrivals from ``start`` (a ``time.monotonic()`` reading; default: in 0.2 s)."""

    async def send(_: int) -> bool:
        try:
            await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        except openai.APIError:
            return False
        return True

    async def run() -> list[Outcome]:
        begin = time.monotonic() + 0.2 if start is None else start
        sent = await paced_tasks(begin, arrival_times(scenario, seed), send)
        await client.close()
        return [Outcome(*row) for row in sent]

    return asyncio.run(run())


def _drive_threads(client: openai.AzureOpenAI, scenario: Scenario) -> list[Outcome]:
    def send(_: int) -> bool:
        try:
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        except openai.APIError:
            return False
        return True

    sent = paced_threads(time.monotonic() + 0.2, arrival_times(scenario), send)
    client.close()
    return [Outcome(*row) for row in sent]


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


def _analyse(scenario: Scenario, outcomes: list[Outcome], stats: dict[str, Any]) -> dict[str, Any]:
    ptu_name, _, ptu_budget = scenario.tiers[0]
    ptu_answers = stats[ptu_name]["answers"]
    # The PTU's first window starts with the first request it gets, which it answers at once.
    window_start = ptu_answers[0][0] if ptu_answers else min(o.arrived for o in outcomes)
    arrivals = sorted(o.arrived for o in outcomes)
    windows = math.ceil((arrivals[-1] - window_start) / scenario.window + 1e-9)
    end_of_windows = window_start + windows * scenario.window
    ptu_ok = sorted(t for t, status in ptu_answers if status < 300)
    # Served and allowed over the same windows: its budget per window, or the whole demand of a short one.
    ptu_served = sum(1 for t in ptu_ok if window_start <= t < end_of_windows)
    allowed = 0
    for k in range(windows):
        # The request that opened the first window was sent a moment before the PTU answered it.
        begin = window_start + k * scenario.window if k else -math.inf
        end = window_start + (k + 1) * scenario.window
        allowed += min(ptu_budget, sum(1 for t in arrivals if begin <= t < end))
    # After each window reset, how many requests were served elsewhere before the PTU served again;
    # a window in which the PTU never served again counts everything served elsewhere in it.
    others = sorted(t for name, s in stats.items() if name != ptu_name for t, status in s["answers"] if status < 300)
    misses, delays = [], []
    for k in range(1, windows):
        reset = window_start + k * scenario.window
        back = next((t for t in ptu_ok if t >= reset), None)
        until = back if back is not None and back < reset + scenario.window else reset + scenario.window
        misses.append(sum(1 for t in others if reset <= t < until))
        if back is not None and back < reset + scenario.window:
            delays.append((back - reset) * 1e3)
    upstream = sum(len(s["answers"]) for s in stats.values())
    successes = sum(1 for o in outcomes if o.ok)
    latencies = [(o.finished - o.arrived) * 1e3 for o in outcomes if o.ok]
    return {
        "requests": len(outcomes),
        "success_share": successes / len(outcomes),
        "ptu_served": ptu_served,
        "ptu_allowed": allowed,
        "ptu_utilisation": ptu_served / allowed if allowed else 0.0,
        "served_by": {name: s["served"] for name, s in stats.items()},
        "upstream_attempts_per_success": upstream / successes if successes else math.inf,
        "requests_elsewhere_after_reset": {
            "median": statistics.median(misses) if misses else None,
            "max": max(misses) if misses else None,
        },
        "ptu_back_after_reset_ms": {
            "median": statistics.median(delays) if delays else None,
            "max": max(delays) if delays else None,
        },
        "latency_ms": {"p50": _percentile(latencies, 0.5), "p99": _percentile(latencies, 0.99)} if latencies else {},
        "timeline": {
            name: [round(t - window_start, 4) for t, status in s["answers"] if status < 300]
            for name, s in stats.items()
        },
    }


def simulate(scenario: Scenario, system: str, driver: str) -> dict[str, Any]:
    servers = [
        {"name": name, "path_prefix": f"/{name}", "budget": budget, "window": scenario.window}
        for name, _, budget in scenario.tiers
    ]
    with ServerProcess(servers, group=True) as process:
        backends = [(process.urls[name], priority) for name, priority, _ in scenario.tiers]
        if driver == "asyncio":
            outcomes = _drive_async(async_client(system, backends), scenario)
        else:
            outcomes = _drive_threads(sync_client(system, backends), scenario)
        stats = process.stats()
    result = _analyse(scenario, outcomes, stats)
    result.update(
        {
            "scenario": scenario.name,
            "system": system,
            "driver": driver,
            "rate": scenario.rate,
            "capacity": scenario.capacity,
            "ptu_capacity": scenario.tiers[0][2] / scenario.window,
        }
    )
    return result
