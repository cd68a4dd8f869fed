"""Azure's rules as the fake plays them: pure functions from a parsed request to an answer.

`decide` applies the checks of a normal request in Azure's order (path prefix, key or token,
route, JSON body, deployment, the request's fields, budget) and `scripted` turns a scripted
action into what the handler does instead. Both take a snapshot of the fake's settings
(`Config`) and, for `decide`, of what it remembers between requests (`State`), and return
plain values (`Response`, `Cut`, `Reset`, `Wait`, `Hold`): no sockets, threads, locks or clocks here.

Objects that live across requests (stored responses and their ``previous_response_id``
chains, files, batches, vector stores) are `State.objects`, operated on by the pure
functions of `_objects.py`: `decide` returns the new `State` in its `Decision`, which the
fake stores under its lock, like the budget `Window`. Only a request that passes every
check changes them; scripted answers read them but never change them.

Where later features go: headroom headers (``x-ratelimit-remaining-tokens`` and the like)
are computed by `headroom_headers`, next to ``x-ratelimit-remaining-requests``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, TypeAlias

from openai_lb.testing import _objects as stored
from openai_lb.testing import _payloads as payloads
from openai_lb.testing._actions import Action, CutStream, HoldStream, Reply, ResetConnection, Stall
from openai_lb.testing._objects import Objects
from openai_lb.testing._routes import Exchange

# Listed by the models endpoint when the fake hosts any deployment name.
_DEFAULT_MODELS = ("gpt-4o", "gpt-4o-mini", "text-embedding-3-small")


@dataclass(frozen=True, slots=True)
class Config:
    """The fake's settings, read once per request (they may change while it serves)."""

    name: str = "fake"
    deployments: frozenset[str] | None = None
    """Hosted deployment names; None hosts any name."""
    api_keys: frozenset[str] | None = None
    tokens: frozenset[str] | None = None
    path_prefix: str = ""
    budget: int | None = None
    window: float = 60.0
    stream_chunks: int = 3
    chunk_delay: float = 0.0


@dataclass(frozen=True, slots=True)
class Window:
    """The current fixed budget window: its start (None before the first budgeted request) and its use."""

    start: float | None = None
    used: int = 0


@dataclass(frozen=True, slots=True)
class State:
    """What the rules remember between requests; each `Decision` carries the next one."""

    window: Window = Window()
    objects: Objects = field(default_factory=Objects)


# -- what the handler is told to do ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class JsonBody:
    value: object


@dataclass(frozen=True, slots=True)
class EventStream:
    """Server-sent events, sent ``delay`` seconds apart."""

    events: tuple[bytes, ...]
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class RawBody:
    """Bytes sent as they are (a file's content)."""

    data: bytes
    content_type: str = "application/octet-stream"


Body: TypeAlias = JsonBody | EventStream | RawBody | None
"""None sends no body."""


@dataclass(frozen=True, slots=True)
class Response:
    """An answer to send: status, headers on top of the defaults, and body."""

    status: int
    body: Body
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Cut:
    """Send ``response`` but break it off as `CutStream` describes."""

    response: Response
    after: int
    framing: Literal["framed", "close"]


@dataclass(frozen=True, slots=True)
class Reset:
    """Drop the connection with a TCP RST instead of answering."""


@dataclass(frozen=True, slots=True)
class Wait:
    """Wait ``seconds`` (less if the server stops), then answer ``exchange`` by the rules as they stand then."""

    seconds: float
    exchange: Exchange


@dataclass(frozen=True, slots=True)
class Hold:
    """Answer ``exchange`` by the rules, holding an event stream as ``action`` says."""

    action: HoldStream
    exchange: Exchange


Step: TypeAlias = Response | Cut | Reset | Wait | Hold
"""What the handler does with a request it has read."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of `decide`: the answer and the state to remember."""

    response: Response
    state: State
    over_budget: bool = False
    """True when the budget turned the request away (the fake counts it in ``rejected``)."""


def error(status: int, code: str, message: str) -> Response:
    """An Azure-style JSON error answer."""
    return Response(status, JsonBody(payloads.error_body(code, message)))


NOT_FOUND = error(404, "404", payloads.NOT_FOUND_MESSAGE)


# -- the rules ---------------------------------------------------------------------------


