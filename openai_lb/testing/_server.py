"""The public `FakeAzureOpenAI` class: settings, lifecycle and what a test reads back.

How the fake is built, one concern per module:

- ``_listener.py``: the socket on 127.0.0.1, its threads and connections (`Listener`).
- ``_handler.py``: HTTP in and out (`Handler`), talking to the fake only through `Responder`.
- ``_desk.py``: each fake's memory shared by handler threads (script, records, counters,
  the rules' state), which is the `Responder`.
- ``_routes.py`` and ``_rules.py``: the route table and Azure's rules, pure functions.
- ``_payloads.py``: the JSON and event-stream bodies; ``_actions.py``: scripted actions.

Objects that live across requests (stored responses, files, batches, vector stores) are
`_rules.State.objects`, operated on by ``_objects.py``; this class shows their ids
(`objects`). The deployments' rate limits are ``_meters.py``; their headers are
`_rules.headroom_headers`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, fields
from typing import TypeAlias

from openai_lb.testing import _rules as rules
from openai_lb.testing._actions import ACTION_TYPES, Action, RecordedRequest
from openai_lb.testing._desk import Desk
from openai_lb.testing._handler import Responder
from openai_lb.testing._listener import HOST, Listener, StartStop
from openai_lb.testing._objects import ObjectIds
from openai_lb.testing._routes import normalize_prefix
from openai_lb.testing._rules import Config


@dataclass(frozen=True, slots=True)
class Stopped:
    """Not serving; ``port`` is where it last served (None if never), so that `url` still tells it."""

    port: int | None = None


@dataclass(frozen=True, slots=True)
class ServingAlone:
    """Serving on a port of its own."""

    listener: Listener

    @property
    def port(self) -> int:
        return self.listener.port


@dataclass(frozen=True, slots=True)
class ServingInGroup:
    """Answering in a running group on the group's port."""

    group: object
    """The `FakeAzureGroup`, only compared by identity and named in messages."""
    port: int


Serving: TypeAlias = Stopped | ServingAlone | ServingInGroup


