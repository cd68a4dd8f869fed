"""The balancing transport, written once for both HTTP stacks and both I/O styles.

httpx (openai 1.x, 2.x) and httpx2 (openai 3.x) share one API but not one class
hierarchy, so ``_httpx.py`` and ``_httpx2.py`` only bind this shell to their module.
The sync and async loops below are the only twins: every decision is in ``_core``.
"""

from __future__ import annotations

import contextvars
import inspect
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ClassVar

import anyio

from ._config import Backend, Policy, header_safe
from ._core import OUTSIDE_THE_BASE, Attempt, Balancer, Call, Clock, SyntheticResponse
from ._errors import ConfigurationError
from ._events import EventHook
from ._framing import EVENT_STREAM, JSON, Framing, framing_of, has_terminal_event, json_complete
from ._health import HealthStore
from ._rewrite import RequestTemplate, by_name, endpoint_path
from ._stacks import HttpStack
from ._stores import resolve_store

__all__ = ["BACKEND_HEADER", "BalancingShell", "client_wait_limit"]

BACKEND_HEADER = "x-openai-lb-backend"
# The SDK's own pool limits: with a custom transport the client's `limits` no longer apply.
_MAX_CONNECTIONS = 1000
_MAX_KEEPALIVE = 100
_URL_CACHE_SIZE = 1024


def client_wait_limit() -> float:
    """The longest Retry-After the installed SDK honours (60 s before the SDK named it)."""
    try:
        from openai._constants import MAX_RETRY_AFTER_DELAY  # type: ignore[attr-defined,unused-ignore]
    except ImportError:
        return 60.0
    return float(MAX_RETRY_AFTER_DELAY)


def _credential(backend: Backend, token: object) -> tuple[bytes, bytes] | None:
    """The backend's own credential header; None when it uses the client's."""
    if backend.azure_ad_token_provider is None:
        return None if backend.api_key is None else (b"api-key", backend.api_key.encode("latin-1"))
    if not isinstance(token, str) or not header_safe(token):
        raise ValueError("the token is not a non-empty string usable in a header")
    return (b"authorization", b"Bearer " + token.encode("latin-1"))


def _refuse_awaitable(token: object, backend: Backend) -> None:
    if inspect.iscoroutine(token):
        token.close()
    raise ConfigurationError(
        f"Backend {backend.name!r}: its azure_ad_token_provider is async; "
        f"use it with AsyncAzureOpenAI or give a sync provider."
    )


class _Waiting:
    """One sync attempt sent from a daemon thread, so that its caller can stop waiting for the headers.

    A blocking read cannot be given a deadline across reads; the thread ends with the HTTP library's
    own timeout, never holds the interpreter at exit, and closes an answer that comes after its caller
    gave up.
    """

    __slots__ = ("_abandoned", "_done", "_lock", "_outcome")

    def __init__(self, send: Callable[[Any], Any], request: Any) -> None:
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._outcome: tuple[bool, Any] | None = None
        self._abandoned = False
        # The caller's context (tracing spans, for one) goes along.
        context = contextvars.copy_context()
        thread = threading.Thread(target=context.run, args=(self._run, send, request), daemon=True)
        thread.name = "openai_lb-attempt"
        thread.start()

    def _run(self, send: Callable[[Any], Any], request: Any) -> None:
        try:
            outcome: tuple[bool, Any] = (True, send(request))
        except BaseException as error:
            outcome = (False, error)
        with self._lock:
            self._outcome = outcome
            abandoned = self._abandoned
        self._done.set()
        if abandoned and outcome[0]:
            outcome[1].close()

    def result(self, timeout: float) -> tuple[bool, Any] | None:
        """(True, the response) or (False, the error) within ``timeout`` seconds; None: given up on."""
        try:
            self._done.wait(timeout)
        finally:
            with self._lock:
                outcome = self._outcome
                self._abandoned = outcome is None
        return outcome


def _token_of(backend: Backend) -> object:
    provider = backend.azure_ad_token_provider
    return None if provider is None else provider()


