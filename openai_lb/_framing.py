"""Whether an answer's body arrived whole, when its framing cannot say.

An HTTP/1 answer with neither ``content-length`` nor chunked encoding ends when the connection
closes, so a connection cut midway looks to the HTTP library like a clean end. These pure checks
tell a complete body from a truncated one by its content: a JSON document must parse, and a
server-sent event stream must have sent its terminal event (``data: [DONE]`` for chat completions,
``response.completed``, ``response.failed``, ``response.incomplete`` or ``error`` for responses).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import NamedTuple

__all__ = ["EVENT_STREAM", "JSON", "EventStreamEnd", "Framing", "framing_of", "has_terminal_event", "json_complete"]

_TERMINAL = re.compile(rb"data: ?\[DONE\]|event: ?(?:response\.(?:completed|failed|incomplete)|error)\r?\n")
# Enough of the previous chunk to find a marker split across two chunks.
_OVERLAP = 48
_EVENT_END = (b"\n\n", b"\r\n\r\n", b"\r\r")
JSON = b"application/json"
EVENT_STREAM = b"text/event-stream"


class Framing(NamedTuple):
    """What an answer's headers say of its body."""

    media_type: bytes
    """The ``content-type`` without parameters, lowercased (``b""`` when absent)."""
    delimited: bool
    """Whether ``content-length`` or ``transfer-encoding`` says where the body ends."""

    def close_delimited(self, http_version: str) -> bool:
        """Whether the body ends only when the connection closes (HTTP/1 without length or chunking)."""
        return not self.delimited and http_version.startswith("HTTP/1")


def framing_of(headers: Mapping[bytes, bytes]) -> Framing:
    """The ``Framing`` of headers by lowercased name."""
    media = headers.get(b"content-type")
    return Framing(
        b"" if media is None else media.partition(b";")[0].strip().lower(),
        b"content-length" in headers or b"transfer-encoding" in headers,
    )


# The streams whose terminal event is known; others (images, audio) end their own ways and are not judged.
_JUDGED_STREAMS = ("/chat/completions", "/completions", "/responses")


def has_terminal_event(path: str) -> bool:
    """Whether a stream answering a request to ``path`` ends with an event ``EventStreamEnd`` knows."""
    return path.rstrip("/").endswith(_JUDGED_STREAMS)


def json_complete(body: bytes) -> bool:
    """Whether ``body`` is a whole JSON document (an empty one is not: it was cut before its first byte)."""
    try:
        json.loads(body)
    except ValueError:
        return False
    except RecursionError:  # nested deeper than the parser goes: it did not end early, so deliver it
        return True
    return True


class EventStreamEnd:
    """Fed a stream's chunks in order, tells whether it ended after its terminal event."""

    __slots__ = ("_tail", "_terminal")

    def __init__(self) -> None:
        self._tail = b""
        self._terminal = False

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        if not self._terminal:
            self._terminal = _TERMINAL.search(self._tail + chunk) is not None
        self._tail = (self._tail + chunk)[-_OVERLAP:]

    def complete(self) -> bool:
        """A terminal event was seen and the stream stopped at an event's end, not inside one."""
        return self._terminal and self._tail.endswith(_EVENT_END)
