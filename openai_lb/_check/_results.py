"""What ``check`` found: frozen results that never hold a credential, and whose text is safe to print."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = ["BackendCheck", "CheckReport", "Credential", "DeploymentCheck", "Reach", "StoreCheck", "Verdict"]

Credential = Literal["backend key", "token provider", "$AZURE_OPENAI_API_KEY", "$AZURE_OPENAI_AD_TOKEN"]
Reach = Literal["answered", "no answer", "unreachable", "not probed", "unknown"]
"""``no answer``: the connection was made but nothing came back in time; ``not probed``: nothing was sent
(no usable credential, or this machine could not send it); ``unknown``: the check itself failed."""
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
    def ok(self) -> bool:
        return bool(
            self.reach == "answered"
            and self.credential_accepted
            and self.problem is None
            and all(d.exists for d in self.deployments)
        )


@dataclass(frozen=True, slots=True)
class StoreCheck:
    """Whether this machine can use the health store ``$OPENAI_LB_HEALTH_STORE`` names. ``ok`` without a problem."""

    url: str | None
    """Without password or query; None when the URL could not be read (the redis package missing)."""
    namespace: str
    reachable: bool
    authenticated: bool | None
    """Whether the server took commands with the URL's credentials (or none); None when not reached."""
    keys: int | None
    """Keys in the namespace: cooldowns and breakers the fleet holds now."""
    latency_ms: float | None
    """From connecting to the answer to ``PING``."""
    problem: str | None

    @property
    def ok(self) -> bool:
        return self.problem is None


@dataclass(frozen=True, slots=True)
class CheckReport:
    api_version: str
    backends: tuple[BackendCheck, ...]
    proxy: str | None = None
    """The proxy the probes went through, without any user:password part."""
    store: StoreCheck | None = None
    """The shared health store, when ``$OPENAI_LB_HEALTH_STORE`` names one."""

    @property
    def ok(self) -> bool:
        return all(backend.ok for backend in self.backends) and (self.store is None or self.store.ok)
