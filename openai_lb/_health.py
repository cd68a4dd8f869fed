"""Mutable health state: which backend (or backend deployment) is blocked until when.

The core decides *how long*; a store only remembers. One process-wide store is shared by
every client so that code which builds a client per request still learns; a client can be
given its own ``InMemoryHealthStore`` (tests do). A store shared across processes would
implement the same protocol.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = [
    "BACKEND_WIDE",
    "BackendHealth",
    "HealthStore",
    "InMemoryHealthStore",
    "Reason",
    "default_store",
    "reset_state",
]

Reason = Literal["rate_limited", "missing", "failing"]
"""Why something is blocked: a 429, a DeploymentNotFound, or the circuit breaker."""

BACKEND_WIDE = None
"""The ``deployment`` argument that means the whole backend (the circuit breaker)."""


@dataclass(frozen=True, slots=True)
class BackendHealth:
    """A store's view of one backend at one moment."""

    failures: int
    """Consecutive failures (reset by a success)."""
    open_until: float | None
    """When the circuit breaker closes again, if it is open."""
    deployments: Mapping[str, tuple[float, Reason]]
    """Active deployment blocks: deployment -> (until, reason); "" is requests naming none."""


class HealthStore(Protocol):
    """Where cooldowns and failure counts live. Times are the core's clock readings.

    ``deployment`` is the backend's own deployment name, ``""`` for requests that name no
    deployment, or ``BACKEND_WIDE`` for the backend as a whole.
    """

    def blocked(self, key: str, deployment: str, now: float) -> tuple[float, Reason] | None:
        """Until when and why this deployment of the backend ``key`` is unusable; None if usable.

        A deployment marked missing reports ``"missing"`` even while the whole backend is
        also blocked, so the caller can tell "nobody has it" from "everybody is busy".
        """
        ...

    def block(self, key: str, deployment: str | None, until: float, reason: Reason) -> None:
        """Block until ``until``; an existing later deadline is kept."""
        ...

    def trip(self, key: str, started: float, now: float, cooldown: Callable[[int], float]) -> tuple[int, float] | None:
        """Count a failure of an attempt sent at ``started`` and block the backend for ``cooldown(count)``.

        Atomic. Returns the consecutive-failure count and the seconds blocked; None, with nothing
        changed, when the backend was tripped after that attempt was sent: the attempts in flight
        during one outage count once, not as a streak.
        """
        ...

    def count_success(self, key: str, deployment: str, now: float) -> tuple[str | None, ...]:
        """Reset the backend's consecutive failures and forget the blocks (of the backend and of
        ``deployment``) that ended by ``now``.

        Returns what recovered: ``deployment`` when its cooldown had ended, ``BACKEND_WIDE`` when
        the backend's breaker had opened and is closed now; empty when nothing did. A block still
        running stands (the success is of an attempt sent before it) and is no recovery yet.
        """
        ...

    def clear(self) -> None:
        """Forget everything."""
        ...

    def snapshot(self, key: str, now: float) -> BackendHealth:
        """What is known of the backend ``key`` now: failure streak, breaker and deployment blocks."""
        ...


class InMemoryHealthStore:
    """A thread-safe ``HealthStore`` in this process's memory.

    Reads take no lock: entries are immutable tuples replaced whole, so a reader sees
    either the old or the new one. Writes that read-modify-write take the lock.
    """

    __slots__ = ("_blocks", "_failures", "_lock", "_slots", "_tripped_at")

    def __init__(self) -> None:
        self._blocks: dict[tuple[str, str | None], tuple[float, Reason]] = {}
        # Block entries per backend, so a success on a backend with none returns after two lookups.
        self._slots: dict[str, int] = {}
        self._failures: dict[str, int] = {}
        self._tripped_at: dict[str, float] = {}
        self._lock = threading.Lock()

    def blocked(self, key: str, deployment: str, now: float) -> tuple[float, Reason] | None:
        blocks = self._blocks
        own = blocks.get((key, deployment))
        if own is not None and own[0] <= now:
            own = None
        if own is not None and own[1] == "missing":
            return own
        wide = blocks.get((key, BACKEND_WIDE))
        if wide is not None and wide[0] <= now:
            wide = None
        if own is None:
            return wide
        if wide is None or own[0] >= wide[0]:
            return own
        return wide

    def block(self, key: str, deployment: str | None, until: float, reason: Reason) -> None:
        slot = (key, deployment)
        with self._lock:
            current = self._blocks.get(slot)
            if current is None or current[0] < until:
                self._set(slot, current, (until, reason))

    def trip(self, key: str, started: float, now: float, cooldown: Callable[[int], float]) -> tuple[int, float] | None:
        with self._lock:
            if self._tripped_at.get(key, -math.inf) >= started:
                return None
            count = self._failures.get(key, 0) + 1
            seconds = cooldown(count)
            self._failures[key] = count
            self._tripped_at[key] = now
            slot = (key, BACKEND_WIDE)
            current = self._blocks.get(slot)
            if current is None or current[0] < now + seconds:
                self._set(slot, current, (now + seconds, "failing"))
            return count, seconds

    def _set(self, slot: tuple[str, str | None], current: object, entry: tuple[float, Reason]) -> None:
        if current is None:
            self._slots[slot[0]] = self._slots.get(slot[0], 0) + 1
        self._blocks[slot] = entry

    def count_success(self, key: str, deployment: str, now: float) -> tuple[str | None, ...]:
        blocks = self._blocks
        own, wide = (key, deployment), (key, BACKEND_WIDE)
        # Lock-free checks keep the common path (nothing to forget) cheap and free of contention.
        if not self._failures.get(key) and not (self._slots.get(key) and (own in blocks or wide in blocks)):
            return ()
        recovered: list[str | None] = []
        with self._lock:
            failing = self._failures.pop(key, 0) > 0
            for slot in (own, wide):
                found = blocks.get(slot)
                if found is None:
                    continue
                if found[0] <= now:
                    del blocks[slot]
                    self._slots[key] -= 1
                    recovered.append(slot[1])
                elif slot is wide:
                    failing = False  # the breaker is still open: it recovers when a later success finds it closed
            if failing and BACKEND_WIDE not in recovered:
                recovered.append(BACKEND_WIDE)
        return tuple(recovered)

    def snapshot(self, key: str, now: float) -> BackendHealth:
        open_until = None
        deployments = {}
        with self._lock:
            blocks = list(self._blocks.items())
            failures = self._failures.get(key, 0)
        for (owner, deployment), (until, reason) in blocks:
            if owner != key or until <= now:
                continue
            if deployment is BACKEND_WIDE:
                open_until = until
            else:
                deployments[deployment] = (until, reason)
        return BackendHealth(failures, open_until, deployments)

    def clear(self) -> None:
        with self._lock:
            self._blocks.clear()
            self._slots.clear()
            self._failures.clear()
            self._tripped_at.clear()


_default_store = InMemoryHealthStore()


def default_store() -> InMemoryHealthStore:
    """The process-wide store that clients use unless given their own."""
    return _default_store


def reset_state() -> None:
    """Forget every cooldown and failure count in the process-wide store (for tests)."""
    _default_store.clear()
