"""The fake Azure OpenAI HTTP server: routing, checks, budget and scripted faults."""

from __future__ import annotations

import collections
import contextlib
import json
import math
import re
import socket
import struct
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast
from urllib.parse import parse_qsl, unquote, urlsplit

from openai_lb.testing import _payloads as payloads
from openai_lb.testing._actions import (
    ACTION_TYPES,
    Action,
    CutStream,
    RecordedRequest,
    Reply,
    ResetConnection,
    Stall,
)

if TYPE_CHECKING:
    from openai_lb.testing._group import FakeAzureGroup

_HOST = "127.0.0.1"

# How often the accept loop checks for shutdown; it bounds how long stop() waits for the loop.
_POLL_INTERVAL = 0.05

_Kind = Literal["chat", "embeddings", "responses", "files", "models"]

# Headers that frame the body; the server always sets them itself.
_FRAMING_HEADERS = frozenset({"content-length", "transfer-encoding"})

# Kinds whose request body must be a JSON object.
_JSON_KINDS = frozenset({"chat", "embeddings", "responses"})

# Operation names Azure puts in its 429 messages.
_OPERATIONS: dict[_Kind | None, str] = {
    "chat": "ChatCompletions_Create",
    "embeddings": "Embeddings_Create",
    "responses": "Responses_Create",
    "files": "Files_Create",
    "models": "Models_List",
    None: "ChatCompletions_Create",
}

_DEPLOYMENT_ROUTE = re.compile(r"/openai/deployments/(?P<deployment>[^/]+)/(?P<rest>chat/completions|embeddings)")

# Routes without a deployment in the path: (method, path) -> (kind, deployment comes from body "model").
_FLAT_ROUTES: dict[tuple[str, str], tuple[_Kind, bool]] = {
    ("POST", "/openai/v1/chat/completions"): ("chat", True),
    ("POST", "/openai/v1/embeddings"): ("embeddings", True),
    ("POST", "/openai/responses"): ("responses", True),
    ("POST", "/openai/v1/responses"): ("responses", True),
    ("POST", "/openai/files"): ("files", False),
    ("POST", "/openai/v1/files"): ("files", False),
    ("GET", "/openai/models"): ("models", False),
    ("GET", "/openai/v1/models"): ("models", False),
}

# Listed by the models endpoint when the server hosts any deployment name.
_DEFAULT_MODELS = ("gpt-4o", "gpt-4o-mini", "text-embedding-3-small")


@dataclass(frozen=True, slots=True)
class _Route:
    kind: _Kind
    path_deployment: str | None
    model_in_body: bool

    @property
    def per_deployment(self) -> bool:
        return self.path_deployment is not None or self.model_in_body


def _match_route(method: str, path: str) -> _Route | None:
    flat = _FLAT_ROUTES.get((method, path))
    if flat is not None:
        return _Route(kind=flat[0], path_deployment=None, model_in_body=flat[1])
    match = _DEPLOYMENT_ROUTE.fullmatch(path)
    if method != "POST" or match is None:
        return None
    kind: _Kind = "chat" if match["rest"] == "chat/completions" else "embeddings"
    return _Route(kind=kind, path_deployment=unquote(match["deployment"]), model_in_body=False)


@dataclass(frozen=True, slots=True)
class _Exchange:
    """What the handler knows about a request once it is read and recorded."""

    request: RecordedRequest
    route: _Route | None
    payload: dict[str, Any] | None
    """The JSON body when it is a JSON object, else None."""

    @property
    def operation(self) -> str:
        return _OPERATIONS[self.route.kind if self.route else None]

    @property
    def api_version(self) -> str:
        return self.request.query.get("api-version", "v1")


@dataclass(frozen=True, slots=True)
class _JsonAnswer:
    body: object


@dataclass(frozen=True, slots=True)
class _StreamAnswer:
    events: list[bytes]


_Answer = _JsonAnswer | _StreamAnswer


_Self = TypeVar("_Self", bound="_StartStop")


