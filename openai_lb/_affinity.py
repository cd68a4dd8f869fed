"""Stateful APIs: which requests are about objects that live on one backend, and what an answer says of them.

Responses, conversations, files, uploads, batches, vector stores, containers, fine-tuning jobs,
assistants and threads exist only on the Azure resource that created them. This module reads a
request's path (and, on those routes, its JSON body) for the ids of the objects it names, and an
answer for the id of the object it created. Pure: bytes and parsed JSON in, plain data out; the
core decides where the request goes and the health store remembers who holds what.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import unquote

__all__ = [
    "ROUTES",
    "FirstId",
    "Route",
    "Stateful",
    "body_references",
    "created_id",
    "error_of",
    "is_id",
    "names_objects",
    "not_here",
    "route_of",
    "stateful",
]


@dataclass(frozen=True, slots=True)
class Route:
    """A family of stateful paths: ``/openai[/v1]/{collection}[/{id}[/...]]``.

    ``actions`` are the segments right after the collection that are not ids (``/responses/input_tokens``);
    ``learns`` maps what a 2xx answer creates: ``None`` for a create on the collection itself, an action, or
    the segment after an id, to where the answer names the new object (keys from the top of its JSON).
    """

    collection: tuple[str, ...]
    actions: frozenset[str] = frozenset()
    learns: tuple[tuple[str | None, tuple[str, ...]], ...] = ((None, ("id",)),)


ROUTES: tuple[Route, ...] = (
    Route(("responses",), actions=frozenset({"input_tokens", "compact"})),
    Route(("conversations",)),
    Route(("files",)),
    # An upload, once completed, becomes a file on the same resource.
    Route(("uploads",), learns=((None, ("id",)), ("complete", ("file", "id")))),
    Route(("batches",)),
    Route(("vector_stores",)),
    Route(("containers",)),
    Route(("fine_tuning", "jobs")),
    Route(("assistants",)),
    # POST /threads/runs creates a thread and runs it at once: the answer is the run, naming its thread.
    Route(("threads",), actions=frozenset({"runs"}), learns=((None, ("id",)), ("runs", ("thread_id",)))),
)
"""Every stateful path openai_lb pins; a path not here is balanced like any stateless call."""

_BY_FIRST = {route.collection[0]: route for route in ROUTES}
# The paths _parsed_route may find a route in: /openai/, then v1/, deployments/{name}/ or neither, then a
# collection's first segment, whole. More paths than it finds routes in (it reads the rest), never fewer.
_STATEFUL_PATH = re.compile(
    rb"/openai/(?:v1/|deployments/[^/]*/)?(?:%b)(?:/|\Z)" % b"|".join(re.escape(first.encode()) for first in _BY_FIRST)
)
_MAX_ID = 512
"""Characters; a longer value is not an object id (ids are tens of characters)."""
_MAX_DEPTH = 32
# The body keys that name objects held by one backend; a body naming none is never walked.
_SINGLE = ("previous_response_id", "input_file_id", "file_id", "training_file", "validation_file", "assistant_id")
_LISTS = ("file_ids", "vector_store_ids")
_REFERENCE_KEY = re.compile(
    rb'"(?:previous_response_id|conversation|input_file_id|file_ids?|vector_store_ids|training_file'
    rb'|validation_file|assistant_id|container)"'
)
# Subtrees whose keys are the caller's own (metadata, JSON schemas of tools and of structured output).
_OPAQUE = frozenset({"metadata", "parameters", "schema", "properties"})
# 400s that say a referenced object is not on this resource.
_NOT_FOUND_CODES = frozenset({"previous_response_not_found", "conversation_not_found", "file_not_found"})
_NOT_FOUND_WORDS = re.compile(r"(?i)\bnot found\b|\bno such\b|\bdoes not exist\b")
# A JSON object whose first key is "id", with a plain string value (no escapes to undo).
_LEADING_ID = re.compile(rb'[ \t\n\r]*\{[ \t\n\r]*"id"[ \t\n\r]*:[ \t\n\r]*"([^"\\]{1,512})"')


class Stateful(NamedTuple):
    """What a request on a stateful route means for affinity; built once per request."""

    ids: tuple[str, ...]
    """The objects it names (its path's first, then its body's), each once."""
    learns: tuple[str, ...] | None
    """Where a 2xx answer names the object this request creates; None if it creates none."""
    forgets: str | None
    """The object a 2xx answer to this request deleted."""


def route_of(path: bytes, start: int = 0, end: int | None = None) -> tuple[Route, list[str]] | None:
    """The route of an SDK path (``/openai/...``, no query: ``path[start:end]``) and its segments after the
    collection.

    None for a path no route covers, which is every stateless call: one regular expression tells those
    apart, without copying the path.
    """
    if _STATEFUL_PATH.match(path, start, len(path) if end is None else end) is None:
        return None
    return _parsed_route(path[start:end])


def _parsed_route(path: bytes) -> tuple[Route, list[str]] | None:
    """``route_of``, read segment by segment."""
    if not path.startswith(b"/openai/"):
        return None
    start = 8
    if path.startswith(b"v1/", start):
        start += 3
    elif path.startswith(b"deployments/", start):
        # A client built with azure_deployment= puts every path under its deployment.
        start = path.find(b"/", start + 12) + 1
        if start == 0:
            return None
    slash = path.find(b"/", start)
    route = _BY_FIRST.get(path[start : slash if slash >= 0 else len(path)].decode("latin-1"))
    if route is None:
        return None
    # A trailing slash names nothing more: /files/{id}/ is /files/{id}.
    segments = [unquote(part) for part in path[start:].rstrip(b"/").decode("latin-1").split("/")]
    if segments[: len(route.collection)] != list(route.collection):
        return None
    return route, segments[len(route.collection) :]


def stateful(method: str, route: Route, rest: list[str], body_ids: tuple[str, ...]) -> Stateful | None:
    """The request's affinity: the ids it names and what a 2xx answer to it creates or deletes."""
    learns = dict(route.learns)
    if not rest or not rest[0]:
        # The collection itself: a POST creates; a listing is balanced like a stateless call.
        return Stateful(body_ids, learns[None], None) if method == "POST" else _only(body_ids)
    if rest[0] in route.actions:
        return Stateful(body_ids, learns.get(rest[0]) if method == "POST" else None, None)
    object_id = rest[0]
    if not is_id(object_id):
        return _only(body_ids)
    ids = (object_id, *(other for other in body_ids if other != object_id))
    if len(rest) == 1:
        return Stateful(ids, None, object_id if method == "DELETE" else None)
    return Stateful(ids, learns.get(rest[1]) if method == "POST" else None, None)


