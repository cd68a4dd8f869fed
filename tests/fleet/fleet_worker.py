"""A worker process of the fleet tests: balanced SDK clients of its own, fed jobs through queues.

The test process starts the workers with the ``spawn`` context (`Fleet`), hands each the same `Job`,
and starts them together once every one has built its clients and, for a Redis store, connected:
so a worker's time is spent on requests, not on importing the SDK. A `Conversation` instead keeps
one client in each worker named, for Responses API turns the test asks of one worker at a time.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

API_VERSION = "2024-10-21"
KEY = "fleet-key"
CONNECT_TIMEOUT = 20.0
"""Seconds a worker waits for its Redis store, and the test for every worker to be ready."""


@dataclass(frozen=True)
class Plan:
    """One balanced client in every worker."""

    backends: tuple[tuple[str, str, int], ...]
    """(name, url, priority) of each backend."""
    store: str | None
    """``health_store=``: a Redis URL, or None for a store of this client's own (its process's memory)."""
    breaker: float = 5.0
    """Seconds a backend's circuit stays open, every time (``breaker_base`` = ``breaker_max``)."""
    max_retries: int = 0
    watch: str | None = None
    """A backend whose cooldown the worker waits to learn after its requests (``Job.watch_timeout`` at most)."""


@dataclass(frozen=True)
class Job:
    plans: tuple[Plan, ...]
    requests: int
    """Requests per plan and worker, one per plan every ``interval`` seconds."""
    interval: float
    stagger: float = 0.0
    """Worker ``i`` starts ``i * stagger`` seconds after the start, so the workers' requests interleave."""
    watch_timeout: float = 0.0


@dataclass
class Outcome:
    """What one worker saw through one plan's client."""

    answered_by: Counter[str] = field(default_factory=Counter)
    """Answers handed to the caller, by the backend that gave them (``x-openai-lb-backend``)."""
    errors: list[str] = field(default_factory=list)
    """Every request that raised: the exception's type and text."""
    attempts: dict[str, int] = field(default_factory=dict)
    """``status()``: attempts sent to each backend."""
    rate_limited: dict[str, int] = field(default_factory=dict)
    learned_after: float | None = None
    """Seconds from the end of the requests until the watched backend was seen cooling; None: never."""
    ignored: int | None = None
    """A Redis store's count of values in the namespace it ignored."""
    warnings: list[str] = field(default_factory=list)
    """WARNING messages of the ``openai_lb`` logger in this worker during the job (all plans')."""


@dataclass(frozen=True)
class Conversation:
    """A balanced client kept in a worker for the `Turn`s the test asks of it, until ``"end"``."""

    plan: Plan


@dataclass(frozen=True)
class Turn:
    """One ``responses.create`` in a worker's `Conversation`."""

    previous: str | None = None
    """``previous_response_id``: the response this one continues."""
    wait: bool = True
    """Wait first (``CONNECT_TIMEOUT`` at most) until the client's store knows which backend holds ``previous``."""


@dataclass
class TurnOutcome:
    response_id: str
    backend: str
    """``x-openai-lb-backend`` of the answer."""
    turn: str | None
    """The fake's count of the chain's turns (``metadata["turn"]``)."""
    waited: float
    """Seconds the store took to know the holder of ``previous``."""
    counts: dict[str, dict[str, int]]
    """``status()`` after the turn: backend name -> attempts, pinned, discovered, failovers_away."""