class FakeAzureOpenAI(StartStop):
    """Serve a fake Azure OpenAI resource on 127.0.0.1 in a background thread.

    It answers chat completions (plain and streamed), embeddings, the Responses API,
    files, batches, vector stores and the models list in shapes the real ``openai`` SDK
    parses, checks keys, deployments and an optional request budget like Azure does,
    records every request, and plays scripted faults (`Reply`, `ResetConnection`,
    `CutStream`, `Stall`, `HoldStream`) one per request. The assistant text of every answer is
    ``"{name}:{deployment}"`` so a test can tell which server and deployment answered.

    Like an Azure resource, each server keeps its own objects (see `objects`), on the
    Azure paths (``/openai/...?api-version=``) and the v1 paths (``/openai/v1/...``) alike:

    - responses: ``POST responses`` stores each response (``resp_...``), whose
      ``previous_response_id`` must name a response this server holds, else 400
      ``previous_response_not_found``; ``metadata["turn"]`` counts the turns of a chain
      (``"1"`` without a previous response); streamed, ``response.created`` (with the id)
      comes first. ``GET``/``DELETE responses/{id}`` and ``GET responses/{id}/input_items``.
    - files: ``POST files`` (multipart) stores the bytes (``file-...``);
      ``GET files/{id}``, ``GET files/{id}/content``, ``DELETE files/{id}``.
    - batches: ``POST batches`` needs an ``input_file_id`` this server holds; a batch stays
      ``validating`` (nothing runs); ``GET batches/{id}``; ``POST batches/{id}/cancel``
      answers ``cancelling``, and the batch is ``cancelled`` from then on.
    - vector stores: ``POST vector_stores``, ``GET``/``DELETE vector_stores/{id}``.

    An unknown id is a 404 in the object APIs' error shape (``openai.NotFoundError``).
    Requests refused by any check, and scripted answers, leave the objects unchanged.

    A request goes through: path prefix (404 ``"404"``), then the next scripted action
    if any, then key or token (401), route (404 ``"404"``), JSON body (400), deployment
    (404 ``DeploymentNotFound``), the request's fields (400 ``BadRequest``, e.g. a chat
    completion without ``messages``; the objects they name), the deployment's context
    limit (400 ``context_length_exceeded``), budget (429), the deployment's rate limits
    (429) and finally the normal answer.

    Rate limits like Azure's, per deployment (each its own meter; see ``_meters.py`` for
    the pages they follow). A request is charged its prompt (about four characters of its
    messages or input a token, the ``usage.prompt_tokens`` it is answered) plus its
    ``max_tokens`` / ``max_completion_tokens`` / ``max_output_tokens``, else
    ``default_max_tokens``:

    - standard deployments (``tokens_per_minute``, optionally ``requests_per_minute``): a
      token bucket refilled continuously; a request whose charge does not fit, or one over
      the requests let in per second (per 10 s under 60 RPM), is a 429 with
      ``retry-after-ms`` / ``retry-after``. Every answer of the deployment carries
      ``x-ratelimit-limit-tokens``, ``x-ratelimit-remaining-tokens``,
      ``x-ratelimit-reset-tokens`` (and the ``-requests`` three with a request limit:
      requests left in the current check) and ``x-ms-deployment-name``.
    - provisioned deployments (``provisioned``, capacity ``tokens_per_minute``): a leaky
      bucket draining continuously; a request is admitted while utilisation is under
      100 % (it may push it over), else 429 with ``retry-after-ms`` until it is under.
      Every answer carries ``azure-openai-deployment-utilization`` (``"87.5%"``) and
      ``x-ms-deployment-name``. With ``spillover`` (or the request header
      ``x-ms-spillover-deployment``; the setting wins), a 429 or a 400
      ``context_length_exceeded`` is served by the standard deployment instead, whose
      answer adds ``x-ms-spillover-from-deployment``; a failed spill answers the
      provisioned deployment's refusal with ``x-ms-spillover-error``.

    Example, a provisioned deployment with Azure's spillover::

        with FakeAzureOpenAI(
            deployments={"ptu", "paygo"},
            tokens_per_minute={"ptu": 6_000, "paygo": 60_000},
            provisioned={"ptu"},
            spillover={"ptu": "paygo"},
        ) as server:
            client = openai.AzureOpenAI(azure_endpoint=server.url, api_key="k", api_version="2024-10-21")
            hi = [{"role": "user", "content": "hi"}]
            client.chat.completions.create(model="ptu", messages=hi, max_tokens=6_000)  # takes it past 100 %
            spilled = client.chat.completions.with_raw_response.create(model="ptu", messages=hi)
            assert spilled.headers["x-ms-spillover-from-deployment"] == "ptu"
            assert server.spilled == 1 and server.utilization("ptu") > 100

    Args:
        name: Told back in the ``x-fake-server`` header and in every assistant text.
        deployments: Deployment names hosted; None hosts any name.
        api_keys: Accepted ``api-key`` header values. With ``tokens`` also None, no auth check.
        tokens: Accepted ``Authorization: Bearer`` tokens.
        path_prefix: A path every request must start with, like an API gateway's (e.g. ``"/team-a"``).
        budget: Requests accepted per window across all deployments; None means unlimited.
        window: Length in seconds of the fixed budget windows, the first starting at the
            first budgeted request after `start` or `reset`.
        stream_chunks: Content events per streamed answer.
        chunk_delay: Seconds between streamed events.
        tokens_per_minute: Each metered deployment's rate in tokens per minute: one int
            for every deployment (each its own meter), or a mapping naming some. None
            meters nothing and adds no header.
        requests_per_minute: Standard deployments' request limit, an int or a mapping
            naming deployments that have a ``tokens_per_minute``. None leaves requests
            unlimited (Azure derives 6 RPM per 1000 TPM; pass that to mimic it).
        provisioned: True makes every metered deployment provisioned (PTU, capacity its
            ``tokens_per_minute``); a collection of names makes those provisioned.
        default_max_tokens: What a body naming no maximum answer length is charged for it.
        context_limits: Deployment -> the most tokens its prompt (plus a ``max_tokens``
            the body names) may have; longer is a 400 ``context_length_exceeded``.
        spillover: Provisioned deployment -> the standard deployment, on this server,
            that serves what it refuses (Azure's ``spilloverDeploymentName``).
        latency: Seconds every answer waits before it is sent: a network round trip.
        clock: Monotonic clock for the budget windows and the meters; tests pass a fake one.

    The attributes of the same names may be changed while the server runs; each
    request reads them afresh. To serve several servers on one port, told apart by
    their ``path_prefix``, give them to a `FakeAzureGroup` instead of starting them.
    """

    def __init__(
        self,
        *,
        name: str = "fake",
        deployments: Iterable[str] | None = None,
        api_keys: Iterable[str] | None = None,
        tokens: Iterable[str] | None = None,
        path_prefix: str = "",
        budget: int | None = None,
        window: float = 60.0,
        stream_chunks: int = 3,
        chunk_delay: float = 0.0,
        tokens_per_minute: int | Mapping[str, int] | None = None,
        requests_per_minute: int | Mapping[str, int] | None = None,
        provisioned: bool | Iterable[str] = False,
        default_max_tokens: int = 1024,
        context_limits: Mapping[str, int] | None = None,
        spillover: Mapping[str, str] | None = None,
        latency: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if budget is not None and (not isinstance(budget, int) or budget < 0):
            raise ValueError(f"budget must be None or an int >= 0, got {budget!r}")
        if not window > 0 or not math.isfinite(window):
            raise ValueError(f"window must be a finite number of seconds > 0, got {window!r}")
        if not isinstance(stream_chunks, int) or stream_chunks < 1:
            raise ValueError(f"stream_chunks must be an int >= 1, got {stream_chunks!r}")
        for what, seconds in (("chunk_delay", chunk_delay), ("latency", latency)):
            if not seconds >= 0 or not math.isfinite(seconds):
                raise ValueError(f"{what} must be a finite number >= 0, got {seconds!r}")
        if not _is_count(default_max_tokens, minimum=0):
            raise ValueError(f"default_max_tokens must be an int >= 0, got {default_max_tokens!r}")
        self.name = name
        self.deployments = _name_set("deployments", deployments)
        self.api_keys = _name_set("api_keys", api_keys)
        self.tokens = _name_set("tokens", tokens)
        self.path_prefix = normalize_prefix(path_prefix)
        self.budget = budget
        self.window = float(window)
        self.stream_chunks = stream_chunks
        self.chunk_delay = float(chunk_delay)
        self.tokens_per_minute = _rates("tokens_per_minute", tokens_per_minute)
        self.requests_per_minute = _rates("requests_per_minute", requests_per_minute)
        self.provisioned: bool | frozenset[str] = (
            provisioned if isinstance(provisioned, bool) else _name_set("provisioned", provisioned) or frozenset()
        )
        self.default_max_tokens = default_max_tokens
        self.context_limits = _counts_by_name("context_limits", context_limits or {})
        self.spillover = dict(spillover or {})
        self.latency = float(latency)
        problem = self._limits_problem()
        if problem is not None:
            raise ValueError(problem)
        self._desk = Desk(self._settings, clock)
        # Serializes start(), stop() and joining or leaving a group so that concurrent calls cannot leak a server.
        self._lifecycle = threading.Lock()
        self._serving: Serving = Stopped()

    def _limits_problem(self) -> str | None:
        """What is inconsistent between the rate-limit settings, or None."""
        settings = self._settings()
        metered = set(self.tokens_per_minute) if isinstance(self.tokens_per_minute, dict) else None
        provisioned = set(self.provisioned) if isinstance(self.provisioned, frozenset) else None
        if self.provisioned and self.tokens_per_minute is None:
            return "provisioned deployments need their capacity in tokens_per_minute"
        if metered is not None and provisioned is not None and not provisioned <= metered:
            return f"provisioned deployments need their capacity in tokens_per_minute: {sorted(provisioned - metered)}"
        requests = self.requests_per_minute
        if requests is not None and (self.tokens_per_minute is None or self.provisioned is True):
            return "requests_per_minute applies to standard deployments with a tokens_per_minute"
        for deployment in requests if isinstance(requests, dict) else ():
            limits = rules.limits_for(settings, deployment)
            if limits is None or limits.provisioned:
                return f"requests_per_minute names {deployment!r}, not a standard deployment with a tokens_per_minute"
        for source, target in self.spillover.items():
            if not isinstance(source, str) or not isinstance(target, str) or source == target:
                return f"spillover maps a deployment to another one by name, got {source!r}: {target!r}"
            source_limits, target_limits = rules.limits_for(settings, source), rules.limits_for(settings, target)
            if source_limits is None or not source_limits.provisioned:
                return f"spillover is for provisioned deployments; {source!r} is not one"
            if target_limits is not None and target_limits.provisioned:
                return f"spillover goes to a standard deployment; {target!r} is provisioned"
            if not rules.hosted(settings, target):
                return f"spillover names {target!r}, which is not among the deployments"
        return None

    def _settings(self) -> Config:
        # Each setting is the attribute of the same name, read afresh for every request.
        return Config(**{setting.name: getattr(self, setting.name) for setting in fields(Config)})

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Bind a free port on 127.0.0.1 and start serving (does nothing if already serving).

        Raises `RuntimeError` while the server answers in a running `FakeAzureGroup`.
        """
        with self._lifecycle:
            serving = self._serving
            if isinstance(serving, ServingAlone):
                return
            if isinstance(serving, ServingInGroup):
                raise RuntimeError(f"{self!r} is serving in {serving.group!r}; start and stop the group instead")
            self._desk.restart_window()
            # A lone server answers every path itself: a path outside its prefix gets its own 404.
            desk = self._desk
            listener = Listener(lambda path: desk, name=self.name, thread_name=f"FakeAzureOpenAI({self.name})")
            listener.serve_in_background()
            self._serving = ServingAlone(listener)

    def stop(self) -> None:
        """Stop serving and drop open connections, within a fraction of a second (idempotent).

        Does nothing while the server answers in a `FakeAzureGroup`: stop the group instead.
        """
        with self._lifecycle:
            serving = self._serving
            if isinstance(serving, ServingAlone):
                self._serving = Stopped(serving.port)
                serving.listener.close()

    def __repr__(self) -> str:
        where = self.url if self._serving.port is not None else "not started"
        return f"FakeAzureOpenAI(name={self.name!r}, {where})"

    # -- public state ----------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port the server listens on, its group's while grouped (`RuntimeError` before `start`)."""
        port = self._serving.port
        if port is None:
            raise RuntimeError("FakeAzureOpenAI has not been started; use start() or a with block")
        return port

    @property
    def url(self) -> str:
        """The endpoint to give a client: ``http://127.0.0.1:<port>`` plus the path prefix."""
        return f"http://{HOST}:{self.port}{self.path_prefix}"

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of every request received so far, in arrival order."""
        return self._desk.records()

    @property
    def served(self) -> int:
        """How many 2xx answers the server has started sending (CutStream answers excluded)."""
        return self._desk.served()

    @property
    def answers(self) -> list[tuple[float, int]]:
        """``(clock reading, status)`` of every answer started, in order: a timeline for benchmarks."""
        return self._desk.answers()

    @property
    def rejected(self) -> int:
        """How many requests the budget turned away with 429."""
        return self._desk.rejected()

    @property
    def throttled(self) -> int:
        """How many requests a deployment's rate limit answered with 429 (spilled ones excluded)."""
        return self._desk.throttled()

    @property
    def spilled(self) -> int:
        """How many requests a provisioned deployment refused and its spillover deployment served."""
        return self._desk.spilled()

    @property
    def tokens_used(self) -> int:
        """Tokens charged to the requests answered normally (their prompt plus maximum answer), all deployments."""
        return self._desk.tokens_used(None)

    def tokens_used_by(self, deployment: str) -> int:
        """`tokens_used` by one deployment (a spilled request counts for the one that served it)."""
        return self._desk.tokens_used(deployment)

    def utilization(self, deployment: str) -> float:
        """Percent of the deployment's tokens per minute in use now, by the fake's clock (0.0 if it has no meter).

        A provisioned deployment refuses requests from 100 up; a standard one's tokens left
        are the rest. Both drain back to 0 when idle.
        """
        return self._desk.utilization(deployment)

    @property
    def objects(self) -> ObjectIds:
        """The ids of the responses, files, batches and vector stores this server holds, by kind.

        A read-only snapshot: ``"resp_x" in server.objects`` asks whether any kind holds
        that id, ``server.objects.responses`` lists the responses. At most
        ``10_000`` of each kind are kept (a new one beyond forgets the oldest);
        `reset` forgets them all.
        """
        return self._desk.objects()

    @property
    def pending_actions(self) -> int:
        """How many scripted actions are still waiting for a request."""
        return self._desk.pending_actions()

    def script(self, *actions: Action) -> None:
        """Queue actions that the next requests get, one each, in order; later requests are normal."""
        for action in actions:
            if not isinstance(action, ACTION_TYPES):
                raise TypeError(f"expected Reply, ResetConnection, CutStream, Stall or HoldStream, got {action!r}")
        self._desk.queue(actions)

    def reset(self) -> None:
        """Forget scripted actions, recorded requests, the budget window, meters, counters and stored objects."""
        self._desk.reset()

    # -- used by FakeAzureGroup ------------------------------------------------------

    def _join_group(self, group: object, port: int) -> Responder:
        """Start answering in ``group``, which listens on ``port``, as `start` would alone.

        Returns what the group's listener hands this server's requests to.
        """
        with self._lifecycle:
            problem = self._busy_problem()
            if problem is not None:
                raise ValueError(problem)
            self._desk.restart_window()
            self._serving = ServingInGroup(group, port)
            return self._desk

    def _leave_group(self, group: object) -> None:
        with self._lifecycle:
            serving = self._serving
            if isinstance(serving, ServingInGroup) and serving.group is group:
                self._serving = Stopped(serving.port)

    def _busy_problem(self) -> str | None:
        """Why the server cannot join a group now, or None if it can."""
        serving = self._serving
        if isinstance(serving, ServingAlone):
            return f"{self!r} is already running on its own; stop it before serving it in a FakeAzureGroup"
        if isinstance(serving, ServingInGroup):
            return f"{self!r} is already serving in {serving.group!r}"
        return None


def _name_set(what: str, names: Iterable[str] | None) -> frozenset[str] | None:
    if names is None:
        return None
    # A bare string is iterable too, but would silently become a set of characters.
    if isinstance(names, str):
        raise TypeError(f"{what} must be a collection of strings, not a single string")
    return frozenset(names)


def _is_count(value: object, *, minimum: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum


def _rates(what: str, value: int | Mapping[str, int] | None) -> int | dict[str, int] | None:
    """An int >= 1 for every deployment, or `_counts_by_name`."""
    if value is None or isinstance(value, Mapping):
        return None if value is None else _counts_by_name(what, value)
    if not _is_count(value, minimum=1):
        raise ValueError(
            f"{what} must be None, an int >= 1 or a mapping of deployment names to such ints, got {value!r}"
        )
    return value


def _counts_by_name(what: str, value: Mapping[str, int]) -> dict[str, int]:
    """A copy of a mapping from deployment names to ints >= 1."""
    for name, count in value.items():
        if not isinstance(name, str) or not _is_count(count, minimum=1):
            raise ValueError(f"{what} maps deployment names to ints >= 1, got {name!r}: {count!r}")
    return dict(value)
