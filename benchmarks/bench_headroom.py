"""Spilling before the 429: the spill-over simulation with token budgets, reactive vs headroom; and what reading
headroom costs the isolated transport.

The simulation: a PTU (a provisioned fake deployment, its capacity in tokens per minute) at priority 1 and
two pay-as-you-go deployments (standard, a token bucket each, with Azure's 6 requests per minute per 1,000
tokens) at priority 2, fake servers on one port of 127.0.0.1 that wait ``LATENCY`` before every answer (a
network round trip). Chat completions of varied sizes, each naming its ``max_tokens``, arrive open-loop
(Poisson) at 1.6 times the PTU's capacity in tokens, for the same arrivals through openai_lb with
``Policy(headroom=False)`` (reactive: the PTU is left only once it answers 429) and with the default policy
(headroom: passed over once its utilisation header reaches ``Policy.headroom_utilization``), driven by
asyncio and by a thread pool, in random order in each round.

The fake PTU is a leaky bucket one minute of its capacity deep, admitting while under 100 %: the load would
take some 100 s to fill it from empty. Each run therefore starts it at ``PREFILL`` (one request charged that
much, sent straight to it), close to where both policies hold it, and measures a window after ``WARMUP``
seconds of load, by which both have settled (reactive at 100 %, headroom under its threshold).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import os
import random
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import openai
from _load import Sent, paced_tasks, paced_threads
from _measure import COMPLETION, InMemory, balancing, per_request_seconds, spread
from _servers import ServerProcess

import openai_lb
from openai_lb import Backend, InMemoryHealthStore, Policy

API_VERSION = "2024-10-21"
BACKEND_HEADER = "x-openai-lb-backend"
DEPLOYMENT = "gpt-4o"
PTU = "ptu"
PAYGO = ("paygo-a", "paygo-b")

PTU_TPM = 2_400_000
"""The PTU's capacity: 40,000 tokens a second, some 24 of the requests below."""
PAYGO_TPM = 2_400_000
LOAD = 1.6
"""Tokens offered per second, as a multiple of the PTU's capacity."""
LATENCY = 0.03
"""Seconds every answer of the fake servers waits: the simulated network round trip."""
PREFILL = 0.97
"""The PTU's utilisation when a run starts."""
WARMUP = 3.5
MEASURED = 7.0
"""Seconds of load before the measured window, and its length."""
SAMPLE = 0.05
"""Seconds between samples of the fake servers' tokens charged and utilisation."""
SYSTEMS = {"reactive": Policy(headroom=False), "headroom": Policy()}
DRIVERS = ("asyncio", "threads")

SYSTEM_PROMPT = "You are a helpful assistant. Answer from the documents given."
OUTPUT_LIMITS = ((128, 0.15), (256, 0.30), (512, 0.30), (1024, 0.20), (4096, 0.05))
"""``max_tokens`` a request names, with its share of the requests."""


@dataclass(frozen=True)
class Ask:
    """One request of the load: when it arrives (seconds after the start), its messages and output limit."""

    at: float
    messages: list[dict[str, str]]
    max_tokens: int

    @property
    def body(self) -> dict[str, Any]:
        """The arguments of ``chat.completions.create``."""
        return {"model": DEPLOYMENT, "messages": self.messages, "max_tokens": self.max_tokens}

    @property
    def cost(self) -> int:
        """What the fake charges it: a token per four characters of its messages, plus ``max_tokens``."""
        return len(json.dumps(self.messages)) // 4 + self.max_tokens


def _sized(rng: random.Random) -> tuple[list[dict[str, str]], int]:
    """A request's messages and ``max_tokens``: a prompt of some 600 tokens at the median (a question with
    retrieved documents; log-normal, from 20 to 12,000), and a limit from ``OUTPUT_LIMITS``."""
    tokens = min(12_000, max(20, round(rng.lognormvariate(math.log(600), 1.0))))
    text = ("lorem ipsum dolor sit amet " * (tokens // 6 + 1))[: 4 * tokens]
    limits, shares = zip(*OUTPUT_LIMITS, strict=True)
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}]
    return messages, rng.choices(limits, shares)[0]


def mean_cost() -> float:
    """The mean charge of a request (over a large fixed sample of the size distribution)."""
    rng = random.Random(0)
    return statistics.fmean(Ask(0.0, *_sized(rng)).cost for _ in range(5_000))


