"""Azure's rules as the fake plays them: pure functions from a parsed request to an answer.

`decide` applies the checks of a normal request in Azure's order (path prefix, key or token,
route, JSON body, deployment, the request's fields, context window, budget, the
deployment's rate limits) and `scripted` turns a scripted action into what the handler does
instead. Both take a snapshot of the fake's settings (`Config`) and, for `decide`, of what it
remembers between requests (`State`), and return plain values (`Response`, `Cut`, `Reset`,
`Wait`, `Hold`, `Delayed`): no sockets, threads, locks or clocks here.

Objects that live across requests (stored responses and their ``previous_response_id``
chains, files, batches, vector stores) are `State.objects`, operated on by the pure
functions of `_objects.py`: `decide` returns the new `State` in its `Decision`, which the
fake stores under its lock, like the budget `Window` and each deployment's `Meter`
(`_meters.py`). Only a request that passes every check changes them; scripted answers read
them but never change them.

Headroom headers (``x-ratelimit-*`` and ``azure-openai-deployment-utilization``) are
written by `headroom_headers`; Azure's own spillover from a provisioned deployment to a
standard one is `spill`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal, TypeAlias

from openai_lb.testing import _meters as meters
from openai_lb.testing import _objects as stored
from openai_lb.testing import _payloads as payloads
from openai_lb.testing._actions import Action, CutStream, HoldStream, Reply, ResetConnection, Stall
from openai_lb.testing._meters import Cost, Limits, Meter, Window, spend
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
    tokens_per_minute: int | Mapping[str, int] | None = None
    """Every metered deployment's TPM (an int) or each named deployment's; None meters nothing."""
    requests_per_minute: int | Mapping[str, int] | None = None
    provisioned: bool | frozenset[str] = False
    """True: every metered deployment is provisioned; else the names of those that are."""
    default_max_tokens: int = 1024
    context_limits: Mapping[str, int] = field(default_factory=dict)
    spillover: Mapping[str, str] = field(default_factory=dict)
    """Provisioned deployment -> the standard deployment its refused requests spill to."""
    latency: float = 0.0


@dataclass(frozen=True, slots=True)
class State:
    """What the rules remember between requests; each `Decision` carries the next one."""

    window: Window = field(default_factory=Window)
    objects: Objects = field(default_factory=Objects)
    meters: Mapping[str, Meter] = field(default_factory=dict)
    """Each metered deployment's meter, from its first request on."""


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


Play: TypeAlias = Response | Cut | Reset | Wait | Hold
"""What the rules or a scripted action make of a request."""


@dataclass(frozen=True, slots=True)
class Delayed:
    """Wait ``seconds`` (less if the server stops), then do ``step``: the simulated network's round trip."""

    seconds: float
    step: Play


Step: TypeAlias = Play | Delayed
"""What the handler does with a request it has read."""


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of `decide`: the answer and the state to remember."""

    response: Response
    state: State
    over_budget: bool = False
    """True when the budget turned the request away (the fake counts it in ``rejected``)."""
    throttled: bool = False
    """True when a deployment's rate limit answered 429 (the fake counts it in ``throttled``)."""
    too_long: bool = False
    """True for a 400 ``context_length_exceeded``."""
    spilled: bool = False
    """True when a spillover deployment served the request."""
    charged: tuple[str, int] | None = None
    """The deployment that served the request and the tokens it was charged."""


def error(status: int, code: str, message: str) -> Response:
    """An Azure-style JSON error answer."""
    return Response(status, JsonBody(payloads.error_body(code, message)))


NOT_FOUND = error(404, "404", payloads.NOT_FOUND_MESSAGE)
DEPLOYMENT_NOT_FOUND = error(404, "DeploymentNotFound", payloads.DEPLOYMENT_NOT_FOUND_MESSAGE)


# -- the rules ---------------------------------------------------------------------------


