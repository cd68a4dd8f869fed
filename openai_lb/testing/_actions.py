"""Scripted actions and request records of the fake Azure OpenAI server."""

from __future__ import annotations

import json as _json
import math
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias


@dataclass(frozen=True, slots=True)
class Reply:
    """Answer one request with a chosen status, extra headers and an optional JSON body.

    With ``json=None`` the body is an Azure-style error object for ``status >= 400``,
    the endpoint's normal answer for 2xx, and empty otherwise. ``content-length`` and
    ``transfer-encoding`` in ``headers`` are ignored: the server always frames the body
    correctly (use `CutStream` to break framing).
    """

    status: int
    headers: Mapping[str, str] = field(default_factory=dict)
    json: object | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.status, int) or not 200 <= self.status <= 599:
            raise ValueError(f"Reply status must be an int in 200..599, got {self.status!r}")
        # Keep a private copy so that editing the caller's dict later cannot change a queued reply.
        object.__setattr__(self, "headers", dict(self.headers))


@dataclass(frozen=True, slots=True)
class ResetConnection:
    """Read the request, then drop the connection with a TCP RST instead of answering."""


@dataclass(frozen=True, slots=True)
class CutStream:
    """Start the normal answer as a stream, then close the connection after ``after`` events.

    Chat completions and responses are sent as server-sent events whatever the request's
    ``stream`` flag says. Other endpoints send their JSON body, of which only half arrives.

    ``framing`` says how the answer's end is told, and so what the client sees:

    - ``"framed"`` (the default): events go in a ``transfer-encoding: chunked`` body and JSON
      bodies announce their full ``content-length``; the connection closes after ``after``
      events (or half the JSON) without the end the framing promises, so the client sees a
      truncated body rather than a clean end.
    - ``"close"``: the body is delimited by closing the connection (``connection: close``,
      neither ``content-length`` nor ``transfer-encoding``), as an HTTP/1.0 server would send
      it; the same ``after`` events (or half the JSON) are sent, then the connection closes,
      which to the client is the end of a well-framed body. ``after=0`` sends the status line
      and headers only, then drops the connection before any body byte, for every endpoint.
    """

    after: int = 1
    framing: Literal["framed", "close"] = "framed"

    def __post_init__(self) -> None:
        if not isinstance(self.after, int) or self.after < 0:
            raise ValueError(f"CutStream.after must be an int >= 0, got {self.after!r}")
        if self.framing not in ("framed", "close"):
            raise ValueError(f"CutStream.framing must be 'framed' or 'close', got {self.framing!r}")


@dataclass(frozen=True, slots=True)
class Stall:
    """Wait ``seconds`` before handling the request normally (auth, budget and all).

    The wait ends early when the server stops; the connection is then closed unanswered.
    """

    seconds: float

    def __post_init__(self) -> None:
        if not math.isfinite(self.seconds) or self.seconds < 0:
            raise ValueError(f"Stall.seconds must be a finite number >= 0, got {self.seconds!r}")


@dataclass(frozen=True, slots=True)
class HoldStream:
    """Answer normally (every check, stored objects included), but hold an event stream after ``after`` events.

    The rest follows once the test sets ``release``. Not released within ``timeout`` seconds (or
    the server stops first), the connection is closed there without the stream's end, as
    `CutStream` would: a client that held back the first events until the whole stream came
    fails instead of passing late. Answers that are not event streams are sent whole::

        hold = HoldStream(after=1)
        server.script(hold)
        stream = client.responses.create(model="gpt-4o", input="hi", stream=True)
        first = next(iter(stream))  # response.created, while the server holds the rest
        hold.release.set()
    """

    after: int = 1
    timeout: float = 10.0
    release: threading.Event = field(default_factory=threading.Event, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.after, int) or self.after < 0:
            raise ValueError(f"HoldStream.after must be an int >= 0, got {self.after!r}")
        if not math.isfinite(self.timeout) or self.timeout <= 0:
            raise ValueError(f"HoldStream.timeout must be a finite number > 0, got {self.timeout!r}")


Action: TypeAlias = Reply | ResetConnection | CutStream | Stall | HoldStream
"""Anything `FakeAzureOpenAI.script` accepts."""

ACTION_TYPES = (Reply, ResetConnection, CutStream, Stall, HoldStream)


@dataclass(frozen=True, slots=True)
class RecordedRequest:
    """One HTTP request as the fake server received it, before any check or scripted action."""

    method: str
    path: str
    """The path as sent, without the query string (the path prefix included)."""
    query: dict[str, str]
    headers: dict[str, str]
    """Header names lower-cased; repeated headers joined with ``", "``."""
    body: bytes
    deployment: str | None
    """The deployment from the URL path, or the JSON body's ``model`` on v1 and responses routes."""

    def json(self) -> Any:
        """Parse the body as JSON (raises `ValueError` when it is not JSON)."""
        return _json.loads(self.body)
