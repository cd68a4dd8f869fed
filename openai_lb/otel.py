"""OpenTelemetry metrics and span events for openai_lb, as an ``on_event`` hook.

Needs the OpenTelemetry API: ``pip install "openai-lb[otel]"`` (and an SDK with an exporter to
send the data somewhere). ``import openai_lb`` never imports OpenTelemetry; only this module does.

```python
from openai_lb import AzureOpenAI, Backend
from openai_lb.otel import OpenTelemetryHook

client = AzureOpenAI(
    backends=[Backend("https://ptu-eastus.openai.azure.com", priority=1), ...],
    on_event=OpenTelemetryHook(),  # the global meter provider; or OpenTelemetryHook(meter_provider=...)
    api_key=...,
    api_version="2024-10-21",
)
```

Metrics (meter ``openai_lb``): ``openai_lb.attempt.duration`` (its count is the attempts by
backend and outcome; ``openai_lb.affinity`` says when a request went to the holder of its objects
or looked for it, ``openai_lb.spilled_to`` names the deployment Azure spilled an answered request
to), ``openai_lb.active_attempts``, ``openai_lb.available_backends``, ``openai_lb.cooldowns`` and
``openai_lb.passed_over`` (backends passed over for headroom).
On the span around the SDK call, when it is recording: an ``openai_lb.attempt`` event per
attempt, an ``openai_lb.all_backends_cooling`` event, and the attributes ``openai_lb.backend``
(who answered) and ``openai_lb.failovers``. No attribute ever holds a credential: backends are
named by their name and host.
"""

from __future__ import annotations

import operator
import threading
import weakref
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

try:
    from opentelemetry.metrics import (
        CallbackOptions,
        Histogram,
        Meter,
        MeterProvider,
        Observation,
        get_meter_provider,
    )
    from opentelemetry.trace import get_current_span
except ImportError as error:  # pragma: no cover - exercised in a subprocess without the package
    raise ImportError(
        'openai_lb.otel needs the OpenTelemetry API, which is not installed: pip install "openai-lb[otel]"'
    ) from error

from ._events import AllBackendsCooling, AttemptFinished, AttemptStarted, BackendCooled, Event
from ._version import __version__

if TYPE_CHECKING:
    from ._core import Balancer
    from ._status import BackendStatus

__all__ = [
    "ACTIVE_ATTEMPTS",
    "ATTEMPT_DURATION",
    "AVAILABLE_BACKENDS",
    "COOLDOWNS",
    "DURATION_BUCKETS",
    "PASSED_OVER",
    "OpenTelemetryHook",
]

ATTEMPT_DURATION = "openai_lb.attempt.duration"
ACTIVE_ATTEMPTS = "openai_lb.active_attempts"
AVAILABLE_BACKENDS = "openai_lb.available_backends"
COOLDOWNS = "openai_lb.cooldowns"
PASSED_OVER = "openai_lb.passed_over"

DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
"""Seconds; the bucket advice of the GenAI client operation duration: LLM calls take 10 ms to minutes."""

_BACKEND = "openai_lb.backend"
_DEPLOYMENT = "openai_lb.deployment"
_OUTCOME = "openai_lb.outcome"
_STATUS = "http.response.status_code"
_ERROR = "error.type"
_FAILOVERS = "openai_lb.failovers"
_AFFINITY = "openai_lb.affinity"
_SPILLED_TO = "openai_lb.spilled_to"

# Attribute sets are built once per combination and shared; the SDK keeps references to them, so
# they are never changed. Deployments come from callers, hence a bound (cleared, then rebuilt).
_CACHE_SIZE = 4096

_Attributes = Mapping[str, Any]

_DELIVERED = frozenset({"success", "client_error"})
# A backend with a cooling deployment still serves the others; only an open circuit stops it.
_USABLE = frozenset({"available", "cooling", "probing"})


def _error_type(status: int | None, error: str | None) -> str | None:
    # As HTTP client instrumentations do: a 4xx or 5xx answer is the error, named by its status code.
    if status is not None:
        return str(status) if status >= 400 else None
    return error


