"""Routes of the fake Azure OpenAI server, and a raw request parsed against them (pure, no I/O).

`parse` turns what the handler read off the socket (`Incoming`) into an `Exchange`: the
`RecordedRequest` tests see, the matched `Route` and the JSON body. `_rules.py` then decides
the answer from it. A new endpoint (the stored responses, files, batches and vector stores
that keep state between requests) starts here as a row of the route table and a `Kind`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote, urlsplit

from openai_lb.testing._actions import RecordedRequest

Kind = Literal["chat", "embeddings", "responses", "files", "models"]

# Kinds whose request body must be a JSON object.
JSON_KINDS: frozenset[Kind] = frozenset({"chat", "embeddings", "responses"})

# Operation names Azure puts in its 429 messages.
_OPERATIONS: dict[Kind | None, str] = {
    "chat": "ChatCompletions_Create",
    "embeddings": "Embeddings_Create",
    "responses": "Responses_Create",
    "files": "Files_Create",
    "models": "Models_List",
    None: "ChatCompletions_Create",
}

_DEPLOYMENT_ROUTE = re.compile(r"/openai/deployments/(?P<deployment>[^/]+)/(?P<rest>chat/completions|embeddings)")

# Routes without a deployment in the path: (method, path) -> (kind, deployment comes from body "model").
_FLAT_ROUTES: dict[tuple[str, str], tuple[Kind, bool]] = {
    ("POST", "/openai/v1/chat/completions"): ("chat", True),
    ("POST", "/openai/v1/embeddings"): ("embeddings", True),
    ("POST", "/openai/responses"): ("responses", True),
    ("POST", "/openai/v1/responses"): ("responses", True),
    ("POST", "/openai/files"): ("files", False),
    ("POST", "/openai/v1/files"): ("files", False),
    ("GET", "/openai/models"): ("models", False),
    ("GET", "/openai/v1/models"): ("models", False),
}


@dataclass(frozen=True, slots=True)
class Route:
    """What an inner path (the path prefix stripped) asks for."""

    kind: Kind
    path_deployment: str | None
    """The deployment named in the path, on ``/openai/deployments/{name}/...`` routes."""
    model_in_body: bool
    """True when the deployment is the JSON body's ``model`` (v1 and responses routes)."""

    @property
    def per_deployment(self) -> bool:
        return self.path_deployment is not None or self.model_in_body


def match_route(method: str, path: str) -> Route | None:
    """The route for ``method`` on an inner path, or None when the fake has no such endpoint."""
    flat = _FLAT_ROUTES.get((method, path))
    if flat is not None:
        return Route(kind=flat[0], path_deployment=None, model_in_body=flat[1])
    match = _DEPLOYMENT_ROUTE.fullmatch(path)
    if method != "POST" or match is None:
        return None
    kind: Kind = "chat" if match["rest"] == "chat/completions" else "embeddings"
    return Route(kind=kind, path_deployment=unquote(match["deployment"]), model_in_body=False)


def inner_path(path_prefix: str, path: str) -> str | None:
    """Strip ``path_prefix`` from ``path``; None when the path does not start with it at a ``/``."""
    if not path_prefix:
        return path
    if path == path_prefix or path.startswith(path_prefix + "/"):
        return path[len(path_prefix) :]
    return None


def normalize_prefix(prefix: str) -> str:
    """``"team-a/"`` and ``"/team-a"`` both become ``"/team-a"``; ``"/"`` becomes ``""``."""
    prefix = prefix.strip().rstrip("/")
    if prefix and not prefix.startswith("/"):
        prefix = "/" + prefix
    return prefix


@dataclass(frozen=True, slots=True)
class Incoming:
    """A request as read off the socket, before any interpretation."""

    method: str
    target: str
    """The request target of the request line: path and query string."""
    headers: tuple[tuple[str, str], ...]
    """As sent: names in their own case, repeated headers repeated."""
    body: bytes


@dataclass(frozen=True, slots=True)
class Exchange:
    """A request parsed against the routes of a fake with a given path prefix."""

    request: RecordedRequest
    inside_prefix: bool
    """False when the path does not start with the fake's path prefix."""
    route: Route | None
    """None outside the prefix or when no endpoint matches."""
    payload: dict[str, Any] | None
    """The JSON body when the route takes JSON and the body is a JSON object, else None."""

    @property
    def operation(self) -> str:
        """The operation name Azure's 429 messages use for this route."""
        return _OPERATIONS[self.route.kind if self.route else None]

    @property
    def api_version(self) -> str:
        return self.request.query.get("api-version", "v1")


def parse(incoming: Incoming, path_prefix: str) -> Exchange:
    """Parse ``incoming`` for a fake whose path prefix is ``path_prefix``."""
    split = urlsplit(incoming.target)
    headers: dict[str, str] = {}
    for key, value in incoming.headers:
        lowered = key.lower()
        headers[lowered] = f"{headers[lowered]}, {value}" if lowered in headers else value
    inner = inner_path(path_prefix, split.path)
    route = match_route(incoming.method, inner) if inner is not None else None
    payload: dict[str, Any] | None = None
    if route is not None and route.kind in JSON_KINDS:
        try:
            parsed = json.loads(incoming.body)
        except ValueError:
            parsed = None
        payload = parsed if isinstance(parsed, dict) else None
    deployment = route.path_deployment if route else None
    if route is not None and route.model_in_body and payload is not None:
        model = payload.get("model")
        deployment = model if isinstance(model, str) else None
    request = RecordedRequest(
        method=incoming.method,
        path=split.path,
        query=dict(parse_qsl(split.query, keep_blank_values=True)),
        headers=headers,
        body=incoming.body,
        deployment=deployment,
    )
    return Exchange(request=request, inside_prefix=inner is not None, route=route, payload=payload)