def traffic(seed: int, duration: float = WARMUP + MEASURED, load: float = LOAD) -> list[Ask]:
    """The requests arriving in ``duration`` seconds: Poisson arrivals at ``load`` times the PTU's capacity."""
    rate = load * PTU_TPM / 60 / mean_cost()
    rng = random.Random(seed)
    asks, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= duration:
            return asks
        asks.append(Ask(t, *_sized(rng)))


@dataclass(frozen=True)
class Outcome:
    arrived: float
    finished: float
    backend: str | None
    """The backend that answered (its name); None when the request failed."""


def _client(driver: str, urls: dict[str, str], policy: Policy) -> Any:
    """An openai_lb client, async or sync, over the PTU (priority 1) and the pay-as-you-go deployments (2)."""
    backends = [Backend(urls[PTU], priority=1, name=PTU), *(Backend(urls[n], priority=2, name=n) for n in PAYGO)]
    kind = openai_lb.AsyncAzureOpenAI if driver == "asyncio" else openai_lb.AzureOpenAI
    return kind(
        backends=backends,
        policy=policy,
        health_store=InMemoryHealthStore(),
        api_key="bench-key",
        api_version=API_VERSION,
    )


def drive(driver: str, urls: dict[str, str], policy: Policy, asks: list[Ask]) -> tuple[float, list[Outcome], Any]:
    """Send ``asks`` through one client (asyncio tasks or a thread pool) from 0.2 s on: that start, every
    outcome, and the balancer's status at the end."""
    client = _client(driver, urls, policy)
    offsets = [ask.at for ask in asks]
    begin = time.monotonic() + 0.2
    if driver == "asyncio":

        async def send(index: int) -> str | None:
            try:
                raw = await client.chat.completions.with_raw_response.create(**asks[index].body)
            except openai.APIError:
                return None
            return str(raw.headers.get(BACKEND_HEADER))

        async def run() -> list[Sent[str | None]]:
            sent = await paced_tasks(begin, offsets, send)
            await client.close()
            return sent

        sent = asyncio.run(run())
    else:

        def send_sync(index: int) -> str | None:
            try:
                raw = client.chat.completions.with_raw_response.create(**asks[index].body)
            except openai.APIError:
                return None
            return str(raw.headers.get(BACKEND_HEADER))

        sent = paced_threads(begin, offsets, send_sync)
        client.close()
    return begin, [Outcome(*row) for row in sent], client.balancer.status()


def _prefill(url: str) -> None:
    """Bring the PTU to ``PREFILL`` with one request charged that share of its capacity, straight to it."""
    with httpx.Client(trust_env=False) as http:
        answer = http.post(
            f"{url}/openai/deployments/{DEPLOYMENT}/chat/completions",
            params={"api-version": API_VERSION},
            headers={"api-key": "bench-key"},
            json={"messages": [{"role": "user", "content": "fill"}], "max_tokens": round(PREFILL * PTU_TPM)},
        )
        answer.raise_for_status()


def _at(samples: list[list[Any]], moment: float, value: Callable[[list[Any]], float]) -> float:
    """``value`` of the samples, interpolated linearly at ``moment`` (the nearest sample outside them)."""
    if not samples:
        return 0.0
    if moment <= samples[0][0]:
        return value(samples[0])
    for before, after in itertools.pairwise(samples):
        if before[0] <= moment <= after[0]:
            share = (moment - before[0]) / (after[0] - before[0]) if after[0] > before[0] else 0.0
            return value(before) + share * (value(after) - value(before))
    return value(samples[-1])


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(share * len(ordered)) - 1))]


