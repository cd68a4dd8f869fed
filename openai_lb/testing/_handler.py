"""The HTTP side of the fake: read a request off the socket, write what the rules decided.

`Handler` is the standard library's request handler. It reads the request (plain or chunked
body), hands it to the `Responder` that serves its path, and plays the `Step` it gets back:
a JSON, empty or event-stream answer, one cut short or held, a TCP reset, or a wait (a scripted
stall, or the simulated network's latency before any of those). It knows no
Azure rule; those live in `_rules.py`. Headers the rules return (headroom headers among
them) are written on top of the defaults here, except the body framing, which is the
handler's alone.
"""

from __future__ import annotations

import json
import socket
import struct
import time
import uuid
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

from openai_lb.testing import _payloads as payloads
from openai_lb.testing._actions import HoldStream
from openai_lb.testing._routes import Exchange, Incoming
from openai_lb.testing._rules import (
    NOT_FOUND,
    Cut,
    Delayed,
    EventStream,
    Hold,
    JsonBody,
    RawBody,
    Reset,
    Response,
    Step,
    Wait,
    error,
)

# Headers that frame the body; the handler always sets them itself.
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding"})

_JSON_DEFAULTS = {"content-type": "application/json"}
_STREAM_DEFAULTS = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}
# How often a held stream looks whether the server is stopping.
_HOLD_POLL = 0.05


class Responder(Protocol):
    """What the handler asks of the fake that serves a request's path.

    Each fake has one; every call may come from any handler thread.
    """

    @property
    def name(self) -> str:
        """Told back in the ``x-fake-server`` header of every answer."""
        ...

    def receive(self, incoming: Incoming) -> Step:
        """Record a request that was read and say what to do with it."""
        ...

    def respond(self, exchange: Exchange) -> Response:
        """Answer by the rules as they stand now: after a `Wait`, ``exchange`` is answered this way."""
        ...

    def note_answer(self, status: int, *, success: bool) -> None:
        """Log an answer whose status line is about to go out; ``success=False`` for one cut short."""
        ...


