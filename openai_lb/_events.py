"""Events: what the balancer did, as frozen data handed to ``on_event`` hooks.

```python
import logging
from openai_lb import AttemptFinished, AzureOpenAI, BackendCooled

def log_event(event):
    if isinstance(event, (AttemptFinished, BackendCooled)):
        logging.getLogger("my_app").info("%s", event)

client = AzureOpenAI(backends=[...], on_event=log_event)  # or a list of hooks
```

Hooks run in the thread (or task) of the request, after the balancer has made its decision and
outside its locks; they must be quick. A hook that raises is logged and ignored. Events name
backends by name and URL and never carry a credential.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, Protocol, TypeAlias

from ._errors import ConfigurationError
from ._health import Reason

__all__ = [
    "Affinity",
    "AllBackendsCooling",
    "AttemptFinished",
    "AttemptStarted",
    "BackendCooled",
    "BackendRecovered",
    "Event",
    "EventHook",
    "NoBackendCanServe",
    "Origin",
    "Outcome",
    "OwnerDiscovered",
    "StoreDisconnected",
    "StoreReconnected",
    "emit",
    "hooks_from",
]

log = logging.getLogger("openai_lb")

Outcome = Literal[
    "success",
    "client_error",
    "rate_limited",
    "deployment_missing",
    "failure",
    "skipped",
    "not_here",
    "context_too_long",
    "abandoned",
]
"""How an attempt ended.