class OpenTelemetryHook:
    """An ``on_event`` hook that records openai_lb's events as OpenTelemetry metrics and span events.

    ``meter_provider`` defaults to the global one (a hook made before the application sets it
    still reports there). One hook can serve many clients: pass it to each. It is thread-safe.
    Per attempt it records one measurement (the duration histogram, whose count is the attempt
    count, as HTTP client metrics do), plus one span event when the span is recording.
    ``active_attempts`` and ``available_backends`` are read from ``status()`` of every balancer
    attached to a hook of the same meter provider (held weakly) at each collection, counting each
    backend URL once; several hooks on one provider share their instruments.
    """

    def __init__(self, meter_provider: MeterProvider | None = None) -> None:
        provider = meter_provider if meter_provider is not None else get_meter_provider()
        self._instruments = _instruments_of(provider)
        self._duration = self._instruments.duration
        self._cooldowns = self._instruments.cooldowns
        self._passed_over = self._instruments.passed_over
        self._places: dict[tuple[str, str, str | None], _Attributes] = {}
        self._attempt_attributes: dict[tuple[Any, ...], _Attributes] = {}
        self._cooldown_attributes: dict[tuple[Any, ...], _Attributes] = {}
        self._passed_by_name: dict[str, _Attributes] = {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def attach(self, balancer: Balancer) -> None:
        """Called by each balancer that uses this hook: its backends count in ``available_backends``."""
        self._instruments.attach(balancer)

    def __call__(self, event: Event, /) -> None:
        if type(event) is AttemptFinished:
            self._finished(event)
        elif type(event) is BackendCooled:
            self._cooled(event)
        elif type(event) is AllBackendsCooling:
            self._all_cooling(event)
        elif type(event) is AttemptStarted and event.passed_over:
            self._passed(event)

    # -- per event

    def _finished(self, event: AttemptFinished) -> None:
        key = (
            event.backend,
            event.url,
            event.deployment,
            event.outcome,
            event.status,
            event.error,
            event.affinity,
            event.spilled_to,
        )
        attributes = self._attempt_attributes.get(key)
        if attributes is None:
            attributes = self._remember(self._attempt_attributes, key, self._attempt_attributes_for(event))
        self._duration.record(event.latency, attributes)
        span = get_current_span()
        if not span.is_recording():
            return
        details = dict(attributes)
        details["openai_lb.attempt.number"] = event.number
        details["openai_lb.attempt.latency"] = event.latency
        span.add_event("openai_lb.attempt", details)
        if event.outcome in _DELIVERED:
            span.set_attributes({_BACKEND: event.backend, _FAILOVERS: event.number - 1})

    def _cooled(self, event: BackendCooled) -> None:
        key = (event.backend, event.url, event.deployment, event.reason, event.source, event.origin)
        attributes = self._cooldown_attributes.get(key)
        if attributes is None:
            built = dict(self._place(event.backend, event.url, event.deployment))
            built["openai_lb.cooldown.reason"] = event.reason
            if event.source is not None:
                built["openai_lb.cooldown.source"] = event.source
            if event.origin == "fleet":  # learned from another process: it counted the cooldown already
                built["openai_lb.cooldown.origin"] = event.origin
            attributes = self._remember(self._cooldown_attributes, key, built)
        self._cooldowns.add(1, attributes)

    def _passed(self, event: AttemptStarted) -> None:
        # The event names the backends passed over, not their URLs: the name alone identifies one.
        for name in event.passed_over:
            self._passed_over.add(1, self._passed_attributes(name))

    def _passed_attributes(self, name: str) -> _Attributes:
        attributes = self._passed_by_name.get(name)
        if attributes is None:
            attributes = self._remember(self._passed_by_name, name, {_BACKEND: name})
        return attributes

    def _all_cooling(self, event: AllBackendsCooling) -> None:
        span = get_current_span()
        if not span.is_recording():
            return
        details: dict[str, Any] = {
            "openai_lb.retry_after": event.retry_after,
            "openai_lb.soonest_backend": event.soonest,
        }
        if event.deployment is not None:
            details[_DEPLOYMENT] = event.deployment
        span.add_event("openai_lb.all_backends_cooling", details)
        # Every attempt of this request failed over; the SDK may retry it after retry_after.
        span.set_attribute(_FAILOVERS, event.attempts)

    # -- attribute sets, built once

    def _place(self, backend: str, url: str, deployment: str | None) -> _Attributes:
        """Where an attempt went: backend name, host and (if any) deployment."""
        key = (backend, url, deployment)
        attributes = self._places.get(key)
        if attributes is None:
            built = dict(_backend_attributes(backend, url))
            if deployment is not None:
                built[_DEPLOYMENT] = deployment
            attributes = self._remember(self._places, key, built)
        return attributes

    def _attempt_attributes_for(self, event: AttemptFinished) -> _Attributes:
        built = dict(self._place(event.backend, event.url, event.deployment))
        built[_OUTCOME] = event.outcome
        if event.status is not None:
            built[_STATUS] = event.status
        error = _error_type(event.status, event.error)
        if error is not None:
            built[_ERROR] = error
        if event.affinity is not None:  # pinned to the holder of an object, or looking for it
            built[_AFFINITY] = event.affinity
        if event.spilled_to is not None:  # Azure served it from the backend's spillover deployment
            built[_SPILLED_TO] = event.spilled_to
        return built

    @staticmethod
    def _remember(cache: dict[Any, _Attributes], key: Any, attributes: _Attributes) -> _Attributes:
        # Two threads may build the same set at once; either result is right, so no lock is needed.
        if len(cache) >= _CACHE_SIZE:
            cache.clear()
        return cache.setdefault(key, attributes)


class _Instruments:
    """The instruments of one meter provider, made once and shared by every hook on it: the SDK
    hands back an instrument already created, without registering a second hook's callbacks."""

    def __init__(self, meter: Meter) -> None:
        self.duration = _duration_histogram(meter)
        self.cooldowns = meter.create_counter(
            COOLDOWNS,
            unit="{cooldown}",
            description="Cooldowns of a backend (circuit breaker) or one of its deployments (429, missing).",
        )
        self.passed_over = meter.create_counter(
            PASSED_OVER,
            unit="{attempt}",
            description="Attempts that passed a backend over because its known headroom could not fit the request.",
        )
        meter.create_observable_up_down_counter(
            ACTIVE_ATTEMPTS,
            callbacks=[self._observe_active],
            unit="{attempt}",
            description="Attempts sent to each backend and not yet answered.",
        )
        meter.create_observable_up_down_counter(
            AVAILABLE_BACKENDS,
            callbacks=[self._observe_available],
            unit="{backend}",
            description="1 for each backend whose circuit is closed (some deployments may be cooling), else 0.",
        )
        self._lock = threading.Lock()
        self._balancers: list[weakref.ref[Balancer]] = []

    def attach(self, balancer: Balancer) -> None:
        with self._lock:
            self._balancers = [r for r in self._balancers if r() is not None]
            self._balancers.append(weakref.ref(balancer))

    def _statuses(self) -> list[BackendStatus]:
        with self._lock:
            self._balancers = [r for r in self._balancers if r() is not None]
            refs = list(self._balancers)
        return [status for ref in refs if (balancer := ref()) is not None for status in balancer.status()]

    def _observe_available(self, options: CallbackOptions) -> Iterable[Observation]:
        # A backend several clients share is available if any of them may use it.
        return self._per_backend(lambda status: int(status.state in _USABLE), max)

    def _observe_active(self, options: CallbackOptions) -> Iterable[Observation]:
        # Counters are per balancer: clients sharing a backend add up.
        return self._per_backend(lambda status: status.in_flight, operator.add)

    def _per_backend(
        self, value: Callable[[BackendStatus], int], combine: Callable[[int, int], int]
    ) -> list[Observation]:
        """One observation per backend URL over every attached balancer."""
        values: dict[str, int] = {}
        names: dict[str, str] = {}
        for status in self._statuses():
            found = values.get(status.url)
            values[status.url] = value(status) if found is None else combine(found, value(status))
            names.setdefault(status.url, status.name)
        return [Observation(count, _backend_attributes(names[url], url)) for url, count in values.items()]


_instruments: weakref.WeakKeyDictionary[MeterProvider, _Instruments] = weakref.WeakKeyDictionary()
_instruments_lock = threading.Lock()


def _instruments_of(provider: MeterProvider) -> _Instruments:
    with _instruments_lock:
        found = _instruments.get(provider)
        if found is None:
            found = _instruments[provider] = _Instruments(provider.get_meter("openai_lb", __version__))
        return found


def _duration_histogram(meter: Meter) -> Histogram:
    name, unit, description = ATTEMPT_DURATION, "s", "How long each attempt took, to the response headers or the error."
    try:
        return meter.create_histogram(
            name, unit=unit, description=description, explicit_bucket_boundaries_advisory=DURATION_BUCKETS
        )
    except TypeError:  # the API before 1.30 has no bucket advice; the SDK's defaults (or a View) apply
        return meter.create_histogram(name, unit=unit, description=description)


_HOSTS: dict[tuple[str, str], Mapping[str, Any]] = {}


def _backend_attributes(backend: str, url: str) -> Mapping[str, Any]:
    """Backend name and ``server.address`` (the host of the backend's credential-free URL).

    No ``server.port``: the backend name already tells backends apart, and every attribute
    costs the SDK time on each measurement."""
    key = (backend, url)
    attributes = _HOSTS.get(key)
    if attributes is None:
        if len(_HOSTS) >= _CACHE_SIZE:
            _HOSTS.clear()
        attributes = _HOSTS.setdefault(key, {_BACKEND: backend, "server.address": urlsplit(url).hostname or ""})
    return attributes
