"""How a caller's request becomes an attempt on one backend: URL, credential, deployment.

Pure functions over bytes and strings, shared by every transport shell. The SDK's URL
is kept from ``/openai/`` on; everything before it (the client's endpoint and any path
prefix) is replaced by the backend's URL, so scheme, host, port and prefix all follow
the backend. The caller's request is never modified: each attempt is built anew.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from typing import NamedTuple
from urllib.parse import quote, unquote

from ._config import Backend

__all__ = ["Header", "Outgoing", "RequestTemplate", "lowered"]

_OPENAI = b"/openai/"
_DEPLOYMENTS = b"/openai/deployments/"
# Recomputed for each attempt from the backend and the body, or replaced by the backend's credential.
# Cookies are dropped: the SDK's jar keeps them under the client's nominal host, so one backend's
# (a gateway's session, say) would otherwise reach every other backend.
_DROPPED = frozenset({b"host", b"content-length", b"transfer-encoding", b"cookie"})
_FRAMING = frozenset({b"content-length", b"transfer-encoding"})
_CREDENTIALS = frozenset({b"api-key", b"authorization"})

Header = tuple[bytes, bytes, bytes]
"""One header as (name as sent, name lowercased, value): the form httpx and httpx2 keep headers in."""


def lowered(headers: Iterable[tuple[bytes, bytes]]) -> list[Header]:
    """``(name, value)`` pairs as ``Header`` triples."""
    return [(name, name.lower(), value) for name, value in headers]


class Outgoing(NamedTuple):
    """One attempt's URL, complete headers (``Host`` and ``Content-Length`` included) and body."""

    url: str
    headers: list[Header]
    body: bytes | None


class RequestTemplate:
    """What is fixed about a caller request, parsed once; ``for_backend`` builds each attempt."""

    __slots__ = ("_body_json", "_dep_end", "_dep_start", "_headers", "_raw_path", "_suffix_at", "body", "deployment")

    def __init__(self, raw_path: bytes, headers: Sequence[Header], body: bytes) -> None:
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
        self._body_json: dict[str, object] | None = None
        query_at = raw_path.find(b"?")
        path_end = len(raw_path) if query_at < 0 else query_at
        at = raw_path.find(_OPENAI, 0, path_end)
        if at < 0 and raw_path[:path_end] == b"/openai":
            at = 0
        self._suffix_at = max(at, 0)
        self._dep_start = self._dep_end = -1
        self.deployment: str | None = None
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
            try:
                parsed = json.loads(self.body)
            except ValueError:
                parsed = None
            if isinstance(parsed, dict) and isinstance(parsed.get("model"), str) and parsed["model"]:
                self._body_json = parsed
                self.deployment = parsed["model"]

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
        elif renamed and self._body_json is not None:
            body = json.dumps({**self._body_json, "model": deployment}, separators=(",", ":")).encode()
        path = raw_path[self._suffix_at :].decode("ascii", "replace")
        url = f"{backend.scheme}://{backend.netloc}{backend.prefix}{path}"
        host = (b"Host", b"host", backend.netloc.encode())
        if credential is None:
            headers = [host, *self._headers]
        else:
            headers = [host, *[header for header in self._headers if header[1] not in _CREDENTIALS]]
            headers.append((credential[0], credential[0].lower(), credential[1]))
        if body is not None:
            headers.append((b"Content-Length", b"content-length", str(len(body)).encode()))
        return Outgoing(url, headers, body)