``success`` and ``client_error`` (a 4xx other than 429) are handed to the caller;
``rate_limited`` (429), ``deployment_missing`` (404 DeploymentNotFound), ``failure`` (a failover
status such as 5xx, or a connection error or timeout), ``skipped`` (this client's credential
for the backend could not be obtained), ``not_here`` (the backend does not hold an object the
request names, while openai_lb looks for the one that does) and ``context_too_long`` (the prompt
exceeds this deployment's context window) fail over to the next backend;
``abandoned`` means the attempt ended without a verdict on the backend: the request was cancelled
or failed on this machine.
"""

Affinity = Literal["pinned", "discovery"]
"""Why a request about stateful objects went where it did: ``pinned`` to the backend known to hold
them, or ``discovery``, looking for the backend holding an id not seen before."""

Origin = Literal["local", "fleet"]
"""Where a cooldown was learned: from an answer to this process, or from another process sharing its store."""

FAILED_OVER: frozenset[Outcome] = frozenset(
    {"rate_limited", "deployment_missing", "failure", "skipped", "not_here", "context_too_long"}
)


@dataclass(frozen=True, slots=True)
class AttemptStarted:
    """An attempt was chosen and is about to be sent."""

    backend: str
    url: str
    deployment: str | None
    """The deployment as the backend names it (after ``deployments=`` mapping); None if the request names none."""
    number: int
    """1 for the first attempt of a request, 2 for the first failover, ..."""
    affinity: Affinity | None = None
    """Set when the request names stateful objects (see ``Affinity``)."""
    passed_over: tuple[str, ...] = ()
    """Backends (by name) this attempt passed over because their known headroom could not fit the request."""


@dataclass(frozen=True, slots=True)
class AttemptFinished:
    """An attempt ended; every ``AttemptStarted`` is followed by exactly one of these."""

    backend: str
    url: str
    deployment: str | None
    number: int
    outcome: Outcome
    status: int | None
    """The HTTP status the backend answered; None when it did not answer."""
    error: str | None
    """What went wrong without an HTTP answer: an exception's type name (for ``skipped``, the token
    provider's), never its message."""
    latency: float
    """Seconds from choosing the backend to its response headers (or the error)."""
    affinity: Affinity | None = None
    """Set when the request names stateful objects (see ``Affinity``)."""
    spilled_to: str | None = None
    """When Azure spilled the request over to another deployment of the backend (``x-ms-spillover-from-deployment``):
    the deployment that served it (``x-ms-deployment-name``; else the backend's ``spillover_deployment``, else "")."""

    @property
    def failed_over(self) -> bool:
        """Whether the request moved on from this backend: to the next one, or, with none left, to
        the 429 that ``AllBackendsCooling`` announces."""
        return self.outcome in FAILED_OVER


@dataclass(frozen=True, slots=True)
class BackendCooled:
    """A backend (``deployment`` None) or one of its deployments will not be tried for ``seconds``."""

    backend: str
    url: str
    deployment: str | None
    reason: Reason
    """``rate_limited`` (429), ``deployment_missing`` (DeploymentNotFound) or ``failure`` (the circuit breaker)."""
    seconds: float
    source: str | None
    """The header the duration came from (e.g. ``retry-after-ms``); None when openai_lb chose it."""
    failures: int
    """Consecutive failures that opened the circuit breaker; 0 for a deployment cooldown."""
    origin: Origin = "local"
    """``"fleet"`` when another process learned it and the shared store told this one (then
    ``backend`` is the URL: the store knows no names, and ``source`` is None)."""


@dataclass(frozen=True, slots=True)
class BackendRecovered:
    """A backend answered successfully for the first time since it (or ``deployment`` on it) cooled down."""

    backend: str
    url: str
    deployment: str | None


@dataclass(frozen=True, slots=True)
class OwnerDiscovered:
    """A backend turned out to hold objects this process had not seen: requests naming them go there now."""

    backend: str
    url: str
    object_ids: tuple[str, ...]
    attempts: int
    """Attempts the search took (1: the first backend asked had them)."""


@dataclass(frozen=True, slots=True)
class AllBackendsCooling:
    """No backend can take a request now: the caller gets a 429 asking it to retry after ``retry_after``."""

    deployment: str | None
    """The deployment the request named (the caller's name); None if it named none."""
    retry_after: float
    soonest: str
    """The backend that recovers first."""
    attempts: int
    """Attempts this request made before the answer (0 when every backend was cooling already)."""


@dataclass(frozen=True, slots=True)
class NoBackendCanServe:
    """No backend can take this request as it stands, and waiting would not help: the caller gets
    ``status`` (404 when no backend has the deployment, 401 when no token could be had for any that
    might, 400 when the objects it names are held by different backends) instead of a 429."""

    deployment: str | None
    status: int
    reason: Literal["deployment_missing", "credentials", "objects_apart"]
    attempts: int
    """Attempts this request made (credential failures included) before the answer."""


@dataclass(frozen=True, slots=True)
class StoreDisconnected:
    """The health store shared across processes cannot be used (unreachable, slow, refusing the
    credentials or the writes): balancing goes on with this process's own state, and the store
    reconnects in the background."""

    store: str
    """The store's URL, without any password."""
    error: str
    """The exception's type name (never its message)."""


@dataclass(frozen=True, slots=True)
class StoreReconnected:
    """The shared health store is usable again; both sides were brought up to date."""

    store: str
    downtime: float
    """Seconds since ``StoreDisconnected``."""


Event: TypeAlias = (
    AttemptStarted
    | AttemptFinished
    | BackendCooled
    | BackendRecovered
    | AllBackendsCooling
    | NoBackendCanServe
    | OwnerDiscovered
    | StoreDisconnected
    | StoreReconnected
)


class EventHook(Protocol):
    """Anything callable with one event. A hook may also define ``attach(balancer)``, called once
    by each balancer that starts using it (the OpenTelemetry hook reads ``status()`` that way)."""

    def __call__(self, event: Event, /) -> None: ...


def hooks_from(on_event: EventHook | Iterable[EventHook] | None) -> tuple[EventHook, ...]:
    """``on_event`` as a tuple of hooks, checked: one callable, several, or None."""
    if on_event is None:
        return ()
    hooks = (on_event,) if callable(on_event) else tuple(on_event)
    for hook in hooks:
        if not callable(hook):
            raise ConfigurationError(
                f"on_event takes a callable or a list of callables (each called with one event), got {hook!r}."
            )
    return hooks


def emit(hooks: tuple[EventHook, ...], event: Event) -> None:
    """Call every hook; one that raises is logged with its traceback and never breaks the request."""
    for hook in hooks:
        try:
            hook(event)
        except Exception:
            log.exception("on_event hook %r raised on %s; ignored", hook, type(event).__name__)