def decide(exchange: Exchange, config: Config, state: State, now: float) -> Decision:
    """Answer a request that no scripted action claimed, checking what Azure checks in its order.

    Path prefix (404 ``"404"``), key or token (401), route (404 ``"404"``), JSON body (400),
    deployment (400 without ``model``, 404 ``DeploymentNotFound`` when not hosted), the
    request's fields (400 ``BadRequest``; stored objects it names: 400
    ``previous_response_not_found``, 404 for an unknown id), budget (429 with
    ``retry-after``), then the endpoint's normal answer. Only a request that passes every
    check spends budget or changes the stored objects; ``now`` is the fake's clock reading
    for the budget window.
    """
    route, payload = exchange.route, exchange.payload
    if not exchange.inside_prefix:
        return Decision(NOT_FOUND, state)
    if not authorized(config, exchange.request.headers):
        return Decision(error(401, "401", payloads.ACCESS_DENIED_MESSAGE), state)
    if route is None:
        return Decision(NOT_FOUND, state)
    if route.takes_json and payload is None:
        return Decision(error(400, "BadRequest", "The request body must be a JSON object."), state)
    if route.per_deployment:
        deployment = exchange.request.deployment
        if deployment is None:
            return Decision(error(400, "BadRequest", "The 'model' field is required."), state)
        if config.deployments is not None and deployment not in config.deployments:
            return Decision(error(404, "DeploymentNotFound", payloads.DEPLOYMENT_NOT_FOUND_MESSAGE), state)
    try:
        body, objects = normal_body(exchange, config, state.objects, stream=False)
    except payloads.BadRequest as problem:
        return Decision(error(400, "BadRequest", str(problem)), state)
    except payloads.ObjectError as refused:
        return Decision(Response(refused.status, JsonBody(refused.body)), state)
    if config.budget is None:
        return Decision(Response(200, body), replace(state, objects=objects))
    window, wait = spend(state.window, config.budget, config.window, now)
    if wait is not None:
        return Decision(rate_limited(exchange, wait), replace(state, window=window), over_budget=True)
    headers = headroom_headers(config.budget - window.used)
    return Decision(Response(200, body, headers), replace(state, window=window, objects=objects))


def scripted(action: Action, exchange: Exchange, config: Config, objects: Objects | None = None) -> Step:
    """What a scripted action makes of a request: it skips every check of `decide`.

    A normal body is built from ``objects`` (the fake's, or none) but changes nothing: a
    response created by a scripted answer is not held, so no later turn can continue it.
    `Stall` and `HoldStream` are the exceptions: their request is answered by `decide` later.
    """
    objects = objects if objects is not None else Objects()
    if isinstance(action, Reply):
        return scripted_reply(action, exchange, config, objects)
    if isinstance(action, ResetConnection):
        return Reset()
    if isinstance(action, CutStream):
        return Cut(Response(200, body_or_empty(exchange, config, objects, stream=True)), action.after, action.framing)
    if isinstance(action, Stall):
        return Wait(action.seconds, exchange)
    return Hold(action, exchange)


def scripted_reply(reply: Reply, exchange: Exchange, config: Config, objects: Objects) -> Response:
    """The answer a `Reply` stands for (see its docstring)."""
    status = reply.status
    if reply.json is not None:
        return Response(status, JsonBody(reply.json), reply.headers)
    if 200 <= status < 300 and status not in (204, 205):
        return Response(status, body_or_empty(exchange, config, objects, stream=False), reply.headers)
    if status >= 400:
        body = payloads.status_error_body(status, reply.headers, exchange.operation, exchange.api_version)
        return Response(status, JsonBody(body), reply.headers)
    return Response(status, None, reply.headers)


def authorized(config: Config, headers: Mapping[str, str]) -> bool:
    """Whether the ``api-key`` or ``Authorization: Bearer`` header is accepted (always, with neither configured)."""
    if config.api_keys is None and config.tokens is None:
        return True
    if config.api_keys is not None and headers.get("api-key") in config.api_keys:
        return True
    scheme, _, token = headers.get("authorization", "").partition(" ")
    return config.tokens is not None and scheme.lower() == "bearer" and token.strip() in config.tokens