class Venue(Protocol):
    """What the handler asks of the listener that accepted its connection."""

    name: str
    """Told back in the ``x-fake-server`` header of answers no responder gives."""
    member_for: Callable[[str], Responder | None]
    """The responder serving a path, or None when nobody serves it."""

    def track(self, connection: socket.socket) -> None: ...

    def untrack(self, connection: socket.socket) -> None: ...

    def wait_unless_stopped(self, seconds: float) -> bool:
        """Sleep ``seconds``; True at once if the listener stops meanwhile."""
        ...


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeAzureOpenAI"
    # Stream events are small writes; without TCP_NODELAY Nagle could hold them back.
    disable_nagle_algorithm = True

    venue: Venue
    member: Responder | None
    """The responder for the current request, chosen afresh for each request from its path."""

    def setup(self) -> None:
        super().setup()
        self.venue = cast(Venue, self.server)
        self.member = None
        self.venue.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.venue.untrack(self.connection)

    def handle_one_request(self) -> None:
        # Requests on one keep-alive connection may go to different members of a group.
        self.member = None
        super().handle_one_request()

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        if parsed:
            self.member = self.venue.member_for(urlsplit(self.path).path)
        return parsed

    def log_message(self, format: str, *args: Any) -> None:
        # Keep test output clean; server.requests is the log.
        return

    def do_GET(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def do_PATCH(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # Malformed requests and unknown methods get an Azure-style JSON error, not an HTML page.
        self.close_connection = True
        if self.member is None:
            # No path was parsed; a lone server still answers as itself, a group as nobody.
            self.member = self.venue.member_for("")
        self._send(error(code, str(code), message or payloads.default_message(code)))

    # -- request flow ----------------------------------------------------------------

    def _dispatch(self) -> None:
        try:
            body = self._read_body()
            if body is None:
                return
            if self.member is None:
                # A path no member of a group serves; nobody records it.
                self._send(NOT_FOUND)
                return
            incoming = Incoming(self.command, self.path, tuple(self.headers.items()), body)
            self._play(self.member.receive(incoming), self.member)
        except OSError:
            # The client went away (or the server is stopping); there is nobody to answer.
            self.close_connection = True

    def _play(self, step: Step, member: Responder) -> None:
        if isinstance(step, Delayed):
            if self.venue.wait_unless_stopped(step.seconds):
                self.close_connection = True
                return
            step = step.step
        if isinstance(step, Wait):
            if self.venue.wait_unless_stopped(step.seconds):
                self.close_connection = True
                return
            step = member.respond(step.exchange)
        if isinstance(step, Hold):
            self._send(member.respond(step.exchange), hold=step.action)
        elif isinstance(step, Reset):
            self._reset_connection()
        elif isinstance(step, Cut):
            self._send(step.response, cut=step)
        else:
            self._send(step)

    def _reset_connection(self) -> None:
        self.close_connection = True
        # SO_LINGER on with a zero timeout turns close() into an RST instead of a FIN.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # The socket keeps its descriptor open while a file made from it is open, so close rfile first.
        self.rfile.close()
        self.connection.close()

    # -- writing answers -------------------------------------------------------------

    def _send(self, response: Response, *, cut: Cut | None = None, hold: HoldStream | None = None) -> None:
        body = response.body
        if isinstance(body, EventStream):
            self._send_events(response.status, body, response.headers, cut, hold)
        elif isinstance(body, JsonBody):
            data = json.dumps(body.value, separators=(",", ":")).encode()
            self._send_bytes(response.status, data, _JSON_DEFAULTS, response.headers, cut)
        elif isinstance(body, RawBody):
            defaults = {"content-type": body.content_type}
            self._send_bytes(response.status, body.data, defaults, response.headers, cut)
        else:
            self._start_answer(response.status, response.headers, _JSON_DEFAULTS, success=True)
            if response.status not in (204, 205, 304):
                self.send_header("content-length", "0")
            self.end_headers()

    def _start_answer(
        self, status: int, headers: Mapping[str, str], defaults: Mapping[str, str], *, success: bool
    ) -> None:
        """Send the status line and headers but not the framing ones; ``success=False`` keeps a 2xx out of `served`."""
        if self.member is not None:
            self.member.note_answer(status, success=success)
        self.send_response(status)
        request_id = str(uuid.uuid4())
        answerer = self.member.name if self.member is not None else self.venue.name
        base = {"x-fake-server": answerer, "x-request-id": request_id, "apim-request-id": request_id}
        # Keyed by lower-cased name so a scripted header replaces a default whatever its case.
        merged: dict[str, tuple[str, str]] = {}
        for key, value in (*base.items(), *defaults.items(), *headers.items()):
            # The handler owns body framing; a scripted header must not contradict it.
            if key.lower() not in _FRAMING_HEADERS:
                merged[key.lower()] = (key, value)
        for key, value in merged.values():
            self.send_header(key, value)

    def _end_headers_for_close(self) -> None:
        # Neither content-length nor transfer-encoding: the body ends where the connection does.
        self.send_header("connection", "close")
        self.end_headers()

    def _send_bytes(
        self, status: int, data: bytes, defaults: Mapping[str, str], headers: Mapping[str, str], cut: Cut | None
    ) -> None:
        self._start_answer(status, headers, defaults, success=cut is None)
        if cut is None:
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return
        if cut.framing == "close":
            self._end_headers_for_close()
            if cut.after == 0:
                return
        else:
            # Announce the full length but send half, so the client sees a truncated body.
            self.send_header("content-length", str(len(data)))
            self.end_headers()
        self.wfile.write(data[: len(data) // 2])
        self.close_connection = True

    def _send_events(
        self, status: int, stream: EventStream, headers: Mapping[str, str], cut: Cut | None, hold: HoldStream | None
    ) -> None:
        self._start_answer(status, headers, _STREAM_DEFAULTS, success=cut is None)
        chunked = cut is None or cut.framing == "framed"
        if chunked:
            self.send_header("transfer-encoding", "chunked")
            self.end_headers()
        else:
            self._end_headers_for_close()
        events = stream.events
        limit = len(events) if cut is None else min(cut.after, len(events))
        sent = 0
        while sent < limit:
            if sent > 0 and self.venue.wait_unless_stopped(stream.delay):
                break
            if hold is not None and sent == hold.after and not self._released(hold):
                break
            event = events[sent]
            # One write per event (one HTTP chunk when chunked), so the client can read it right away.
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event) if chunked else event)
            sent += 1
        if cut is None and sent == len(events):
            self.wfile.write(b"0\r\n\r\n")
            return
        # Cut on purpose, a hold not released, or the server is stopping: close without the final zero-length chunk.
        self.close_connection = True

    def _released(self, hold: HoldStream) -> bool:
        """Wait for the test to release ``hold``; False when its timeout passes or the server stops first."""
        deadline = time.monotonic() + hold.timeout
        while not hold.release.wait(min(_HOLD_POLL, max(deadline - time.monotonic(), 0.0))):
            if self.venue.wait_unless_stopped(0) or time.monotonic() >= deadline:
                return False
        return True

    # -- reading requests ------------------------------------------------------------

    def _read_body(self) -> bytes | None:
        """Read the request body; None when it cannot be read (an answer was sent if useful)."""
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            return self._read_chunked_body()
        length_header = self.headers.get("content-length")
        if length_header is None:
            return b""
        length = _size(length_header, 10)
        if length < 0:
            self._refuse_body("The Content-Length header is invalid.")
            return None
        body = self.rfile.read(length)
        if len(body) < length:
            self.close_connection = True
            return None
        return body

    def _read_chunked_body(self) -> bytes | None:
        parts: list[bytes] = []
        while True:
            line = self.rfile.readline(65537)
            size = _size(line.split(b";", 1)[0].strip(), 16)
            if size < 0:
                self._refuse_body("The chunked request body is malformed.")
                return None
            if size == 0:
                # Skip trailer fields up to the blank line that ends the body.
                while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                    pass
                return b"".join(parts)
            chunk = self.rfile.read(size)
            self.rfile.readline(65537)
            if len(chunk) < size:
                self.close_connection = True
                return None
            parts.append(chunk)

    def _refuse_body(self, problem: str) -> None:
        # The rest of the connection cannot be parsed after a body of unknown length: answer, then close.
        self.close_connection = True
        self._send(error(400, "BadRequest", problem))


def _size(text: str | bytes, base: int) -> int:
    """A length header or chunk size as an int; -1 when it is not a number."""
    try:
        return int(text, base)
    except ValueError:
        return -1
