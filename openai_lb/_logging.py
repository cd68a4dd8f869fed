"""openai_lb's log lines: a built-in hook over the events, so the core only emits.

The balancer hands events to ``log_event`` whenever the ``openai_lb`` logger would print at the
event's level (see ``level_of``); with the logger off, nothing is built. Every value that comes from
a caller or a server (deployment names above all) is logged through ``%r``, which escapes line
breaks and control characters, so no input can forge a log line; backend names are configuration,
checked to be printable ASCII.
"""

from __future__ import annotations

import logging

from ._events import (
    AllBackendsCooling,
    AttemptFinished,
    AttemptStarted,
    BackendCooled,
    BackendRecovered,
    Event,
    NoBackendCanServe,
    OwnerDiscovered,
    StoreDisconnected,
    StoreReconnected,
)

__all__ = ["DETAIL", "NOTICE", "level_of", "log", "log_event"]

log = logging.getLogger("openai_lb")

DETAIL = logging.DEBUG
"""Routine: an attempt chosen, an answer handed to the caller."""
NOTICE = logging.INFO
"""What changed the balancing: a cooldown, a recovery, a failover, an answer openai_lb made itself."""


def level_of(event: Event) -> int:
    """The level ``log_event`` logs ``event`` at."""
    if isinstance(event, AttemptFinished):
        if event.outcome == "skipped":
            return logging.WARNING
        return NOTICE if event.outcome == "failure" else DETAIL
    if isinstance(event, StoreDisconnected):
        return logging.WARNING
    return DETAIL if isinstance(event, AttemptStarted) else NOTICE


def log_event(event: Event) -> None:
    """Log one event at ``level_of(event)``."""
    level = level_of(event)
    if not log.isEnabledFor(level):
        return
    if isinstance(event, AttemptStarted):
        _started(level, event)
    elif isinstance(event, AttemptFinished):
        _finished(level, event)
    elif isinstance(event, BackendCooled):
        _cooled(level, event)
    elif isinstance(event, BackendRecovered):
        what = "the backend" if event.deployment is None else f"deployment {event.deployment!r}"
        log.log(level, "%s answered again after cooling down (%s)", event.backend, what)
    elif isinstance(event, AllBackendsCooling):
        log.log(
            level,
            "every backend for deployment %r is cooling: answering 429, retry after %.3f s",
            event.deployment,
            event.retry_after,
        )
    elif isinstance(event, NoBackendCanServe):
        _refused(level, event)
    elif isinstance(event, OwnerDiscovered):
        log.log(
            level,
            "%s holds %s: requests naming them go there (found in %d attempts)",
            event.backend,
            ", ".join(repr(object_id) for object_id in event.object_ids),
            event.attempts,
        )
    elif isinstance(event, StoreDisconnected):
        log.log(
            level,
            "health store %s unusable (%s): balancing on this process's own state, reconnecting in the background",
            event.store,
            event.error,
        )
    elif isinstance(event, StoreReconnected):
        log.log(level, "health store %s usable again after %.3f s", event.store, event.downtime)


def _started(level: int, event: AttemptStarted) -> None:
    details = [f"deployment {event.deployment!r}"]
    if event.affinity is not None:
        details.append(event.affinity)
    if event.passed_over:
        details.append(f"passed over for headroom: {', '.join(event.passed_over)}")
    log.log(level, "attempt %d: %s (%s)", event.number, event.backend, "; ".join(details))


def _finished(level: int, event: AttemptFinished) -> None:
    if event.outcome == "skipped":
        log.log(level, "%s: azure_ad_token_provider failed (%s); failing over", event.backend, event.error)
    elif event.outcome == "not_here":
        log.log(level, "%s does not hold the objects named (HTTP %s): looking further", event.backend, event.status)
    elif event.outcome == "failure":
        what = f"HTTP {event.status}" if event.status is not None else event.error
        log.log(level, "%s failed (%s): failing over", event.backend, what)
    elif event.spilled_to is not None:
        log.log(
            level,
            "attempt %d on %s ended: %s (HTTP %s, Azure spilled it to deployment %r)",
            event.number,
            event.backend,
            event.outcome,
            event.status,
            event.spilled_to,
        )
    else:
        what = f"HTTP {event.status}" if event.status is not None else event.error
        log.log(level, "attempt %d on %s ended: %s (%s)", event.number, event.backend, event.outcome, what)


def _cooled(level: int, event: BackendCooled) -> None:
    if event.origin == "fleet":
        what = "the backend" if event.deployment is None else f"deployment {event.deployment!r}"
        log.log(
            level,
            "%s: %s cooling %.3f s (%s, learned from the fleet)",
            event.backend,
            what,
            event.seconds,
            event.reason,
        )
    elif event.reason == "rate_limited":
        log.log(
            level,
            "%s deployment %r answered 429: cooling %.3f s (from %s), failing over",
            event.backend,
            event.deployment,
            event.seconds,
            event.source or "the default",
        )
    elif event.reason == "deployment_missing":
        log.log(level, "%s has no deployment %r: skipping it there, failing over", event.backend, event.deployment)
    else:
        log.log(
            level, "%s failed %d in a row: cooling the backend %.3f s", event.backend, event.failures, event.seconds
        )


def _refused(level: int, event: NoBackendCanServe) -> None:
    if event.reason == "credentials":
        log.log(level, "no token for any backend of deployment %r: answering %d", event.deployment, event.status)
    elif event.reason == "objects_apart":
        log.log(level, "the request names objects held by different backends: answering %d", event.status)
    else:
        log.log(level, "no backend has deployment %r: answering %d", event.deployment, event.status)
