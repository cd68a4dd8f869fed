"""``openai_lb.otel``: metrics and span events through the real SDK against fake servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import os
import subprocess
import sys
import time
import weakref
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

pytest.importorskip("opentelemetry.sdk")

from helpers import FakeClock
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, Tracer, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

import openai_lb
from openai_lb import Backend, InMemoryHealthStore
from openai_lb.otel import (
    ACTIVE_ATTEMPTS,
    ATTEMPT_DURATION,
    AVAILABLE_BACKENDS,
    COOLDOWNS,
    DURATION_BUCKETS,
    OpenTelemetryHook,
)
from openai_lb.testing import FakeAzureOpenAI, Reply, Stall, closed_port_url

MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]
API_VERSION = "2024-10-21"


@dataclass
class Telemetry:
    hook: OpenTelemetryHook
    reader: InMemoryMetricReader
    spans: InMemorySpanExporter
    tracer: Tracer

    def points(self, name: str) -> list[tuple[dict[str, Any], Any]]:
        """(attributes, data point) of every point of metric ``name`` collected now."""
        found: list[tuple[dict[str, Any], Any]] = []
        data = self.reader.get_metrics_data()
        for resource in data.resource_metrics if data is not None else ():
            for scope in resource.scope_metrics:
                for metric in scope.metrics:
                    if metric.name == name:
                        found += [(dict(point.attributes or {}), point) for point in metric.data.data_points]
        return found

    def span(self) -> ReadableSpan:
        finished = self.spans.get_finished_spans()
        assert len(finished) == 1, f"expected one finished span, got {[s.name for s in finished]}"
        return finished[0]


@pytest.fixture
def telemetry() -> Iterator[Telemetry]:
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    exporter = InMemorySpanExporter()
    tracers = TracerProvider()
    tracers.add_span_processor(SimpleSpanProcessor(exporter))
    yield Telemetry(OpenTelemetryHook(meter_provider=meters), reader, exporter, tracers.get_tracer("tests"))
    meters.shutdown()
    tracers.shutdown()


@pytest.fixture
def client_with() -> Iterator[Any]:
    """Make balanced sync clients reporting to a hook; all are closed after the test."""
    made: list[openai.AzureOpenAI] = []

    def make(hook: OpenTelemetryHook, backends: list[Backend], **kwargs: Any) -> openai.AzureOpenAI:
        kwargs.setdefault("health_store", InMemoryHealthStore())
        client = openai_lb.AzureOpenAI(
            backends=backends, on_event=hook, api_key="client-key", api_version=API_VERSION, max_retries=0, **kwargs
        )
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def answer_of(client: Any) -> str:
    text: str = client.chat.completions.create(model="gpt-4o", messages=MESSAGES).choices[0].message.content
    return text


def by_backend(points: list[tuple[dict[str, Any], Any]]) -> dict[str, dict[str, Any]]:
    """One point per backend name (fails if a backend has several)."""
    names = [attributes["openai_lb.backend"] for attributes, _ in points]
    assert len(names) == len(set(names)), f"expected one point per backend, got {points}"
    return {attributes["openai_lb.backend"]: attributes for attributes, _ in points}


def available(telemetry: Telemetry) -> dict[str, int]:
    return {attributes["openai_lb.backend"]: point.value for attributes, point in telemetry.points(AVAILABLE_BACKENDS)}


def test_a_429_then_failover_is_counted_timed_cooled_and_named_on_the_span(
    servers, client_with, telemetry: Telemetry
) -> None:
    ptu, paygo = servers("ptu"), servers("paygo")
    client = client_with(
        telemetry.hook, [Backend(ptu.url, priority=1, name="ptu"), Backend(paygo.url, priority=2, name="paygo")]
    )
    ptu.script(Reply(429, headers={"retry-after-ms": "1500"}))
    with telemetry.tracer.start_as_current_span("chat"):
        assert answer_of(client) == "paygo:gpt-4o"

    attempts = telemetry.points(ATTEMPT_DURATION)
    assert {(a["openai_lb.backend"], a["openai_lb.outcome"]): p.count for a, p in attempts} == {
        ("ptu", "rate_limited"): 1,
        ("paygo", "success"): 1,
    }, "one rate-limited attempt on the PTU, one success on pay-as-you-go"
    ptu_attempt, paygo_attempt = by_backend(attempts)["ptu"], by_backend(attempts)["paygo"]
    assert ptu_attempt == {
        "openai_lb.backend": "ptu",
        "server.address": "127.0.0.1",
        "openai_lb.deployment": "gpt-4o",
        "openai_lb.outcome": "rate_limited",
        "http.response.status_code": 429,
        "error.type": "429",
    }, "the 429 attempt carries backend, host, deployment, outcome, status and the status as error.type"
    assert paygo_attempt["http.response.status_code"] == 200
    assert "error.type" not in paygo_attempt, "a success has no error.type"

    assert all(tuple(point.explicit_bounds) == DURATION_BUCKETS for _, point in attempts), "LLM-sized buckets"
    assert all(0 < point.sum < 5 for _, point in attempts), "durations are the attempts' seconds"

    cooldowns = telemetry.points(COOLDOWNS)
    assert [(a, p.value) for a, p in cooldowns] == [
        (
            {
                "openai_lb.backend": "ptu",
                "server.address": "127.0.0.1",
                "openai_lb.deployment": "gpt-4o",
                "openai_lb.cooldown.reason": "rate_limited",
                "openai_lb.cooldown.source": "retry-after-ms",
            },
            1,
        )
    ], "the 429 cooled the PTU's deployment, with the header the duration came from"

    active = telemetry.points(ACTIVE_ATTEMPTS)
    assert {a["openai_lb.backend"]: p.value for a, p in active} == {"ptu": 0, "paygo": 0}, "no attempt left active"

    span = telemetry.span()
    assert span.attributes is not None
    assert span.attributes["openai_lb.backend"] == "paygo", "the span names the backend that answered"
    assert span.attributes["openai_lb.failovers"] == 1, "one failover before the answer"
    events = [event for event in span.events if event.name == "openai_lb.attempt"]
    assert [
        (e.attributes["openai_lb.attempt.number"], e.attributes["openai_lb.backend"], e.attributes["openai_lb.outcome"])
        for e in events
        if e.attributes is not None
    ] == [(1, "ptu", "rate_limited"), (2, "paygo", "success")], "one span event per attempt, in order"
    first = events[0].attributes
    assert first is not None
    assert first["http.response.status_code"] == 429
    assert first["openai_lb.attempt.latency"] >= 0


def test_a_refused_connection_is_counted_with_its_exception_type(servers, client_with, telemetry: Telemetry) -> None:
    paygo = servers("paygo")
    refused = closed_port_url()
    client = client_with(
        telemetry.hook, [Backend(refused, priority=1, name="down"), Backend(paygo.url, priority=2, name="paygo")]
    )
    with telemetry.tracer.start_as_current_span("chat"):
        assert answer_of(client) == "paygo:gpt-4o"

    down = by_backend(telemetry.points(ATTEMPT_DURATION))["down"]
    assert down["openai_lb.outcome"] == "failure"
    assert down["error.type"] == "ConnectError", "no status: error.type is the exception's type name"
    assert "http.response.status_code" not in down, "no status code when nothing answered"
    cooldowns = telemetry.points(COOLDOWNS)
    assert [(a["openai_lb.backend"], a["openai_lb.cooldown.reason"]) for a, _ in cooldowns] == [("down", "failure")]
    assert "openai_lb.cooldown.source" not in cooldowns[0][0], "the breaker's duration comes from no header"
    assert "openai_lb.deployment" not in cooldowns[0][0], "the breaker cools the whole backend"
    span = telemetry.span()
    assert span.attributes is not None
    assert (span.attributes["openai_lb.backend"], span.attributes["openai_lb.failovers"]) == ("paygo", 1)
    failed = next(e for e in span.events if e.attributes is not None and e.attributes["openai_lb.backend"] == "down")
    assert failed.attributes is not None
    assert failed.attributes["error.type"] == "ConnectError"


def test_available_backends_drops_while_a_backend_cools_and_comes_back(
    servers, telemetry: Telemetry, transport_cls: type[Any], clock: FakeClock
) -> None:
    ptu, paygo = servers("ptu"), servers("paygo")
    transport = transport_cls(
        [Backend(ptu.url, priority=1, name="ptu"), Backend(paygo.url, priority=2, name="paygo")],
        health_store=InMemoryHealthStore(),
        clock=clock,
        wall_clock=clock.wall,
        on_event=telemetry.hook,
    )
    http = transport_cls._stack.module
    client = openai.AzureOpenAI(
        http_client=http.Client(transport=transport),
        azure_endpoint="http://127.0.0.1:9",
        api_key="client-key",
        api_version=API_VERSION,
        max_retries=0,
    )
    assert available(telemetry) == {"ptu": 1, "paygo": 1}, "both backends are available before any request"
    ptu.script(Reply(429, headers={"retry-after-ms": "2000"}))
    assert answer_of(client) == "paygo:gpt-4o"
    assert available(telemetry) == {"ptu": 1, "paygo": 1}, "a cooling deployment leaves the backend to the others"
    clock.advance(2.0)
    ptu.script(Reply(503))
    assert answer_of(client) == "paygo:gpt-4o"
    assert available(telemetry) == {"ptu": 0, "paygo": 1}, "the PTU does not count while its circuit is open"
    clock.advance(5.0)
    assert available(telemetry) == {"ptu": 1, "paygo": 1}, "the PTU counts again once the breaker has closed"
    client.close()


def test_every_backend_cooling_is_an_event_on_the_span(servers, client_with, telemetry: Telemetry) -> None:
    ptu = servers("ptu")
    client = client_with(telemetry.hook, [Backend(ptu.url, name="ptu")])
    ptu.script(Reply(429, headers={"retry-after": "30"}))
    with telemetry.tracer.start_as_current_span("chat"), pytest.raises(openai.RateLimitError):
        answer_of(client)
    span = telemetry.span()
    cooling = [e for e in span.events if e.name == "openai_lb.all_backends_cooling"]
    assert len(cooling) == 1, f"expected one all-cooling event, got {[e.name for e in span.events]}"
    details = cooling[0].attributes
    assert details is not None
    assert details["openai_lb.soonest_backend"] == "ptu"
    assert 29 < details["openai_lb.retry_after"] <= 30, "retry_after is the seconds until the PTU recovers"
    assert details["openai_lb.deployment"] == "gpt-4o"
    assert span.attributes is not None
    assert "openai_lb.backend" not in span.attributes, "no backend answered, so none is named on the span"
    assert span.attributes["openai_lb.failovers"] == 1, "the one attempt failed over to the 429"


def test_metrics_are_recorded_and_spans_untouched_when_nothing_is_recording(
    servers, client_with, telemetry: Telemetry
) -> None:
    ptu = servers("ptu")
    client = client_with(telemetry.hook, [Backend(ptu.url, name="ptu")])
    unsampled = TracerProvider(sampler=ALWAYS_OFF).get_tracer("tests")
    with unsampled.start_as_current_span("chat") as span:
        assert answer_of(client) == "ptu:gpt-4o"
        assert not span.is_recording()
    assert answer_of(client) == "ptu:gpt-4o", "and without any span at all"
    assert [p.count for _, p in telemetry.points(ATTEMPT_DURATION)] == [2], "metrics do not need a recording span"


@pytest.mark.anyio
async def test_active_attempts_return_to_zero_after_many_concurrent_async_requests(
    servers, telemetry: Telemetry
) -> None:
    ptu, paygo = servers("ptu"), servers("paygo")
    client = openai_lb.AsyncAzureOpenAI(
        backends=[Backend(ptu.url, priority=1, name="ptu"), Backend(paygo.url, priority=2, name="paygo")],
        on_event=telemetry.hook,
        api_key="client-key",
        api_version=API_VERSION,
        max_retries=0,
        health_store=InMemoryHealthStore(),
    )
    ptu.script(*[Reply(429, headers={"retry-after-ms": "50"})] * 5)

    async def ask() -> str:
        answer = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        text: str = answer.choices[0].message.content or ""
        return text

    async with client:
        answers = Counter(await asyncio.gather(*(ask() for _ in range(60))))
    assert sum(answers.values()) == 60, f"every request was answered: {answers}"

    sent = len(ptu.requests) + len(paygo.requests)
    assert sum(p.count for _, p in telemetry.points(ATTEMPT_DURATION)) == sent, "one duration per attempt"
    active = telemetry.points(ACTIVE_ATTEMPTS)
    assert {a["openai_lb.backend"] for a, _ in active} == {"ptu", "paygo"}, "active attempts are observed"
    assert all(p.value == 0 for _, p in active), f"active attempts did not return to 0: {active}"


def test_counts_add_up_when_many_threads_share_one_client(servers, client_with, telemetry: Telemetry) -> None:
    ptu, paygo = servers("ptu"), servers("paygo")
    client = client_with(
        telemetry.hook, [Backend(ptu.url, priority=1, name="ptu"), Backend(paygo.url, priority=2, name="paygo")]
    )
    ptu.script(*[Reply(429, headers={"retry-after-ms": "20"})] * 5)
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: answer_of(client), range(80)))
    assert len(answers) == 80
    sent = len(ptu.requests) + len(paygo.requests)
    assert sum(p.count for _, p in telemetry.points(ATTEMPT_DURATION)) == sent, "every attempt counted exactly once"
    active = telemetry.points(ACTIVE_ATTEMPTS)
    assert all(p.value == 0 for _, p in active), f"active attempts did not return to 0: {active}"


def test_one_hook_on_two_clients_counts_each_backend_once(servers, client_with, telemetry: Telemetry) -> None:
    ptu, paygo, spare = servers("ptu"), servers("paygo"), servers("spare")
    shared = InMemoryHealthStore()
    first = client_with(
        telemetry.hook,
        [Backend(ptu.url, priority=1, name="ptu"), Backend(paygo.url, priority=2, name="paygo")],
        health_store=shared,
    )
    second = client_with(
        telemetry.hook,
        [Backend(ptu.url, name="ptu"), Backend(paygo.url, name="paygo"), Backend(spare.url, name="spare")],
        health_store=shared,
    )
    assert available(telemetry) == {"ptu": 1, "paygo": 1, "spare": 1}, "a URL both clients use counts once"
    ptu.script(Reply(503))
    answer_of(first)
    assert available(telemetry) == {"ptu": 0, "paygo": 1, "spare": 1}, "the PTU's open circuit counts for both clients"
    assert second.balancer is not None, "the second client is still in use"


def test_two_hooks_on_one_meter_provider_both_report_their_backends(servers, client_with) -> None:
    reader = InMemoryMetricReader()
    meters = MeterProvider(metric_readers=[reader])
    ptu, paygo = servers("ptu"), servers("paygo")
    first = client_with(OpenTelemetryHook(meter_provider=meters), [Backend(ptu.url, name="ptu")])
    second = client_with(OpenTelemetryHook(meter_provider=meters), [Backend(paygo.url, name="paygo")])
    answer_of(first)
    answer_of(second)
    third = OpenTelemetryHook(meter_provider=meters)
    seen = Telemetry(third, reader, InMemorySpanExporter(), TracerProvider().get_tracer("tests"))
    assert available(seen) == {"ptu": 1, "paygo": 1}, "the second hook's backends are observed too"
    assert {a["openai_lb.backend"] for a, _ in seen.points(ACTIVE_ATTEMPTS)} == {"ptu", "paygo"}
    assert sum(p.count for _, p in seen.points(ATTEMPT_DURATION)) == 2
    meters.shutdown()


def test_a_missing_deployment_leaves_the_backend_available_for_the_others(
    servers, client_with, telemetry: Telemetry
) -> None:
    only_4o = FakeAzureOpenAI(name="only-4o", deployments={"gpt-4o"})
    both = FakeAzureOpenAI(name="both", deployments={"gpt-4o", "mini"})
    with only_4o, both:
        client = client_with(
            telemetry.hook,
            [Backend(only_4o.url, priority=1, name="only-4o"), Backend(both.url, priority=2, name="both")],
        )
        assert client.chat.completions.create(model="mini", messages=MESSAGES).choices[0].message.content == "both:mini"
        assert available(telemetry) == {"only-4o": 1, "both": 1}, "only-4o still serves gpt-4o"


def test_one_hook_on_two_clients_sums_both_clients_attempts(servers, client_with, telemetry: Telemetry) -> None:
    ptu = servers("ptu")
    clients = [client_with(telemetry.hook, [Backend(ptu.url, name="ptu")]) for _ in range(2)]
    for client in clients:
        answer_of(client)
    assert [p.count for _, p in telemetry.points(ATTEMPT_DURATION)] == [2], "both clients' attempts in one series"


def test_active_attempts_count_a_request_while_it_waits_for_its_answer(
    servers, client_with, telemetry: Telemetry
) -> None:
    ptu = servers("ptu")
    client = client_with(telemetry.hook, [Backend(ptu.url, name="ptu")])
    ptu.script(Stall(2))
    with ThreadPoolExecutor(max_workers=1) as pool:
        pending = pool.submit(answer_of, client)
        while not ptu.requests:
            time.sleep(0.005)  # until the server holds the request
        assert [p.value for _, p in telemetry.points(ACTIVE_ATTEMPTS)] == [1], "one attempt awaits its answer"
        assert pending.result(timeout=10) == "ptu:gpt-4o"
    assert [p.value for _, p in telemetry.points(ACTIVE_ATTEMPTS)] == [0]


def test_the_hook_does_not_keep_a_dropped_client_alive(servers, client_with, telemetry: Telemetry) -> None:
    ptu, spare = servers("ptu"), servers("spare")
    kept = client_with(telemetry.hook, [Backend(ptu.url, name="ptu")])
    dropped = openai_lb.AzureOpenAI(
        backends=[Backend(spare.url, name="spare")], on_event=telemetry.hook, api_key="k", api_version=API_VERSION
    )
    assert available(telemetry) == {"ptu": 1, "spare": 1}
    balancer = weakref.ref(dropped.balancer)
    dropped.close()
    del dropped
    gc.collect()
    assert balancer() is None, "the hook (or something else) keeps a dropped client's balancer alive"
    assert available(telemetry) == {"ptu": 1}, "a dropped client's backends no longer count"
    assert kept.balancer is not None


def test_no_attribute_carries_a_credential(servers, client_with, telemetry: Telemetry) -> None:
    ptu, paygo = servers("ptu"), servers("paygo")
    ptu.api_keys = frozenset({"ptu-secret"})
    client = client_with(
        telemetry.hook,
        [Backend(ptu.url, priority=1, api_key="ptu-secret"), Backend(paygo.url, priority=2)],
    )
    ptu.script(Reply(503))
    with telemetry.tracer.start_as_current_span("chat"):
        answer_of(client)
    span = telemetry.span()
    seen = [
        str(attributes)
        for name in (ATTEMPT_DURATION, COOLDOWNS, ACTIVE_ATTEMPTS, AVAILABLE_BACKENDS)
        for attributes, _ in telemetry.points(name)
    ]
    seen += [str(span.attributes)] + [str(event.attributes) for event in span.events]
    leaked = [text for text in seen if "secret" in text or "client-key" in text]
    assert not leaked, f"a credential reached telemetry: {leaked}"


def test_the_meter_is_named_after_the_package_with_its_version(servers, client_with, telemetry: Telemetry) -> None:
    ptu = servers("ptu")
    answer_of(client_with(telemetry.hook, [Backend(ptu.url)]))
    data = telemetry.reader.get_metrics_data()
    assert data is not None
    scopes = {(s.scope.name, s.scope.version) for r in data.resource_metrics for s in r.scope_metrics}
    assert scopes == {("openai_lb", openai_lb.__version__)}
    units = {m.name: m.unit for r in data.resource_metrics for s in r.scope_metrics for m in s.metrics}
    assert units == {
        ATTEMPT_DURATION: "s",
        ACTIVE_ATTEMPTS: "{attempt}",
        AVAILABLE_BACKENDS: "{backend}",
    }, "UCUM units; cooldowns appear only once something cooled"


def test_the_observability_example_runs_offline_and_shows_logs_metrics_and_spans() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "observability.py"
    # The example imports the openai_lb these tests import, installed or not.
    env = {**os.environ, "PYTHONPATH": str(Path(openai_lb.__file__).resolve().parents[1])}
    done = subprocess.run(
        [sys.executable, str(example)], capture_output=True, text=True, timeout=60, check=False, env=env
    )
    assert done.returncode == 0, done.stderr
    assert "attempt 1 on ptu (gpt-4o): rate_limited, 429" in done.stderr, f"no log line of the 429: {done.stderr}"
    assert "cools for 0.2 s: rate_limited (from retry-after-ms)" in done.stderr, done.stderr
    assert "ptu answers again" in done.stderr, done.stderr
    for name in (ATTEMPT_DURATION, ACTIVE_ATTEMPTS, AVAILABLE_BACKENDS, COOLDOWNS, "openai_lb.failovers"):
        assert f'"{name}"' in done.stdout, f"{name} is missing from the console exporters' output"


def test_passed_over_backends_are_counted_and_a_spilled_answer_names_its_deployment(telemetry: Telemetry) -> None:
    from openai_lb import AttemptFinished, AttemptStarted
    from openai_lb.otel import PASSED_OVER

    telemetry.hook(AttemptStarted("paygo", "https://paygo.example.com", "gpt-4o", 1, None, ("ptu", "ptu-b")))
    telemetry.hook(AttemptStarted("paygo", "https://paygo.example.com", "gpt-4o", 1, None, ("ptu",)))
    telemetry.hook(AttemptStarted("ptu", "https://ptu.example.com", "gpt-4o", 1))
    finished = AttemptFinished("ptu", "https://ptu.example.com", "gpt-4o", 1, "success", 200, None, 0.1)
    telemetry.hook(dataclasses.replace(finished, spilled_to="gpt-4o-standard"))
    passed = {attributes["openai_lb.backend"]: point.value for attributes, point in telemetry.points(PASSED_OVER)}
    assert passed == {"ptu": 2, "ptu-b": 1}
    [(attributes, _)] = telemetry.points(ATTEMPT_DURATION)
    assert attributes["openai_lb.spilled_to"] == "gpt-4o-standard"