def analyse(outcomes: list[Outcome], stats: dict[str, Any], start: float) -> dict[str, Any]:
    """The metrics of one run whose load began at ``start`` (a monotonic reading), over its measured window.

    ``stats`` is ``ServerProcess.stats()``: per server its answers (time, status), and samples of its tokens
    charged and utilisation.
    """
    begin, end = start + WARMUP, start + WARMUP + MEASURED
    ptu = stats[PTU]
    samples = ptu["samples"]

    def tokens(sample: list[Any]) -> float:
        return float(sample[1])

    def level(sample: list[Any]) -> float:
        return float(sample[2].get(DEPLOYMENT, 0.0))

    admitted = _at(samples, end, tokens) - _at(samples, begin, tokens)
    capacity = PTU_TPM / 60 * MEASURED
    levels = [level(s) for s in samples if begin <= s[0] < end]
    first, last = _at(samples, begin, level), _at(samples, end, level)
    window = [o for o in outcomes if begin <= o.arrived < end]
    spilled = [(o.finished - o.arrived - LATENCY) * 1e3 for o in window if o.backend not in (None, PTU)]
    on_ptu = [(o.finished - o.arrived - LATENCY) * 1e3 for o in window if o.backend == PTU]
    return {
        "requests": len(outcomes),
        "answered_share": sum(1 for o in outcomes if o.backend is not None) / len(outcomes),
        "window_requests": len(window),
        "served_by": dict(Counter(o.backend or "failed" for o in window)),
        "ptu_429s": sum(1 for t, status in ptu["answers"] if status == 429 and begin <= t < end),
        "ptu_429s_whole_run": sum(1 for _, status in ptu["answers"] if status == 429),
        "ptu_utilisation": admitted / capacity,
        # What it drained: what it admitted less what its backlog grew by; 100 % while it is never idle.
        "ptu_processed": (admitted - (last - first) / 100 * PTU_TPM) / capacity,
        "ptu_level_percent": {
            "start": first,
            "end": last,
            "mean": statistics.fmean(levels) if levels else None,
            "min": min(levels, default=None),
            "max": max(levels, default=None),
        },
        "spilled_added_ms": {"p50": _percentile(spilled, 0.5), "p99": _percentile(spilled, 0.99)} if spilled else {},
        "ptu_added_ms": {"p50": _percentile(on_ptu, 0.5), "p99": _percentile(on_ptu, 0.99)} if on_ptu else {},
    }


def _timeline(stats: dict[str, Any], start: float) -> dict[str, Any]:
    """For the plot: the PTU's utilisation samples and its 429s, in seconds from the start of the load."""
    ptu = stats[PTU]
    return {
        "utilisation": [[round(s[0] - start, 3), round(s[2].get(DEPLOYMENT, 0.0), 2)] for s in ptu["samples"]],
        "ptu_429s": [round(t - start, 3) for t, status in ptu["answers"] if status == 429],
    }


SERVERS = [
    {
        "name": PTU,
        "path_prefix": f"/{PTU}",
        "deployments": [DEPLOYMENT],
        "tokens_per_minute": PTU_TPM,
        "provisioned": True,
        "latency": LATENCY,
    },
    *(
        {
            "name": name,
            "path_prefix": f"/{name}",
            "deployments": [DEPLOYMENT],
            "tokens_per_minute": PAYGO_TPM,
            "requests_per_minute": 6 * PAYGO_TPM // 1000,
            "latency": LATENCY,
        }
        for name in PAYGO
    ),
]


def simulate(rounds: int) -> dict[str, Any]:
    """Every system with every driver once per round, in random order, on the same arrivals within a round;
    after a discarded second of load per driver (the SDK's first requests build and load a lot)."""
    configurations = [(system, driver) for driver in DRIVERS for system in SYSTEMS]
    runs: list[dict[str, Any]] = []
    with ServerProcess(SERVERS, group=True, sample=SAMPLE) as process:
        for driver in DRIVERS:
            drive(driver, process.urls, SYSTEMS["headroom"], traffic(seed=-1, duration=1.0))
        for number in range(rounds):
            asks = traffic(seed=number)
            for system, driver in random.sample(configurations, len(configurations)):
                process.reset()
                _prefill(process.urls[PTU])
                start, outcomes, status = drive(driver, process.urls, SYSTEMS[system], asks)
                stats = process.stats()
                run = {"round": number, "system": system, "driver": driver, **analyse(outcomes, stats, start)}
                run["ptu_passed_over"] = next(s.passed_over for s in status if s.name == PTU)
                if number == 0:
                    run["timeline"] = _timeline(stats, start)
                runs.append(run)
    policy = Policy()
    load = os.getloadavg()
    return {
        "rounds": rounds,
        "ptu_tokens_per_minute": PTU_TPM,
        "paygo_tokens_per_minute": PAYGO_TPM,
        "paygos": len(PAYGO),
        "load": LOAD,
        "latency_ms": LATENCY * 1e3,
        "prefill": PREFILL,
        "warmup_s": WARMUP,
        "measured_s": MEASURED,
        "mean_request_tokens": mean_cost(),
        "requests_per_round": len(traffic(seed=0)),
        "threshold_percent": policy.headroom_utilization,
        "horizon_s": policy.headroom_horizon,
        "runs": runs,
        "summary": summary(runs),
        "load_average": {"1 min": load[0], "5 min": load[1], "cores": os.cpu_count()},
    }


