"""The objects a fake keeps between requests, and the pure operations on them (no I/O).

Responses (with their ``previous_response_id`` chains), files, batches and vector stores
live in an `Objects` value, a field of the rules' `State`: each operation takes the current
`Objects` and returns the answer and the next `Objects`, which the fake stores under its
lock only once the request has passed every check (budget included), as it does the budget
window. Nothing is shared between fakes, so a chain started on one fake is unknown to
another, as it is between two Azure resources.

Bounded: at most `MAX_PER_KIND` objects of each kind; a new one beyond that forgets the
oldest of its kind, as if it had expired. `FakeAzureOpenAI.reset` forgets them all.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import TypeVar

from openai_lb.testing import _payloads as payloads
from openai_lb.testing._payloads import JsonObject
from openai_lb.testing._routes import Exchange, Kind, Op, Route

MAX_PER_KIND = 10_000
"""How many objects of each kind a fake keeps before forgetting the oldest."""

STORED_KINDS: frozenset[Kind] = frozenset({"responses", "files", "batches", "vector_stores"})
"""Route kinds answered from the stored objects (a response's create also needs the fake's name)."""


@dataclass(frozen=True, slots=True)
class StoredResponse:
    body: JsonObject
    """The completed ``response`` object, as answered."""
    items: tuple[JsonObject, ...]
    """Its input items, oldest first."""
    turn: int
    """1 for a response without ``previous_response_id``, else its predecessor's turn plus one."""


@dataclass(frozen=True, slots=True)
class StoredFile:
    body: JsonObject
    """The ``file`` object, as answered to the upload."""
    data: bytes


@dataclass(frozen=True, slots=True)
class ObjectIds:
    """Which objects a fake holds, by kind: a read-only snapshot for tests.

    ``"resp_x" in ids`` asks whether any kind holds that id.
    """

    responses: frozenset[str] = frozenset()
    files: frozenset[str] = frozenset()
    batches: frozenset[str] = frozenset()
    vector_stores: frozenset[str] = frozenset()

    def __contains__(self, object_id: object) -> bool:
        return any(object_id in ids for ids in (self.responses, self.files, self.batches, self.vector_stores))


