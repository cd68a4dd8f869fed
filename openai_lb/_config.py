"""Frozen configuration: the backends and the policy. Nothing here changes after construction.

Mutable health (cooldowns, failure counts) lives in ``_health``; keeping the two apart
lets one process-wide health store serve every client built from the same backends.
"""

from __future__ import annotations

import inspect
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from urllib.parse import urlsplit

from ._errors import ConfigurationError

__all__ = ["Backend", "Policy", "TokenProvider", "header_safe", "validate_backends"]

TokenProvider = Callable[[], "str | Awaitable[str]"]
"""A callable returning an Azure AD (Entra ID) bearer token; may be async for async clients."""

_DEFAULT_PORTS = {"http": 80, "https": 443}
# Far above any real ratio (a tokens-per-minute quota fits), far below where a sum of weights overflows.
MAX_WEIGHT = 1e9
_USERINFO = re.compile(r"//[^/?#]*@")
_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True, eq=False)
class Backend:
    """One Azure OpenAI endpoint (or API gateway in front of one) that can serve requests.

    ``Backend("https://ptu-eastus.openai.azure.com", priority=1, api_key=os.environ["PTU_KEY"])``

    Lower ``priority`` numbers are preferred; ``weight`` shares traffic inside one priority.
    ``api_key`` or ``azure_ad_token_provider`` is this backend's own credential; with
    neither, the client's credential is used. ``deployments`` maps the deployment (model)
    name callers use to this backend's deployment name. ``name`` (default: the URL without
    its scheme) is what logs and the ``x-openai-lb-backend`` header show. ``spillover_deployment``
    names a standard deployment of the same Azure resource that Azure itself spills this
    backend's overflow to (sent as the ``x-ms-spillover-deployment`` request header).
    """

    url: str
    priority: int = 1
    weight: float = 1
    api_key: str | None = field(default=None, repr=False)
    azure_ad_token_provider: TokenProvider | None = field(default=None, repr=False)
    deployments: Mapping[str, str] = field(default_factory=dict)
    name: str = ""
    spillover_deployment: str | None = None
    # Derived once here so the per-request path does no parsing.
    key: str = field(init=False, repr=False)
    """The normalised URL: the identity of this backend's health across clients."""
    scheme: str = field(init=False, repr=False)
    netloc: str = field(init=False, repr=False)
    prefix: str = field(init=False, repr=False)
    """The URL's path without trailing slash ("" or e.g. "/team-a")."""

    def __init__(
        self,
        url: str,
        *,
        priority: int = 1,
        weight: float = 1,
        api_key: str | None = None,
        azure_ad_token_provider: TokenProvider | None = None,
        deployments: Mapping[str, str] | None = None,
        name: str | None = None,
        spillover_deployment: str | None = None,
    ) -> None:
        scheme, netloc, prefix = _split_url(url)
        label = name if isinstance(name, str) and name else f"{netloc}{prefix}"
        _check_backend_fields(
            label,
            priority=priority,
            weight=weight,
            api_key=api_key,
            token_provider=azure_ad_token_provider,
            deployments=deployments,
            name=name,
            spillover_deployment=spillover_deployment,
        )
        setattr_ = object.__setattr__
        setattr_(self, "url", url)
        setattr_(self, "priority", priority)
        setattr_(self, "weight", weight)
        setattr_(self, "api_key", api_key)
        setattr_(self, "azure_ad_token_provider", azure_ad_token_provider)
        setattr_(self, "deployments", MappingProxyType(dict(deployments)) if deployments else _EMPTY)
        setattr_(self, "name", label)
        setattr_(self, "spillover_deployment", spillover_deployment)
        setattr_(self, "scheme", scheme)
        setattr_(self, "netloc", netloc)
        setattr_(self, "prefix", prefix)
        setattr_(self, "key", f"{scheme}://{netloc}{prefix}")

    def __repr__(self) -> str:
        credential = "api_key" if self.api_key else "token_provider" if self.azure_ad_token_provider else "client's"
        deployments = f", deployments={dict(self.deployments)!r}" if self.deployments else ""
        spillover = "" if self.spillover_deployment is None else f", spillover_deployment={self.spillover_deployment!r}"
        return (
            f"Backend({self.name!r}, url={self.key!r}, priority={self.priority}, weight={self.weight}, "
            f"credential={credential}{deployments}{spillover})"
        )

    def deployment_for(self, requested: str | None) -> str | None:
        """This backend's name for the deployment a caller asked for."""
        if requested is None:
            return None
        return self.deployments.get(requested, requested)

    @property
    def has_credential(self) -> bool:
        return self.api_key is not None or self.azure_ad_token_provider is not None

    @property
    def has_async_token_provider(self) -> bool:
        provider = self.azure_ad_token_provider
        return provider is not None and (
            inspect.iscoroutinefunction(provider) or inspect.iscoroutinefunction(getattr(provider, "__call__", None))  # noqa: B004
        )


