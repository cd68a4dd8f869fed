"""``openai-lb check``: probe every configured backend with requests that cost no tokens.

Per backend, ``GET {url}/openai/models?api-version=V`` tells whether it is reachable,
whether it accepts the credential (401/403: rejected; 2xx or 429: accepted) and how long it
takes. Per deployment, ``POST {url}/openai/deployments/{name}/chat/completions`` with the body
``{}``: Azure checks the key and the deployment before the body, so a missing deployment
answers 404 ``DeploymentNotFound`` and an existing one 400 (``messages`` missing), and no
model ever runs. When the models route tells nothing about the credential (an API gateway
without it answers 404), the deployment probes decide.

``check_backends(load_backends("backends.toml"), api_version="2024-10-21").ok``

The results are frozen dataclasses that never hold a credential, and whose text (server
messages included) is safe to print; rendering them is the CLI's job.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import queue
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar
from urllib.parse import quote, quote_plus, urlsplit

from ._config import Backend, header_safe
from ._stacks import sdk_stack

__all__ = [
    "AD_TOKEN_ENV",
    "API_KEY_ENV",
    "API_VERSION_ENV",
    "DEFAULT_API_VERSION",
    "BackendCheck",
    "CheckReport",
    "DeploymentCheck",
    "check_backends",
    "deployments_to_check",
    "proxy_problem",
]

DEFAULT_API_VERSION = "2024-10-21"
"""The GA api-version used when neither ``--api-version`` nor ``$OPENAI_API_VERSION`` is given."""
API_VERSION_ENV = "OPENAI_API_VERSION"
API_KEY_ENV = "AZURE_OPENAI_API_KEY"
"""Where a backend without a credential of its own takes a key, like the SDK does."""
AD_TOKEN_ENV = "AZURE_OPENAI_AD_TOKEN"
"""Where such a backend takes an Entra ID bearer token when there is no such key."""

_MAX_PARALLEL = 8
# Server text is shown to the user; a runaway error page must not flood the terminal.
_MAX_DETAIL = 160
_PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")

Credential = Literal["backend key", "token provider", "$AZURE_OPENAI_API_KEY", "$AZURE_OPENAI_AD_TOKEN"]
Reach = Literal["answered", "no answer", "unreachable", "not probed", "unknown"]
"""``no answer``: the connection was made but nothing came back in time; ``not probed``: nothing was sent
(no usable credential, or this machine could not send it); ``unknown``: the check itself failed."""
Verdict = Literal["exists", "missing", "unknown", "not checked"]

# Who sends each credential: the SDK sends the environment's as text, which the HTTP library encodes as
# ASCII; openai_lb sends a backend's own as latin-1 bytes. What each is called in a problem.
_SENT_AS_ASCII = frozenset({"$AZURE_OPENAI_API_KEY", "$AZURE_OPENAI_AD_TOKEN"})
_CALLED = {
    "backend key": "its key",
    "token provider": "the token of its token provider",
    "$AZURE_OPENAI_API_KEY": "$AZURE_OPENAI_API_KEY",
    "$AZURE_OPENAI_AD_TOKEN": "$AZURE_OPENAI_AD_TOKEN",
}


@dataclass(frozen=True, slots=True)
class DeploymentCheck:
    """Whether one deployment exists on one backend."""

    name: str
    """The backend's own deployment name."""
    requested: str | None
    """The caller's name mapped to it, when that differs."""
    verdict: Verdict
    detail: str
    """Why the verdict: ``"HTTP 400"``, ``"DeploymentNotFound"``, ``"no answer within 10 s"``, ``"ConnectError: …"``."""
    credential_accepted: bool | None = None
    """What the answer says about the credential: a 400, 429 or ``DeploymentNotFound`` comes after it was
    accepted, a 401/403 rejects it; None when the answer tells neither way."""

    @property
    def exists(self) -> bool:
        return self.verdict == "exists"


