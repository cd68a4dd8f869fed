"""How a caller's request becomes an attempt on one backend: URL, credential, deployment.

Pure functions over bytes and strings, shared by every transport shell. The client's
endpoint (the SDK's base URL without its own ``/openai...`` part) is replaced by the
backend's URL; the path after it is kept as the SDK built it, so scheme, host, port and
prefix all follow the backend. The caller's request is never modified: each attempt is
built anew.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import NamedTuple
from urllib.parse import quote, unquote

from ._affinity import Stateful, body_references, names_objects, route_of, stateful
from ._config import Backend
from ._headroom import SPILLOVER_DEPLOYMENT, output_tokens

__all__ = ["Header", "Outgoing", "RequestTemplate", "by_name", "endpoint_path", "lowered", "model_span"]

_OPENAI = b"/openai"
_DEPLOYMENTS = b"/openai/deployments/"
# Recomputed for each attempt from the backend and the body, or replaced by the backend's credential.
# Cookies are dropped: the SDK's jar keeps them under the client's nominal host, so one backend's
# (a gateway's session, say) would otherwise reach every other backend.
_DROPPED = frozenset({b"host", b"content-length", b"transfer-encoding", b"cookie"})
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
_CREDENTIALS = frozenset({b"api-key", b"authorization"})
# The SDK's own part of an Azure base URL: "/openai", "/openai/v1" or "/openai/deployments/{name}".
# Matched lazily from the left, so an endpoint whose path holds "openai" keeps it.
_SDK_BASE = re.compile(rb"(?P<endpoint>.*?)/openai(?:/v1|/deployments/[^/]+)?/*", re.DOTALL)
# A JSON string (escapes kept whole), a bracket, or a quote that opens no complete string.
# Numbers, literals, commas and colons are skipped by the search itself, in C.
_JSON_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|[{}\[\]]|"', re.DOTALL)
_JSON_SPACE = re.compile(rb"[ \t\r\n]*")
# Up to this size a body's model is read by parsing it (quick, and the copy is small); larger ones are
# scanned, which never holds a second copy of the body.
_PARSE_LIMIT = 1 << 20


def endpoint_path(base_path: bytes, azure_endpoint_path: bytes | None = None) -> bytes:
    """The client's endpoint path (no trailing slash) from the raw path of the SDK's base URL.

    ``azure_endpoint_path`` (the raw path of the client's ``azure_endpoint``) is exact when the
    client has one. Otherwise the base URL's trailing ``/openai``, ``/openai/v1`` or
    ``/openai/deployments/{name}`` is the SDK's; a base URL ending in none of them is the endpoint whole.
    """
    if azure_endpoint_path is not None and base_path.startswith(azure_endpoint_path.rstrip(b"/") + _OPENAI):
        return azure_endpoint_path.rstrip(b"/")
    match = _SDK_BASE.fullmatch(base_path)
    return match["endpoint"] if match else base_path.rstrip(b"/")


def model_span(body: bytes) -> tuple[int, int] | None:
    """The byte span of the top-level ``"model"`` string of a JSON object, quotes included.

    The last one when the key repeats (the one ``json.loads`` keeps); None when the body is not
    a JSON object, has no top-level ``model``, or its last ``model`` is not a string. Only the
    structure is checked (strings, brackets, keys): the scan keeps no parsed copy of the body.
    """
    start = _skip_space(body, 0)
    if body[start : start + 1] != b"{":
        return None
    depth = 0
    span: tuple[int, int] | None = None
    value_at = -1  # where the value of the last top-level "model" key starts
    end = -1
    for token in _JSON_TOKEN.finditer(body, start):
        first = token.group()[0]
        if first == 0x22:  # '"'
            at, after = token.span()
            if after - at == 1:
                return None  # a quote opening no complete string
            if at == value_at:
                span = (at, after)
            elif depth == 1:
                colon = _skip_space(body, after)
                if body[colon : colon + 1] == b":" and _is_model_key(token.group()):
                    value_at = _skip_space(body, colon + 1)
                    span = None
        elif first in b"{[":
            depth += 1
        else:
            depth -= 1
            if depth == 0:
                end = token.end()
                break
            if depth < 0:
                return None
    if end < 0 or _skip_space(body, end) != len(body):
        return None
    return span


def _skip_space(body: bytes, at: int) -> int:
    """The first index from ``at`` on that is not JSON whitespace."""
    space = _JSON_SPACE.match(body, at)
    assert space is not None, "the pattern matches the empty string"
    return space.end()


def _is_model_key(raw: bytes) -> bool:
    if raw == b'"model"':
        return True
    # An escaped spelling ("mod\u0065l") is the same key to a JSON parser.
    return b"\\" in raw and _decoded(raw) == "model"


def _decoded(raw: bytes) -> object:
    try:
        return json.loads(raw)
    except ValueError:
        return None


def _encoded(value: str) -> bytes:
    """``value`` as a JSON string in UTF-8, escaping only what JSON requires."""
    try:
        return json.dumps(value, ensure_ascii=False).encode()
    except UnicodeEncodeError:  # a lone surrogate has no UTF-8 form; JSON's \u escape carries it
        return json.dumps(value).encode()


Header = tuple[bytes, bytes, bytes]
"""One header as (name as sent, name lowercased, value): sent as the caller wrote it, compared lowercased.

Whether an HTTP library can take these as they are is the business of its ``HttpStack``."""


def lowered(headers: Iterable[tuple[bytes, bytes]]) -> list[Header]:
    """``(name, value)`` pairs as ``Header`` triples."""
    return [(name, name.lower(), value) for name, value in headers]


def by_name(headers: Iterable[Header]) -> dict[bytes, bytes]:
    """An answer's headers by lowercased name, the last of a repeated one winning: made in one pass, after which
    its framing and its headroom are a few lookups each instead of a pass of their own."""
    return {name: value for _, name, value in headers}


class Outgoing(NamedTuple):
    """One attempt's URL, complete headers (``Host`` and ``Content-Length`` included) and body."""

    url: str
    headers: list[Header]
    body: bytes | None


class RequestTemplate:
    """What is fixed about a caller request, parsed once; ``for_backend`` builds each attempt.

    ``endpoints`` are the raw paths of the client endpoints the request may come from, longest
    first: the path after the longest one followed by ``/openai`` is the SDK's and is kept. With
    none (a transport under an http client that names no endpoint) the SDK's path is taken from the
    first ``/openai`` segment on. ``outside`` says the path left every known endpoint's ``/openai``:
    httpx removed ``..`` segments of a model name, so where the SDK would have sent it on another
    backend is lost, and it is not sent at all.

    With ``affinity``, ``stateful`` says which objects held by one backend the request names (its path
    and, on a stateful route, its JSON body) and what its answer creates or deletes; None for a
    stateless request, which is every request on a route ``_affinity.ROUTES`` does not cover.

    ``output_tokens`` is the output limit the body names, when parsing it for its ``model`` found one
    (0 for embeddings, which produce none); None leaves it to the cost estimate to search the body.
    """

    __slots__ = (
        "_dep_end",
        "_dep_start",
        "_headers",
        "_model_span",
        "_raw_path",
        "_suffix_at",
        "body",
        "deployment",
        "output_tokens",
        "outside",
        "stateful",
    )

    def __init__(
        self,
        raw_path: bytes,
        headers: Sequence[Header],
        body: bytes,
        endpoints: Sequence[bytes] = (),
        *,
        method: str = "POST",
        affinity: bool = False,
    ) -> None:
        self._raw_path = raw_path
        kept = []
        framed = False
        for header in headers:
            lower = header[1]
            if lower not in _DROPPED:
                kept.append(header)
            elif lower in _FRAMING:
                framed = True
        self._headers = kept
        # A request that had no framing header (a GET) has no body to send either.
        self.body: bytes | None = body if body or framed else None
        self._model_span: tuple[int, int] | None = None
        query_at = raw_path.find(b"?")
        path_end = len(raw_path) if query_at < 0 else query_at
        at = _sdk_path_at(raw_path, path_end, endpoints)
        self.outside = at < 0 and bool(endpoints)
        self._suffix_at = max(at, 0)
        self._dep_start = self._dep_end = -1
        self.deployment: str | None = None
        self.output_tokens: int | None = None
        self.stateful: Stateful | None = None
        found = route_of(raw_path, at, path_end) if affinity and at >= 0 else None
        parsed: object = None
        if at >= 0 and raw_path.startswith(_DEPLOYMENTS, at):
            start = at + len(_DEPLOYMENTS)
            end = raw_path.find(b"/", start, path_end)
            if end < 0:
                end = path_end
            if end > start:
                self._dep_start, self._dep_end = start, end
                self.deployment = unquote(raw_path[start:end].decode("latin-1"))
        elif self.body and self._is_json():
            # /openai/v1/... and the Responses API name the deployment in the body's "model".
            self.deployment, parsed = self._body_model(self.body)
            self.output_tokens = output_tokens(parsed)
        if raw_path.endswith(b"/embeddings", 0, path_end):
            self.output_tokens = 0
        if found is not None:
            self.stateful = stateful(method, *found, self._references(parsed))

    def _references(self, parsed: object) -> tuple[str, ...]:
        """The objects the JSON body names; the body is parsed (again) only when it may name one."""
        body = self.body
        if not body or not names_objects(body) or not self._is_json():
            return ()
        if parsed is None:
            try:
                parsed = json.loads(body.decode())
            except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
                return ()
        return body_references(parsed)

    def _body_model(self, body: bytes) -> tuple[str | None, object]:
        """The body's model, and the body parsed when it was (None when it was scanned instead)."""
        if body[_skip_space(body, 0) :][:1] != b"{":
            return None, None  # not an object, or not in UTF-8 (which json.loads would also take)
        if len(body) <= _PARSE_LIMIT:
            # The C parser is quicker than the scan on small bodies; the parsed copy goes with the constructor.
            try:
                # Decoded first: json.loads would also take UTF-16 and UTF-32, which the span scan (and the SDK) never
                # meet; such a body names no deployment here and is sent as it is.
                parsed = json.loads(body.decode())
            except (ValueError, RecursionError):  # RecursionError: nested deeper than the parser goes
                return None, None
            model = parsed.get("model") if isinstance(parsed, dict) else None
        else:
            parsed = None
            self._model_span = model_span(body)
            model = None if self._model_span is None else _decoded(body[self._model_span[0] : self._model_span[1]])
        return (model if isinstance(model, str) and model else None), parsed

    def _is_json(self) -> bool:
        for _, name, value in self._headers:
            if name == b"content-type":
                return value.split(b";", 1)[0].strip().lower() == b"application/json"
        return False

    def for_backend(self, backend: Backend, deployment: str | None, credential: tuple[bytes, bytes] | None) -> Outgoing:
        """The attempt on ``backend``; ``credential`` is its own ``(header, value)``, None to keep the client's."""
        raw_path = self._raw_path
        body = self.body
        renamed = deployment is not None and deployment != self.deployment
        if renamed and self._dep_start >= 0:
            assert deployment is not None
            raw_path = raw_path[: self._dep_start] + quote(deployment, safe="").encode() + raw_path[self._dep_end :]
        elif renamed and self._dep_start < 0 and body is not None and self.deployment is not None:
            assert deployment is not None
            if self._model_span is None:
                self._model_span = model_span(body)
            assert self._model_span is not None, "a body whose model parses has that model's span"
            start, end = self._model_span
            view = memoryview(body)  # slices of a view copy nothing: the new body is the only copy
            body = b"".join((view[:start], _encoded(deployment), view[end:]))
        path = raw_path[self._suffix_at :].decode("ascii", "replace")
        url = f"{backend.scheme}://{backend.netloc}{backend.prefix}{path}"
        host = (b"Host", b"host", backend.netloc.encode())
        if credential is None:
            headers = [host, *self._headers]
        else:
            headers = [host, *[header for header in self._headers if header[1] not in _CREDENTIALS]]
            headers.append((credential[0], credential[0].lower(), credential[1]))
        if backend.spillover_deployment is not None:
            # This backend's own spillover target replaces any the caller named (for another resource, maybe).
            headers = [header for header in headers if header[1] != SPILLOVER_DEPLOYMENT]
            headers.append((SPILLOVER_DEPLOYMENT, SPILLOVER_DEPLOYMENT, backend.spillover_deployment.encode("latin-1")))
        if body is not None:
            headers.append((b"Content-Length", b"content-length", str(len(body)).encode()))
        return Outgoing(url, headers, body)


def _sdk_path_at(raw_path: bytes, path_end: int, endpoints: Sequence[bytes]) -> int:
    """Where the SDK's own path (``/openai...``) starts in ``raw_path``; -1 when it is not there."""
    for endpoint in endpoints:
        at = len(endpoint)
        if raw_path.startswith(endpoint) and raw_path.startswith(_OPENAI, at):
            after = at + len(_OPENAI)
            if after == path_end or raw_path[after : after + 1] == b"/":
                return at
    if endpoints:
        return -1
    at = raw_path.find(_OPENAI + b"/", 0, path_end)
    if at < 0 and raw_path[:path_end] == _OPENAI:
        return 0
    return at
