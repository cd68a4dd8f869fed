"""``openai-lb check``: probe every configured backend with requests that cost no tokens.

Per backend, ``GET {url}/openai/models?api-version=V`` tells whether it is reachable,
whether it accepts the credential (401/403: rejected) and how long it takes. Per
deployment, ``POST {url}/openai/deployments/{name}/chat/completions`` with the body
``{}``: Azure checks the key and the deployment before the body, so a missing deployment
answers 404 ``DeploymentNotFound`` and an existing one 400 (``messages`` missing),
and no model ever runs.

``check_backends(load_backends("backends.toml"), api_version="2024-10-21").ok``

The results are frozen dataclasses that never hold a credential; rendering them is the CLI's job.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import time
from collections.abc import Awaitable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote

from ._clients import sdk_transport_class
from ._config import Backend

__all__ = [
    "API_KEY_ENV",
    "API_VERSION_ENV",
    "DEFAULT_API_VERSION",
    "BackendCheck",
    "CheckReport",
    "DeploymentCheck",
    "check_backends",
    "deployments_to_check",
]

DEFAULT_API_VERSION = "2024-10-21"
"""The GA api-version used when neither ``--api-version`` nor ``$OPENAI_API_VERSION`` is given."""
API_VERSION_ENV = "OPENAI_API_VERSION"
API_KEY_ENV = "AZURE_OPENAI_API_KEY"
"""Where a backend without a key of its own takes one, like the SDK does."""

_MAX_PARALLEL = 8
# Server text is shown to the user; a runaway error page must not flood the terminal.
_MAX_DETAIL = 160

Credential = Literal["backend key", "$AZURE_OPENAI_API_KEY", "token provider"]
Verdict = Literal["exists", "missing", "unknown", "not checked"]


@dataclass(frozen=True, slots=True)
class DeploymentCheck:
    """Whether one deployment exists on one backend."""

    name: str
    """The backend's own deployment name."""
    requested: str | None
    """The caller's name mapped to it, when that differs."""
    verdict: Verdict
    detail: str
    """Why the verdict: ``"HTTP 400"``, ``"DeploymentNotFound"``, ``"ReadTimeout"``, ``"credential rejected"``."""

    @property
    def exists(self) -> bool:
        return self.verdict == "exists"


@dataclass(frozen=True, slots=True)
class BackendCheck:
    """What probing one backend found. ``ok`` when it is reachable, accepts its credential and hosts every
    checked deployment."""

    name: str
    url: str
    """The normalised URL (``Backend.key``): never carries credentials."""
    credential: Credential | None
    """Where the credential sent came from; None when the backend has none (then nothing is probed)."""
    reachable: bool | None
    """None when not probed."""
    credential_accepted: bool | None
    """None when the answer tells neither way (not probed, unreachable, or an unexpected status)."""
    status: int | None
    """The models probe's HTTP status."""
    latency_ms: float | None
    """From sending the models probe (connecting included) to its status line."""
    problem: str | None
    """What went wrong with the backend itself, in words (the deployments say their own)."""
    deployments: tuple[DeploymentCheck, ...]

    @property
    def ok(self) -> bool:
        return bool(self.reachable and self.credential_accepted and all(d.exists for d in self.deployments))


@dataclass(frozen=True, slots=True)
class CheckReport:
    api_version: str
    backends: tuple[BackendCheck, ...]

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


def check_backends(
    backends: Sequence[Backend],
    *,
    api_version: str = DEFAULT_API_VERSION,
    deployments: Iterable[str] = (),
    timeout: float = 10.0,
    environ: Mapping[str, str] | None = None,
    transport: Any = None,
) -> CheckReport:
    """Probe ``backends`` in parallel, each with its own key, else ``$AZURE_OPENAI_API_KEY`` from ``environ``.

    ``deployments`` are caller names checked on every backend (through its mapping) on top of the
    backends' mapped ones. ``transport`` replaces the HTTP library's own (tests pass a mock).
    """
    stack = sdk_transport_class()
    http = stack._http
    env = os.environ if environ is None else environ
    shared_key = env.get(API_KEY_ENV) or None
    requested = list(deployments)
    options: dict[str, Any] = {"timeout": timeout, "follow_redirects": False}
    if transport is not None:
        options["transport"] = transport
    with http.Client(**options) as client:
        probe = _Prober(client, stack._failover_errors, api_version, shared_key, requested)
        workers = max(1, min(_MAX_PARALLEL, len(backends)))
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openai-lb-check") as pool:
            results = tuple(pool.map(probe.backend, backends))
    return CheckReport(api_version=api_version, backends=results)


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    code: str | None
    """Azure's ``error.code``, if the body has one."""
    message: str | None
    latency_ms: float