def decide(exchange: Exchange, config: Config, state: State, now: float) -> Decision:
    """Answer a request that no scripted action claimed, checking what Azure checks in its order.

    Path prefix (404 ``"404"``), key or token (401), route (404 ``"404"``), JSON body (400),
    deployment (400 without ``model``, 404 ``DeploymentNotFound`` when not hosted), the
    request's fields (400 ``BadRequest``; stored objects it names: 400
    ``previous_response_not_found``, 404 for an unknown id), then `serve`: context window,
    budget and the deployment's rate limits; a provisioned deployment's refusal may `spill`.
    ``now`` is the fake's clock reading for the budget window and the meters.
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
        if not hosted(config, deployment):
            return Decision(DEPLOYMENT_NOT_FOUND, state)
    decision = serve(exchange, config, state, now)
    target = spill_target(exchange, config)
    if target is not None and (decision.throttled or decision.too_long):
        return spill(decision, exchange, target, config, now)
    return decision


def serve(exchange: Exchange, config: Config, state: State, now: float) -> Decision:
    """Answer a request that passed the checks up to its deployment: its fields, then the limits.

    A prompt longer than the deployment's context limit is a 400 ``context_length_exceeded``;
    the budget, then the deployment's meter, may answer 429. Only a request that passes
    every check spends budget, is charged, or changes the stored objects, though every
    request a deployment with a request limit receives counts against it.
    """
    try:
        body, objects = normal_body(exchange, config, state.objects, stream=False)
    except payloads.BadRequest as problem:
        return Decision(error(400, "BadRequest", str(problem)), state)
    except payloads.ObjectError as refused:
        return Decision(Response(refused.status, JsonBody(refused.body)), state)
    deployment, route = exchange.request.deployment, exchange.route
    if route is None or deployment is None:
        return budgeted(exchange, config, state, now, body=body, objects=objects)
    cost = meters.estimate(route.kind, exchange.payload or {}, config.default_max_tokens)
    limit = config.context_limits.get(deployment)
    if limit is not None and (cost.prompt > limit or (cost.named and cost.total > limit)):
        return Decision(too_long(limit, cost), state, too_long=True)
    decision = budgeted(exchange, config, state, now, body=body, objects=objects)
    if decision.over_budget:
        return decision
    charged = (deployment, cost.total)
    limits = limits_for(config, deployment)
    if limits is None:
        return replace(decision, charged=charged)
    verdict = meters.admit(state.meters.get(deployment, Meter()), limits, cost.total, now)
    metered = {**state.meters, deployment: verdict.meter}
    headers = headroom_headers(deployment, limits, verdict.meter, now)
    if verdict.wait is not None:
        # The budget's window is left as it was: a request the deployment refused spends none of it.
        limited = "call" if verdict.refused_by == "requests" else "token"
        response = rate_limited(exchange, verdict.wait, headers, limit=limited)
        return Decision(response, replace(state, meters=metered), throttled=True)
    response = replace(decision.response, headers={**decision.response.headers, **headers})
    return Decision(response, replace(decision.state, meters=metered), charged=charged)


def budgeted(exchange: Exchange, config: Config, state: State, now: float, *, body: Body, objects: Objects) -> Decision:
    """The normal answer ``body`` if the resource-wide budget lets the request in, else its 429."""
    if config.budget is None:
        return Decision(Response(200, body), replace(state, objects=objects))
    window, wait = spend(state.window, config.budget, config.window, now)
    # spend() always leaves the window opened: its start is known here.
    left = (window.start if window.start is not None else now) + config.window - now
    if wait is not None:
        return Decision(
            rate_limited(exchange, wait, budget_headers(0, left)), replace(state, window=window), over_budget=True
        )
    headers = budget_headers(config.budget - window.used, left)
    return Decision(Response(200, body, headers), replace(state, window=window, objects=objects))


def hosted(config: Config, deployment: str) -> bool:
    return config.deployments is None or deployment in config.deployments


def limits_for(config: Config, deployment: str) -> Limits | None:
    """The deployment's rate limits, or None when it has no token rate."""
    tokens = _per_deployment(config.tokens_per_minute, deployment)
    if tokens is None:
        return None
    provisioned = config.provisioned
    is_provisioned = provisioned if isinstance(provisioned, bool) else deployment in provisioned
    requests = None if is_provisioned else _per_deployment(config.requests_per_minute, deployment)
    return Limits(tokens, requests, is_provisioned)


def _per_deployment(value: int | Mapping[str, int] | None, deployment: str) -> int | None:
    if value is None or isinstance(value, int):
        return value
    return value.get(deployment)


def too_long(limit: int, cost: Cost) -> Response:
    """The 400 for a request over the deployment's context window."""
    completion = cost.completion if cost.prompt <= limit else None
    return Response(400, JsonBody(payloads.context_length_exceeded(limit, cost.prompt, completion)))


# -- Azure's spillover -------------------------------------------------------------------
#
# https://learn.microsoft.com/azure/foundry/openai/how-to/spillover-traffic-management: a
# provisioned deployment spills to a standard deployment of the same resource, named by its
# ``spilloverDeploymentName`` property (which wins) or the request's
# ``x-ms-spillover-deployment`` header, when it answers 429 (PTUs fully used) or 400 (a
# context longer than it accepts); also on 500 and 503, which the fake's rules never give.
# A spilled answer names its server in ``x-ms-deployment-name`` and the provisioned one in
# ``x-ms-spillover-from-deployment``; when the spill fails, the provisioned deployment's
# answer goes back with ``x-ms-spillover-error`` holding the spill's status. (One sentence
# of that page calls the header ``x-ms-spillover-from-<deployment-name>``; its list of
# headers, followed here, names ``x-ms-spillover-from-deployment``.)

SPILLOVER_REQUEST_HEADER = "x-ms-spillover-deployment"