def header_safe(value: str) -> bool:
    """A non-empty value that can be sent in an HTTP header as is (no control characters, latin-1)."""
    if not value or not value.isprintable() or value != value.strip():
        return False
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def _redacted(url: str) -> str:
    """The URL without any user:password part, for error messages."""
    return _USERINFO.sub("//", url)


def _split_url(url: object) -> tuple[str, str, str]:
    """Scheme, normalised netloc (lower-case host, default port dropped) and path prefix."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(
            f"Backend url must be a non-empty string such as 'https://my-resource.openai.azure.com', got {url!r}."
        )
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise ConfigurationError(f"Backend {_redacted(url)!r}: the URL cannot be parsed ({exc}).") from None
    scheme = parts.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parts.hostname:
        raise ConfigurationError(
            f"Backend {_redacted(url)!r}: the URL must start with http:// or https:// and name a host, "
            f"e.g. 'https://my-resource.openai.azure.com'."
        )
    if parts.username is not None or parts.password is not None:
        raise ConfigurationError(
            f"Backend {parts.hostname!r}: the URL must not carry credentials; pass api_key= instead."
        )
    if parts.query or parts.fragment:
        raise ConfigurationError(
            f"Backend {parts.hostname!r}: the URL must not have a query or fragment; api-version comes from the client."
        )
    try:
        # The wire (URL and Host header alike) carries the ASCII form of an international name.
        host = parts.hostname.lower().encode("idna").decode("ascii")
    except UnicodeError:
        raise ConfigurationError(f"Backend {_redacted(url)!r}: the host name is not valid.") from None
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    prefix = parts.path.rstrip("/")
    if prefix.lower().endswith("/openai"):
        raise ConfigurationError(
            f"Backend {netloc + prefix!r}: give the endpoint without the trailing '/openai' "
            f"(use {scheme + '://' + netloc + prefix[: -len('/openai')]!r}); openai_lb keeps the SDK's path."
        )
    return scheme, netloc, prefix


def _check_backend_fields(
    label: str,
    *,
    priority: object,
    weight: object,
    api_key: object,
    token_provider: object,
    deployments: object,
    name: object,
    spillover_deployment: object,
) -> None:
    def fail(problem: str) -> ConfigurationError:
        return ConfigurationError(f"Backend {label!r}: {problem}")

    if name is not None and (not isinstance(name, str) or not name):
        raise fail(f"name must be a non-empty string, got {name!r}.")
    if not (label.isascii() and label.isprintable()):
        raise fail("the name travels in a response header, so it must be printable ASCII; pass name=.")
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise fail(f"priority must be an integer (lower is preferred), got {priority!r}.")
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise fail(f"weight must be a positive number, got {weight!r}.")
    if not (math.isfinite(weight) and 0 < weight <= MAX_WEIGHT):
        raise fail(
            f"weight must be a positive number up to {MAX_WEIGHT:g}, got {weight!r}; weights are relative, "
            f"so e.g. weight=1 and weight=3 send three times as much to the second."
        )
    if api_key is not None and (not isinstance(api_key, str) or not api_key):
        raise fail("api_key must be a non-empty string (or None to use the client's credential).")
    if isinstance(api_key, str) and not header_safe(api_key):
        raise fail("api_key has whitespace or characters a header cannot carry (a trailing newline from a file?).")
    if token_provider is not None and not callable(token_provider):
        raise fail("azure_ad_token_provider must be a callable returning a token.")
    if api_key is not None and token_provider is not None:
        raise fail("pass either api_key or azure_ad_token_provider, not both.")
    if deployments is not None:
        if not isinstance(deployments, Mapping):
            raise fail(f"deployments must map caller deployment names to this backend's, got {deployments!r}.")
        for requested, actual in deployments.items():
            if not (isinstance(requested, str) and requested and isinstance(actual, str) and actual):
                raise fail(f"deployments entries must be non-empty strings, got {requested!r}: {actual!r}.")
    if spillover_deployment is not None and not (
        isinstance(spillover_deployment, str) and header_safe(spillover_deployment)
    ):
        raise fail(
            f"spillover_deployment must name a standard deployment of the same resource, in characters a header "
            f"can carry, got {spillover_deployment!r}."
        )


def validate_backends(backends: object) -> tuple[Backend, ...]:
    """The backends as a tuple, or a ConfigurationError naming the problem."""
    if isinstance(backends, (str, bytes, Backend)) or not isinstance(backends, Iterable):
        raise ConfigurationError(f"backends must be a list of openai_lb.Backend, got {backends!r}.")
    result = tuple(backends)
    if not result:
        raise ConfigurationError("backends is empty: give at least one openai_lb.Backend.")
    seen_keys: dict[str, Backend] = {}
    seen_names: dict[str, Backend] = {}
    for index, backend in enumerate(result):
        if not isinstance(backend, Backend):
            raise ConfigurationError(f"backends[{index}] must be an openai_lb.Backend, got {backend!r}.")
        if backend.key in seen_keys:
            raise ConfigurationError(
                f"Backend {backend.name!r}: its URL {backend.key!r} duplicates backend "
                f"{seen_keys[backend.key].name!r}; list each endpoint once."
            )
        if backend.name in seen_names:
            raise ConfigurationError(
                f"Backend {backend.name!r}: the name is used twice; give each backend its own name=."
            )
        seen_keys[backend.key] = seen_names[backend.name] = backend
    return result


@dataclass(frozen=True, slots=True)
class Policy:
    """How long backends cool down and which answers fail over; shared by all backends of a client.

    ``Policy(default_cooldown=10, max_cooldown=300, breaker_base=5, breaker_max=120)``
    """

    default_cooldown: float = 10.0
    """Seconds a 429 cools a deployment when it carries no usable retry header."""
    max_cooldown: float = 300.0
    """Cap on any 429 cooldown, and how long a missing deployment is skipped."""
    breaker_base: float = 5.0
    """First cooldown of a whole backend after a 5xx, timeout or connection error; doubles per failure."""
    breaker_max: float = 120.0
    """Cap of that doubling."""
    failover_statuses: frozenset[int] = frozenset({408, 500, 502, 503, 504})
    """Statuses that fail over and count toward the circuit breaker (429 and 404 are handled apart)."""
    headers_timeout: float | None = None
    """Seconds an attempt may wait for its response headers in all, however slowly they trickle in;
    past it the attempt fails over like a timeout. None: only the SDK's timeout, which applies to
    each read (and to connecting), so a backend sending a byte now and then holds an attempt."""
    affinity: bool = True
    """Send requests about a stateful object (a response, conversation, file, batch, vector store,
    thread...) to the backend that holds it, and find the holder of an id not seen before."""
    affinity_capacity: int = 100_000
    """How many object ids the health store remembers the backend of; the least recently used go first."""
    affinity_ttl: float = 30 * 86_400.0
    """Seconds an object's backend is remembered (30 days: Azure's retention of stored responses)."""
    context_failover: bool = True
    """Move a request whose prompt exceeds a deployment's context window (400 ``context_length_exceeded``)
    to the next backend not tried yet, without cooling anything; the caller gets the last such 400."""
    headroom: bool = True
    """Read each answer's rate-limit headers and pass over a backend whose known headroom cannot fit the
    request (its estimate plus the requests in flight there) for another of its tier, or of the next tier
    when none of its tier can; nothing cools. When every backend would be passed over, they are tried in
    the usual order. False: the rate-limit headers are not read (Azure's spillover headers still are, for a
    backend with a ``spillover_deployment``)."""
    headroom_horizon: float = 1.0
    """Seconds a reading counts after its answer (less when its ``x-ratelimit-reset-*`` says sooner). A
    backend passed over sends no new readings, so this is also how long a full one is left alone."""
    headroom_utilization: float = 95.0
    """Percent of a provisioned deployment's utilisation at which it is passed over."""
    headroom_output_tokens: int = 1_024
    """Output tokens a request is assumed to claim when it names no ``max_tokens``,
    ``max_completion_tokens`` or ``max_output_tokens``."""
    headroom_tokenizer: str | None = None
    """A tiktoken encoding (e.g. ``"o200k_base"``) to count prompt tokens exactly (extra ``tokens``);
    None: about four bytes of the body per token, base64 image data left out."""

    def __post_init__(self) -> None:
        for label in ("default_cooldown", "max_cooldown", "breaker_base", "breaker_max", "headroom_horizon"):
            value = getattr(self, label)
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not (math.isfinite(value) and value > 0)
            ):
                raise ConfigurationError(f"Policy.{label} must be a positive number of seconds, got {value!r}.")
        limit = self.headers_timeout
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, (int, float)) or not (math.isfinite(limit) and limit > 0)
        ):
            raise ConfigurationError(
                f"Policy.headers_timeout must be a positive number of seconds or None, got {limit!r}."
            )
        for switch in ("affinity", "context_failover", "headroom"):
            if not isinstance(getattr(self, switch), bool):
                raise ConfigurationError(f"Policy.{switch} must be True or False, got {getattr(self, switch)!r}.")
        capacity = self.affinity_capacity
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ConfigurationError(
                f"Policy.affinity_capacity must be a positive number of object ids, got {capacity!r}."
            )
        ttl = self.affinity_ttl
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not (math.isfinite(ttl) and ttl > 0):
            raise ConfigurationError(f"Policy.affinity_ttl must be a positive number of seconds, got {ttl!r}.")
        self._check_headroom()
        if self.default_cooldown > self.max_cooldown:
            raise ConfigurationError("Policy.default_cooldown must not exceed Policy.max_cooldown.")
        if self.breaker_base > self.breaker_max:
            raise ConfigurationError("Policy.breaker_base must not exceed Policy.breaker_max.")
        statuses = frozenset(self.failover_statuses)
        bad = sorted(s for s in statuses if isinstance(s, bool) or not isinstance(s, int) or not 400 <= s <= 599)
        if bad or 429 in statuses:
            raise ConfigurationError(
                f"Policy.failover_statuses must hold 4xx/5xx integers other than 429 "
                f"(429 always fails over with its own cooldown), got {sorted(statuses, key=str)!r}."
            )
        object.__setattr__(self, "failover_statuses", statuses)

    def _check_headroom(self) -> None:
        threshold = self.headroom_utilization
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 < threshold <= 100:
            raise ConfigurationError(
                f"Policy.headroom_utilization must be a percentage above 0 and at most 100, got {threshold!r}."
            )
        output = self.headroom_output_tokens
        if isinstance(output, bool) or not isinstance(output, int) or output < 0:
            raise ConfigurationError(
                f"Policy.headroom_output_tokens must be a whole number of tokens, 0 or more, got {output!r}."
            )
        tokenizer = self.headroom_tokenizer
        if tokenizer is not None and (not isinstance(tokenizer, str) or not tokenizer):
            raise ConfigurationError(
                f"Policy.headroom_tokenizer must name a tiktoken encoding such as 'o200k_base', or be None, "
                f"got {tokenizer!r}."
            )


def first_of(backends: Sequence[Backend]) -> Backend:
    """The preferred backend, used as the SDK client's nominal endpoint."""
    return min(backends, key=lambda b: b.priority)