@dataclass(frozen=True, slots=True)
class BackendCheck:
    """What probing one backend found. ``ok`` when it answered, accepts its credential, has no problem and
    hosts every checked deployment."""

    name: str
    url: str
    """The normalised URL (``Backend.key``): never carries credentials."""
    credential: Credential | None
    """Where the credential came from; None when the backend has none (then nothing is probed)."""
    reach: Reach
    credential_accepted: bool | None
    """From the models probe, else from the deployment probes; None when nothing told either way."""
    status: int | None
    """The models probe's HTTP status."""
    latency_ms: float | None
    """From sending the models probe (connecting included) to its status line."""
    problem: str | None
    """What is wrong with the backend itself, in words (the deployments say their own)."""
    deployments: tuple[DeploymentCheck, ...]
    note: str | None = None
    """Worth knowing but not wrong: a gateway without the models route, a rate-limited models list."""

    @property
    def reachable(self) -> bool | None:
        """Whether a connection was made; None when nothing was sent or the check failed."""
        return {"answered": True, "no answer": True, "unreachable": False}.get(self.reach)

    @property
    def ok(self) -> bool:
        return bool(
            self.reach == "answered"
            and self.credential_accepted
            and self.problem is None
            and all(d.exists for d in self.deployments)
        )


@dataclass(frozen=True, slots=True)
class CheckReport:
    api_version: str
    backends: tuple[BackendCheck, ...]
    proxy: str | None = None
    """The proxy the probes went through, without any user:password part."""

    @property
    def ok(self) -> bool:
        return all(backend.ok for backend in self.backends)


def deployments_to_check(backend: Backend, requested: Iterable[str] = ()) -> list[tuple[str, str | None]]:
    """The backend's deployment names to probe, each with the caller's name when it differs, without repeats.

    Its ``deployments`` mapping first, then ``deployment_for(name)`` of every requested name.
    """
    pairs = [*backend.deployments.items(), *((name, backend.deployment_for(name) or name) for name in requested)]
    found: dict[str, str | None] = {}
    for caller, own in pairs:
        found.setdefault(own, caller if caller != own else None)
    return list(found.items())


def proxy_problem(url: str) -> str | None:
    """Why ``url`` cannot serve as the probes' proxy, in words that never repeat it (it may hold a password)."""
    parts = urlsplit(url)
    if parts.scheme not in _PROXY_SCHEMES or not parts.hostname:
        return "must be a URL like http://proxy:3128 (http, https or socks5, with a host)"
    try:
        sdk_stack().module.HTTPTransport(proxy=url).close()
    except ImportError:
        return "a SOCKS proxy needs the socksio package (the HTTP library's 'socks' extra)"
    except ValueError:
        return "is not a proxy URL the HTTP library accepts"
    return None


def check_backends(
    backends: Sequence[Backend],
    *,
    api_version: str = DEFAULT_API_VERSION,
    deployments: Iterable[str] = (),
    timeout: float = 10.0,
    environ: Mapping[str, str] | None = None,
    transport: Any = None,
    proxy: str | None = None,
) -> CheckReport:
    """Probe ``backends`` in parallel, each with its own credential, else ``$AZURE_OPENAI_AD_TOKEN`` (as a
    bearer token), else ``$AZURE_OPENAI_API_KEY`` from ``environ``: what the SDK's Azure client would send.

    ``deployments`` are caller names checked on every backend (through its mapping) on top of the
    backends' mapped ones. Like the balanced clients, the probes ignore proxy environment variables:
    ``proxy`` sends them through one. ``transport`` replaces the HTTP library's own (tests pass a mock).
    Raises ValueError for a bad ``proxy``; every backend's own trouble is in its result.

    An interrupt (Ctrl-C) returns at once: probes still running are left to end on their timeout (their
    threads do not keep the process alive).
    """
    if proxy is not None:
        if transport is not None:
            raise ValueError("pass transport= or proxy=, not both")
        problem = proxy_problem(proxy)
        if problem is not None:
            raise ValueError(f"proxy {problem}")
    stack = sdk_stack()
    http = stack.module
    env = os.environ if environ is None else environ
    # As the balanced clients do: a transport of their own, so HTTP(S)_PROXY and the like never apply.
    options: dict[str, Any] = {"timeout": timeout, "follow_redirects": False, "trust_env": False}
    if transport is not None:
        options["transport"] = transport
    elif proxy is not None:
        options["transport"] = http.HTTPTransport(proxy=proxy)
    proxy_parts = urlsplit(proxy) if proxy is not None else None
    with http.Client(**options) as client:
        prober = _Prober(
            client,
            http=http,
            failover=stack.failover_errors,
            local=stack.local_errors,
            api_version=api_version,
            timeout=timeout,
            shared_key=env.get(API_KEY_ENV) or None,
            shared_token=env.get(AD_TOKEN_ENV) or None,
            requested=list(deployments),
            # A proxy's password must not come back in an error's text either.
            hidden=(proxy_parts.password,) if proxy_parts and proxy_parts.password else (),
        )
        results = _in_parallel(prober.backend, backends)
    shown_proxy = None
    if proxy_parts is not None:
        shown_proxy = proxy_parts._replace(netloc=proxy_parts.netloc.rpartition("@")[2]).geturl()
    return CheckReport(api_version=api_version, backends=tuple(results), proxy=shown_proxy)