class _Warnings(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def serve(index: int, warmup: str, inbox: Any, outbox: Any) -> None:
    """A worker's life: jobs from ``inbox`` until None; ``("ready"|"done"|"error", index, ...)`` to ``outbox``.

    One request to the server at ``warmup`` first: a process's first request loads much of the SDK
    (a second or more on a busy machine), which would bunch up a job's first requests.
    """
    import openai_lb._redis  # noqa: F401  (a job's store needs it)

    with _client(Plan((("warmup", warmup, 1),), store=None)) as client:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    while True:
        job = inbox.get()
        if job is None:
            return
        if job == "end":  # of a conversation that failed to start: nothing to end
            outbox.put(("done", index, None))
            continue
        work = _converse if isinstance(job, Conversation) else _run
        try:
            outbox.put(("done", index, work(index, job, inbox, outbox)))
        except Exception as error:  # the test fails with it instead of waiting for a worker that died
            outbox.put(("error", index, f"{type(error).__name__}: {error}"))


def _client(plan: Plan) -> Any:
    import openai_lb

    policy = openai_lb.Policy(breaker_base=plan.breaker, breaker_max=plan.breaker)
    return openai_lb.AzureOpenAI(
        backends=[openai_lb.Backend(url, name=name, priority=priority) for name, url, priority in plan.backends],
        health_store=plan.store if plan.store is not None else openai_lb.InMemoryHealthStore(),
        policy=policy,
        api_key=KEY,
        api_version=API_VERSION,
        max_retries=plan.max_retries,
        timeout=10.0,
    )


def _run(index: int, job: Job, inbox: Any, outbox: Any) -> list[Outcome]:
    import openai_lb

    clients = [_client(plan) for plan in job.plans]
    warnings = _Warnings()
    logging.getLogger("openai_lb").addHandler(warnings)
    try:
        for client in clients:
            store = client.balancer.store
            if isinstance(store, openai_lb.RedisHealthStore):
                _wait(lambda store=store: store.connected, CONNECT_TIMEOUT, "the Redis store connecting")
        outbox.put(("ready", index))
        if inbox.get(timeout=CONNECT_TIMEOUT * 3) != "go":
            raise RuntimeError("expected the start signal")
        outcomes = [Outcome() for _ in job.plans]
        start = time.monotonic() + index * job.stagger
        for number in range(job.requests):
            time.sleep(max(0.0, start + number * job.interval - time.monotonic()))
            for client, outcome in zip(clients, outcomes, strict=True):
                try:
                    raw = client.chat.completions.with_raw_response.create(
                        model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
                    )
                    outcome.answered_by[raw.headers.get("x-openai-lb-backend", "?")] += 1
                except Exception as error:
                    outcome.errors.append(f"{type(error).__name__}: {error}")
        ended = time.monotonic()
        for client, plan, outcome in zip(clients, job.plans, outcomes, strict=True):
            if plan.watch is not None:
                cooling = _cooling(client, plan.watch)
                if _wait(cooling, job.watch_timeout, None):
                    outcome.learned_after = time.monotonic() - ended
            for status in client.balancer.status():
                outcome.attempts[status.name] = status.attempts
                outcome.rate_limited[status.name] = status.rate_limited
            store = client.balancer.store
            if isinstance(store, openai_lb.RedisHealthStore):
                outcome.ignored = store.ignored
            outcome.warnings = warnings.messages
        return outcomes
    finally:
        logging.getLogger("openai_lb").removeHandler(warnings)
        for client in clients:
            client.close()
            store = client.balancer.store
            if isinstance(store, openai_lb.RedisHealthStore):
                store.close()  # the next job's URL gets a fresh one; no threads left on an old server


def _converse(index: int, job: Conversation, inbox: Any, outbox: Any) -> None:
    import openai_lb

    client = _client(job.plan)
    store = client.balancer.store
    try:
        if isinstance(store, openai_lb.RedisHealthStore):
            _wait(lambda: store.connected, CONNECT_TIMEOUT, "the Redis store connecting")
        outbox.put(("ready", index))
        while (turn := inbox.get(timeout=CONNECT_TIMEOUT * 3)) != "end":
            try:
                outbox.put(("answered", index, _turn(client, turn)))
            except Exception as error:  # reported; the conversation goes on until the test ends it
                outbox.put(("error", index, f"{type(error).__name__}: {error}"))
    finally:
        client.close()
        if isinstance(store, openai_lb.RedisHealthStore):
            store.close()


def _turn(client: Any, turn: Turn) -> TurnOutcome:
    balancer = client.balancer
    started = time.monotonic()
    options: dict[str, str] = {}
    previous = turn.previous
    if previous is not None:
        options["previous_response_id"] = previous
        if turn.wait:
            _wait(
                lambda: balancer.store.owner(previous, balancer.clock()) is not None,
                CONNECT_TIMEOUT,
                "the store learning which backend holds the previous response",
            )
    waited = time.monotonic() - started
    raw = client.responses.with_raw_response.create(model="gpt-4o", input="and then?", **options)
    response = raw.parse()
    counts = {
        status.name: {
            "attempts": status.attempts,
            "pinned": status.pinned,
            "discovered": status.discovered,
            "failovers_away": status.failovers_away,
        }
        for status in balancer.status()
    }
    turn_number = (response.metadata or {}).get("turn")
    return TurnOutcome(response.id, raw.headers.get("x-openai-lb-backend", "?"), turn_number, waited, counts)


def _cooling(client: Any, name: str) -> Any:
    def check() -> bool:
        return any(s.name == name and s.state != "available" for s in client.balancer.status())

    return check


def _wait(condition: Any, timeout: float, what: str | None) -> bool:
    """Poll ``condition()`` every 5 ms for at most ``timeout`` s; raise naming ``what`` if given, else return False."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            if what is not None:
                raise TimeoutError(f"{what} did not happen within {timeout} s")
            return False
        time.sleep(0.005)
    return True


class Fleet:
    """``size`` worker processes started with ``spawn``; always terminated and joined on leaving.

    ``warmup`` is the URL of a fake server each worker sends its first request to.
    """

    def __init__(self, size: int, warmup: str) -> None:
        context = multiprocessing.get_context("spawn")
        self.outbox: Any = context.Queue()
        self.inboxes: list[Any] = [context.Queue() for _ in range(size)]
        self.processes = [
            context.Process(
                target=serve, args=(index, warmup, inbox, self.outbox), name=f"fleet-worker-{index}", daemon=True
            )
            for index, inbox in enumerate(self.inboxes)
        ]

    def __enter__(self) -> Fleet:
        try:
            for process in self.processes:
                process.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        for inbox, process in zip(self.inboxes, self.processes, strict=True):
            if process.is_alive():
                inbox.put(None)
        for process in self.processes:
            if process.pid is None:
                continue
            process.join(5)
            if process.is_alive():
                process.terminate()
                process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)

    def start(self, job: Job, timeout: float = CONNECT_TIMEOUT * 3) -> None:
        """Hand ``job`` to every worker and start them together once all are ready."""
        for inbox in self.inboxes:
            inbox.put(job)
        self._collect("ready", timeout)
        for inbox in self.inboxes:
            inbox.put("go")

    def begin(self, plans: dict[int, Plan], timeout: float = CONNECT_TIMEOUT * 3) -> None:
        """A `Conversation` in each worker named (index -> plan), once every one is ready."""
        for index, plan in plans.items():
            self.inboxes[index].put(Conversation(plan))
        self._collect("ready", timeout, plans)

    def turn(self, index: int, turn: Turn, timeout: float = CONNECT_TIMEOUT * 2) -> TurnOutcome:
        """One turn of worker ``index``'s conversation."""
        self.inboxes[index].put(turn)
        outcome: TurnOutcome = self._collect("answered", timeout, (index,))[index]
        return outcome

    def end(self, indexes: Iterable[int], timeout: float = CONNECT_TIMEOUT) -> None:
        """End the conversations of the workers named; they close their clients and stores."""
        indexes = tuple(indexes)
        for index in indexes:
            self.inboxes[index].put("end")
        self._collect("done", timeout, indexes)

    def results(self, timeout: float) -> list[list[Outcome]]:
        """Every worker's outcomes (one per plan), by worker."""
        found = self._collect("done", timeout)
        return [found[index] for index in range(len(self.processes))]

    def run(self, job: Job, timeout: float) -> list[list[Outcome]]:
        self.start(job)
        return self.results(timeout)

    def _collect(self, kind: str, timeout: float, workers: Iterable[int] | None = None) -> dict[int, Any]:
        """One ``kind`` message from each of ``workers`` (all unless named), by worker."""
        expected = len(self.processes) if workers is None else len(tuple(workers))
        found: dict[int, Any] = {}
        deadline = time.monotonic() + timeout
        while len(found) < expected:
            left = deadline - time.monotonic()
            try:
                message = self.outbox.get(timeout=max(left, 0.01))
            except queue.Empty:
                dead = [p.name for p in self.processes if not p.is_alive()]
                raise AssertionError(
                    f"{expected - len(found)} worker(s) not {kind} within {timeout} s (dead: {dead})"
                ) from None
            if message[0] == "error":
                raise AssertionError(f"worker {message[1]} failed: {message[2]}")
            if message[0] != kind:
                raise AssertionError(f"expected {kind!r} from the workers, got {message!r}")
            found[message[1]] = message[2] if len(message) > 2 else None
        return found