def spend(window: Window, budget: int, length: float, now: float) -> tuple[Window, float | None]:
    """Spend one request of ``budget`` in fixed windows of ``length`` seconds.

    Returns the new window and, when the budget is exhausted, the seconds until it resets
    (else None). Windows tile time from the first budgeted request; they do not slide.
    """
    start, used = window.start, window.used
    if start is None:
        start, used = now, 0
    elif now >= start + length:
        skipped = math.floor((now - start) / length)
        # Rounding can leave the quotient a hair under the whole windows that passed (even under 1).
        if start + (skipped + 1) * length <= now:
            skipped += 1
        start, used = start + skipped * length, 0
    if used >= budget:
        # min() keeps the wait sane if a test clock moves backwards.
        return Window(start, used), min(length, start + length - now)
    return Window(start, used + 1), None


def headroom_headers(remaining_requests: int) -> dict[str, str]:
    """The ``x-ratelimit-remaining-*`` headers of a budgeted answer."""
    return {"x-ratelimit-remaining-requests": str(remaining_requests)}


def rate_limited(exchange: Exchange, wait: float) -> Response:
    """Azure's 429 for a call rate limit that resets in ``wait`` seconds."""
    # Round to whole microseconds first so float noise (7.0000000001 s) does not add a millisecond.
    wait_ms = max(0, math.ceil(round(wait * 1000, 3)))
    seconds = max(1, math.ceil(wait_ms / 1000))
    message = payloads.rate_limit_message(exchange.operation, exchange.api_version, seconds)
    headers = {"retry-after": str(seconds), "retry-after-ms": str(wait_ms), **headroom_headers(0)}
    return Response(429, JsonBody(payloads.error_body("429", message)), headers)


def normal_body(exchange: Exchange, config: Config, objects: Objects, *, stream: bool) -> tuple[Body, Objects]:
    """The endpoint's normal 200 body and the objects held after it; ``stream`` forces SSE where the endpoint has it.

    Raises `payloads.BadRequest` when the request's fields cannot be answered and
    `payloads.ObjectError` when they name an object ``objects`` does not hold.
    """
    route = exchange.route
    if route is None:
        return JsonBody({}), objects
    payload = exchange.payload or {}
    deployment = exchange.request.deployment or ""
    content = f"{config.name}:{deployment}"
    stream = stream or payload.get("stream") is True
    if route.kind == "chat":
        messages = payload.get("messages")
        if messages is None:
            # Azure validates the body only after the key and the deployment, so a body of {}
            # is a free probe: 404 DeploymentNotFound when the deployment is missing, else this 400.
            raise payloads.BadRequest("Missing required parameter: 'messages'.")
        if not isinstance(messages, list):
            raise payloads.BadRequest("Invalid type for 'messages': expected an array.")
        prompt_tokens = payloads.estimate_tokens(messages)
        if stream:
            options = payload.get("stream_options")
            include_usage = isinstance(options, dict) and options.get("include_usage") is True
            events = payloads.chat_completion_events(
                content, deployment, config.stream_chunks, prompt_tokens, include_usage
            )
            return EventStream(tuple(events), config.chunk_delay), objects
        return JsonBody(payloads.chat_completion(content, deployment, prompt_tokens)), objects
    if route.kind == "responses" and route.op == "create":
        prompt_tokens = payloads.estimate_tokens(payload.get("input", ""))
        response, objects = stored.create_response(objects, payload, content, deployment, prompt_tokens)
        if stream:
            events = payloads.response_events(response, config.stream_chunks)
            return EventStream(tuple(events), config.chunk_delay), objects
        return JsonBody(response), objects
    if route.kind in stored.STORED_KINDS:
        outcome = stored.operate(route, exchange, objects)
        value = outcome.value
        return (RawBody(value) if isinstance(value, bytes) else JsonBody(value)), outcome.objects
    if route.kind == "embeddings":
        return JsonBody(payloads.embeddings(deployment, payload)), objects
    models = sorted(config.deployments) if config.deployments is not None else list(_DEFAULT_MODELS)
    return JsonBody(payloads.models_list(models)), objects


def body_or_empty(exchange: Exchange, config: Config, objects: Objects, *, stream: bool) -> Body:
    """The normal body, or ``{}`` when the request cannot be answered normally (scripted answers skip checks)."""
    try:
        body, _ = normal_body(exchange, config, objects, stream=stream)
    except (payloads.BadRequest, payloads.ObjectError):
        return JsonBody({})
    return body
