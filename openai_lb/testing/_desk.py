"""Per-fake memory shared by handler threads, and the `Responder` the handler calls.

A `Desk` belongs to one `FakeAzureOpenAI`. It keeps, under one lock, what handler threads
and the test both touch: the script of actions, the recorded requests, the counters and
the rules' `State` (the budget window, the deployments' meters and the stored responses,
files, batches and vector stores, replaced as a whole after each decision).
It reads the fake's settings afresh for each request and leaves every decision to the
pure functions of `_rules.py` and `_meters.py`.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Callable
from dataclasses import replace

from openai_lb.testing import _meters as meters
from openai_lb.testing import _rules as rules
from openai_lb.testing._actions import Action, RecordedRequest
from openai_lb.testing._objects import ObjectIds
from openai_lb.testing._routes import Exchange, Incoming, parse


class Desk:
    """One fake's side of every request: record it, take its scripted action, answer by the rules, count.

    Args:
        settings: Returns the fake's settings as they stand; called once per request.
        clock: Monotonic clock for the budget windows, the meters and the answers log.
    """

    def __init__(self, settings: Callable[[], rules.Config], clock: Callable[[], float]) -> None:
        self._settings = settings
        self._clock = clock
        # Guards everything below.
        self._lock = threading.Lock()
        self._script: collections.deque[Action] = collections.deque()
        self._records: list[RecordedRequest] = []
        self._served = 0
        self._rejected = 0
        self._throttled = 0
        self._spilled = 0
        self._tokens: collections.Counter[str] = collections.Counter()
        self._answers: list[tuple[float, int]] = []
        self._state = rules.State()

    # -- the Responder, for handler threads ----------------------------------------------

    @property
    def name(self) -> str:
        return self._settings().name

    def receive(self, incoming: Incoming) -> rules.Step:
        config = self._settings()
        exchange = parse(incoming, config.path_prefix)
        with self._lock:
            self._records.append(exchange.request)
            # A path outside the prefix never reached the resource, so it takes no scripted action.
            action = self._script.popleft() if exchange.inside_prefix and self._script else None
            objects = self._state.objects
        step = (
            rules.scripted(action, exchange, config, objects) if action is not None else self._decide(exchange, config)
        )
        return rules.Delayed(config.latency, step) if config.latency > 0 else step

    def respond(self, exchange: Exchange) -> rules.Response:
        return self._decide(exchange, self._settings())

    def note_answer(self, status: int, *, success: bool) -> None:
        with self._lock:
            self._answers.append((self._clock(), status))
            if success and 200 <= status < 300:
                self._served += 1

    def _decide(self, exchange: Exchange, config: rules.Config) -> rules.Response:
        with self._lock:
            decision = rules.decide(exchange, config, self._state, self._clock())
            self._state = decision.state
            self._rejected += decision.over_budget
            self._throttled += decision.throttled
            self._spilled += decision.spilled
            if decision.charged is not None:
                deployment, tokens = decision.charged
                self._tokens[deployment] += tokens
        return decision.response

    # -- for FakeAzureOpenAI -----------------------------------------------------------

    def records(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._records)

    def served(self) -> int:
        with self._lock:
            return self._served

    def rejected(self) -> int:
        with self._lock:
            return self._rejected

    def throttled(self) -> int:
        with self._lock:
            return self._throttled

    def spilled(self) -> int:
        with self._lock:
            return self._spilled

    def tokens_used(self, deployment: str | None) -> int:
        with self._lock:
            return self._tokens[deployment] if deployment is not None else self._tokens.total()

    def utilization(self, deployment: str) -> float:
        limits = rules.limits_for(self._settings(), deployment)
        with self._lock:
            meter = self._state.meters.get(deployment)
            now = self._clock()
        return 0.0 if limits is None or meter is None else meters.utilization(meter, limits, now)

    def objects(self) -> ObjectIds:
        with self._lock:
            objects = self._state.objects
        # The state is never changed in place, so the snapshot can be built outside the lock.
        return objects.ids()

    def answers(self) -> list[tuple[float, int]]:
        with self._lock:
            return list(self._answers)

    def pending_actions(self) -> int:
        with self._lock:
            return len(self._script)

    def queue(self, actions: tuple[Action, ...]) -> None:
        with self._lock:
            self._script.extend(actions)

    def restart_window(self) -> None:
        """Start budgeting afresh, as on `start`: the next budgeted request opens a window."""
        with self._lock:
            self._state = replace(self._state, window=meters.Window())

    def reset(self) -> None:
        """Forget the script, the records, the counters and everything the rules remember."""
        with self._lock:
            self._script.clear()
            self._records.clear()
            self._served = 0
            self._rejected = 0
            self._throttled = 0
            self._spilled = 0
            self._tokens.clear()
            self._answers.clear()
            self._state = rules.State()