_T = TypeVar("_T")
_R = TypeVar("_R")


def _in_parallel(work: Callable[[_T], _R], items: Sequence[_T]) -> list[_R]:
    """``work(item)`` for every item on up to ``_MAX_PARALLEL`` threads; the results in the items' order.

    Daemon threads and a queue, not a ThreadPoolExecutor: its shutdown, and the interpreter's exit, wait
    for every running call, so Ctrl-C would hang until the slowest probe timed out. Here the wait on the
    queue ends at once, and the probes still running end with their timeout or with the process.
    """
    todo: queue.SimpleQueue[tuple[int, _T]] = queue.SimpleQueue()
    done: queue.SimpleQueue[tuple[int, _R | _Raised]] = queue.SimpleQueue()
    for index, item in enumerate(items):
        todo.put((index, item))

    def worker() -> None:
        while True:
            try:
                index, item = todo.get_nowait()
            except queue.Empty:
                return
            try:
                done.put((index, work(item)))
            except BaseException as error:  # handed to the caller, which raises it again
                done.put((index, _Raised(error)))

    for number in range(min(_MAX_PARALLEL, len(items))):
        threading.Thread(target=worker, name=f"openai-lb-check-{number}", daemon=True).start()
    results: dict[int, _R] = {}
    for _ in items:
        index, outcome = done.get()
        if isinstance(outcome, _Raised):
            raise outcome.error
        results[index] = outcome
    return [results[index] for index in range(len(items))]


@dataclass(frozen=True, slots=True)
class _Raised:
    error: BaseException


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    code: str | None
    """Azure's ``error.code``, if the body has one (made safe to print)."""
    message: str | None
    latency_ms: float


@dataclass(frozen=True, slots=True)
class _Credential:
    source: Credential | None
    headers: dict[str, bytes]
    secret: str | None
    problem: str | None


class _Failed(Exception):
    """A probe that got no answer: how far it came and why, in words safe to print."""

    def __init__(self, reach: Reach, detail: str) -> None:
        super().__init__(detail)
        self.reach = reach
        self.detail = detail


