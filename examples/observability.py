"""Balancing events as log lines, and as OpenTelemetry metrics and span events.

Runs offline: two fake Azure OpenAI servers on 127.0.0.1, a PTU that answers 429 once and a
pay-as-you-go backend. Needs ``pip install "openai-lb[otel]" opentelemetry-sdk``. Log lines go
to stderr; the span and, at exit, the metrics are printed to stdout by the console exporters.
"""

from __future__ import annotations

import logging
import time

from opentelemetry import metrics, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, PeriodicExportingMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

import openai_lb
from openai_lb import AllBackendsCooling, AttemptFinished, Backend, BackendCooled, BackendRecovered, Event
from openai_lb.otel import OpenTelemetryHook
from openai_lb.testing import FakeAzureOpenAI, Reply

log = logging.getLogger("my_app.openai")


def log_event(event: Event) -> None:
    """One line per attempt, cooldown, recovery and all-cooling answer (attempt starts are left out)."""
    if isinstance(event, AttemptFinished):
        log.info(
            "attempt %d on %s (%s): %s, %s, %.3f s",
            event.number,
            event.backend,
            event.deployment,
            event.outcome,
            event.status if event.status is not None else event.error,
            event.latency,
        )
    elif isinstance(event, BackendCooled):
        where = event.backend if event.deployment is None else f"{event.backend} ({event.deployment})"
        log.warning("%s cools for %.1f s: %s (from %s)", where, event.seconds, event.reason, event.source or "policy")
    elif isinstance(event, BackendRecovered):
        log.info("%s answers again", event.backend)
    elif isinstance(event, AllBackendsCooling):
        log.warning("every backend is cooling; retry after %.1f s (%s first)", event.retry_after, event.soonest)


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    # What an application sets up once; any exporter (OTLP, Prometheus, Azure Monitor) works the same.
    metrics.set_meter_provider(MeterProvider(metric_readers=[PeriodicExportingMetricReader(ConsoleMetricExporter())]))
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(tracer_provider)
    tracer = trace.get_tracer("my_app")

    with FakeAzureOpenAI(name="ptu") as ptu, FakeAzureOpenAI(name="paygo") as paygo:
        client = openai_lb.AzureOpenAI(
            backends=[Backend(ptu.url, priority=1, name="ptu"), Backend(paygo.url, priority=2, name="paygo")],
            on_event=[log_event, OpenTelemetryHook()],
            api_key="any key: the fake servers check none",
            api_version="2024-10-21",
        )
        ptu.script(Reply(429, headers={"retry-after-ms": "200"}))
        # Fails over to pay-as-you-go, stays there while the PTU cools, then returns to the PTU.
        for pause in (0.0, 0.0, 0.25):
            time.sleep(pause)
            # The hook names the backend that answered, and the failovers, on the span around each call.
            with tracer.start_as_current_span("chat gpt-4o"):
                answer = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
            log.info("answered by %s", answer.choices[0].message.content)
        client.close()

    tracer_provider.shutdown()
    provider = metrics.get_meter_provider()
    if isinstance(provider, MeterProvider):
        provider.shutdown()  # exports the metrics one last time


if __name__ == "__main__":
    main()
