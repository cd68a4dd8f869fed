"""``openai-lb check``: probe every configured backend with requests that cost no tokens.

Per backend, ``GET {url}/openai/models?api-version=V`` tells whether it is reachable,
whether it accepts the credential (401/403: rejected; 2xx or 429: accepted) and how long it
takes. Per deployment, ``POST {url}/openai/deployments/{name}/chat/completions`` with the body
``{}``: Azure checks the key and the deployment before the body, so a missing deployment
answers 404 ``DeploymentNotFound`` and an existing one 400 (``messages`` missing), and no
model ever runs. When the models route tells nothing about the credential (an API gateway
without it answers 404), the deployment probes decide.

``check_backends(load_backends("backends.toml"), api_version="2024-10-21").ok``

When ``$OPENAI_LB_HEALTH_STORE`` names a shared health store, the report says whether it is reachable,
takes the URL's credentials and how many keys its namespace holds (`_store`; nothing is written).

The results (`_results`) are frozen dataclasses that never hold a credential, and whose text
(server messages included) is safe to print; rendering them is the CLI's job. The probes live in
`_probe`, the threads they run on in `_parallel`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from openai_lb._check._parallel import in_parallel
from openai_lb._check._probe import Prober, deployments_to_check
from openai_lb._check._results import BackendCheck, CheckReport, DeploymentCheck, StoreCheck
from openai_lb._check._store import check_store
from openai_lb._config import Backend
from openai_lb._credentials import environment_credential
from openai_lb._errors import ConfigurationError
from openai_lb._stacks import sdk_stack
from openai_lb._stores import STORE_ENV

__all__ = [
    "API_VERSION_ENV",
    "DEFAULT_API_VERSION",
    "BackendCheck",
    "CheckReport",
    "DeploymentCheck",
    "StoreCheck",
    "check_backends",
    "check_proxy",
    "deployments_to_check",
]

DEFAULT_API_VERSION = "2024-10-21"
"""The GA api-version used when neither ``--api-version`` nor ``$OPENAI_API_VERSION`` is given."""
API_VERSION_ENV = "OPENAI_API_VERSION"

_PROXY_SCHEMES = ("http", "https", "socks5", "socks5h")


def check_proxy(url: str) -> None:
    """Raise `ConfigurationError` when ``url`` cannot serve as the probes' proxy, in words that never repeat it
    (it may hold a password)."""
    try:
        parts = urlsplit(url)
        # Reading the port raises for one that is no number or out of range.
        usable = parts.scheme in _PROXY_SCHEMES and bool(parts.hostname) and parts.port != 0
    except ValueError:  # a malformed IPv6 address or port
        usable = False
    if not usable:
        raise ConfigurationError("the proxy must be a URL like http://proxy:3128 (http, https or socks5, with a host)")
    http = sdk_stack().module
    try:
        http.HTTPTransport(proxy=url).close()
    except ImportError:
        raise ConfigurationError("a SOCKS proxy needs the socksio package (the HTTP library's 'socks' extra)") from None
    except (ValueError, http.InvalidURL):
        raise ConfigurationError("the proxy is not a URL the HTTP library accepts as a proxy") from None


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
    Raises `ConfigurationError` for a bad ``proxy`` (see `check_proxy`); every backend's own trouble is
    in its result. When ``environ`` has ``$OPENAI_LB_HEALTH_STORE``, the report's ``store`` checks it.

    An interrupt (Ctrl-C) returns at once: probes still running are left to end on their timeout (their
    threads do not keep the process alive).
    """
    if proxy is not None:
        if transport is not None:
            raise ValueError("pass transport= or proxy=, not both")
        check_proxy(proxy)
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
        prober = Prober(
            client,
            http=http,
            failover=stack.failover_errors,
            local=stack.local_errors,
            api_version=api_version,
            timeout=timeout,
            shared=environment_credential(env),
            requested=list(deployments),
            # A proxy's password must not come back in an error's text either.
            hidden=(proxy_parts.password,) if proxy_parts and proxy_parts.password else (),
        )
        results = in_parallel(prober.backend, backends, name="openai-lb-check")
    store_url = env.get(STORE_ENV)
    store = None
    if store_url:
        # On a daemon thread as the probes, so that an interrupt need not wait for a silent server.
        store = in_parallel(lambda url: check_store(url, timeout=timeout), [store_url], name="openai-lb-check-store")[0]
    shown_proxy = None
    if proxy_parts is not None:
        shown_proxy = proxy_parts._replace(netloc=proxy_parts.netloc.rpartition("@")[2]).geturl()
    return CheckReport(api_version=api_version, backends=tuple(results), proxy=shown_proxy, store=store)
