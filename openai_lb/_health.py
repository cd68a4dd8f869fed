"""Mutable health state: which backend (or backend deployment) is blocked until when.

The core decides *how long*; a store only remembers. One process-wide store is shared by
every client so that code which builds a client per request still learns; a client can be
given its own ``InMemoryHealthStore`` (tests do), or a URL naming a store shared across
processes (``"redis://cache:6379/0"``, see ``openai_lb.RedisHealthStore``).

A store also remembers which backend holds each stateful object (a response, a file, a batch...),
so that follow-ups go to it: ``owner``, ``remember``, ``forget``.

Every time a store is given or returns is a reading of the core's monotonic clock. A store shared
across processes converts at its own boundary (to wall-clock epoch milliseconds and back), with the
same clocks as the balancers using it; the core never sees another process's time.
"""

from __future__ import annotations

import heapq
import math
import os
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

from ._errors import ConfigurationError

__all__ = [
    "BACKEND_WIDE",
    "DEFAULT_NAMESPACE",
    "BackendHealth",
    "Block",
    "HealthStore",
    "InMemoryHealthStore",
    "Reason",
    "Trip",
    "default_store",
]

Reason = Literal["rate_limited", "deployment_missing", "failure"]
"""Why something is blocked: a 429, a DeploymentNotFound, or the circuit breaker."""

DEFAULT_NAMESPACE = "openai_lb"
"""The namespace a store shared across processes uses unless told another (its keys' prefix)."""

BACKEND_WIDE = None
"""The ``deployment`` argument that means the whole backend (the circuit breaker)."""


class Block(NamedTuple):
    """Something is unusable until ``until`` (the core's clock) because of ``reason``.

    A tuple: blocks are read on every attempt and a tuple is the cheapest immutable value to build.
    """

    until: float
    reason: Reason


class Trip(NamedTuple):
    """What a counted failure did: the streak it made and the seconds the backend is blocked for."""

    failures: int
    seconds: float


@dataclass(frozen=True, slots=True)
class BackendHealth:
    """A store's view of one backend at one moment."""

    failures: int
    """Consecutive failures (reset by a success)."""
    open_until: float | None
    """When the circuit breaker closes again, if it is open."""
    deployments: Mapping[str, Block]
    """Active deployment blocks: deployment -> block; "" is requests naming none."""


class HealthStore(Protocol):
    """Where cooldowns and failure counts live. Times are the core's clock readings.

    ``deployment`` is the backend's own deployment name, ``""`` for requests that name no
    deployment, or ``BACKEND_WIDE`` for the backend as a whole.
    """

    def blocked(self, key: str, deployment: str, now: float) -> Block | None:
        """Until when and why this deployment of the backend ``key`` is unusable; None if usable.

        A deployment marked missing reports ``"deployment_missing"`` even while the whole backend is
        also blocked, so the caller can tell "nobody has it" from "everybody is busy".
        """
        ...

    def block(self, key: str, deployment: str | None, until: float, reason: Reason) -> None:
        """Block until ``until``; an existing later deadline is kept."""
        ...

    def trip(self, key: str, started: float, now: float, cooldown: Callable[[int], float]) -> Trip | None:
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
        """Forget everything, the owners of objects included."""
        ...

    def snapshot(self, key: str, now: float) -> BackendHealth:
        """What is known of the backend ``key`` now: failure streak, breaker and deployment blocks."""
        ...

    def owner(self, object_id: str, now: float) -> str | None:
        """The key of the backend holding ``object_id``; None when unknown or expired by ``now``.

        A hit is a use: the least recently used ids are the first forgotten beyond the capacity.
        """
        ...

    def remember(self, object_ids: Iterable[str], key: str, until: float, capacity: int) -> None:
        """The backend ``key`` holds ``object_ids`` until ``until`` (or until forgotten).

        At most ``capacity`` ids are kept: beyond it the least recently used go first.
        """
        ...

    def forget(self, object_id: str) -> None:
        """``object_id`` is held nowhere any more (it was deleted)."""
        ...


