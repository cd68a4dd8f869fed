"""Answer bodies of the fake Azure OpenAI server, shaped like the real service's.

Two error envelopes exist, as on the real service: Azure's own checks (key, route,
deployment, rate limits) answer ``{"error": {"code", "message"}}`` (`error_body`), while
the stored-object APIs (responses, files, batches, vector stores), which Azure serves with
OpenAI's implementation, answer ``{"error": {"message", "type", "param", "code"}}``
(`object_error`). Where each of those came from is said next to it.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.message import Message
from email.parser import BytesHeaderParser
from email.utils import collapse_rfc2231_value
from http import HTTPStatus
from typing import Any

JsonObject = dict[str, Any]

NOT_FOUND_MESSAGE = "Resource not found"
DEPLOYMENT_NOT_FOUND_MESSAGE = (
    "The API deployment for this resource does not exist. If you created the deployment "
    "within the last 5 minutes, please wait a moment and try again."
)
ACCESS_DENIED_MESSAGE = (
    "Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide "
    "a valid key for an active subscription and use a correct regional API endpoint for your resource."
)

# Wording of the real service (or of the OpenAI API it fronts) for statuses a test may script.
_STATUS_MESSAGES = {
    400: "The request is invalid.",
    401: ACCESS_DENIED_MESSAGE,
    403: "Access denied. The caller is not allowed to perform this operation.",
    404: NOT_FOUND_MESSAGE,
    408: "The request timed out. Please try again.",
    413: "The request is too large.",
    500: "The server had an error while processing your request. Sorry about that!",
    502: "Bad gateway.",
    503: "The service is temporarily unable to process your request. Please try again later.",
    504: "The server did not answer in time. Please try again later.",
}

DONE_EVENT = b"data: [DONE]\n\n"

# Small values that float32 stores exactly, so base64 and float answers decode to the same numbers.
_EMBEDDING_TAIL = (0.5, -0.25, 0.125)


class BadRequest(Exception):
    """The request cannot be answered normally; the message goes into a 400 error body."""


class ObjectError(Exception):
    """A stored-object request refused with ``status`` and an OpenAI-shaped error ``body``."""

    def __init__(self, status: int, body: JsonObject) -> None:
        super().__init__(body["error"]["message"])
        self.status = status
        self.body = body


def object_error(status: int, message: str, *, param: str | None = None, code: str | None = None) -> ObjectError:
    """The ``invalid_request_error`` the object APIs answer (``param`` and ``code`` null unless known)."""
    return ObjectError(status, invalid_request(message, param=param, code=code))


def invalid_request(message: str, *, param: str | None = None, code: str | None = None) -> JsonObject:
    """OpenAI's ``invalid_request_error`` envelope, as Azure passes it on from the model and object APIs."""
    return {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": code}}


def previous_response_not_found(response_id: str) -> ObjectError:
    """Azure's 400 for a ``previous_response_id`` the resource does not hold."""
    # Shape and wording as reported from the service (Azure's /openai/v1/responses included):
    # https://github.com/router-for-me/CLIProxyAPI/issues/2954 (type, code, param, message),
    # https://github.com/maximhq/bifrost/issues/2441 (status 400, the message with the id),
    # https://github.com/dotnet/extensions/issues/7704 (the same 400 from an Azure resource).
    message = f"Previous response with id '{response_id}' not found."
    return object_error(400, message, param="previous_response_id", code="previous_response_not_found")


def response_not_found(response_id: str) -> ObjectError:
    """The 404 for an unknown response id on retrieve, delete and input items."""
    # The envelope (invalid_request_error, param and code null) is the one the object APIs'
    # 404s carry, e.g. https://github.com/sbslee/streamlit-openai/issues/18; the wording
    # follows previous_response_not_found above, which names the same lookup.
    return object_error(404, f"Response with id '{response_id}' not found.")


def file_not_found(file_id: str) -> ObjectError:
    """The 404 for an unknown file id, also when a batch names one as its ``input_file_id``."""
    # Wording, param "id" and status as in the OpenAI .NET library's API-reference example for
    # retrieving a missing file ("HTTP 404 (invalid_request_error: ) Parameter: id No such File
    # object: file-abc123"); a batch create looks its input file up the same way.
    return object_error(404, f"No such File object: {file_id}", param="id")


def batch_not_found(batch_id: str) -> ObjectError:
    """The 404 for an unknown batch id (wording by analogy with `file_not_found`)."""
    return object_error(404, f"No such Batch object: {batch_id}", param="id")


def vector_store_not_found(vector_store_id: str) -> ObjectError:
    """The 404 for an unknown vector store id."""
    # The 404 and message that client code written against the service matches on; no public
    # page shows the whole body, so the envelope is the one of `response_not_found`. The call:
    # https://developers.openai.com/api/reference/resources/vector_stores/methods/retrieve
    return object_error(404, f"No vector store found with id '{vector_store_id}'.")


def context_length_exceeded(limit: int, prompt: int, completion: int | None) -> JsonObject:
    """Azure's 400 for a request longer than the deployment's context window.

    ``completion`` is the ``max_tokens`` the body named, if any: a prompt that fits but
    leaves no room for it is worded as the request, not the messages, being too long.
    """
    # Bodies from Azure resources: the prompt alone, https://github.com/assafelovic/gpt-researcher/issues/680
    # (gpt-4o) and https://github.com/microsoft/kernel-memory/issues/516; with max_tokens,
    # https://github.com/Azure-Samples/azure-search-openai-demo/issues/1199. The code is
    # what spillover looks for, https://learn.microsoft.com/azure/foundry/openai/how-to/spillover-traffic-management.
    if completion is None:
        message = (
            f"This model's maximum context length is {limit} tokens. However, your messages resulted in "
            f"{prompt} tokens. Please reduce the length of the messages."
        )
    else:
        message = (
            f"This model's maximum context length is {limit} tokens. However, you requested "
            f"{prompt + completion} tokens ({prompt} in the messages, {completion} in the completion). "
            "Please reduce the length of the messages or completion."
        )
    return invalid_request(message, param="messages", code="context_length_exceeded")


def error_body(code: str, message: str) -> JsonObject:
    """Build Azure's error envelope ``{"error": {"code": ..., "message": ...}}``."""
    return {"error": {"code": code, "message": message}}


def rate_limit_message(operation: str, api_version: str, retry_after: int | None, limit: str = "call") -> str:
    """Word a 429 message the way Azure OpenAI does for call (requests) or token rate limits."""
    message = (
        f"Requests to the {operation} Operation under Azure OpenAI API version {api_version} "
        f"have exceeded {limit} rate limit of your current OpenAI S0 pricing tier."
    )
    if retry_after is not None:
        message += f" Please retry after {retry_after} seconds."
    return (
        message + " Please go here: https://aka.ms/oai/quotaincrease if you would like to further"
        " increase the default rate limit."
    )


def retry_after_seconds(headers: Mapping[str, str]) -> int | None:
    """Read whole seconds to wait from ``retry-after`` or ``retry-after-ms`` (any case), if present."""
    lowered = {key.lower(): value for key, value in headers.items()}
    for name, scale in (("retry-after", 1.0), ("retry-after-ms", 1000.0)):
        try:
            return max(1, math.ceil(float(lowered[name]) / scale))
        except (KeyError, ValueError, OverflowError):
            continue
    return None


def status_error_body(status: int, headers: Mapping[str, str], operation: str, api_version: str) -> JsonObject:
    """Build the Azure-style error body a scripted error status gets when it brings no JSON."""
    if status == 429:
        message = rate_limit_message(operation, api_version, retry_after_seconds(headers))
    else:
        message = default_message(status)
    return error_body(str(status), message)


def default_message(status: int) -> str:
    """Word an error message for ``status`` like the real service, or use the HTTP reason phrase."""
    if status in _STATUS_MESSAGES:
        return _STATUS_MESSAGES[status]
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP status {status}"


def sse_event(data: object, event: str | None = None) -> bytes:
    """Encode one server-sent event carrying ``data`` as compact JSON."""
    line = b"data: " + json.dumps(data, separators=(",", ":")).encode()
    if event is not None:
        line = b"event: " + event.encode() + b"\n" + line
    return line + b"\n\n"


def split_text(text: str, parts: int) -> list[str]:
    """Cut ``text`` into ``parts`` consecutive pieces of near-equal length (some may be empty)."""
    size, extra = divmod(len(text), parts)
    pieces: list[str] = []
    start = 0
    for index in range(parts):
        end = start + size + (1 if index < extra else 0)
        pieces.append(text[start:end])
        start = end
    return pieces


def estimate_tokens(payload: object) -> int:
    """Guess a token count the cheap way (about four characters per token), at least 1."""
    return max(1, len(json.dumps(payload, default=str)) // 4)


def new_id(prefix: str) -> str:
    """Make an identifier with the prefix the real API uses for that object kind."""
    return prefix + uuid.uuid4().hex


def chat_completion(content: str, model: str, prompt_tokens: int) -> JsonObject:
    """Build a non-streaming ``chat.completion`` object whose reply is ``content``."""
    completion_tokens = estimate_tokens(content)
    return {
        "id": new_id("chatcmpl-"),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": None,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def chat_completion_events(
    content: str, model: str, pieces: int, prompt_tokens: int, include_usage: bool
) -> list[bytes]:
    """Build the SSE events of a streamed chat completion, ``[DONE]`` included."""
    completion_id = new_id("chatcmpl-")
    created = int(time.time())
    texts = split_text(content, pieces)
    events: list[bytes] = []
    for index, text in enumerate(texts):
        delta: JsonObject = {"content": text}
        if index == 0:
            delta = {"role": "assistant", "content": text}
        last = index == len(texts) - 1
        chunk: JsonObject = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "system_fingerprint": None,
            "choices": [{"index": 0, "delta": delta, "finish_reason": "stop" if last else None, "logprobs": None}],
        }
        events.append(sse_event(chunk))
    if include_usage:
        # Like the real API: one extra chunk with no choices that carries the usage.
        completion_tokens = estimate_tokens(content)
        usage_chunk: JsonObject = {
            "id": completion_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }
        events.append(sse_event(usage_chunk))
    events.append(DONE_EVENT)
    return events


def _output_message(message_id: str, text: str, status: str) -> JsonObject:
    content = [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "status": status,
        "content": content if status == "completed" else [],
    }


def response_object(
    content: str,
    model: str,
    prompt_tokens: int,
    *,
    response_id: str | None = None,
    message_id: str | None = None,
    completed: bool = True,
    previous_response_id: str | None = None,
    metadata: Mapping[str, str] | None = None,
) -> JsonObject:
    """Build a Responses API ``response`` object whose output text is ``content``."""
    output_tokens = estimate_tokens(content)
    created = int(time.time())
    return {
        "id": response_id or new_id("resp_"),
        "object": "response",
        "created_at": created,
        "status": "completed" if completed else "in_progress",
        "completed_at": created if completed else None,
        "model": model,
        "output": [_output_message(message_id or new_id("msg_"), content, "completed")] if completed else [],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "error": None,
        "incomplete_details": None,
        "instructions": None,
        "metadata": dict(metadata or {}),
        "previous_response_id": previous_response_id,
        "store": True,
        "temperature": 1.0,
        "top_p": 1.0,
        "text": {"format": {"type": "text"}},
        "truncation": "disabled",
        "usage": (
            {
                "input_tokens": prompt_tokens,
                "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
                "output_tokens": output_tokens,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": prompt_tokens + output_tokens,
            }
            if completed
            else None
        ),
    }


def response_events(finished: JsonObject, pieces: int) -> list[bytes]:
    """Build the SSE events that stream the completed ``response`` object ``finished``, in the real API's order.

    ``response.created`` comes first and carries the response's id.
    """
    message = finished["output"][0]
    message_id = message["id"]
    content = message["content"][0]["text"]
    started = {**finished, "status": "in_progress", "completed_at": None, "output": [], "usage": None}
    empty_part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
    full_part = {"type": "output_text", "text": content, "annotations": [], "logprobs": []}
    where = {"item_id": message_id, "output_index": 0, "content_index": 0}
    bodies: list[JsonObject] = [
        {"type": "response.created", "response": started},
        {"type": "response.in_progress", "response": started},
        {
            "type": "response.output_item.added",
            "output_index": 0,
            "item": _output_message(message_id, "", "in_progress"),
        },
        {"type": "response.content_part.added", **where, "part": empty_part},
    ]
    bodies.extend(
        {"type": "response.output_text.delta", **where, "delta": text, "logprobs": []}
        for text in split_text(content, pieces)
    )
    bodies += [
        {"type": "response.output_text.done", **where, "text": content, "logprobs": []},
        {"type": "response.content_part.done", **where, "part": full_part},
        {"type": "response.output_item.done", "output_index": 0, "item": message},
        {"type": "response.completed", "response": finished},
    ]
    return [sse_event({**body, "sequence_number": number}, event=body["type"]) for number, body in enumerate(bodies)]


def input_items(given: object) -> list[JsonObject]:
    """The items a response's ``input`` stands for, as ``responses/{id}/input_items`` lists them.

    A string is one user message; a list gives one item per object in it (messages with
    string content get it as one text part). Every item gets an id.
    """
    if isinstance(given, str):
        given = [{"role": "user", "content": given}]
    if not isinstance(given, list):
        return []
    items: list[JsonObject] = []
    for item in given:
        if not isinstance(item, dict):
            continue
        if "role" in item and item.get("type", "message") == "message":
            role = item["role"]
            content = item.get("content")
            if isinstance(content, str) and role == "assistant":
                content = [{"type": "output_text", "text": content, "annotations": []}]
            elif isinstance(content, str):
                content = [{"type": "input_text", "text": content}]
            items.append(
                {"id": new_id("msg_"), "type": "message", "role": role, "content": content, "status": "completed"}
            )
        else:
            items.append({"id": new_id("item_"), **item})
    return items


def item_list(items: list[JsonObject]) -> JsonObject:
    """A one-page ``list`` of items with its cursors."""
    return {
        "object": "list",
        "data": items,
        "first_id": items[0]["id"] if items else None,
        "last_id": items[-1]["id"] if items else None,
        "has_more": False,
    }


def deleted(object_id: str, kind: str) -> JsonObject:
    """The answer to a delete: ``{"id", "object", "deleted": true}``."""
    return {"id": object_id, "object": kind, "deleted": True}


def batch_object(payload: JsonObject) -> JsonObject:
    """A new ``batch`` for a create request, ``validating`` as Azure's answer to a create shows it.

    Shaped like the sample of https://learn.microsoft.com/en-us/rest/api/azureopenai/batch/create
    (api-version 2024-10-21).
    """
    created = int(time.time())
    metadata = payload.get("metadata")
    return {
        "id": new_id("batch_"),
        "object": "batch",
        "endpoint": payload.get("endpoint"),
        "errors": None,
        "input_file_id": payload.get("input_file_id"),
        "completion_window": payload.get("completion_window"),
        "status": "validating",
        "output_file_id": None,
        "error_file_id": None,
        "created_at": created,
        "in_progress_at": None,
        "expires_at": created + 24 * 3600,
        "finalizing_at": None,
        "completed_at": None,
        "failed_at": None,
        "expired_at": None,
        "cancelling_at": None,
        "cancelled_at": None,
        "request_counts": {"total": 0, "completed": 0, "failed": 0},
        "metadata": metadata if isinstance(metadata, dict) else None,
    }


def cancelled_batch(batch: JsonObject) -> tuple[JsonObject, JsonObject]:
    """The answer to cancelling ``batch`` (``cancelling``) and the batch from then on (``cancelled``).

    The fake runs no batch, so there is nothing to wait for between the two.
    """
    now = int(time.time())
    answered = {**batch, "status": "cancelling", "cancelling_at": now}
    return answered, {**answered, "status": "cancelled", "cancelled_at": now}


def vector_store_object(payload: JsonObject) -> JsonObject:
    """A new, empty ``vector_store`` for a create request."""
    created = int(time.time())
    name = payload.get("name")
    metadata = payload.get("metadata")
    return {
        "id": new_id("vs_"),
        "object": "vector_store",
        "created_at": created,
        "name": name if isinstance(name, str) else "",
        "usage_bytes": 0,
        "file_counts": {"in_progress": 0, "completed": 0, "failed": 0, "cancelled": 0, "total": 0},
        "status": "completed",
        "expires_after": None,
        "expires_at": None,
        "last_active_at": created,
        "metadata": metadata if isinstance(metadata, dict) else {},
    }


def embeddings(model: str, payload: JsonObject) -> JsonObject:
    """Build an embeddings list with one small vector per input, honouring ``encoding_format``."""
    given = payload.get("input")
    if isinstance(given, str):
        count = 1
    elif isinstance(given, list) and given:
        # A flat list of ints is one pre-tokenized input; any other list holds one input per item.
        count = 1 if all(isinstance(item, int) for item in given) else len(given)
    else:
        raise BadRequest("'input' must be a non-empty string or array.")
    as_base64 = payload.get("encoding_format") == "base64"
    data: list[JsonObject] = []
    for index in range(count):
        vector = (float(index), *_EMBEDDING_TAIL)
        encoded: object = list(vector)
        if as_base64:
            encoded = base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
        data.append({"object": "embedding", "index": index, "embedding": encoded})
    tokens = estimate_tokens(given)
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


def models_list(names: Iterable[str]) -> JsonObject:
    """Build a ``list`` of ``model`` objects, one per name."""
    created = int(time.time())
    data = [{"id": name, "object": "model", "created": created, "owned_by": "system"} for name in names]
    return {"object": "list", "data": data}


def file_object(filename: str, size: int, purpose: str) -> JsonObject:
    """Build the ``file`` object answered to an upload."""
    return {
        "id": new_id("file-"),
        "object": "file",
        "bytes": size,
        "created_at": int(time.time()),
        "filename": filename,
        "purpose": purpose,
        "status": "processed",
        "status_details": None,
    }


@dataclass(frozen=True, slots=True)
class FormPart:
    """One part of a multipart/form-data body."""

    name: str | None
    filename: str | None
    data: bytes


def parse_multipart(content_type: str, body: bytes) -> list[FormPart]:
    """Split a multipart/form-data body into its parts, keeping each part's bytes exact.

    The body is split by hand rather than with `email.parser` because the email parser
    works on lines and may not return binary payloads byte for byte; the stdlib email
    package is only used for header parameters (quoting and RFC 2231 filenames).
    """
    header = Message()
    header["content-type"] = content_type
    if header.get_content_type() != "multipart/form-data":
        raise BadRequest("Expected a multipart/form-data body.")
    boundary = header.get_boundary()
    if not boundary:
        raise BadRequest("The multipart/form-data content type has no boundary.")
    delimiter = b"--" + boundary.encode("latin-1")
    # The first delimiter either opens the body or follows the CRLF that ends a preamble.
    if body.startswith(delimiter):
        position = len(delimiter)
    else:
        found = body.find(b"\r\n" + delimiter)
        if found < 0:
            raise BadRequest("The multipart body has no parts.")
        position = found + 2 + len(delimiter)
    parts: list[FormPart] = []
    while not body.startswith(b"--", position):
        line_end = body.find(b"\r\n", position)
        # Only transport padding (spaces, tabs) may sit between a delimiter and its CRLF.
        if line_end < 0 or body[position:line_end].strip(b" \t"):
            raise BadRequest("The multipart body has a malformed boundary line.")
        start = line_end + 2
        end = body.find(b"\r\n" + delimiter, start)
        if end < 0:
            raise BadRequest("The multipart body is not terminated.")
        parts.append(_parse_part(body[start:end]))
        position = end + 2 + len(delimiter)
    return parts


def _parse_part(raw: bytes) -> FormPart:
    if raw.startswith(b"\r\n"):
        head, data = b"", raw[2:]
    else:
        split_at = raw.find(b"\r\n\r\n")
        if split_at < 0:
            raise BadRequest("A multipart part has no blank line after its headers.")
        head, data = raw[: split_at + 2], raw[split_at + 4 :]
    headers = BytesHeaderParser().parsebytes(head)
    name = headers.get_param("name", header="content-disposition")
    return FormPart(
        name=None if name is None else collapse_rfc2231_value(name),
        filename=headers.get_filename(),
        data=data,
    )


def file_upload(content_type: str, body: bytes) -> tuple[JsonObject, bytes]:
    """Answer a file upload from its multipart body: the ``file`` object and the file's bytes."""
    parts = parse_multipart(content_type, body)
    upload = next((part for part in parts if part.name == "file"), None)
    if upload is None:
        raise BadRequest("The multipart body has no 'file' part.")
    purpose_part = next((part for part in parts if part.name == "purpose"), None)
    purpose = purpose_part.data.decode("utf-8", "replace") if purpose_part else "assistants"
    return file_object(upload.filename or "file", len(upload.data), purpose), upload.data