class _Prober:
    """Sends the probes of one check through one HTTP client (thread-safe; backends run in parallel)."""

    def __init__(
        self,
        client: Any,
        unreachable: tuple[type[BaseException], ...],
        api_version: str,
        shared_key: str | None,
        requested: list[str],
    ) -> None:
        self._client = client
        self._unreachable = unreachable
        self._api_version = api_version
        self._shared_key = shared_key
        self._requested = requested

    def backend(self, backend: Backend) -> BackendCheck:
        wanted = deployments_to_check(backend, self._requested)

        def skipped(why: str) -> tuple[DeploymentCheck, ...]:
            return tuple(DeploymentCheck(own, caller, "not checked", why) for own, caller in wanted)

        credential, headers, secret, problem = self._credential(backend)
        if credential is None:
            return BackendCheck(
                backend.name, backend.key, None, None, None, None, None, problem, skipped("no credential")
            )
        try:
            answer = self._send("GET", f"{backend.key}/openai/models", headers, secret)
        except self._unreachable as error:
            problem = f"unreachable ({_error_text(error, secret)})"
            return BackendCheck(
                backend.name, backend.key, credential, False, None, None, None, problem, skipped("backend unreachable")
            )
        status, latency = answer.status, answer.latency_ms
        if status in (401, 403):
            problem = f"credential rejected ({_answer_text(answer)})"
            found = skipped("credential rejected")
            return BackendCheck(backend.name, backend.key, credential, True, False, status, latency, problem, found)
        # Another status (a gateway's 404, a 503) tells nothing about the credential; the deployments may.
        accepted = True if 200 <= status < 300 else None
        problem = None if accepted else f"unexpected answer to GET /openai/models ({_answer_text(answer)})"
        found = tuple(self._deployment(backend, own, caller, headers, secret) for own, caller in wanted)
        return BackendCheck(backend.name, backend.key, credential, True, accepted, status, latency, problem, found)

    def _credential(self, backend: Backend) -> tuple[Credential | None, dict[str, str], str | None, str | None]:
        """(where it came from, headers to send, the secret to keep out of any text, problem)."""
        if backend.api_key is not None:
            return "backend key", {"api-key": backend.api_key}, backend.api_key, None
        provider = backend.azure_ad_token_provider
        if provider is not None:
            try:
                token = provider()
                if inspect.isawaitable(token):
                    token = asyncio.run(_awaited(token))
            except Exception as error:  # whatever the user's provider raises is this backend's problem
                return None, {}, None, f"the token provider failed ({type(error).__name__})"
            if not isinstance(token, str) or not token:
                return None, {}, None, "the token provider returned no token"
            return "token provider", {"authorization": f"Bearer {token}"}, token, None
        if self._shared_key is not None:
            return "$AZURE_OPENAI_API_KEY", {"api-key": self._shared_key}, self._shared_key, None
        return (
            None,
            {},
            None,
            f'no credential: give it api_key_env = "NAME_OF_VARIABLE" in the config, or export {API_KEY_ENV}',
        )

    def _deployment(
        self, backend: Backend, own: str, caller: str | None, headers: dict[str, str], secret: str | None
    ) -> DeploymentCheck:
        url = f"{backend.key}/openai/deployments/{quote(own, safe='')}/chat/completions"
        try:
            answer = self._send("POST", url, {**headers, "content-type": "application/json"}, secret, body=b"{}")
        except self._unreachable as error:
            return DeploymentCheck(own, caller, "unknown", _error_text(error, secret))
        status = answer.status
        if status == 404 and answer.code == "DeploymentNotFound":
            return DeploymentCheck(own, caller, "missing", "DeploymentNotFound")
        if status == 400 or 200 <= status < 300:
            return DeploymentCheck(own, caller, "exists", f"HTTP {status}")
        if status == 429:
            # Rate limits are per deployment: only an existing one has one to exceed.
            return DeploymentCheck(own, caller, "exists", "HTTP 429, rate limited now")
        if status in (401, 403):
            return DeploymentCheck(own, caller, "unknown", f"credential rejected ({_answer_text(answer)})")
        return DeploymentCheck(own, caller, "unknown", _answer_text(answer))

    def _send(
        self, method: str, url: str, headers: dict[str, str], secret: str | None, *, body: bytes | None = None
    ) -> _Answer:
        params = {"api-version": self._api_version}
        started = time.perf_counter()
        with self._client.stream(method, url, params=params, headers=headers, content=body) as response:
            # Timed to the status line: a models list can be large, and its download says little about the backend.
            latency = (time.perf_counter() - started) * 1000
            if response.status_code < 400:
                return _Answer(response.status_code, None, None, latency)
            response.read()
        code = message = None
        try:
            error = json.loads(response.content).get("error")
            if isinstance(error, dict):
                code = _scrubbed(error.get("code"), secret)
                message = _scrubbed(error.get("message"), secret)
        except (ValueError, AttributeError):
            pass
        return _Answer(response.status_code, code, message, latency)


async def _awaited(value: Awaitable[Any]) -> Any:
    return await value


def _scrubbed(text: object, secret: str | None) -> str | None:
    """Server text made safe to print: a string, short, and never containing the credential sent."""
    if not isinstance(text, str) or not text:
        return None
    if secret:
        text = text.replace(secret, "[credential]")
    return text if len(text) <= _MAX_DETAIL else text[: _MAX_DETAIL - 1] + "…"


def _answer_text(answer: _Answer) -> str:
    said = ": ".join(part for part in (answer.code, answer.message) if part)
    return f"HTTP {answer.status}" + (f", {said}" if said else "")


def _error_text(error: BaseException, secret: str | None) -> str:
    said = _scrubbed(str(error), secret)
    return f"{type(error).__name__}: {said}" if said else type(error).__name__
