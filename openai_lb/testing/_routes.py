"""Routes of the fake Azure OpenAI server, and a raw request parsed against them (pure, no I/O).

`parse` turns what the handler read off the socket (`Incoming`) into an `Exchange`: the
`RecordedRequest` tests see, the matched `Route` and the JSON body. `_rules.py` then decides
the answer from it. A new endpoint starts here as a row of the route table: a `Kind` (what
the path is about) and an `Op` (what it does to it). The stored objects (responses, files,
batches, vector stores) are answered on both the Azure paths (``/openai/...`` with
``?api-version=``) and the v1 paths (``/openai/v1/...``), as every SDK major sends them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Literal, cast
from urllib.parse import parse_qsl, unquote, urlsplit

from openai_lb.testing._actions import RecordedRequest

Kind = Literal["chat", "embeddings", "responses", "files", "models", "batches", "vector_stores"]

Op = Literal["create", "list", "retrieve", "delete", "input_items", "content", "cancel"]
"""``create`` and ``list`` act on a collection; the others on one object named in the path."""

# Kinds whose create request is a JSON object (file uploads are multipart).
_JSON_KINDS: frozenset[Kind] = frozenset({"chat", "embeddings", "responses", "batches", "vector_stores"})

# Operation names Azure puts in its 429 messages.
_OPERATIONS: dict[tuple[Kind, Op], str] = {
    ("chat", "create"): "ChatCompletions_Create",
    ("embeddings", "create"): "Embeddings_Create",
    ("responses", "create"): "Responses_Create",
    ("responses", "retrieve"): "Responses_Get",
    ("responses", "delete"): "Responses_Delete",
    ("responses", "input_items"): "Responses_ListInputItems",
    ("files", "create"): "Files_Create",
    ("files", "retrieve"): "Files_Get",
    ("files", "content"): "Files_GetContent",
    ("files", "delete"): "Files_Delete",
    ("batches", "create"): "Batches_Create",
    ("batches", "retrieve"): "Batches_Get",
    ("batches", "cancel"): "Batches_Cancel",
    ("vector_stores", "create"): "VectorStores_Create",
    ("vector_stores", "retrieve"): "VectorStores_Get",
    ("vector_stores", "delete"): "VectorStores_Delete",
    ("models", "list"): "Models_List",
}

_DEPLOYMENT_ROUTE = re.compile(r"/openai/deployments/(?P<deployment>[^/]+)/(?P<rest>chat/completions|embeddings)")

# Routes without a deployment in the path: (method, path) -> (kind, op, deployment comes from body "model").
_FLAT_ROUTES: dict[tuple[str, str], tuple[Kind, Op, bool]] = {
    ("POST", "/openai/v1/chat/completions"): ("chat", "create", True),
    ("POST", "/openai/v1/embeddings"): ("embeddings", "create", True),
    ("POST", "/openai/responses"): ("responses", "create", True),
    ("POST", "/openai/v1/responses"): ("responses", "create", True),
    ("POST", "/openai/files"): ("files", "create", False),
    ("POST", "/openai/v1/files"): ("files", "create", False),
    ("POST", "/openai/batches"): ("batches", "create", False),
    ("POST", "/openai/v1/batches"): ("batches", "create", False),
    ("POST", "/openai/vector_stores"): ("vector_stores", "create", False),
    ("POST", "/openai/v1/vector_stores"): ("vector_stores", "create", False),
    ("GET", "/openai/models"): ("models", "list", False),
    ("GET", "/openai/v1/models"): ("models", "list", False),
}

_OBJECT_ROUTE = re.compile(
    r"/openai(?:/v1)?/(?P<kind>responses|files|batches|vector_stores)/(?P<id>[^/]+)(?:/(?P<sub>input_items|content|cancel))?"
)

# Routes on one stored object: (method, kind, what follows the id) -> op.
_OBJECT_OPS: dict[tuple[str, str, str | None], Op] = {
    ("GET", "responses", None): "retrieve",
    ("DELETE", "responses", None): "delete",
    ("GET", "responses", "input_items"): "input_items",
    ("GET", "files", None): "retrieve",
    ("GET", "files", "content"): "content",
    ("DELETE", "files", None): "delete",
    ("GET", "batches", None): "retrieve",
    ("POST", "batches", "cancel"): "cancel",
    ("GET", "vector_stores", None): "retrieve",
    ("DELETE", "vector_stores", None): "delete",
}


@dataclass(frozen=True, slots=True)
class Route:
    """What an inner path (the path prefix stripped) asks for."""

    kind: Kind
    path_deployment: str | None
    """The deployment named in the path, on ``/openai/deployments/{name}/...`` routes."""
    model_in_body: bool
    """True when the deployment is the JSON body's ``model`` (v1 and responses routes)."""
    op: Op = "create"
    object_id: str | None = None
    """The stored object named in the path (``resp_...``, ``file-...``, ...), on object routes."""

    @property
    def per_deployment(self) -> bool:
        return self.path_deployment is not None or self.model_in_body

    @property
    def takes_json(self) -> bool:
        """Whether the request body must be a JSON object."""
        return self.op == "create" and self.kind in _JSON_KINDS


def match_route(method: str, path: str) -> Route | None:
    """The route for ``method`` on an inner path, or None when the fake has no such endpoint."""
    flat = _FLAT_ROUTES.get((method, path))
    if flat is not None:
        return Route(kind=flat[0], path_deployment=None, model_in_body=flat[2], op=flat[1])
    on_object = _OBJECT_ROUTE.fullmatch(path)
    if on_object is not None:
        op = _OBJECT_OPS.get((method, on_object["kind"], on_object["sub"]))
        if op is None:
            return None
        kind = cast(Kind, on_object["kind"])
        return Route(kind, path_deployment=None, model_in_body=False, op=op, object_id=unquote(on_object["id"]))
    match = _DEPLOYMENT_ROUTE.fullmatch(path)
    if method != "POST" or match is None:
        return None
    return Route(
        kind="chat" if match["rest"] == "chat/completions" else "embeddings",
        path_deployment=unquote(match["deployment"]),
        model_in_body=False,
    )


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
        if self.route is None:
            return _OPERATIONS["chat", "create"]
        return _OPERATIONS[self.route.kind, self.route.op]

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
    if route is not None and route.takes_json:
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