def summary(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per driver and system: the spread over rounds (``spread``), and headroom's 429s against reactive's paired
    by round."""
    rows = []
    for driver in dict.fromkeys(r["driver"] for r in runs):
        by_system = {
            system: [r for r in runs if r["driver"] == driver and r["system"] == system]
            for system in dict.fromkeys(r["system"] for r in runs)
        }
        reactive = {r["round"]: r["ptu_429s"] for r in by_system.get("reactive", [])}
        for system, chosen in by_system.items():
            row: dict[str, Any] = {"driver": driver, "system": system}
            for key in ("answered_share", "ptu_429s", "ptu_utilisation", "ptu_processed", "ptu_passed_over"):
                row[key] = spread([r[key] for r in chosen])
            for part in ("mean", "min"):
                row[f"ptu_level_{part}"] = spread([r["ptu_level_percent"][part] for r in chosen])
            for key in ("spilled_added_ms", "ptu_added_ms"):
                for part in ("p50", "p99"):
                    values = [r[key][part] for r in chosen if r[key]]
                    row[f"{key}_{part}"] = spread(values) if values else None
            fewer = [1 - r["ptu_429s"] / reactive[r["round"]] for r in chosen if reactive.get(r["round"])]
            row["fewer_ptu_429s_than_reactive"] = spread(fewer) if fewer and system != "reactive" else None
            rows.append(row)
    return rows


# -- what reading headroom costs the isolated transport

AZURE_COMMON = (
    ("content-type", "application/json"),
    ("apim-request-id", "6c1a4f7e-2d2b-4a53-9a8e-0f7b5c3d1e22"),
    ("x-request-id", "0b8f6f3a-7c7d-4f1e-a1f0-3b6d9c2e5a41"),
    ("x-ms-region", "East US"),
    ("x-ms-rai-invoked", "true"),
    ("azureml-model-session", "d089-20250101000000"),
    ("x-content-type-options", "nosniff"),
    ("strict-transport-security", "max-age=31536000; includeSubDomains; preload"),
    ("x-ms-deployment-name", DEPLOYMENT),
)
ANSWERS: dict[str, tuple[tuple[str, str], ...]] = {
    "no headers": (),
    "Azure standard (x-ratelimit-*)": (
        *AZURE_COMMON,
        ("x-ratelimit-limit-requests", "3000"),
        ("x-ratelimit-remaining-requests", "2998"),
        ("x-ratelimit-reset-requests", "1"),
        ("x-ratelimit-limit-tokens", "500000"),
        ("x-ratelimit-remaining-tokens", "498321"),
        ("x-ratelimit-reset-tokens", "1"),
    ),
    "Azure PTU (utilisation)": (*AZURE_COMMON, ("azure-openai-deployment-utilization", "42.5%")),
}
"""The headers of the answers: none (as in the isolated benchmark), or an Azure answer's, of a standard
deployment (``x-ratelimit-*``) or of a provisioned one (its utilisation)."""


def cost(rounds: int, calls: int) -> dict[str, Any]:
    """The isolated transport (3 backends, PTU + spares) for a chat completion with ``Policy(headroom=False)``
    and the default policy, for answers with each header set of ``ANSWERS``, minus the inner transport alone
    answering the same; side by side in random order per round."""
    body = json.dumps(COMPLETION).encode()
    cases: dict[str, Callable[[], httpx.BaseTransport]] = {}
    for answer, headers in ANSWERS.items():
        cases[f"{answer}/inner alone"] = lambda h=headers: InMemory(body, h)
        for system, policy in SYSTEMS.items():
            cases[f"{answer}/{system}"] = lambda h=headers, p=policy: balancing(
                3, tiered=True, policy=p, inner=InMemory(body, h)
            )
    samples = per_request_seconds(rounds, calls, cases)
    result: dict[str, Any] = {"rounds": rounds, "calls_per_round": calls, "answers": {}}
    for answer in ANSWERS:
        inner = samples[f"{answer}/inner alone"]
        added = {
            system: [(v - i) * 1e6 for v, i in zip(samples[f"{answer}/{system}"], inner, strict=True)]
            for system in SYSTEMS
        }
        result["answers"][answer] = {
            "inner_us": spread([v * 1e6 for v in inner]),
            "added_us": {system: spread(values) for system, values in added.items()},
            "headroom_minus_reactive_us": spread(
                [h - r for h, r in zip(added["headroom"], added["reactive"], strict=True)]
            ),
            "fastest_us": {name: min(samples[f"{answer}/{name}"]) * 1e6 for name in ("inner alone", *SYSTEMS)},
        }
    return result