def _only(body_ids: tuple[str, ...]) -> Stateful | None:
    return Stateful(body_ids, None, None) if body_ids else None


def names_objects(body: bytes) -> bool:
    """Whether a JSON body may name an object by one of the keys ``body_references`` reads."""
    return _REFERENCE_KEY.search(body) is not None


def body_references(parsed: object) -> tuple[str, ...]:
    """The object ids a parsed JSON body names, in the order met, each once.

    ``previous_response_id``, ``conversation`` (an id or ``{"id": ...}``), ``input_file_id``, ``file_id``,
    ``file_ids``, ``vector_store_ids``, ``training_file``, ``validation_file``, ``assistant_id`` and a
    ``container`` id, at any depth (tool resources, file inputs inside ``input``, message attachments),
    except inside the caller's own structures (``metadata``, JSON schemas).
    """
    found: dict[str, None] = {}
    for key, value in _keyed_values(parsed):
        if key in _SINGLE or key == "container":
            candidates: list[object] = [value]
        elif key in _LISTS:
            candidates = value if isinstance(value, list) else []
        elif key == "conversation":
            candidates = [value.get("id") if isinstance(value, dict) else value]
        else:
            continue
        for candidate in candidates:
            if isinstance(candidate, str) and is_id(candidate):
                found[candidate] = None
    return tuple(found)