class BalancingShell:
    """An httpx-style transport that spreads requests over ``backends`` with priority and failover.

    It wraps inner transports (by default the HTTP library's own, one connection pool for
    all backends); pass ``transport=`` / ``async_transport=`` to put your own underneath,
    e.g. a proxy or a ``MockTransport``. A transport given for one style that also serves
    the other (like ``MockTransport``) is used for both. The transport owns its inner
    transports and closes them when it is closed. ``on_event`` takes one hook or several
    (see ``openai_lb.AttemptFinished`` and its siblings).
    """

    _stack: ClassVar[HttpStack]
    """The HTTP library (httpx or httpx2) this shell is bound to."""

    def __init__(
        self,
        backends: Sequence[Backend],
        *,
        transport: Any = None,
        async_transport: Any = None,
        policy: Policy | None = None,
        health_store: HealthStore | str | None = None,
        clock: Clock | None = None,
        wall_clock: Clock | None = None,
        rng: Any = None,
        on_event: EventHook | Iterable[EventHook] | None = None,
    ) -> None:
        options: dict[str, Any] = {
            "policy": policy,
            "store": resolve_store(health_store),
            "rng": rng,
            "on_event": on_event,
        }
        if clock is not None:
            options["clock"] = clock
        if wall_clock is not None:
            options["wall_clock"] = wall_clock
        self.balancer = Balancer(backends, client_wait_limit=client_wait_limit(), **options)
        http = self._stack.module
        if async_transport is None and isinstance(transport, http.AsyncBaseTransport):
            async_transport = transport
        if transport is None and isinstance(async_transport, http.BaseTransport):
            transport = async_transport
        self._sync_inner = transport
        self._async_inner = async_transport
        self._lock = threading.Lock()
        self._urls: dict[str, Any] = {}
        # Set by close(): the connections an attempt still waits on are going away on purpose.
        self._closing = False
        self._endpoints: tuple[bytes, ...] = ()

    @property
    def backends(self) -> tuple[Backend, ...]:
        return self.balancer.backends

    def __repr__(self) -> str:
        return f"{type(self).__name__}([{', '.join(b.name for b in self.backends)}])"

    def add_client_endpoint(self, base_url: Any, azure_endpoint: Any = None) -> None:
        """Tell the transport the SDK base URL (and ``azure_endpoint``) of a client it serves.

        The clients of openai_lb (and clients under ``patch()``) do this themselves. Its path is what
        each backend's URL replaces in that client's requests; without any, the SDK's path is taken
        from the first ``/openai`` segment on, which misroutes an endpoint whose path holds ``/openai/``.
        """
        http = self._stack.module
        azure_path = None if azure_endpoint is None else http.URL(str(azure_endpoint)).raw_path
        path = endpoint_path(http.URL(str(base_url)).raw_path.split(b"?", 1)[0], azure_path)
        with self._lock:
            if path not in self._endpoints:
                self._endpoints = tuple(sorted((*self._endpoints, path), key=len, reverse=True))

    # -- inner transports, made on first use so a sync client never opens an async pool

    def _limits(self) -> Any:
        return self._stack.module.Limits(max_connections=_MAX_CONNECTIONS, max_keepalive_connections=_MAX_KEEPALIVE)

    def _sync_transport(self) -> Any:
        if self._sync_inner is None:
            with self._lock:
                if self._sync_inner is None:
                    self._sync_inner = self._stack.module.HTTPTransport(limits=self._limits())
        return self._sync_inner

    def _async_transport(self) -> Any:
        if self._async_inner is None:
            with self._lock:
                if self._async_inner is None:
                    self._async_inner = self._stack.module.AsyncHTTPTransport(limits=self._limits())
        return self._async_inner

    # -- the pieces both loops share

    def _template(self, request: Any, body: bytes) -> RequestTemplate:
        return RequestTemplate(
            request.url.raw_path,
            self._stack.read_headers(request.headers),
            body,
            self._endpoints,
            method=request.method,
            affinity=self.balancer.policy.affinity,
        )

    def _build(self, request: Any, template: RequestTemplate, attempt: Attempt, credential: Any) -> Any:
        outgoing = template.for_backend(attempt.backend, attempt.deployment, credential)
        http = self._stack.module
        # Parsing a URL string costs more than the rest of an attempt; SDK paths repeat, so cache them.
        url = self._urls.get(outgoing.url)
        if url is None:
            if len(self._urls) >= _URL_CACHE_SIZE:
                self._urls.clear()
            url = self._urls[outgoing.url] = http.URL(outgoing.url)
        # A stream (not content=) keeps the library from re-deriving headers the template already set.
        body = b"" if outgoing.body is None else outgoing.body
        attempt_request = http.Request(
            request.method,
            url,
            headers=self._stack.build_headers(outgoing.headers),
            stream=http.ByteStream(body),
            extensions=request.extensions,
        )
        attempt_request.read()  # inner transports (mocks especially) may read `.content`
        return attempt_request

    def _answer(self, request: Any, answer: SyntheticResponse) -> Any:
        return self._stack.module.Response(answer.status, headers=answer.headers, content=answer.body, request=request)

    def _deliver(self, request: Any, response: Any, framing: Framing, call: Call, attempt: Attempt) -> Any:
        response.headers[BACKEND_HEADER] = attempt.backend.name
        if framing.media_type != EVENT_STREAM:
            return response
        if framing.close_delimited(response.http_version) and has_terminal_event(request.url.path):
            response.stream = self._stack.checked_stream(response.stream, lambda error: call.cut(attempt, error))
        tap = call.stream_tap(attempt, response.status_code)
        if tap is not None:
            response.stream = self._stack.tapped_stream(response.stream, tap)
        return response

    def _framing(self, response: Any, call: Call, status: int) -> tuple[dict[bytes, bytes], Framing, bool]:
        """The answer's headers by name (made once: the core reads its headroom from them), its framing,
        and whether to read its body before deciding: a JSON answer is read whole (the SDK reads it whole
        anyway), so a cut anywhere in it still fails over."""
        named = by_name(self._stack.read_headers(response.headers))
        framing = framing_of(named)
        return named, framing, framing.media_type == JSON or call.needs_body(status)

    def _check_whole(self, response: Any, framing: Framing, body: bytes | None) -> None:
        """A JSON answer framed only by the connection closing must parse, or it was cut: fail over (the loop
        closes the answer, in its own I/O style: a sync close of an async answer raises)."""
        if (
            body is not None
            and framing.media_type == JSON
            and framing.close_delimited(response.http_version)
            and not json_complete(body)
        ):
            raise self._stack.module.RemoteProtocolError("the answer ended before its JSON did (connection cut)")

    def _timed_out(self, limit: float) -> BaseException:
        error: BaseException = self._stack.module.ReadTimeout(
            f"no response headers within {limit} s (Policy.headers_timeout)"
        )
        return error

    def _send(self, inner: Any, request: Any) -> Any:
        limit = self.balancer.policy.headers_timeout
        if limit is None:
            return inner.handle_request(request)
        outcome = _Waiting(inner.handle_request, request).result(limit)
        if outcome is None:
            raise self._timed_out(limit)
        sent, value = outcome
        if not sent:
            raise value
        return value

    async def _asend(self, inner: Any, request: Any) -> Any:
        limit = self.balancer.policy.headers_timeout
        if limit is None:
            return await inner.handle_async_request(request)
        with anyio.move_on_after(limit):
            return await inner.handle_async_request(request)
        raise self._timed_out(limit)

    # -- the two loops: send, report, and either deliver or fail over

    def _token_failed(self, call: Call, attempt: Attempt, error: Exception) -> None:
        # Skipped for this call only: the health store is shared by every client of this URL, and a
        # credential problem of one client is not an outage of the backend. The exception's text may
        # quote what the provider was given; the events and the log name its type only.
        call.skip(attempt, error)

    def _sent_failed(self, call: Call, attempt: Attempt, error: BaseException) -> None:
        if self._closing or isinstance(error, self._stack.local_errors):
            # A client closed under a request in flight, or this machine's error: no backend is to blame.
            call.release(attempt, error)
            raise error
        call.report_error(attempt, error)

    def handle_request(self, request: Any) -> Any:
        template = self._template(request, request.read())
        if template.outside:
            return self._answer(request, OUTSIDE_THE_BASE)
        call = self.balancer.begin(template.deployment, template.stateful, template.body, template.output_tokens)
        inner = self._sync_transport()
        while True:
            step = call.next()
            if isinstance(step, SyntheticResponse):
                return self._answer(request, step)
            try:
                token = _token_of(step.backend)
                if inspect.isawaitable(token):
                    _refuse_awaitable(token, step.backend)
                credential = _credential(step.backend, token)
            except ConfigurationError as error:
                call.release(step, error)
                raise
            except Exception as error:
                self._token_failed(call, step, error)
                continue
            except BaseException as error:
                call.release(step, error)
                raise
            response = None
            try:
                response = self._send(inner, self._build(request, template, step, credential))
                status = response.status_code
                named, framing, whole = self._framing(response, call, status)
                body = response.read() if whole else None
                self._check_whole(response, framing, body)
            except self._stack.failover_errors as error:
                if response is not None:
                    response.close()
                self._sent_failed(call, step, error)
                continue
            except BaseException as error:
                if response is not None:
                    response.close()
                call.release(step, error)
                raise
            if call.report(step, status, response.headers, body, named):
                return self._deliver(request, response, framing, call, step)
            response.close()

    async def handle_async_request(self, request: Any) -> Any:
        template = self._template(request, await request.aread())
        if template.outside:
            return self._answer(request, OUTSIDE_THE_BASE)
        call = self.balancer.begin(template.deployment, template.stateful, template.body, template.output_tokens)
        inner = self._async_transport()
        while True:
            step = call.next()
            if isinstance(step, SyntheticResponse):
                return self._answer(request, step)
            try:
                token = _token_of(step.backend)
                if inspect.isawaitable(token):
                    token = await token
                credential = _credential(step.backend, token)
            except Exception as error:
                self._token_failed(call, step, error)
                continue
            except BaseException as error:  # a cancellation while awaiting the token
                call.release(step, error)
                raise
            response = None
            try:
                response = await self._asend(inner, self._build(request, template, step, credential))
                status = response.status_code
                named, framing, whole = self._framing(response, call, status)
                body = await response.aread() if whole else None
                self._check_whole(response, framing, body)
            except self._stack.failover_errors as error:
                if response is not None:
                    await response.aclose()
                self._sent_failed(call, step, error)
                continue
            except BaseException as error:  # cancellation included: the attempt is no longer in flight
                call.release(step, error)
                raise
            if call.report(step, status, response.headers, body, named):
                return self._deliver(request, response, framing, call, step)
            await response.aclose()

    def close(self) -> None:
        self._closing = True
        if self._sync_inner is not None:
            self._sync_inner.close()

    async def aclose(self) -> None:
        self._closing = True
        if self._async_inner is not None:
            await self._async_inner.aclose()