class _StartStop:
    """``with`` support for anything that has ``start`` and ``stop``."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self: _Self) -> _Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class FakeAzureOpenAI(_StartStop):
    """Serve a fake Azure OpenAI resource on 127.0.0.1 in a background thread.

    It answers chat completions (plain and streamed), embeddings, the Responses API,
    file uploads and the models list in shapes the real ``openai`` SDK parses, checks
    keys, deployments and an optional request budget like Azure does, records every
    request, and plays scripted faults (`Reply`, `ResetConnection`, `CutStream`,
    `Stall`) one per request. The assistant text of every answer is ``"{name}:{deployment}"``
    so a test can tell which server and deployment answered.

    A request goes through: path prefix (404 ``"404"``), then the next scripted action
    if any, then key or token (401), route (404 ``"404"``), JSON body (400), deployment
    (404 ``DeploymentNotFound``), the request's fields (400 ``BadRequest``, e.g. a chat
    completion without ``messages``), budget (429) and finally the normal answer.

    Args:
        name: Told back in the ``x-fake-server`` header and in every assistant text.
        deployments: Deployment names hosted; None hosts any name.
        api_keys: Accepted ``api-key`` header values. With ``tokens`` also None, no auth check.
        tokens: Accepted ``Authorization: Bearer`` tokens.
        path_prefix: A path every request must start with, like an API gateway's (e.g. ``"/team-a"``).
        budget: Requests accepted per window across all deployments; None means unlimited.
        window: Length in seconds of the fixed budget windows, the first starting at the
            first budgeted request after `start` or `reset`.
        stream_chunks: Content events per streamed answer.
        chunk_delay: Seconds between streamed events.
        clock: Monotonic clock for the budget windows; tests pass a fake one.

    The attributes of the same names may be changed while the server runs; each
    request reads them afresh. To serve several servers on one port, told apart by
    their ``path_prefix``, give them to a `FakeAzureGroup` instead of starting them.
    """

    def __init__(
        self,
        *,
        name: str = "fake",
        deployments: Iterable[str] | None = None,
        api_keys: Iterable[str] | None = None,
        tokens: Iterable[str] | None = None,
        path_prefix: str = "",
        budget: int | None = None,
        window: float = 60.0,
        stream_chunks: int = 3,
        chunk_delay: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if budget is not None and (not isinstance(budget, int) or budget < 0):
            raise ValueError(f"budget must be None or an int >= 0, got {budget!r}")
        if not window > 0 or not math.isfinite(window):
            raise ValueError(f"window must be a finite number of seconds > 0, got {window!r}")
        if not isinstance(stream_chunks, int) or stream_chunks < 1:
            raise ValueError(f"stream_chunks must be an int >= 1, got {stream_chunks!r}")
        if not chunk_delay >= 0 or not math.isfinite(chunk_delay):
            raise ValueError(f"chunk_delay must be a finite number >= 0, got {chunk_delay!r}")
        self.name = name
        self.deployments = _name_set("deployments", deployments)
        self.api_keys = _name_set("api_keys", api_keys)
        self.tokens = _name_set("tokens", tokens)
        self.path_prefix = _normalize_prefix(path_prefix)
        self.budget = budget
        self.window = float(window)
        self.stream_chunks = stream_chunks
        self.chunk_delay = float(chunk_delay)
        self._clock = clock

        # Guards everything below that handler threads touch.
        self._lock = threading.Lock()
        self._script: collections.deque[Action] = collections.deque()
        self._records: list[RecordedRequest] = []
        self._served = 0
        self._rejected = 0
        self._answers: list[tuple[float, int]] = []
        self._window_start: float | None = None
        self._window_used = 0

        # Serializes start(), stop() and joining or leaving a group so that concurrent calls cannot leak a server.
        self._lifecycle = threading.Lock()
        self._httpd: _HTTPServer | None = None
        self._group: FakeAzureGroup | None = None
        """The running group this server answers in, if any."""
        self._port: int | None = None

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Bind a free port on 127.0.0.1 and start serving (does nothing if already serving).

        Raises `RuntimeError` while the server answers in a running `FakeAzureGroup`.
        """
        with self._lifecycle:
            if self._httpd is not None:
                return
            if self._group is not None:
                raise RuntimeError(f"{self!r} is serving in {self._group!r}; start and stop the group instead")
            self._restart_window()
            # A lone server answers every path itself: a path outside its prefix gets its own 404.
            httpd = _HTTPServer(lambda path: self, name=self.name, thread_name=f"FakeAzureOpenAI({self.name})")
            httpd.serve_in_background()
            self._httpd, self._port = httpd, httpd.port

    def stop(self) -> None:
        """Stop serving and drop open connections, within a fraction of a second (idempotent).

        Does nothing while the server answers in a `FakeAzureGroup`: stop the group instead.
        """
        with self._lifecycle:
            httpd, self._httpd = self._httpd, None
            if httpd is not None:
                httpd.close()

    def __repr__(self) -> str:
        where = self.url if self._port is not None else "not started"
        return f"FakeAzureOpenAI(name={self.name!r}, {where})"

    # -- public state ----------------------------------------------------------------

    @property
    def port(self) -> int:
        """The TCP port the server listens on, its group's while grouped (`RuntimeError` before `start`)."""
        if self._port is None:
            raise RuntimeError("FakeAzureOpenAI has not been started; use start() or a with block")
        return self._port

    @property
    def url(self) -> str:
        """The endpoint to give a client: ``http://127.0.0.1:<port>`` plus the path prefix."""
        return f"http://{_HOST}:{self.port}{self.path_prefix}"

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of every request received so far, in arrival order."""
        with self._lock:
            return list(self._records)

    @property
    def served(self) -> int:
        """How many 2xx answers the server has started sending (CutStream answers excluded)."""
        with self._lock:
            return self._served

    @property
    def answers(self) -> list[tuple[float, int]]:
        """``(clock reading, status)`` of every answer started, in order: a timeline for benchmarks."""
        with self._lock:
            return list(self._answers)

    @property
    def rejected(self) -> int:
        """How many requests the budget turned away with 429."""
        with self._lock:
            return self._rejected

    @property
    def pending_actions(self) -> int:
        """How many scripted actions are still waiting for a request."""
        with self._lock:
            return len(self._script)

    def script(self, *actions: Action) -> None:
        """Queue actions that the next requests get, one each, in order; later requests are normal."""
        for action in actions:
            if not isinstance(action, ACTION_TYPES):
                raise TypeError(f"expected Reply, ResetConnection, CutStream or Stall, got {action!r}")
        with self._lock:
            self._script.extend(actions)

    def reset(self) -> None:
        """Forget scripted actions, recorded requests, the budget window and the counters."""
        with self._lock:
            self._script.clear()
            self._records.clear()
            self._served = 0
            self._rejected = 0
            self._answers.clear()
            self._window_start = None
            self._window_used = 0

    # -- used by FakeAzureGroup ------------------------------------------------------

    def _join_group(self, group: FakeAzureGroup, port: int) -> None:
        """Start answering in ``group``, which listens on ``port``, as `start` would alone."""
        with self._lifecycle:
            problem = self._busy_problem()
            if problem is not None:
                raise ValueError(problem)
            self._restart_window()
            self._group, self._port = group, port

    def _leave_group(self, group: FakeAzureGroup) -> None:
        with self._lifecycle:
            if self._group is group:
                # Like a stopped lone server, the port stays so that url still tells where it was served.
                self._group = None

    def _busy_problem(self) -> str | None:
        """Why the server cannot join a group now, or None if it can."""
        if self._httpd is not None:
            return f"{self!r} is already running on its own; stop it before serving it in a FakeAzureGroup"
        if self._group is not None:
            return f"{self!r} is already serving in {self._group!r}"
        return None

    def _restart_window(self) -> None:
        with self._lock:
            self._window_start = None
            self._window_used = 0

    # -- used by handler threads -----------------------------------------------------

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._records.append(request)

    def _next_action(self) -> Action | None:
        with self._lock:
            return self._script.popleft() if self._script else None

    def _note_answer(self, status: int, *, success: bool) -> None:
        with self._lock:
            self._answers.append((self._clock(), status))
            if success and 200 <= status < 300:
                self._served += 1

    def _inner_path(self, path: str) -> str | None:
        """Strip the path prefix; None when the path does not start with it."""
        if not self.path_prefix:
            return path
        if path == self.path_prefix or path.startswith(self.path_prefix + "/"):
            return path[len(self.path_prefix) :]
        return None

    def _authorized(self, headers: Mapping[str, str]) -> bool:
        if self.api_keys is None and self.tokens is None:
            return True
        if self.api_keys is not None and headers.get("api-key") in self.api_keys:
            return True
        scheme, _, token = headers.get("authorization", "").partition(" ")
        return self.tokens is not None and scheme.lower() == "bearer" and token.strip() in self.tokens

    def _hosts(self, deployment: str) -> bool:
        return self.deployments is None or deployment in self.deployments

    def _take_budget(self) -> tuple[float | None, int | None]:
        """Spend one request of the budget.

        Returns (seconds until the window resets if over budget else None, requests left
        in the window or None without a budget).
        """
        if self.budget is None:
            return None, None
        with self._lock:
            now = self._clock()
            if self._window_start is None:
                self._window_start = now
                self._window_used = 0
            elif now >= self._window_start + self.window:
                # Windows are fixed: they tile time from the first request, they do not slide.
                skipped = math.floor((now - self._window_start) / self.window)
                self._window_start += skipped * self.window
                self._window_used = 0
            if self._window_used >= self.budget:
                self._rejected += 1
                # min() keeps the wait sane if a test clock moves backwards.
                return min(self.window, self._window_start + self.window - now), 0
            self._window_used += 1
            return None, self.budget - self._window_used

    def _models(self) -> list[str]:
        return sorted(self.deployments) if self.deployments is not None else list(_DEFAULT_MODELS)


def closed_port_url() -> str:
    """Return ``http://127.0.0.1:<port>`` for a port nothing listens on, for connection-refused tests.

    The port comes from the OS and is released at once, so another process could
    take it in between; on a test machine that is very unlikely.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((_HOST, 0))
        port = probe.getsockname()[1]
    return f"http://{_HOST}:{port}"