class InMemoryHealthStore:
    """A thread-safe, bounded ``HealthStore`` in this process's memory.

    Reads take no lock: blocks are immutable tuples replaced whole in one dict per backend, so a
    reader sees either the old or the new one. Writes take the lock.

    A success forgets the blocks it ended. Blocks nobody succeeds on again (a caller naming a new
    deployment per request) are forgotten lazily once the store holds more than ``max_entries // 10``
    deployment blocks: each write then forgets up to two that have ended, the earliest first, judged by
    the latest clock reading the store was given (``block`` brings none), and a snapshot forgets the
    ended ones of its backend. Below that, an ended block stays until a success reports its recovery.

    At most ``max_entries`` deployment blocks are kept; beyond that the one closest to its end is
    evicted, so ended ones go first. Evicting a block that still runs only costs a possibly wasted
    attempt: the deployment is tried again and its answer blocks it again. The circuit breakers, one
    per backend, are not counted and never evicted. The store assumes one clock for all its callers.
    """

    __slots__ = (
        "__weakref__",  # the stores are reset in a forked child
        "_by_key",
        "_ends",
        "_failures",
        "_keep",
        "_lock",
        "_owner_capacity",
        "_owners",
        "_seen",
        "_size",
        "_tripped_at",
        "max_entries",
    )

    def __init__(self, *, max_entries: int = 10_000) -> None:
        if max_entries < 1:
            raise ConfigurationError(f"InMemoryHealthStore(max_entries=...) must be at least 1, got {max_entries!r}.")
        self.max_entries = max_entries
        self._keep = max_entries // 10
        # backend key -> deployment (BACKEND_WIDE for the breaker) -> (until, reason)
        self._by_key: dict[str, dict[str | None, Block]] = {}
        # Heap of (until, key, deployment) over the deployment blocks; an item whose block was
        # forgotten or extended since is stale and skipped when it surfaces.
        self._ends: list[tuple[float, str, str]] = []
        self._size = 0  # deployment blocks held
        self._seen = -math.inf  # the latest clock reading given to the store
        self._failures: dict[str, int] = {}
        self._tripped_at: dict[str, float] = {}
        # object id -> (backend key, until), least recently used first
        self._owners: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._owner_capacity = 100_000
        self._lock = threading.Lock()
        _stores.add(self)

    def _after_fork(self) -> None:
        """In a forked child: a thread of the parent may have held the lock when it forked."""
        self._lock = threading.Lock()

    @property
    def size(self) -> int:
        """How many deployment blocks the store holds, ended ones not yet forgotten included."""
        return self._size

    @property
    def owners(self) -> int:
        """How many object ids the store knows the owner of, expired ones not yet forgotten included."""
        return len(self._owners)

    def owner(self, object_id: str, now: float) -> str | None:
        with self._lock:
            found = self._owners.get(object_id)
            if found is None:
                return None
            if found[1] <= now:
                del self._owners[object_id]
                return None
            self._owners.move_to_end(object_id)
            return found[0]

    def remember(self, object_ids: Iterable[str], key: str, until: float, capacity: int) -> None:
        owners = self._owners
        with self._lock:
            self._owner_capacity = capacity
            for object_id in object_ids:
                owners[object_id] = (key, until)
                owners.move_to_end(object_id)
            while len(owners) > capacity:
                owners.popitem(last=False)

    def forget(self, object_id: str) -> None:
        with self._lock:
            self._owners.pop(object_id, None)

    def blocked(self, key: str, deployment: str, now: float) -> Block | None:
        blocks = self._by_key.get(key)
        if blocks is None:
            return None
        own = blocks.get(deployment)
        if own is not None and own[0] <= now:
            own = None
        if own is not None and own[1] == "deployment_missing":
            return own
        wide = blocks.get(BACKEND_WIDE)
        if wide is not None and wide[0] <= now:
            wide = None
        if own is None:
            return wide
        if wide is None or own[0] >= wide[0]:
            return own
        return wide

    def block(self, key: str, deployment: str | None, until: float, reason: Reason) -> None:
        with self._lock:
            blocks = self._by_key.get(key)
            if blocks is None:
                blocks = self._by_key[key] = {}
            current = blocks.get(deployment)
            if current is not None and current[0] >= until:
                return
            blocks[deployment] = Block(until, reason)
            if deployment is not BACKEND_WIDE:
                if current is None:
                    self._size += 1
                heapq.heappush(self._ends, (until, key, deployment))
                self._tidy(self._seen)

    def trip(self, key: str, started: float, now: float, cooldown: Callable[[int], float]) -> Trip | None:
        with self._lock:
            if self._tripped_at.get(key, -math.inf) >= started:
                return None
            count = self._failures.get(key, 0) + 1
            seconds = cooldown(count)
            self._failures[key] = count
            self._tripped_at[key] = now
            blocks = self._by_key.get(key)
            if blocks is None:
                blocks = self._by_key[key] = {}
            current = blocks.get(BACKEND_WIDE)
            if current is None or current[0] < now + seconds:
                blocks[BACKEND_WIDE] = Block(now + seconds, "failure")
            self._seen = now
            self._tidy(now)
            return Trip(count, seconds)

    def count_success(self, key: str, deployment: str, now: float) -> tuple[str | None, ...]:
        blocks = self._by_key.get(key)
        # Lock-free checks keep the common path (nothing to forget) cheap and free of contention.
        if blocks:
            self._seen = now  # a clock reading for the next write's sweep
            if not self._failures.get(key) and deployment not in blocks and BACKEND_WIDE not in blocks:
                return ()
        elif not self._failures.get(key):
            return ()
        recovered: list[str | None] = []
        with self._lock:
            failing = self._failures.pop(key, 0) > 0
            blocks = self._by_key.get(key, {})  # clear() may have dropped the one read above
            for slot in (deployment, BACKEND_WIDE):
                found = blocks.get(slot)
                if found is None:
                    continue
                if found[0] <= now:
                    del blocks[slot]
                    if slot is not BACKEND_WIDE:
                        self._size -= 1
                    recovered.append(slot)
                elif slot is BACKEND_WIDE:
                    failing = False  # the breaker is still open: it recovers when a later success finds it closed
            if failing and BACKEND_WIDE not in recovered:
                recovered.append(BACKEND_WIDE)
            self._tidy(now)
        return tuple(recovered)

    def snapshot(self, key: str, now: float) -> BackendHealth:
        open_until = None
        deployments = {}
        with self._lock:
            self._seen = now
            failures = self._failures.get(key, 0)
            blocks = self._by_key.get(key, {})
            ended = []
            for deployment, block in blocks.items():
                if block.until <= now:
                    if deployment is not BACKEND_WIDE:
                        ended.append(deployment)
                elif deployment is BACKEND_WIDE:
                    open_until = block.until
                else:
                    deployments[deployment] = block
            for deployment in ended[: max(self._size - self._keep, 0)]:
                del blocks[deployment]
                self._size -= 1
        return BackendHealth(failures, open_until, deployments)

    def _tidy(self, now: float) -> None:
        """Under the lock: evict beyond ``max_entries``, forget a few ended blocks beyond ``_keep``,
        and rebuild the heap once stale items outnumber the blocks (amortised O(1) per write)."""
        ends = self._ends
        sweep = 2
        while ends and (self._size > self.max_entries or (sweep and self._size > self._keep and ends[0][0] <= now)):
            if self._size <= self.max_entries:
                sweep -= 1
            until, key, deployment = heapq.heappop(ends)
            blocks = self._by_key[key]
            found = blocks.get(deployment)
            if found is not None and found[0] == until:
                del blocks[deployment]
                self._size -= 1
        if len(ends) > 2 * self._size + 64:
            self._ends = [
                (block[0], key, deployment)
                for key, blocks in self._by_key.items()
                for deployment, block in blocks.items()
                if deployment is not BACKEND_WIDE
            ]
            heapq.heapify(self._ends)

    def clear(self) -> None:
        with self._lock:
            self._by_key.clear()
            self._ends.clear()
            self._size = 0
            self._seen = -math.inf
            self._failures.clear()
            self._tripped_at.clear()
            self._owners.clear()


_stores: weakref.WeakSet[InMemoryHealthStore] = weakref.WeakSet()


def _reset_after_fork() -> None:
    for store in list(_stores):
        store._after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)

_default_store = InMemoryHealthStore()


def default_store() -> InMemoryHealthStore:
    """This process's memory: the store of balancers given none (clients and ``patch()`` also honour
    ``$OPENAI_LB_HEALTH_STORE``, see ``openai_lb._stores``)."""
    return _default_store
