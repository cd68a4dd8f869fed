"""The probes of ``check``: per backend a models probe and one probe per deployment, none spending tokens."""

from __future__ import annotations

import asyncio
import inspect
import json
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from openai_lb._check._results import BackendCheck, Credential, DeploymentCheck, Reach
from openai_lb._config import Backend, header_safe
from openai_lb._credentials import AD_TOKEN_ENV, API_KEY_ENV, EnvironmentCredential
from openai_lb._scrub import error_text, scrubbed

__all__ = ["Prober", "deployments_to_check"]

# What a result calls a credential from the environment.
_FROM_ENVIRONMENT: dict[str, Credential] = {
    API_KEY_ENV: "$AZURE_OPENAI_API_KEY",
    AD_TOKEN_ENV: "$AZURE_OPENAI_AD_TOKEN",
}
# Who sends each credential: the SDK sends the environment's as text, which the HTTP library encodes as
# ASCII; openai_lb sends a backend's own as latin-1 bytes. What each is called in a problem.
_SENT_AS_ASCII = frozenset(_FROM_ENVIRONMENT.values())
_CALLED: dict[Credential, str] = {"backend key": "its key", "token provider": "the token of its token provider"}


def deployments_to_check(backend: Backend, requested: Iterable[str] = ()) -> list[tuple[str, str | None]]:
    """The backend's deployment names to probe, each with the caller's name when it differs, without repeats.

    Its ``deployments`` mapping first, then ``deployment_for(name)`` of every requested name.
    """
    pairs = [*backend.deployments.items(), *((name, backend.deployment_for(name) or name) for name in requested)]
    found: dict[str, str | None] = {}
    for caller, own in pairs:
        found.setdefault(own, caller if caller != own else None)
    return list(found.items())


@dataclass(frozen=True, slots=True)
class _ProbeReply:
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


class Prober:
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
        shared: EnvironmentCredential | None,
        requested: list[str],
        hidden: tuple[str, ...],
    ) -> None:
        self._client = client
        self._failover = failover
        self._local = local
        self._no_answer = (http.ReadTimeout, http.WriteTimeout)
        self._api_version = api_version
        self._timeout = timeout
        self._shared = shared
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
        elif self._shared is not None:  # the environment's, as the SDK picks it
            source, header, value = _FROM_ENVIRONMENT[self._shared.variable], self._shared.header, self._shared.value
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
            problem = f"{_CALLED.get(source, source)} holds whitespace or characters a header cannot carry: strip it"
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
    ) -> _ProbeReply:
        """One probe's answer; raises `_Failed` when there is none."""
        params = {"api-version": self._api_version}
        started = time.perf_counter()
        try:
            with self._client.stream(method, url, params=params, headers=headers, content=body) as response:
                # Timed to the status line: a models list can be large, and its download says little.
                latency = (time.perf_counter() - started) * 1000
                if response.status_code < 400:
                    return _ProbeReply(response.status_code, None, None, latency)
                response.read()
        except self._local as error:
            # This machine's fault (a header refused, a full pool); its text may quote a header: never shown.
            raise _Failed("not probed", f"{type(error).__name__} on this machine, nothing sent") from None
        except self._no_answer:
            raise _Failed("no answer", f"no answer within {self._timeout:g} s") from None
        except self._failover as error:
            raise _Failed("unreachable", error_text(error, self._secrets(secret))) from None
        code = message = None
        try:
            said = json.loads(response.content).get("error")
            if isinstance(said, dict):
                code = scrubbed(said.get("code"), self._secrets(secret))
                message = scrubbed(said.get("message"), self._secrets(secret))
        except (ValueError, AttributeError):
            pass
        return _ProbeReply(response.status_code, code, message, latency)

    def _secrets(self, secret: str | None) -> tuple[str, ...]:
        return (secret, *self._hidden) if secret else self._hidden


def _verdict(answer: _ProbeReply, found: tuple[DeploymentCheck, ...]) -> tuple[bool | None, str | None, str | None]:
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


def _answer_text(answer: _ProbeReply) -> str:
    said = ": ".join(part for part in (answer.code, answer.message) if part)
    return f"HTTP {answer.status}" + (f", {said}" if said else "")