def spill_target(exchange: Exchange, config: Config) -> str | None:
    """Where a provisioned deployment's refused request spills to, or None."""
    deployment = exchange.request.deployment
    if deployment is None:
        return None
    limits = limits_for(config, deployment)
    if limits is None or not limits.provisioned:
        return None
    return config.spillover.get(deployment) or exchange.request.headers.get(SPILLOVER_REQUEST_HEADER) or None


def spill(refused: Decision, exchange: Exchange, target: str, config: Config, now: float) -> Decision:
    """Serve ``exchange``, which its provisioned deployment refused, by ``target`` in the same resource."""
    source = exchange.request.deployment or ""
    if not hosted(config, target):
        failed = {**refused.response.headers, "x-ms-spillover-error": "404"}
        return replace(refused, response=replace(refused.response, headers=failed))
    moved = replace(exchange, request=replace(exchange.request, deployment=target))
    second = serve(moved, config, refused.state, now)
    if second.response.status != 200:
        failed = {**refused.response.headers, "x-ms-spillover-error": str(second.response.status)}
        return replace(refused, response=replace(refused.response, headers=failed), state=second.state)
    headers = {**second.response.headers, "x-ms-deployment-name": target, "x-ms-spillover-from-deployment": source}
    return replace(second, response=replace(second.response, headers=headers), spilled=True)


def scripted(action: Action, exchange: Exchange, config: Config, objects: Objects | None = None) -> Play:
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


def budget_headers(remaining_requests: int, reset: float) -> dict[str, str]:
    """The headers of an answer under the resource-wide budget: the requests its window has left, and the
    seconds until that window ends (``reset``), without which a client would take a reading of 0 to hold
    past the refill.

    Azure sends ``x-ratelimit-reset-*`` as whole seconds; a budget's window is often a second or two long,
    so the fake keeps the milliseconds (rounded up: never before the refill), in the same plain-number
    format, which ``openai_lb._headers.parse_reset`` reads.
    """
    milliseconds = max(1, math.ceil(round(reset * 1000, 3)))
    return {
        "x-ratelimit-remaining-requests": str(remaining_requests),
        "x-ratelimit-reset-requests": str(milliseconds / 1000),
    }


def headroom_headers(deployment: str, limits: Limits, meter: Meter, now: float) -> dict[str, str]:
    """The headers Azure puts on a metered deployment's answers, 429s included.

    Standard: ``x-ratelimit-limit-tokens``, ``-remaining-tokens``, ``-reset-tokens`` (whole
    seconds until the bucket is full again) and, with a request limit, the same three for
    requests (the requests left in the current check, whose end is the reset), as listed in
    https://learn.microsoft.com/azure/foundry/openai/how-to/quota#rate-limit-response-headers.
    Provisioned: ``azure-openai-deployment-utilization`` (``"87.5%"``), which no Azure page
    documents: Azure's benchmark tool reads it as a number followed by ``%``
    (https://github.com/Azure/azure-openai-benchmark, ``benchmark/oairequester.py``) and a
    Microsoft answer calls it unreliable
    (https://learn.microsoft.com/answers/questions/1838627). Both: ``x-ms-deployment-name``.
    """
    reading = meters.headroom(meter, limits, now)
    if limits.provisioned:
        return {
            "azure-openai-deployment-utilization": f"{reading.utilization:.1f}%",
            "x-ms-deployment-name": deployment,
        }
    headers = {
        "x-ratelimit-limit-tokens": str(limits.tokens_per_minute),
        "x-ratelimit-remaining-tokens": str(reading.tokens_left),
        "x-ratelimit-reset-tokens": str(math.ceil(reading.tokens_reset)),
    }
    if limits.requests_per_minute is not None and reading.requests_left is not None:
        headers["x-ratelimit-limit-requests"] = str(limits.requests_per_minute)
        headers["x-ratelimit-remaining-requests"] = str(reading.requests_left)
        headers["x-ratelimit-reset-requests"] = str(math.ceil(reading.requests_reset or 0.0))
    headers["x-ms-deployment-name"] = deployment
    return headers


def rate_limited(exchange: Exchange, wait: float, headers: Mapping[str, str], *, limit: str = "call") -> Response:
    """Azure's 429 for a ``limit`` ("call" or "token") rate limit that lets the request in after ``wait`` seconds."""
    # Round to whole microseconds first so float noise (7.0000000001 s) does not add a millisecond.
    wait_ms = max(0, math.ceil(round(wait * 1000, 3)))
    seconds = max(1, math.ceil(wait_ms / 1000))
    message = payloads.rate_limit_message(exchange.operation, exchange.api_version, seconds, limit)
    retry = {"retry-after": str(seconds), "retry-after-ms": str(wait_ms)}
    return Response(429, JsonBody(payloads.error_body("429", message)), {**retry, **headers})


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