def _name_set(what: str, names: Iterable[str] | None) -> frozenset[str] | None:
    if names is None:
        return None
    # A bare string is iterable too, but would silently become a set of characters.
    if isinstance(names, str):
        raise TypeError(f"{what} must be a collection of strings, not a single string")
    return frozenset(names)


def _normalize_prefix(prefix: str) -> str:
    prefix = prefix.strip().rstrip("/")
    if prefix and not prefix.startswith("/"):
        prefix = "/" + prefix
    return prefix


def _quiet_shutdown(connection: socket.socket) -> None:
    # OSError means it is already closed by its handler or by the peer: nothing left to wake.
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)


class _HTTPServer(ThreadingHTTPServer):
    """One listening port on 127.0.0.1 and its threads, for a lone server or a whole group.

    ``member_for`` is the only difference between the two: it chooses, from a request's
    path, the `FakeAzureOpenAI` that answers it, or None when no member serves that path.
    The server also owns the open connections and the stopping flag, so that `close`
    ends idle keep-alive connections, stalls and slow streams of every member at once.
    """

    daemon_threads = True
    # The default backlog of 5 makes bursts of new connections (hundreds of tasks at once) wait for SYN retries.
    request_queue_size = 2048
    # Never join handler threads on close: idle keep-alive connections would make stop() hang.
    block_on_close = False

    def __init__(self, member_for: Callable[[str], FakeAzureOpenAI | None], *, name: str, thread_name: str) -> None:
        self.member_for = member_for
        self.name = name
        """Told back in the ``x-fake-server`` header of answers that no member gives."""
        self.stopping = threading.Event()
        # Guards _connections and the check of `stopping` that goes with it.
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": _POLL_INTERVAL}, name=thread_name, daemon=True
        )
        super().__init__((_HOST, 0), _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def serve_in_background(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop accepting, close the port and drop every open connection, within a fraction of a second."""
        with self._lock:
            # Set under the lock so a connection accepted from now on is dropped by track().
            self.stopping.set()
            connections = list(self._connections)
        if self._thread.ident is not None:
            self.shutdown()
        self.server_close()
        # Handler threads of idle keep-alive connections block reading the next request;
        # shutting their sockets down wakes them with EOF so they end now, not when the client leaves.
        for connection in connections:
            _quiet_shutdown(connection)
        if self._thread.ident is not None:
            self._thread.join(timeout=1.0)

    def track(self, connection: socket.socket) -> None:
        with self._lock:
            stopping = self.stopping.is_set()
            if not stopping:
                self._connections.add(connection)
        if stopping:
            _quiet_shutdown(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)

    def wait_unless_stopped(self, seconds: float) -> bool:
        """Sleep ``seconds``; return True at once if the server stops meanwhile."""
        return self.stopping.wait(seconds) if seconds > 0 else self.stopping.is_set()

    def server_bind(self) -> None:
        # HTTPServer.server_bind would call socket.getfqdn(), a reverse DNS lookup we neither need nor want.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up or time out are part of the tests; only report real bugs.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeAzureOpenAI"
    # Stream events are small writes; without TCP_NODELAY Nagle could hold them back.
    disable_nagle_algorithm = True

    listener: _HTTPServer
    member: FakeAzureOpenAI | None
    """The server answering the current request, chosen afresh for each request from its path."""

    def setup(self) -> None:
        super().setup()
        self.listener = cast(_HTTPServer, self.server)
        self.member = None
        self.listener.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.listener.untrack(self.connection)

    @property
    def fake(self) -> FakeAzureOpenAI:
        """The member answering the current request; only used once one was found."""
        if self.member is None:
            raise RuntimeError("no FakeAzureOpenAI serves this request's path")
        return self.member

    def handle_one_request(self) -> None:
        # Requests on one keep-alive connection may go to different members of a group.
        self.member = None
        super().handle_one_request()

    def parse_request(self) -> bool:
        parsed = super().parse_request()
        if parsed:
            self.member = self.listener.member_for(urlsplit(self.path).path)
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
            self.member = self.listener.member_for("")
        self._send_json(code, payloads.error_body(str(code), message or payloads.default_message(code)))

    # -- request flow ----------------------------------------------------------------

    def _dispatch(self) -> None:
        try:
            if self.member is None:
                self._answer_unclaimed()
            else:
                self._handle_request()
        except OSError:
            # The client went away (or the server is stopping); there is nobody to answer.
            self.close_connection = True

    def _answer_unclaimed(self) -> None:
        """Answer a request for a path that no member of a group serves; nobody records it."""
        if self._read_body() is not None:
            self._send_error(404, "404", payloads.NOT_FOUND_MESSAGE)

    def _handle_request(self) -> None:
        fake = self.fake
        body = self._read_body()
        if body is None:
            return
        exchange = self._record(body)
        if fake._inner_path(exchange.request.path) is None:
            self._send_error(404, "404", payloads.NOT_FOUND_MESSAGE)
            return
        action = fake._next_action()
        if isinstance(action, Reply):
            self._send_reply(action, exchange)
            return
        if isinstance(action, ResetConnection):
            self._reset_connection()
            return
        if isinstance(action, CutStream):
            self._send_answer(self._answer_or_empty(exchange, stream=True), cut_after=action.after)
            return
        if isinstance(action, Stall) and self.listener.wait_unless_stopped(action.seconds):
            self.close_connection = True
            return
        self._answer_normally(exchange)

    def _record(self, body: bytes) -> _Exchange:
        split = urlsplit(self.path)
        headers: dict[str, str] = {}
        for key, value in self.headers.items():
            lowered = key.lower()
            headers[lowered] = f"{headers[lowered]}, {value}" if lowered in headers else value
        inner = self.fake._inner_path(split.path)
        route = _match_route(self.command, inner) if inner is not None else None
        payload: dict[str, Any] | None = None
        if route is not None and route.kind in _JSON_KINDS:
            try:
                parsed = json.loads(body)
            except ValueError:
                parsed = None
            payload = parsed if isinstance(parsed, dict) else None
        deployment = route.path_deployment if route else None
        if route is not None and route.model_in_body and payload is not None:
            model = payload.get("model")
            deployment = model if isinstance(model, str) else None
        request = RecordedRequest(
            method=self.command,
            path=split.path,
            query=dict(parse_qsl(split.query, keep_blank_values=True)),
            headers=headers,
            body=body,
            deployment=deployment,
        )
        self.fake._record(request)
        return _Exchange(request=request, route=route, payload=payload)

    def _answer_normally(self, exchange: _Exchange) -> None:
        fake, route, payload = self.fake, exchange.route, exchange.payload
        if not fake._authorized(exchange.request.headers):
            self._send_error(401, "401", payloads.ACCESS_DENIED_MESSAGE)
            return
        if route is None:
            self._send_error(404, "404", payloads.NOT_FOUND_MESSAGE)
            return
        if route.kind in _JSON_KINDS and payload is None:
            self._send_error(400, "BadRequest", "The request body must be a JSON object.")
            return
        if route.per_deployment:
            deployment = exchange.request.deployment
            if deployment is None:
                self._send_error(400, "BadRequest", "The 'model' field is required.")
                return
            if not fake._hosts(deployment):
                self._send_error(404, "DeploymentNotFound", payloads.DEPLOYMENT_NOT_FOUND_MESSAGE)
                return
        try:
            answer = self._build_answer(exchange, stream=False)
        except payloads.BadRequest as problem:
            self._send_error(400, "BadRequest", str(problem))
            return
        wait, remaining = fake._take_budget()
        if wait is not None:
            self._send_rate_limited(exchange, wait)
            return
        extra = {} if remaining is None else {"x-ratelimit-remaining-requests": str(remaining)}
        self._send_answer(answer, headers=extra)

    def _build_answer(self, exchange: _Exchange, *, stream: bool) -> _Answer:
        """Build the endpoint's normal 200 answer; ``stream`` forces SSE where the endpoint has it."""
        route = exchange.route
        if route is None:
            return _JsonAnswer({})
        payload = exchange.payload or {}
        deployment = exchange.request.deployment or ""
        content = f"{self.fake.name}:{deployment}"
        stream = stream or payload.get("stream") is True
        if route.kind == "chat":
            messages = payload.get("messages")
            if messages is None:
                # Azure validates the body only after the key and the deployment, so a body of {}
                # is a free probe: 404 DeploymentNotFound when the deployment is missing, else this 400.
                raise payloads.BadRequest("Missing required parameter: 'messages'.")
            if not isinstance(messages, list):
                raise payloads.BadRequest("Invalid type for 'messages': expected an array.")
            prompt_tokens = payloads.estimate_tokens(messages)
            if stream:
                options = payload.get("stream_options")
                include_usage = isinstance(options, dict) and options.get("include_usage") is True
                return _StreamAnswer(
                    payloads.chat_completion_events(
                        content, deployment, self.fake.stream_chunks, prompt_tokens, include_usage
                    )
                )
            return _JsonAnswer(payloads.chat_completion(content, deployment, prompt_tokens))
        if route.kind == "responses":
            prompt_tokens = payloads.estimate_tokens(payload.get("input", ""))
            if stream:
                return _StreamAnswer(
                    payloads.response_events(content, deployment, self.fake.stream_chunks, prompt_tokens)
                )
            return _JsonAnswer(payloads.response_object(content, deployment, prompt_tokens))
        if route.kind == "embeddings":
            return _JsonAnswer(payloads.embeddings(deployment, payload))
        if route.kind == "files":
            content_type = exchange.request.headers.get("content-type", "")
            return _JsonAnswer(payloads.file_upload(content_type, exchange.request.body))
        return _JsonAnswer(payloads.models_list(self.fake._models()))

    def _answer_or_empty(self, exchange: _Exchange, *, stream: bool) -> _Answer:
        # Scripted successes skip the checks, so a request the endpoint cannot answer gets {}.
        try:
            return self._build_answer(exchange, stream=stream)
        except payloads.BadRequest:
            return _JsonAnswer({})

    # -- scripted faults -------------------------------------------------------------

    def _send_reply(self, reply: Reply, exchange: _Exchange) -> None:
        status = reply.status
        if reply.json is not None:
            self._send_json(status, reply.json, reply.headers)
        elif 200 <= status < 300 and status not in (204, 205):
            self._send_answer(self._answer_or_empty(exchange, stream=False), status=status, headers=reply.headers)
        elif status >= 400:
            body = payloads.status_error_body(status, reply.headers, exchange.operation, exchange.api_version)
            self._send_json(status, body, reply.headers)
        else:
            self._send_empty(status, reply.headers)

    def _reset_connection(self) -> None:
        self.close_connection = True
        # SO_LINGER on with a zero timeout turns close() into an RST instead of a FIN.
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # The socket keeps its descriptor open while a file made from it is open, so close rfile first.
        self.rfile.close()
        self.connection.close()

    # -- writing answers -------------------------------------------------------------

    def _send_error(self, status: int, code: str, message: str) -> None:
        self._send_json(status, payloads.error_body(code, message))

    def _send_rate_limited(self, exchange: _Exchange, wait: float) -> None:
        # Round to whole microseconds first so float noise (7.0000000001 s) does not add a millisecond.
        wait_ms = max(0, math.ceil(round(wait * 1000, 3)))
        seconds = max(1, math.ceil(wait_ms / 1000))
        message = payloads.rate_limit_message(exchange.operation, exchange.api_version, seconds)
        headers = {
            "retry-after": str(seconds),
            "retry-after-ms": str(wait_ms),
            "x-ratelimit-remaining-requests": "0",
        }
        self._send_json(429, payloads.error_body("429", message), headers)

    def _start_answer(
        self, status: int, headers: Mapping[str, str], defaults: Mapping[str, str], *, success: bool = True
    ) -> None:
        """Send the status line and headers; ``success=False`` keeps a 2xx out of `served`."""
        if self.member is not None:
            self.member._note_answer(status, success=success)
        self.send_response(status)
        request_id = str(uuid.uuid4())
        answerer = self.member.name if self.member is not None else self.listener.name
        base = {"x-fake-server": answerer, "x-request-id": request_id, "apim-request-id": request_id}
        # Keyed by lower-cased name so a scripted header replaces a default whatever its case.
        merged: dict[str, tuple[str, str]] = {}
        for key, value in (*base.items(), *defaults.items(), *headers.items()):
            # The server owns body framing; a scripted header must not contradict it.
            if key.lower() not in _FRAMING_HEADERS:
                merged[key.lower()] = (key, value)
        for key, value in merged.values():
            self.send_header(key, value)

    def _send_json(
        self, status: int, body: object, headers: Mapping[str, str] | None = None, *, cut: bool = False
    ) -> None:
        data = json.dumps(body, separators=(",", ":")).encode()
        self._start_answer(status, headers or {}, {"content-type": "application/json"}, success=not cut)
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        if cut:
            # Announce the full length but send half, so the client sees a truncated body.
            self.wfile.write(data[: len(data) // 2])
            self.close_connection = True
            return
        self.wfile.write(data)

    def _send_empty(self, status: int, headers: Mapping[str, str]) -> None:
        self._start_answer(status, headers, {"content-type": "application/json"})
        if status not in (204, 205, 304):
            self.send_header("content-length", "0")
        self.end_headers()

    def _send_answer(
        self,
        answer: _Answer,
        *,
        status: int = 200,
        headers: Mapping[str, str] | None = None,
        cut_after: int | None = None,
    ) -> None:
        if isinstance(answer, _JsonAnswer):
            self._send_json(status, answer.body, headers, cut=cut_after is not None)
            return
        defaults = {"content-type": "text/event-stream; charset=utf-8", "cache-control": "no-cache"}
        self._start_answer(status, headers or {}, defaults, success=cut_after is None)
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        limit = len(answer.events) if cut_after is None else min(cut_after, len(answer.events))
        sent = 0
        while sent < limit:
            if sent > 0 and self.listener.wait_unless_stopped(self.fake.chunk_delay):
                break
            event = answer.events[sent]
            # One HTTP chunk per event, written at once, so the client can read it right away.
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            sent += 1
        if cut_after is None and sent == len(answer.events):
            self.wfile.write(b"0\r\n\r\n")
            return
        # Cut on purpose, or the server is stopping: close without the final zero-length chunk.
        self.close_connection = True

    # -- reading requests ------------------------------------------------------------

    def _read_body(self) -> bytes | None:
        """Read the request body; None when it cannot be read (an answer was sent if useful)."""
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            return self._read_chunked_body()
        length_header = self.headers.get("content-length")
        if length_header is None:
            return b""
        try:
            length = int(length_header)
        except ValueError:
            length = -1
        if length < 0:
            self.close_connection = True
            self._send_error(400, "BadRequest", "The Content-Length header is invalid.")
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
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                size = -1
            if size < 0:
                self.close_connection = True
                self._send_error(400, "BadRequest", "The chunked request body is malformed.")
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
