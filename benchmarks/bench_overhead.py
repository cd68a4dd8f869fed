"""Per-request cost of balancing: through the SDK, isolated from the network, under concurrency, in memory."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import random
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import openai
from _measure import COMPLETION, MESSAGES, InMemory, balancing, per_request_seconds, spread
from _servers import FastServer
from _systems import async_client, sync_client

import openai_lb
from openai_lb import Backend, InMemoryHealthStore


def _backends(url: Callable[[str], str], system: str) -> list[tuple[str, int]]:
    """The target first; openai_lb-3 also gets two healthy spares at a lower priority (never used)."""
    if system == "openai_lb-3":
        return [(url("target"), 1), (url("spare-a"), 2), (url("spare-b"), 2)]
    return [(url("target"), 1)]


def sdk_sequential(rounds: int, calls: int, systems: list[str]) -> dict[str, Any]:
    """Sequential non-streaming calls through the SDK to one loopback backend; ratio to plain per round."""
    with FastServer() as server:
        clients = {s: sync_client(s, _backends(server.url, s), max_retries=0) for s in systems}
        for client in clients.values():  # warm connections and code paths
            for _ in range(50):
                client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        per_call: dict[str, list[float]] = {s: [] for s in systems}
        for _ in range(rounds):
            for system in random.sample(systems, len(systems)):
                client = clients[system]
                started = time.perf_counter()
                for _ in range(calls):
                    client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
                per_call[system].append((time.perf_counter() - started) / calls)
        for client in clients.values():
            client.close()
    plain = per_call["plain"]
    return {
        "calls_per_round": calls,
        "rounds": rounds,
        "per_call_us": {s: spread([v * 1e6 for v in values]) for s, values in per_call.items()},
        "ratio_to_plain": {
            s: spread([v / p for v, p in zip(values, plain, strict=True)]) for s, values in per_call.items()
        },
    }


def isolated(rounds: int, calls: int, counts: list[int]) -> dict[str, Any]:
    """The balancing transport over an in-memory inner transport vs that inner transport alone."""
    cases: dict[str, Callable[[], httpx.BaseTransport]] = {"inner alone": InMemory}
    for count in counts:
        cases[f"{count} backends, PTU + spares"] = lambda c=count: balancing(c, tiered=True)
        cases[f"{count} backends, one tier"] = lambda c=count: balancing(c, tiered=False)
    samples = per_request_seconds(rounds, calls, cases)
    inner = samples["inner alone"]
    return {
        "calls_per_round": calls,
        "rounds": rounds,
        "inner_us": spread([v * 1e6 for v in inner]),
        "added_us": {
            name: spread([(v - i) * 1e6 for v, i in zip(values, inner, strict=True)])
            for name, values in samples.items()
            if name != "inner alone"
        },
    }


async def _throughput(client: openai.AsyncAzureOpenAI, tasks: int, total: int) -> tuple[float, Counter[str]]:
    """Successful requests per second, and the failures by error (and its cause)."""
    remaining = total
    failed: Counter[str] = Counter()

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            try:
                await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
            except openai.APIError as error:
                cause = f" ({type(error.__cause__).__name__})" if error.__cause__ is not None else ""
                failed[type(error).__name__ + cause] += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(tasks)))
    return (total - sum(failed.values())) / (time.perf_counter() - started), failed


def async_concurrency(rounds: int, levels: list[int], systems: list[str]) -> dict[str, Any]:
    """Throughput of many concurrent tasks sharing one async client; ratio to plain per round."""
    results: dict[str, Any] = {}
    with FastServer() as server:

        async def run() -> None:
            clients = {s: async_client(s, _backends(server.url, s), max_retries=0) for s in systems}
            for level in levels:
                total = max(400, 2 * level)
                rates: dict[str, list[float]] = {s: [] for s in systems}
                failures: dict[str, Counter[str]] = {s: Counter() for s in systems}
                for client in clients.values():
                    await _throughput(client, level, level)
                for _ in range(rounds):
                    for system in random.sample(systems, len(systems)):
                        rate, failed = await _throughput(clients[system], level, total)
                        rates[system].append(rate)
                        failures[system] += failed
                plain = rates["plain"]
                results[str(level)] = {
                    "requests_per_round": total,
                    "requests_per_second": {s: spread(v) for s, v in rates.items()},
                    "failed_requests": failures,
                    "ratio_to_plain": {
                        s: spread([r / p for r, p in zip(v, plain, strict=True)]) for s, v in rates.items()
                    },
                }
            for client in clients.values():
                await client.close()

        asyncio.run(run())
    return {"rounds": rounds, "levels": results}


def _rss_kib() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def memory(calls: int, samples: int, deployments: int) -> dict[str, Any]:
    """Resident memory while a client makes ``calls`` calls, with 429s on a spread of deployments."""
    counter = 0

    def handler(request: httpx.Request) -> httpx.Response:
        nonlocal counter
        counter += 1
        if counter % 7 == 0:  # a steady trickle of 429s keeps the health store busy
            return httpx.Response(429, headers={"retry-after-ms": "1"}, json={"error": {"code": "429"}})
        return httpx.Response(200, json=COMPLETION)

    store = InMemoryHealthStore()
    backends = [Backend(f"https://b{i}.example.com", priority=1 + i % 2) for i in range(3)]
    transport = openai_lb.HTTPXTransport(backends, transport=httpx.MockTransport(handler), health_store=store)
    client = openai.AzureOpenAI(
        azure_endpoint="https://client.example.com",
        api_key="k",
        api_version="2024-10-21",
        max_retries=0,
        http_client=httpx.Client(transport=transport),
    )
    points = []
    step = calls // samples
    gc.collect()
    for done in range(calls + 1):
        if done % step == 0:
            gc.collect()
            points.append({"calls": done, "rss_kib": _rss_kib()})
        if done == calls:
            break
        with contextlib.suppress(openai.RateLimitError):
            client.chat.completions.create(model=f"deployment-{done % deployments}", messages=MESSAGES)
    after_warmup = [p["rss_kib"] for p in points[1:]]
    return {
        "calls": calls,
        "deployments": deployments,
        "backends": len(backends),
        "rss_kib": points,
        "growth_after_first_sample_kib": max(after_warmup) - after_warmup[0],
        "health_entries": store.size,
        "health_entries_bound": len(backends) * (deployments + 1),
    }
