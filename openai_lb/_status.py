"""What a balancer knows about each backend, as immutable snapshots: ``client.balancer.status()``."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal

from ._health import Reason

__all__ = ["BackendState", "BackendStatus", "DeploymentCooldown", "Stats"]

BackendState = Literal["available", "cooling", "circuit_open", "probing"]
"""``circuit_open``: the breaker blocks the whole backend; ``probing``: it has closed after failures and
the next attempt tells; ``cooling``: some deployments are rate limited or missing; else ``available``."""


@dataclass(frozen=True, slots=True)
class DeploymentCooldown:
    """One deployment of a backend that is skipped for now."""

    deployment: str
    """The backend's deployment name ("" for requests naming none)."""
    reason: Reason
    seconds_left: float


@dataclass(frozen=True, slots=True)
class BackendStatus:
    """One backend at one moment, as seen by one balancer. Never holds a credential."""

    name: str
    url: str
    priority: int
    weight: float
    state: BackendState
    seconds_until_available: float
    """0 unless the circuit breaker blocks the whole backend."""
    deployments: tuple[DeploymentCooldown, ...]
    in_flight: int
    """Attempts sent to it whose answer (status line and headers) has not arrived yet."""
    attempts: int
    successes: int
    """Answers handed to the caller with a status below 400."""
    client_errors: int
    """Answers handed to the caller with a 4xx status (the backend worked; the request was refused)."""
    rate_limited: int
    failures: int
    """5xx answers in the failover list, transport errors, missing deployments and credential failures."""
    failovers_away: int
    pinned: int
    """Attempts sent here because the backend holds an object the request names (stateful affinity)."""
    discovered: int
    """Requests that found here objects this process had not seen."""
    passed_over: int
    """Attempts that went elsewhere because this backend's known headroom could not fit them (``Policy.headroom``)."""
    spilled: int
    """Answers Azure served from this backend's spillover deployment instead of the one asked for."""
    last_failure: str | None
    """The status (``"HTTP 503"``, ``"HTTP 429"``) or exception type of the last failure."""
    last_failure_at: float | None
    """When, in seconds since the epoch."""


class Stats:
    """A backend's counters in one balancer; the balancer's lock guards every change."""

    __slots__ = (
        "attempts",
        "client_errors",
        "discovered",
        "failovers_away",
        "failures",
        "in_flight",
        "last_failure",
        "last_failure_at",
        "passed_over",
        "pinned",
        "rate_limited",
        "spilled",
        "successes",
    )

    def __init__(self) -> None:
        self.attempts = self.successes = self.client_errors = self.rate_limited = 0
        self.failures = self.failovers_away = self.in_flight = 0
        self.pinned = self.discovered = self.passed_over = self.spilled = 0
        self.last_failure: str | None = None
        self.last_failure_at: float | None = None


class StatsBook:
    """The counters of every backend of a balancer, changed under one lock so snapshots are consistent."""

    __slots__ = ("_lock", "by_key")

    def __init__(self, keys: list[str]) -> None:
        self.by_key = {key: Stats() for key in keys}
        self._lock = threading.Lock()

    def sent(self, key: str) -> None:
        with self._lock:
            stats = self.by_key[key]
            stats.attempts += 1
            stats.in_flight += 1

    def pinned(self, key: str) -> None:
        """The attempt just sent went there for the objects it holds."""
        with self._lock:
            self.by_key[key].pinned += 1

    def passed_over(self, keys: list[str]) -> None:
        """These backends could not fit an attempt that went elsewhere."""
        with self._lock:
            for key in keys:
                self.by_key[key].passed_over += 1

    def discovered(self, key: str) -> None:
        with self._lock:
            self.by_key[key].discovered += 1

    def passed(self, key: str) -> None:
        """The backend answered that it does not hold an object the request names: no failure of its own."""
        with self._lock:
            stats = self.by_key[key]
            stats.in_flight -= 1
            stats.failovers_away += 1

    def answered(self, key: str, status: int, *, spilled: bool = False) -> None:
        with self._lock:
            stats = self.by_key[key]
            stats.in_flight -= 1
            if spilled:
                stats.spilled += 1
            if status < 400:
                stats.successes += 1
            else:
                stats.client_errors += 1

    def failed(self, key: str, what: str, when: float, *, rate_limited: bool = False) -> None:
        with self._lock:
            stats = self.by_key[key]
            stats.in_flight -= 1
            stats.failovers_away += 1
            if rate_limited:
                stats.rate_limited += 1
            else:
                stats.failures += 1
            stats.last_failure, stats.last_failure_at = what, when

    def broken(self, key: str, what: str, when: float) -> None:
        """A delivered answer's body broke off: a failure, long after the attempt left ``in_flight``."""
        with self._lock:
            stats = self.by_key[key]
            stats.failures += 1
            stats.last_failure, stats.last_failure_at = what, when

    def released(self, key: str) -> None:
        """An attempt ended by this machine's error or a cancellation: no verdict on the backend."""
        with self._lock:
            self.by_key[key].in_flight -= 1

    def copy(self, key: str) -> Stats:
        with self._lock:
            source, copy = self.by_key[key], Stats()
            for field in Stats.__slots__:
                setattr(copy, field, getattr(source, field))
            return copy