class _Prober:
    """Sends the probes of one check through one HTTP client (thread-safe; backends run in parallel)."""

    def __init__(
        self,
        client: Any,
        *,
        http: Any,
        failover: tuple[type[BaseException], ...],
        local: tuple[type[BaseException], ...],
        api_version: str,
        timeout: float,
        shared_key: str | None,
        shared_token: str | None,
        requested: list[str],
        hidden: tuple[str, ...],
    ) -> None:
        self._client = client
        self._failover = failover
        self._local = local
        self._no_answer = (http.ReadTimeout, http.WriteTimeout)
        self._api_version = api_version
        self._timeout = timeout
        self._shared_key = shared_key
        self._shared_token = shared_token
        self._requested = requested
        self._hidden = hidden

    def backend(self, backend: Backend) -> BackendCheck:
        try:
            return self._backend(backend)
        except Exception as error:  # a surprise is this backend's problem, never the whole run's
            skipped = tuple(
                DeploymentCheck(own, caller, "not checked", "the check failed")
                for own, caller in deployments_to_check(backend, self._requested)
            )
            problem = f"the check failed unexpectedly ({type(error).__name__})"
            return BackendCheck(backend.name, backend.key, None, "unknown", None, None, None, problem, skipped)

    def _backend(self, backend: Backend) -> BackendCheck:
        wanted = deployments_to_check(backend, self._requested)
        credential = self._credential(backend)
        source, headers, secret = credential.source, credential.headers, credential.secret

        def skipped(why: str) -> tuple[DeploymentCheck, ...]:
            return tuple(DeploymentCheck(own, caller, "not checked", why) for own, caller in wanted)

        def unanswered(reach: Reach, problem: str, why: str) -> BackendCheck:
            return BackendCheck(backend.name, backend.key, source, reach, None, None, None, problem, skipped(why))

        if credential.problem is not None:
            why = "no credential" if source is None else "credential unusable"
            return unanswered("not probed", credential.problem, why)
        try:
            answer = self._send("GET", f"{backend.key}/openai/models", headers, secret)
        except _Failed as failed:
            if failed.reach == "unreachable":
                return unanswered("unreachable", f"unreachable ({failed.detail})", "backend unreachable")
            if failed.reach == "no answer":
                return unanswered("no answer", failed.detail, "backend did not answer")
            return unanswered(failed.reach, failed.detail, "nothing sent")
        status, latency = answer.status, answer.latency_ms
        if status in (401, 403):
            rejected = f"credential rejected ({_answer_text(answer)})"
            found = skipped("credential rejected")
            return BackendCheck(backend.name, backend.key, source, "answered", False, status, latency, rejected, found)
        found = tuple(self._deployment(backend, own, caller, headers, secret) for own, caller in wanted)
        accepted, problem, note = _verdict(answer, found)
        return BackendCheck(
            backend.name, backend.key, source, "answered", accepted, status, latency, problem, found, note
        )

    def _credential(self, backend: Backend) -> _Credential:
        """Where the credential comes from, the headers carrying it, the secret to keep out of any text,
        and why it cannot be sent, if so."""
        source: Credential
        if backend.api_key is not None:
            source, header, value = "backend key", "api-key", backend.api_key
        elif backend.azure_ad_token_provider is not None:
            try:
                token = backend.azure_ad_token_provider()
                if inspect.isawaitable(token):
                    token = asyncio.run(_awaited(token))
            except Exception as error:  # whatever the user's provider raises is this backend's problem
                return _Credential(None, {}, None, f"the token provider failed ({type(error).__name__})")
            if not isinstance(token, str) or not token:
                return _Credential(None, {}, None, "the token provider returned no token")
            source, header, value = "token provider", "authorization", token
        # The SDK's own order: with both set, an Azure client sends the Entra ID token.
        elif self._shared_token is not None:
            source, header, value = "$AZURE_OPENAI_AD_TOKEN", "authorization", self._shared_token
        elif self._shared_key is not None:
            source, header, value = "$AZURE_OPENAI_API_KEY", "api-key", self._shared_key
        else:
            return _Credential(
                None,
                {},
                None,
                f'no credential: give it api_key_env = "NAME_OF_VARIABLE" in the config, '
                f"or export {API_KEY_ENV} (or {AD_TOKEN_ENV})",
            )
        if not header_safe(value) or (source in _SENT_AS_ASCII and not value.isascii()):
            # Checked before sending: the HTTP library's complaint would quote the value.
            problem = f"{_CALLED[source]} holds whitespace or characters a header cannot carry: strip it"
            return _Credential(source, {}, value, problem)
        sent = f"Bearer {value}" if header == "authorization" else value
        return _Credential(source, {header: sent.encode("latin-1")}, value, None)

    def _deployment(
        self, backend: Backend, own: str, caller: str | None, headers: dict[str, bytes], secret: str | None
    ) -> DeploymentCheck:
        url = f"{backend.key}/openai/deployments/{quote(own, safe='')}/chat/completions"
        try:
            answer = self._send("POST", url, {**headers, "content-type": b"application/json"}, secret, body=b"{}")
        except _Failed as failed:
            return DeploymentCheck(own, caller, "unknown", failed.detail)
        status = answer.status
        if status == 404 and answer.code == "DeploymentNotFound":
            return DeploymentCheck(own, caller, "missing", "DeploymentNotFound", True)
        if status == 400 or 200 <= status < 300:
            return DeploymentCheck(own, caller, "exists", f"HTTP {status}", True)
        if status == 429:
            # Rate limits are per deployment: only an existing one has one to exceed.
            return DeploymentCheck(own, caller, "exists", "HTTP 429, rate limited now", True)
        if status in (401, 403):
            return DeploymentCheck(own, caller, "unknown", f"credential rejected ({_answer_text(answer)})", False)
        return DeploymentCheck(own, caller, "unknown", _answer_text(answer))

    def _send(
        self, method: str, url: str, headers: dict[str, bytes], secret: str | None, *, body: bytes | None = None
    ) -> _Answer:
        """One probe's answer; raises `_Failed` when there is none."""
        params = {"api-version": self._api_version}
        started = time.perf_counter()
        try:
            with self._client.stream(method, url, params=params, headers=headers, content=body) as response:
                # Timed to the status line: a models list can be large, and its download says little.
                latency = (time.perf_counter() - started) * 1000
                if response.status_code < 400:
                    return _Answer(response.status_code, None, None, latency)
                response.read()
        except self._local as error:
            # This machine's fault (a header refused, a full pool); its text may quote a header: never shown.
            raise _Failed("not probed", f"{type(error).__name__} on this machine, nothing sent") from None
        except self._no_answer:
            raise _Failed("no answer", f"no answer within {self._timeout:g} s") from None
        except self._failover as error:
            raise _Failed("unreachable", _error_text(error, self._secrets(secret))) from None
        code = message = None
        try:
            said = json.loads(response.content).get("error")
            if isinstance(said, dict):
                code = _scrubbed(said.get("code"), self._secrets(secret))
                message = _scrubbed(said.get("message"), self._secrets(secret))
        except (ValueError, AttributeError):
            pass
        return _Answer(response.status_code, code, message, latency)

    def _secrets(self, secret: str | None) -> tuple[str, ...]:
        return (secret, *self._hidden) if secret else self._hidden