def _keyed_values(parsed: object) -> Iterator[tuple[str, object]]:
    """Every (key, value) of every object in ``parsed``, outside opaque subtrees, at most ``_MAX_DEPTH`` deep."""
    stack: list[tuple[object, int]] = [(parsed, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > _MAX_DEPTH:
            continue
        if isinstance(node, dict):
            items = list(node.items())
            yield from items
            # Reversed onto the stack, so nested objects are met in the body's order.
            stack.extend((value, depth + 1) for key, value in reversed(items) if key not in _OPAQUE)
        elif isinstance(node, list):
            stack.extend((value, depth + 1) for value in reversed(node))


def is_id(value: str) -> bool:
    """Whether ``value`` can be an object id: printable, 1 to 512 characters, no slash, no surrounding space."""
    return 0 < len(value) <= _MAX_ID and value.isprintable() and "/" not in value and value.strip() == value


def created_id(learns: tuple[str, ...], body: bytes | None) -> str | None:
    """The id a 2xx JSON answer names at ``learns``; None when it names none."""
    if not body:
        return None
    if learns == ("id",):
        # Azure's answers open with their id: a large answer need not be parsed to learn it.
        leading = _LEADING_ID.match(body)
        if leading is not None:
            found = leading.group(1).decode("utf-8", "replace")
            return found if is_id(found) else None
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
        return None
    return _follow(parsed, learns)


def _follow(parsed: object, path: tuple[str, ...]) -> str | None:
    for key in path:
        if not isinstance(parsed, dict):
            return None
        parsed = parsed.get(key)
    return parsed if isinstance(parsed, str) and is_id(parsed) else None


def error_of(body: bytes | None) -> dict[str, object] | None:
    """The ``error`` object of an Azure-style JSON error answer; None when the body holds none."""
    if not body:
        return None
    try:
        error = json.loads(body).get("error")
    except (ValueError, AttributeError, RecursionError):  # RecursionError: nested deeper than the parser goes
        return None
    return error if isinstance(error, dict) else None


def not_here(status: int, body: bytes | None) -> bool:
    """Whether an answer says the object asked for is not on this backend: a 404 (the caller has
    ruled out DeploymentNotFound), or a 400 whose error says a referenced object was not found."""
    if status == 404:
        return True
    if status != 400:
        return False
    error = error_of(body)
    if error is None:
        return False
    message = error.get("message")
    code = error.get("code")
    return (isinstance(code, str) and code in _NOT_FOUND_CODES) or (
        isinstance(message, str) and _NOT_FOUND_WORDS.search(message) is not None
    )


class FirstId:
    """Finds, in the first events of an event stream, the id of the object the stream creates.

    Fed the bytes as they pass through (nothing is held back from the caller); gives up after a few
    events or a few kilobytes, so a stream that never names one costs nothing more. A Responses
    stream names it in ``response.created`` (``{"response": {"id": ...}}``); the Assistants ones in
    the objects their events carry.
    """

    __slots__ = ("_buffer", "_events", "_learns", "done")

    _MAX_EVENTS = 8
    _MAX_BYTES = 65_536

    def __init__(self, learns: tuple[str, ...]) -> None:
        self._learns = learns
        self._buffer = b""
        self._events = 0
        self.done = False

    def feed(self, chunk: bytes) -> str | None:
        """The id, once found in what has been fed so far; None until then (and after)."""
        if self.done:
            return None
        buffer = self._buffer + chunk
        while True:
            end, skip = _event_end(buffer)
            if end < 0:
                break
            event, buffer = buffer[:end], buffer[end + skip :]
            self._events += 1
            found = self._id_in(event)
            if found is not None or self._events >= self._MAX_EVENTS:
                self.done = True
                self._buffer = b""
                return found
        if len(buffer) > self._MAX_BYTES:
            self.done = True
            buffer = b""
        self._buffer = buffer
        return None

    def _id_in(self, event: bytes) -> str | None:
        data = b"\n".join(
            line[5:].removeprefix(b" ") for line in event.replace(b"\r\n", b"\n").split(b"\n") if line[:5] == b"data:"
        )
        if not data:
            return None
        try:
            parsed = json.loads(data)
        except (ValueError, RecursionError):
            return None
        if isinstance(parsed, dict) and isinstance(parsed.get("response"), dict):
            parsed = parsed["response"]
        return _follow(parsed, self._learns)


def _event_end(buffer: bytes) -> tuple[int, int]:
    """Where the first complete event of ``buffer`` ends, and the length of the blank line after it."""
    ends = [(at, len(mark)) for mark in (b"\n\n", b"\r\n\r\n") if (at := buffer.find(mark)) >= 0]
    return min(ends) if ends else (-1, 0)
