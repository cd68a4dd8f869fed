"""What the benchmarks share: spreads of samples, rounds in random order, and the isolated transport
(the balancing transport over an inner transport answering from memory: no network at all)."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import httpx
import openai

import openai_lb
from openai_lb import Backend, HealthStore, InMemoryHealthStore, Policy

T = TypeVar("T")
MESSAGES: Any = [{"role": "user", "content": "hi"}]
COMPLETION = {
    "id": "x",
    "object": "chat.completion",
    "created": 0,
    "model": "gpt-4o",
    "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "hi"}}],
}


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def interleaved(rounds: int, subjects: dict[str, T], measure: Callable[[T], float]) -> dict[str, list[float]]:
    """``measure`` of every subject once as a warm-up, then once per round, in random order per round."""
    for subject in subjects.values():
        measure(subject)
    samples: dict[str, list[float]] = {name: [] for name in subjects}
    for _ in range(rounds):
        for name in random.sample(list(subjects), len(subjects)):
            samples[name].append(measure(subjects[name]))
    return samples


class InMemory(httpx.BaseTransport):
    """An inner transport answering at once from memory: what is left is the balancer's own cost."""

    def __init__(
        self, body: bytes = b'{"id": "x", "object": "chat.completion"}', headers: Sequence[tuple[str, str]] = ()
    ) -> None:
        self.body = body
        self.headers = list(headers)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers=self.headers, content=self.body, request=request)


def balancing(
    count: int,
    *,
    tiered: bool,
    store: HealthStore | None = None,
    policy: Policy | None = None,
    inner: httpx.BaseTransport | None = None,
) -> openai_lb.HTTPXTransport:
    """The balancing transport over ``count`` backends (``b0`` first; with ``tiered`` the others are spares
    at a lower priority, else all share one tier), answered by ``inner`` (an ``InMemory`` by default)."""
    backends = [Backend(f"https://b{i}.example.com", priority=1 if (i == 0 or not tiered) else 2) for i in range(count)]
    return openai_lb.HTTPXTransport(
        backends, transport=inner or InMemory(), policy=policy, health_store=store or InMemoryHealthStore()
    )


def sdk_request(
    send: Callable[[Any], object] = lambda client: client.chat.completions.create(model="gpt-4o", messages=MESSAGES),
    *,
    v1: bool = False,
) -> httpx.Request:
    """The request the SDK itself builds (all its usual headers included) for ``send(client)``: by default a
    chat completion, through an ``AzureOpenAI`` client (``/openai/deployments/...``) or, with ``v1``, an
    ``OpenAI`` client on Azure's ``/openai/v1/`` base."""
    captured: list[httpx.Request] = []

    def capture(request: httpx.Request) -> httpx.Response:
        captured.append(request)
        return httpx.Response(200, json=COMPLETION)

    http_client = httpx.Client(transport=httpx.MockTransport(capture))
    client: Any = (
        openai.OpenAI(base_url="https://client.example.com/openai/v1/", api_key="k", http_client=http_client)
        if v1
        else openai.AzureOpenAI(
            azure_endpoint="https://client.example.com", api_key="k", api_version="2024-10-21", http_client=http_client
        )
    )
    send(client)
    return captured[0]


def per_request_seconds(
    rounds: int, calls: int, cases: dict[str, Callable[[], httpx.BaseTransport]]
) -> dict[str, list[float]]:
    """Seconds per request of each transport sending the SDK's request, per round, in random order per round."""
    request = sdk_request()

    def per_request(transport: httpx.BaseTransport) -> float:
        started = time.perf_counter()
        for _ in range(calls):
            transport.handle_request(request)
        return (time.perf_counter() - started) / calls

    return interleaved(rounds, {name: make() for name, make in cases.items()}, per_request)


def paired(samples: dict[str, list[float]], scale: float) -> dict[str, dict[str, float]]:
    """Off and on, scaled; their difference and ratio paired by round; and each one's fastest round (the
    least disturbed by other work on the host)."""
    off, on = samples["off"], samples["on"]
    return {
        "off": spread([v * scale for v in off]),
        "on": spread([v * scale for v in on]),
        "on_minus_off": spread([(n - f) * scale for n, f in zip(on, off, strict=True)]),
        "on_over_off": spread([n / f for n, f in zip(on, off, strict=True)]),
        "fastest": {"off": min(off) * scale, "on": min(on) * scale},
    }


def timed(
    rounds: int, groups: dict[str, dict[str, Callable[[], object]]], seconds: float
) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, list[float]]]]:
    """Seconds per call of each step of each group, once per round after a warm-up: the groups in random
    order, a group's steps one right after the other (in random order), so that what disturbs one of them
    disturbs its neighbours alike. Each measurement makes as many calls as took about ``seconds`` at first;
    also those numbers of calls."""
    calls = {group: {name: _calls(step, seconds) for name, step in steps.items()} for group, steps in groups.items()}
    samples: dict[str, dict[str, list[float]]] = {
        group: {name: [] for name in steps} for group, steps in groups.items()
    }
    for round_ in range(rounds + 1):
        for group in random.sample(list(groups), len(groups)):
            steps = groups[group]
            for name in random.sample(list(steps), len(steps)):
                step, count = steps[name], calls[group][name]
                started = time.perf_counter()
                for _ in range(count):
                    step()
                if round_:  # round 0 warms up
                    samples[group][name].append((time.perf_counter() - started) / count)
    return calls, samples


def _calls(step: Callable[[], object], seconds: float) -> int:
    """How many calls of ``step`` take about ``seconds``."""
    step()
    started = time.perf_counter()
    for _ in range(5):
        step()
    return max(5, round(seconds * 5 / (time.perf_counter() - started)))