def _verdict(answer: _Answer, found: tuple[DeploymentCheck, ...]) -> tuple[bool | None, str | None, str | None]:
    """(credential accepted, problem, note) from a models answer other than 401/403, and the deployments'."""
    status = answer.status
    if 200 <= status < 300:
        return True, None, None
    if status == 429:
        # Azure rate-limits only after authenticating.
        return True, None, "GET /openai/models rate limited now (HTTP 429)"
    told = {d.credential_accepted for d in found} - {None}
    accepted = False if False in told else True if told else None
    if 400 <= status < 500:
        said = (
            "no models route (GET /openai/models answered HTTP 404)"
            if status == 404
            else f"GET /openai/models answered {_answer_text(answer)}"
        )
        if accepted is None:
            advice = (
                "no deployment probe told either"
                if found
                else "pass --deployment NAME so a deployment probe can decide"
            )
            return None, f"credential not confirmed: {said}, and {advice}", None
        problem = None if accepted else "credential rejected by the deployment probes"
        return accepted, problem, f"{said}: the deployment probes judged the credential"
    return accepted, f"unexpected answer to GET /openai/models ({_answer_text(answer)})", None


async def _awaited(value: Awaitable[Any]) -> Any:
    return await value


def _escaped_forms(secret: str) -> set[str]:
    """The ways a secret can appear in text: as is, and escaped as Python, bytes, JSON and URLs show it."""
    forms = {
        secret,
        repr(secret)[1:-1],
        ascii(secret)[1:-1],
        json.dumps(secret)[1:-1],
        repr(secret.encode("utf-8", "backslashreplace"))[2:-1],
        quote(secret, safe=""),
        quote_plus(secret),
    }
    with contextlib.suppress(UnicodeEncodeError):
        forms.add(repr(secret.encode("latin-1"))[2:-1])
    return {form for form in forms if form}


def _scrubbed(text: object, secrets: Sequence[str]) -> str | None:
    """Server or error text made safe to print: a string on one line, short, without control characters
    (no terminal escapes) and without any form of the credentials sent."""
    if not isinstance(text, str) or not text:
        return None
    forms = sorted({form for secret in secrets for form in _escaped_forms(secret)}, key=len, reverse=True)

    def cut(value: str) -> str:
        for form in forms:
            value = value.replace(form, "[credential]")
        return value

    # Cut before and after dropping control characters: they may sit inside a secret, or split one.
    printable = "".join(ch if ch.isprintable() else " " if ch.isspace() else "" for ch in cut(text))
    text = " ".join(cut(printable).split())
    if not text:
        return None
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 1] + "…"


def _answer_text(answer: _Answer) -> str:
    said = ": ".join(part for part in (answer.code, answer.message) if part)
    return f"HTTP {answer.status}" + (f", {said}" if said else "")


def _error_text(error: BaseException, secrets: Sequence[str]) -> str:
    said = _scrubbed(str(error), secrets)
    return f"{type(error).__name__}: {said}" if said else type(error).__name__