@dataclass(frozen=True, slots=True)
class Objects:
    """Every object a fake holds, by id; never changed in place (operations return a new one)."""

    responses: Mapping[str, StoredResponse] = field(default_factory=dict)
    files: Mapping[str, StoredFile] = field(default_factory=dict)
    batches: Mapping[str, JsonObject] = field(default_factory=dict)
    vector_stores: Mapping[str, JsonObject] = field(default_factory=dict)

    def ids(self) -> ObjectIds:
        return ObjectIds(
            responses=frozenset(self.responses),
            files=frozenset(self.files),
            batches=frozenset(self.batches),
            vector_stores=frozenset(self.vector_stores),
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """An operation's answer (a JSON object, or a file's bytes) and the objects held after it."""

    value: JsonObject | bytes
    objects: Objects


Value = TypeVar("Value")


def _put(mapping: Mapping[str, Value], key: str, value: Value) -> dict[str, Value]:
    updated = dict(mapping)
    updated[key] = value
    # Dicts keep insertion order, so the first key is the oldest.
    while len(updated) > MAX_PER_KIND:
        del updated[next(iter(updated))]
    return updated


def _without(mapping: Mapping[str, Value], key: str) -> dict[str, Value]:
    return {other: value for other, value in mapping.items() if other != key}


def create_response(
    objects: Objects, payload: JsonObject, content: str, deployment: str, prompt_tokens: int
) -> tuple[JsonObject, Objects]:
    """Store a new response answering ``payload`` with ``content``, continuing its ``previous_response_id``.

    Raises `payloads.ObjectError` (400 ``previous_response_not_found``) when the previous
    response is not held. The caller's ``metadata`` is kept, with ``"turn"`` set to the
    response's place in its chain (``"1"``, ``"2"``, ...).
    """
    previous_id = payload.get("previous_response_id")
    turn = 1
    if previous_id is not None:
        previous = objects.responses.get(previous_id) if isinstance(previous_id, str) else None
        if previous is None:
            raise payloads.previous_response_not_found(str(previous_id))
        turn = previous.turn + 1
    given = payload.get("metadata")
    metadata = {str(key): str(value) for key, value in given.items()} if isinstance(given, dict) else {}
    metadata["turn"] = str(turn)
    body = payloads.response_object(
        content, deployment, prompt_tokens, previous_response_id=previous_id, metadata=metadata
    )
    stored = StoredResponse(body, tuple(payloads.input_items(payload.get("input", ""))), turn)
    return body, replace(objects, responses=_put(objects.responses, body["id"], stored))


def operate(route: Route, exchange: Exchange, objects: Objects) -> Outcome:
    """Answer ``exchange`` on its ``route``, of a `STORED_KINDS` kind, other than a response's create.

    Raises `payloads.ObjectError` for an unknown id and `payloads.BadRequest` for a body
    that cannot be answered.
    """
    payload = exchange.payload or {}
    object_id = route.object_id or ""
    if route.kind == "files":
        return _files(route.op, object_id, exchange, objects)
    if route.kind == "batches":
        return _batches(route.op, object_id, payload, objects)
    if route.kind == "vector_stores":
        return _vector_stores(route.op, object_id, payload, objects)
    return _responses(route.op, object_id, exchange.request.query.get("order", "desc"), objects)


def _responses(op: Op, response_id: str, order: str, objects: Objects) -> Outcome:
    stored = objects.responses.get(response_id)
    if stored is None:
        raise payloads.response_not_found(response_id)
    if op == "delete":
        remaining = _without(objects.responses, response_id)
        return Outcome(payloads.deleted(response_id, "response"), replace(objects, responses=remaining))
    if op == "input_items":
        # Like the real API, newest first unless ?order=asc.
        items = list(stored.items) if order == "asc" else list(reversed(stored.items))
        return Outcome(payloads.item_list(items), objects)
    return Outcome(stored.body, objects)


def _files(op: Op, file_id: str, exchange: Exchange, objects: Objects) -> Outcome:
    if op == "create":
        body, data = payloads.file_upload(exchange.request.headers.get("content-type", ""), exchange.request.body)
        return Outcome(body, replace(objects, files=_put(objects.files, body["id"], StoredFile(body, data))))
    stored = objects.files.get(file_id)
    if stored is None:
        raise payloads.file_not_found(file_id)
    if op == "delete":
        return Outcome(payloads.deleted(file_id, "file"), replace(objects, files=_without(objects.files, file_id)))
    if op == "content":
        return Outcome(stored.data, objects)
    return Outcome(stored.body, objects)


def _batches(op: Op, batch_id: str, payload: JsonObject, objects: Objects) -> Outcome:
    if op == "create":
        input_file_id = payload.get("input_file_id")
        if not isinstance(input_file_id, str) or not input_file_id:
            raise payloads.BadRequest("Missing required parameter: 'input_file_id'.")
        if input_file_id not in objects.files:
            raise payloads.file_not_found(input_file_id)
        batch = payloads.batch_object(payload)
        return Outcome(batch, replace(objects, batches=_put(objects.batches, batch["id"], batch)))
    held = objects.batches.get(batch_id)
    if held is None:
        raise payloads.batch_not_found(batch_id)
    if op == "cancel" and held["status"] not in ("cancelling", "cancelled"):
        answered, kept = payloads.cancelled_batch(held)
        return Outcome(answered, replace(objects, batches=_put(objects.batches, batch_id, kept)))
    return Outcome(held, objects)


def _vector_stores(op: Op, store_id: str, payload: JsonObject, objects: Objects) -> Outcome:
    if op == "create":
        store = payloads.vector_store_object(payload)
        return Outcome(store, replace(objects, vector_stores=_put(objects.vector_stores, store["id"], store)))
    held = objects.vector_stores.get(store_id)
    if held is None:
        raise payloads.vector_store_not_found(store_id)
    if op == "delete":
        answer = payloads.deleted(store_id, "vector_store.deleted")
        return Outcome(answer, replace(objects, vector_stores=_without(objects.vector_stores, store_id)))
    return Outcome(held, objects)
