"""The decision core: which backend gets the next attempt, and what an answer means.

No I/O and no HTTP library here. A transport shell asks a ``Call`` for the next step,
sends the attempt, and reports what came back; the ``Call`` answers whether to hand the
response to the caller or to fail over. When nothing is left to try, the next step is a
``SyntheticResponse`` (a 429 telling the SDK exactly how long to wait, or a 404).
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

from ._affinity import FirstId, Stateful, created_id, error_of, not_here
from ._config import Backend, Policy, validate_backends
from ._events import (
    Affinity,
    AllBackendsCooling,
    AttemptFinished,
    AttemptStarted,
    BackendCooled,
    BackendRecovered,
    EventHook,
    NoBackendCanServe,
    Outcome,
    OwnerDiscovered,
    emit,
    hooks_from,
)
from ._headers import cooldown_from_headers
from ._headroom import HeadroomBook, Signals, Slot, book_for, estimate, read_signals, tiktoken_counter
from ._health import HealthStore, Reason, default_store
from ._logging import DETAIL, NOTICE, log, log_event
from ._status import BackendState, BackendStatus, DeploymentCooldown, StatsBook

__all__ = ["OUTSIDE_THE_BASE", "Attempt", "Balancer", "Call", "SyntheticResponse", "reset_state"]

Clock = Callable[[], float]


class Attempt(NamedTuple):
    """Send the request to ``backend``, naming ``deployment`` (the backend's own name for it).

    Immutable like the frozen dataclasses around it, but one is built per attempt on the hot path
    and a tuple is built in half the time of a frozen dataclass.
    """

    backend: Backend
    deployment: str | None
    number: int
    started: float
    """The core's clock when the attempt was chosen."""


@dataclass(frozen=True, slots=True)
class SyntheticResponse:
    """Answer the caller with this response instead of sending anything."""

    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


class Balancer:
    """Chooses backends and learns from their answers; shared by all calls of a transport.

    ``clock`` is monotonic seconds (cooldowns), ``wall_clock`` epoch seconds (only to turn
    an HTTP-date into a delay), ``rng`` picks by weight. ``store`` is a ``HealthStore``, the URL of
    one shared across processes, or None for the process-wide default. All three are injectable for tests.
    ``client_wait_limit`` is the longest Retry-After the SDK in use will honour; beyond it
    the synthetic 429 says ``x-should-retry: false``. ``on_event`` hooks receive the events
    of ``openai_lb._events``; with none, no event is even built. With ``Policy.headroom`` the
    readings of the answers' rate-limit headers go to the ``HeadroomBook`` of ``store``.
    """

    __slots__ = (
        "__weakref__",  # hooks that read status() (OpenTelemetry) hold balancers weakly
        "_by_key",
        "_by_priority",
        "_count_tokens",
        "_logged",
        "_reads",
        "backends",
        "book",
        "client_wait_limit",
        "clock",
        "hooks",
        "policy",
        "rng",
        "stats",
        "store",
        "wall_clock",
    )

    def __init__(
        self,
        backends: Sequence[Backend],
        *,
        policy: Policy | None = None,
        store: HealthStore | None = None,
        clock: Clock = time.monotonic,
        wall_clock: Clock = time.time,
        rng: random.Random | None = None,
        client_wait_limit: float = 60.0,
        on_event: EventHook | Iterable[EventHook] | None = None,
    ) -> None:
        self.backends = validate_backends(backends)
        self.policy = policy if policy is not None else Policy()
        self.store: HealthStore = store if store is not None else default_store()
        self.clock = clock
        self.wall_clock = wall_clock
        self.rng = rng if rng is not None else random.Random()
        self.client_wait_limit = client_wait_limit
        # Stable sort keeps the caller's order inside a tier, which makes logs predictable.
        self._by_priority = tuple(sorted(self.backends, key=lambda b: b.priority))
        self._by_key = {backend.key: backend for backend in self.backends}
        self.stats = StatsBook([b.key for b in self.backends])
        policy = self.policy
        self.book: HeadroomBook | None = book_for(self.store) if policy.headroom else None
        self._count_tokens = (
            tiktoken_counter(policy.headroom_tokenizer) if policy.headroom and policy.headroom_tokenizer else None
        )
        # Answers' headers are read for headroom, and for Azure's own spillover where a backend asks for it.
        self._reads = policy.headroom or any(b.spillover_deployment for b in self.backends)
        self.hooks = hooks_from(on_event)
        # Logging is one more hook, called first; it is in the way only while the logger would print.
        self._logged: tuple[EventHook, ...] = (log_event, *self.hooks)
        for hook in self.hooks:
            attach = getattr(hook, "attach", None)
            if callable(attach):
                attach(self)

    def listeners(self, level: int) -> tuple[EventHook, ...]:
        """The hooks an event logged at ``level`` goes to; empty when nobody would see it."""
        return self._logged if log.isEnabledFor(level) else self.hooks

    def begin(
        self,
        deployment: str | None,
        stateful: Stateful | None = None,
        body: bytes | None = None,
        output_tokens: int | None = None,
    ) -> Call:
        """Start one caller request for ``deployment`` (None when the request names none); ``stateful``
        when it names objects held by one backend or creates one (ignored with ``Policy(affinity=False)``).
        ``body`` (JSON) and ``output_tokens`` (its output limit, when a parse found one) make the request's
        cost estimate, computed only when it reserves room on a backend (not on one whose answers carry no
        headroom headers)."""
        return Call(self, deployment, stateful if self.policy.affinity else None, body, output_tokens)

    def status(self) -> tuple[BackendStatus, ...]:
        """An immutable snapshot of every backend, in configuration order; never holds a credential."""
        now = self.clock()
        return tuple(self._status_of(backend, now) for backend in self.backends)

    def _status_of(self, backend: Backend, now: float) -> BackendStatus:
        health = self.store.snapshot(backend.key, now)
        stats = self.stats.copy(backend.key)
        deployments = tuple(
            DeploymentCooldown(name, reason, until - now)
            for name, (until, reason) in sorted(health.deployments.items())
        )
        state: BackendState
        if health.open_until is not None:
            state = "circuit_open"
        elif health.failures:
            state = "probing"
        elif deployments:
            state = "cooling"
        else:
            state = "available"
        return BackendStatus(
            name=backend.name,
            url=backend.key,
            priority=backend.priority,
            weight=backend.weight,
            state=state,
            seconds_until_available=0.0 if health.open_until is None else health.open_until - now,
            deployments=deployments,
            in_flight=stats.in_flight,
            attempts=stats.attempts,
            successes=stats.successes,
            client_errors=stats.client_errors,
            rate_limited=stats.rate_limited,
            failures=stats.failures,
            failovers_away=stats.failovers_away,
            pinned=stats.pinned,
            discovered=stats.discovered,
            passed_over=stats.passed_over,
            spilled=stats.spilled,
            last_failure=stats.last_failure,
            last_failure_at=stats.last_failure_at,
        )


def _error_code(body: bytes | None) -> object:
    error = error_of(body)
    return None if error is None else error.get("code")


def _is_too_long(body: bytes | None) -> bool:
    """A 400 saying the prompt exceeds the deployment's context window."""
    return body is not None and b"context_length_exceeded" in body and _error_code(body) == "context_length_exceeded"


def _is_deployment_not_found(body: bytes | None) -> bool:
    return body is not None and b"DeploymentNotFound" in body and _error_code(body) == "DeploymentNotFound"


class Call:
    """The state of one caller request: which backends it tried. Not shared between threads.

    A request naming stateful objects goes only to the backend holding them (``pinned``), whatever its
    priority or weight; when none of them is known it looks for that backend (``discovery``): an answer
    saying "not here" moves on without cooling anything, and a success tells the store who holds them.
    """

    __slots__ = (
        "_absent",
        "_affinity",
        "_balancer",
        "_body",
        "_cost",
        "_hold",
        "_output",
        "_pool",
        "_skipped",
        "_split",
        "_stateful",
        "_tried",
        "_unknown",
        "attempts",
        "deployment",
    )

    def __init__(
        self,
        balancer: Balancer,
        deployment: str | None,
        stateful: Stateful | None = None,
        body: bytes | None = None,
        output_tokens: int | None = None,
    ) -> None:
        self._balancer = balancer
        self._body = body
        self._output = output_tokens
        self._cost: int | None = None
        """The request's estimated cost in tokens, once some backend's reading needed it."""
        self._hold: tuple[Slot, int] | None = None
        """The reservation of the attempt in flight: its slot and ticket."""
        self.deployment = deployment
        self._tried: set[str] = set()
        self._skipped: dict[str, str] | None = None
        """Backends whose token provider failed in this call: key -> the exception's type name."""
        self.attempts = 0
        self._stateful = stateful
        self._pool = balancer._by_priority
        """The backends this call may go to, by priority: all of them, or the one holding its objects."""
        self._affinity: Affinity | None = None
        self._unknown: tuple[str, ...] = ()
        """The ids it names whose backend is not known: a success teaches where they are."""
        self._split: dict[str, list[str]] | None = None
        self._absent: set[str] | None = None
        """Backends that answered they do not hold the objects looked for."""
        if stateful is not None and stateful.ids:
            self._place(stateful.ids)

    def _place(self, ids: tuple[str, ...]) -> None:
        balancer = self._balancer
        now = balancer.clock()
        owners: dict[str, list[str]] = {}
        unknown = []
        for object_id in ids:
            key = balancer.store.owner(object_id, now)
            # A holder this client has no backend for (a store shared with other clients) is no help.
            if key is not None and key in balancer._by_key:
                owners.setdefault(key, []).append(object_id)
            else:
                unknown.append(object_id)
        self._unknown = tuple(unknown)
        if len(owners) > 1:
            self._split = owners
            self._pool = ()
        elif owners:
            self._affinity = "pinned"
            self._pool = (balancer._by_key[next(iter(owners))],)
        else:
            self._affinity = "discovery"

    def next(self) -> Attempt | SyntheticResponse:
        """The next backend to try, or the answer to give when none is usable now."""
        balancer = self._balancer
        now = balancer.clock()
        candidates, after = self._tier(0, now)
        if not candidates:
            return self._answer(now)
        book = balancer.book
        passed: tuple[Backend, ...] = ()
        if book is None:
            chosen = candidates[0] if len(candidates) == 1 else self._pick(candidates)
        else:
            chosen, passed = self._with_room(book, candidates, after, now)
        self._tried.add(chosen.key)
        balancer.stats.sent(chosen.key)
        if self._affinity == "pinned":
            balancer.stats.pinned(chosen.key)
        self.attempts += 1
        deployment = chosen.deployment_for(self.deployment)
        attempt = Attempt(chosen, deployment, self.attempts, now)
        hooks = balancer.listeners(DETAIL)
        if hooks:
            try:
                names = tuple(backend.name for backend in passed)
                emit(hooks, AttemptStarted(chosen.name, chosen.key, deployment, self.attempts, self._affinity, names))
            except BaseException as error:  # a hook's KeyboardInterrupt: the attempt never leaves
                self.release(attempt, error)
                raise
        return attempt

    def _tier(self, start: int, now: float) -> tuple[list[Backend], int]:
        """The backends of the first tier from ``start`` in the pool that this call may try now (not tried, not
        cooling), and where the tier after them starts."""
        blocked = self._balancer.store.blocked
        tried = self._tried
        pool = self._pool
        tier = 0
        candidates: list[Backend] = []
        for index in range(start, len(pool)):
            backend = pool[index]
            if candidates and backend.priority != tier:
                return candidates, index
            if backend.key in tried:
                continue
            if blocked(backend.key, backend.deployment_for(self.deployment) or "", now) is None:
                tier = backend.priority
                candidates.append(backend)
        return candidates, len(pool)

    def _with_room(
        self, book: HeadroomBook, first: list[Backend], after: int, now: float
    ) -> tuple[Backend, tuple[Backend, ...]]:
        """The backend to try, the first by priority (and weight) that can fit the request, with the estimate
        reserved there; and the backends passed over on the way. With none that fits, the usual choice."""
        policy = self._balancer.policy
        check = (now, policy.headroom_horizon, policy.headroom_utilization)
        passed: list[Backend] = []
        tier = first
        while tier:
            left = tier
            while left:
                backend = left[0] if len(left) == 1 else self._pick(left)
                # A backend with Azure's own spillover is never passed over: Azure moves what its PTU
                # refuses within the same round trip, which is what passing over would buy.
                if self._reserve(book, backend, now, None if backend.spillover_deployment else check):
                    if passed:
                        self._balancer.stats.passed_over([b.key for b in passed])
                    return backend, tuple(passed)
                left = [b for b in left if b is not backend]  # a new list: ``first`` is the fallback's
                passed.append(backend)
            tier, after = self._tier(after, now)
        # Every backend would be passed over: never a 429 on an estimate alone, the usual order instead.
        chosen = first[0] if len(first) == 1 else self._pick(first)
        self._reserve(book, chosen, now, None)
        return chosen, ()

    def _reserve(
        self, book: HeadroomBook, backend: Backend, now: float, check: tuple[float, float, float] | None
    ) -> bool:
        """Reserve the request's estimate on ``backend`` if it fits (always, without ``check``); a silent backend
        (its answers carry no headroom headers) takes it without a reservation."""
        slot = book.open(backend.key, backend.deployment_for(self.deployment) or "")
        if slot is None:
            return True
        cost = self._cost
        if cost is None:
            balancer = self._balancer
            cost = self._cost = estimate(
                self._body, self._output, balancer.policy.headroom_output_tokens, balancer._count_tokens
            )
        ticket = book.reserve(slot, now, cost, check=check)
        if ticket is None:
            return False
        self._hold = (slot, ticket)
        return True

    def _unhold(self) -> None:
        """End the reservation of the attempt in flight, if it has one."""
        hold = self._hold
        if hold is not None:
            self._hold = None
            book = self._balancer.book
            assert book is not None, "only a balancer with a book reserves"
            book.release(*hold)

    def _settle(self, attempt: Attempt, status: int, named: Mapping[bytes, bytes] | None, now: float) -> Signals | None:
        """End the attempt's reservation and keep the reading its answer brings; the answer's ``Signals``.

        A 429 or a failover status says nothing of the room left (the cooldown or the breaker speaks), and a
        spilled answer's rate-limit headers are those of the deployment it spilled to: neither is kept.
        """
        balancer = self._balancer
        if not balancer._reads:  # headroom off, and no backend asks Azure to spill: nothing held, nothing read
            return None
        signals = read_signals(named) if named else None
        hold = self._hold
        book = balancer.book
        if book is None or (signals is None and hold is None):  # nothing reserved, nothing to read
            return signals
        self._hold = None
        key, deployment = attempt.backend.key, attempt.deployment or ""
        if status == 429 or status in balancer.policy.failover_statuses or (signals and signals.spilled_from):
            if hold is not None:
                book.release(*hold)
        elif signals is not None and signals.has_room:
            horizon = balancer.policy.headroom_horizon
            book.record(key, deployment, hold, signals, sent=attempt.started, received=now, horizon=horizon)
        elif hold is not None:  # without one, nothing was reserved: a silent deployment, or none sent a reading
            book.hush(key, deployment, hold)
        return signals

    def _pick(self, candidates: list[Backend]) -> Backend:
        point = self._balancer.rng.random() * sum(b.weight for b in candidates)
        for backend in candidates:
            point -= backend.weight
            if point < 0:
                return backend
        return candidates[-1]  # float rounding can leave point at exactly 0

    def needs_body(self, status: int) -> bool:
        """Whether ``report`` needs the body of this answer: 404s (DeploymentNotFound, or an object not
        held there) and 400s (a referenced object not found, a prompt too long for the context window)."""
        return status in {400, 404}

    def report(
        self,
        attempt: Attempt,
        status: int,
        headers: Mapping[str, str],
        body: bytes | None,
        named: Mapping[bytes, bytes] | None = None,
    ) -> bool:
        """Learn from an HTTP answer; True means hand it to the caller, False means fail over.

        ``named`` is the answer's headers by lowercased name (``_rewrite.by_name``): the headroom and
        spillover headers are looked up there."""
        balancer = self._balancer
        now = balancer.clock()
        signals = self._settle(attempt, status, named, now)
        backend = attempt.backend
        slot = attempt.deployment or ""
        if status == 429:
            found = cooldown_from_headers(headers, wall_now=balancer.wall_clock())
            seconds, source = found if found is not None else (balancer.policy.default_cooldown, None)
            seconds = min(seconds, balancer.policy.max_cooldown)
            balancer.store.block(backend.key, slot, now + seconds, "rate_limited")
            balancer.stats.failed(backend.key, "HTTP 429", balancer.wall_clock(), rate_limited=True)
            self._cooled(attempt, "rate_limited", seconds, source, now)
            return False
        if status == 404 and _is_deployment_not_found(body):
            balancer.store.block(backend.key, slot, now + balancer.policy.max_cooldown, "deployment_missing")
            balancer.stats.failed(backend.key, "DeploymentNotFound", balancer.wall_clock())
            self._cooled(attempt, "deployment_missing", balancer.policy.max_cooldown, None, now)
            return False
        if self._affinity is not None and not_here(status, body):
            if self._affinity == "pinned":
                self._lost()
            elif self._elsewhere(attempt, status, "not_here", now):
                return False
        elif (
            status == 400
            and balancer.policy.context_failover
            and _is_too_long(body)
            and self._elsewhere(attempt, status, "context_too_long", now)
        ):
            return False
        if status in balancer.policy.failover_statuses:
            self._trip(attempt, f"HTTP {status}", status)
            return False
        recovered = balancer.store.count_success(backend.key, slot, now)
        spilled_to = None
        if signals is not None and signals.spilled_from is not None:
            spilled_to = signals.deployment or backend.spillover_deployment or ""
        balancer.stats.answered(backend.key, status, spilled=spilled_to is not None)
        hooks = balancer.listeners(NOTICE if recovered else DETAIL)
        if hooks:
            outcome: Outcome = "success" if status < 400 else "client_error"
            self._finished(hooks, attempt, outcome, status, None, now=now, spilled_to=spilled_to)
            # The deployment's own cooldown, then the whole backend's (None), each once.
            for deployment in dict.fromkeys(attempt.deployment if name is not None else None for name in recovered):
                emit(hooks, BackendRecovered(backend.name, backend.key, deployment))
        if self._stateful is not None and 200 <= status < 300:
            self._learn(attempt, body, now)
        return True

    def _lost(self) -> None:
        """The holder answered that it does not hold what the request names: deleted by another client
        or expired. Unless an id never seen before is the one missing, they are forgotten."""
        if not self._unknown:
            assert self._stateful is not None
            for object_id in self._stateful.ids:
                self._balancer.store.forget(object_id)

    def _elsewhere(self, attempt: Attempt, status: int, outcome: Outcome, now: float) -> bool:
        """This backend cannot take the request (it does not hold an object the request names, or the
        prompt exceeds its context window), with nothing wrong with the backend. True: the request
        moves on to a backend not tried yet, and nothing cools; False: none is left, the caller gets
        this answer.

        A backend already tried that was only busy (429, 5xx) may still be the one: the request
        moves on, and once nothing is left to try the caller gets the 429 with its remaining wait."""
        balancer = self._balancer
        ruled_out = self._absent or ()
        skipped = self._skipped or ()
        this = attempt.backend.key
        for backend in self._pool:
            key = backend.key
            if key == this or key in ruled_out or key in skipped:
                continue
            found = balancer.store.blocked(key, backend.deployment_for(self.deployment) or "", now)
            if found is None or found.reason != "deployment_missing":
                break
        else:
            return False  # nobody else can take it: the caller gets this backend's answer
        balancer.stats.passed(attempt.backend.key)
        if self._absent is None:
            self._absent = set()
        self._absent.add(attempt.backend.key)
        hooks = balancer.listeners(DETAIL)
        if hooks:
            self._finished(hooks, attempt, outcome, status, None, now=now)
        return True

    def _learn(self, attempt: Attempt, body: bytes | None, now: float) -> None:
        """A success on a stateful route: remember who holds what it named and created, forget what it deleted."""
        balancer = self._balancer
        policy = balancer.policy
        stateful = self._stateful
        assert stateful is not None
        backend = attempt.backend
        if stateful.forgets is not None:
            balancer.store.forget(stateful.forgets)
        found = tuple(object_id for object_id in self._unknown if object_id != stateful.forgets)
        created = None if stateful.learns is None else created_id(stateful.learns, body)
        learned = found if created is None else (*found, created)
        if learned:
            balancer.store.remember(learned, backend.key, now + policy.affinity_ttl, policy.affinity_capacity)
        if self._affinity == "discovery" and found:
            balancer.stats.discovered(backend.key)
            hooks = balancer.listeners(NOTICE)
            if hooks:
                emit(hooks, OwnerDiscovered(backend.name, backend.key, found, attempt.number))

    def stream_tap(self, attempt: Attempt, status: int) -> Callable[[bytes], bool] | None:
        """For a successful event stream that creates an object: a function the shell feeds each chunk
        as it passes (holding nothing back), which learns the object's id; it returns False once done."""
        stateful = self._stateful
        if stateful is None or stateful.learns is None or not 200 <= status < 300:
            return None
        finder = FirstId(stateful.learns)
        balancer = self._balancer
        key = attempt.backend.key

        def tap(chunk: bytes) -> bool:
            found = finder.feed(chunk)
            if found is not None:
                policy = balancer.policy
                until = balancer.clock() + policy.affinity_ttl
                balancer.store.remember((found,), key, until, policy.affinity_capacity)
            return not finder.done

        return tap

    def report_error(self, attempt: Attempt, error: BaseException) -> None:
        """Learn from a transport error (connection refused or reset, timeout); always fails over."""
        self._unhold()
        self._trip(attempt, type(error).__name__, None)

    def cut(self, attempt: Attempt, error: BaseException) -> None:
        """The body of an answer already handed to the caller broke off (``report`` said deliver):
        counted as the backend's failure; too late to fail over or to cool it down."""
        balancer = self._balancer
        balancer.stats.broken(attempt.backend.key, f"body cut: {type(error).__name__}", balancer.wall_clock())

    def skip(self, attempt: Attempt, error: BaseException) -> None:
        """The backend's token provider raised ``error``: fail over without telling the shared health
        store, since other clients of the backend may hold good credentials."""
        self._unhold()
        balancer = self._balancer
        name = type(error).__name__
        balancer.stats.failed(attempt.backend.key, f"token provider: {name}", balancer.wall_clock())
        if self._skipped is None:
            self._skipped = {}
        self._skipped[attempt.backend.key] = name
        hooks = balancer.listeners(logging.WARNING)
        if hooks:
            self._finished(hooks, attempt, "skipped", None, name, now=balancer.clock())

    def release(self, attempt: Attempt, error: BaseException | None = None) -> None:
        """The attempt ended without a verdict on the backend (this machine's error, a cancellation)."""
        self._unhold()
        balancer = self._balancer
        balancer.stats.released(attempt.backend.key)
        hooks = balancer.listeners(DETAIL)
        if hooks:
            what = None if error is None else type(error).__name__
            self._finished(hooks, attempt, "abandoned", None, what, now=balancer.clock())

    def _trip(self, attempt: Attempt, what: str, status: int | None) -> None:
        balancer = self._balancer
        policy = balancer.policy
        backend = attempt.backend
        balancer.stats.failed(backend.key, what, balancer.wall_clock())
        now = balancer.clock()
        tripped = balancer.store.trip(
            backend.key,
            attempt.started,
            now,
            lambda failures: min(policy.breaker_base * 2.0 ** min(failures - 1, 64), policy.breaker_max),
        )
        hooks = balancer.listeners(NOTICE)
        if hooks:
            self._finished(hooks, attempt, "failure", status, None if status is not None else what, now=now)
            if tripped is not None:
                failures, seconds = tripped
                emit(hooks, BackendCooled(backend.name, backend.key, None, "failure", seconds, None, failures))

    def _finished(
        self,
        hooks: tuple[EventHook, ...],
        attempt: Attempt,
        outcome: Outcome,
        status: int | None,
        error: str | None,
        *,
        now: float,
        spilled_to: str | None = None,
    ) -> None:
        backend = attempt.backend
        event = AttemptFinished(
            backend.name,
            backend.key,
            attempt.deployment,
            attempt.number,
            outcome,
            status,
            error,
            now - attempt.started,
            self._affinity,
            spilled_to,
        )
        emit(hooks, event)

    def _cooled(self, attempt: Attempt, reason: Reason, seconds: float, source: str | None, now: float) -> None:
        """A deployment cooldown (429 or DeploymentNotFound): the attempt's end, then the cooldown it caused."""
        hooks = self._balancer.listeners(NOTICE)
        if hooks:
            if reason == "rate_limited":
                self._finished(hooks, attempt, "rate_limited", 429, None, now=now)
            else:
                self._finished(hooks, attempt, "deployment_missing", 404, None, now=now)
            backend = attempt.backend
            emit(hooks, BackendCooled(backend.name, backend.key, attempt.deployment, reason, seconds, source, 0))

    def _answer(self, now: float) -> SyntheticResponse:
        if self._split is not None:
            return self._objects_apart(self._split)
        balancer = self._balancer
        skipped = self._skipped or {}
        absent = self._absent or ()
        soonest: float = math.inf
        soonest_name = ""
        for backend in self._pool:
            if backend.key in skipped or backend.key in absent:
                continue  # waiting would not bring this call a token, or the objects it names
            found = balancer.store.blocked(backend.key, backend.deployment_for(self.deployment) or "", now)
            if found is not None and found[1] == "deployment_missing":
                continue
            until = now if found is None else found[0]
            if until < soonest:
                soonest, soonest_name = until, backend.name
        if soonest == math.inf:
            return self._no_token() if skipped else self._not_found()
        wait = max(soonest - now, 0.001)
        # Rounding up, less float noise: 1000 + 1.2 - 1000 must still say 1200 ms.
        milliseconds = math.ceil(wait * 1000 - 1e-6)
        seconds = math.ceil(milliseconds / 1000)
        headers = [
            ("content-type", "application/json"),
            ("retry-after-ms", str(milliseconds)),
            ("retry-after", str(seconds)),
        ]
        if wait > balancer.client_wait_limit:
            headers.append(("x-should-retry", "false"))
        if self._affinity == "pinned":
            # The other backends may be idle, but none of them has the objects this request names.
            message = (
                f"The backend holding the objects this request names, {soonest_name!r}, is cooling down "
                f"(openai_lb) and recovers in {wait:.3f} s. Please retry after {seconds} seconds."
            )
        else:
            what = f"deployment {self.deployment!r}" if self.deployment else "this request"
            message = (
                f"Every backend for {what} is cooling down (openai_lb); the soonest, {soonest_name!r}, "
                f"recovers in {wait:.3f} s. Please retry after {seconds} seconds."
            )
        hooks = balancer.listeners(NOTICE)
        if hooks:
            emit(hooks, AllBackendsCooling(self.deployment, wait, soonest_name, self.attempts))
        return SyntheticResponse(429, tuple(headers), _error_body("429", message))

    def _not_found(self) -> SyntheticResponse:
        names = ", ".join(b.name for b in (self._pool if self._affinity == "pinned" else self._balancer.backends))
        message = (
            f"The API deployment {self.deployment!r} does not exist on any backend (openai_lb checked: {names}). "
            f"Create it, or map it with Backend(deployments={{{self.deployment!r}: '<name there>'}})."
        )
        return self._refuse(404, "deployment_missing", "DeploymentNotFound", message)

    def _no_token(self) -> SyntheticResponse:
        by_name = {b.key: b.name for b in self._balancer.backends}
        failed = ", ".join(f"{by_name[key]!r} ({name})" for key, name in (self._skipped or {}).items())
        message = (
            f"openai_lb could not get a token for any backend that can serve this request: the "
            f"azure_ad_token_provider of {failed} raised. Check those credentials (managed identity, "
            f"az login, environment); the backends themselves were not contacted."
        )
        return self._refuse(401, "credentials", "TokenProviderFailed", message)

    def _objects_apart(self, owners: dict[str, list[str]]) -> SyntheticResponse:
        by_key = self._balancer._by_key
        held = "; ".join(f"{', '.join(map(repr, ids))} on {by_key[key].name!r}" for key, ids in owners.items())
        message = (
            f"This request names objects held by different backends ({held}), and a request can only go to one "
            f"(openai_lb sent nothing). Create the objects one request uses through the same backend."
        )
        return self._refuse(400, "objects_apart", "ObjectsOnDifferentBackends", message)

    def _refuse(
        self,
        status: int,
        reason: Literal["deployment_missing", "credentials", "objects_apart"],
        code: str,
        message: str,
    ) -> SyntheticResponse:
        hooks = self._balancer.listeners(NOTICE)
        if hooks:
            emit(hooks, NoBackendCanServe(self.deployment, status, reason, self.attempts))
        return SyntheticResponse(status, (("content-type", "application/json"),), _error_body(code, message))


def reset_state() -> None:
    """Forget every cooldown, failure count, object owner and headroom reading in this process's memory (for tests)."""
    store = default_store()
    store.clear()
    book_for(store).clear()


def _error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()


OUTSIDE_THE_BASE = SyntheticResponse(
    400,
    (("content-type", "application/json"),),
    _error_body(
        "BadRequest",
        "The request's path left the client's /openai base (a model name with '..' segments?): "
        "where it would go on each backend is unknown, so openai_lb did not send it.",
    ),
)
"""The answer to a request whose path climbed out of the SDK's base URL."""
