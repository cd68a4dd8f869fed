"""``AzureOpenAI`` and ``AsyncAzureOpenAI``: the SDK's classes with a balancing transport inside.

They take every argument the installed SDK's class takes (passed through untouched, so
each major's own signature applies) plus ``backends=``, ``policy=`` and
``health_store=``. A caller's own ``http_client`` is used exactly as given.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any, ClassVar, NamedTuple

import openai

from ._config import Backend, Policy, first_of, validate_backends
from ._core import Balancer
from ._credentials import environment_credential
from ._errors import ConfigurationError
from ._events import EventHook, hooks_from
from ._health import HealthStore
from ._shell import BalancingShell
from ._stacks import HttpStack, sdk_stack

__all__ = [
    "BACKEND_CREDENTIALS_ONLY",
    "AsyncAzureOpenAI",
    "AzureOpenAI",
    "Balancing",
    "transport_class",
]

# Sent by the SDK when every backend brings its own credential; the transport always
# replaces it, so it never reaches a backend.
BACKEND_CREDENTIALS_ONLY = "openai-lb-uses-backend-credentials"
_CLIENT_CREDENTIALS = ("api_key", "azure_ad_token", "azure_ad_token_provider")


def transport_class(stack: HttpStack | None = None) -> type[BalancingShell]:
    """The balancing transport for ``stack``; by default for the library the installed SDK is built on."""
    name = (stack or sdk_stack()).name
    if name == "httpx2":
        from ._httpx2 import HTTPX2Transport

        return HTTPX2Transport
    from ._httpx import HTTPXTransport

    return HTTPXTransport


class Balancing(NamedTuple):
    """The balancing arguments of a client; ``patch()`` installs them as the defaults of its classes."""

    backends: Sequence[Backend] | None
    policy: Policy | None
    health_store: HealthStore | str | None
    on_event: tuple[EventHook, ...]

    def over(self, defaults: Balancing | None) -> Balancing:
        """These arguments, with what they leave unset taken from ``defaults`` (when no backends are given)."""
        if self.backends is not None or defaults is None:
            return self
        return Balancing(
            defaults.backends,
            self.policy if self.policy is not None else defaults.policy,
            self.health_store if self.health_store is not None else defaults.health_store,
            self.on_event or defaults.on_event,
        )


def _balanced_kwargs(owner: type[Any], kwargs: dict[str, Any], given: Balancing, *, is_async: bool) -> dict[str, Any]:
    """The SDK constructor's kwargs with a balancing http client added (unless one is given)."""
    if kwargs.get("http_client") is not None:
        named = [
            f"{name}="
            for name, value in zip(("backends", "policy", "health_store", "on_event"), given, strict=True)
            if value is not None and value != ()
        ]
        if named:
            raise ConfigurationError(
                f"{owner.__name__}: {', '.join(named)} would be ignored next to http_client= (used as given, not "
                f"balanced). To combine them, build your client around openai_lb.{transport_class().__name__}"
                f"(backends, ...) with those arguments, and pass only http_client=."
            )
        return kwargs
    backends, policy, health_store, on_event = given.over(owner._openai_lb_defaults)
    if backends is None:
        raise ConfigurationError(
            f"{owner.__name__} needs backends=[openai_lb.Backend(...), ...] (or an http_client of your own)."
        )
    checked = validate_backends(backends)
    if not is_async:
        for backend in checked:
            if backend.has_async_token_provider:
                raise ConfigurationError(
                    f"Backend {backend.name!r}: its azure_ad_token_provider is async, which a sync client "
                    f"cannot await; use openai_lb.AsyncAzureOpenAI or give a sync provider."
                )
    kwargs = dict(kwargs)
    has_client_credential = any(kwargs.get(name) is not None for name in _CLIENT_CREDENTIALS) or (
        environment_credential() is not None
    )
    if not has_client_credential:
        lacking = [b.name for b in checked if not b.has_credential]
        if lacking:
            raise ConfigurationError(
                f"Backend(s) {', '.join(map(repr, lacking))} have no credential and the client has none: "
                f"pass api_key= or azure_ad_token_provider= to those backends, or to the client."
            )
        kwargs["api_key"] = BACKEND_CREDENTIALS_ONLY
    if not any(kwargs.get(name) for name in ("azure_endpoint", "base_url")) and not os.environ.get(
        "AZURE_OPENAI_ENDPOINT"
    ):
        # The SDK insists on an endpoint; the transport replaces it with each backend's anyway.
        kwargs["azure_endpoint"] = first_of(checked).key
    transport: Any = transport_class()(checked, policy=policy, health_store=health_store, on_event=on_event)
    http_client_class = openai.DefaultAsyncHttpxClient if is_async else openai.DefaultHttpxClient
    # A redirect's target would be rewritten to a backend again: hand 3xx answers to the caller instead.
    http_client = http_client_class(transport=transport, follow_redirects=False)
    kwargs["http_client"] = http_client
    return kwargs


class _Balanced:
    """What the sync and async clients share: the balancing arguments, and the balancer behind them."""

    _openai_lb_defaults: ClassVar[Balancing | None] = None
    _openai_lb_async: ClassVar[bool] = False

    def __init__(
        self,
        *,
        backends: Sequence[Backend] | None = None,
        policy: Policy | None = None,
        health_store: HealthStore | str | None = None,
        on_event: EventHook | Iterable[EventHook] | None = None,
        **kwargs: Any,
    ) -> None:
        given = Balancing(backends, policy, health_store, hooks_from(on_event))
        super().__init__(**_balanced_kwargs(type(self), kwargs, given, is_async=self._openai_lb_async))
        transport = self._openai_lb_transport()
        if transport is not None:
            # Also for a given http client built around our transport: it learns this client's endpoint.
            transport.add_client_endpoint(getattr(self, "base_url"), getattr(self, "_azure_endpoint", None))  # noqa: B009

    def _openai_lb_transport(self) -> BalancingShell | None:
        transport = getattr(getattr(self, "_client", None), "_transport", None)
        return transport if isinstance(transport, BalancingShell) else None

    @property
    def balancer(self) -> Balancer | None:
        """The balancer behind this client (``.status()`` snapshots it); None with an http client of your own."""
        transport = self._openai_lb_transport()
        return None if transport is None else transport.balancer


class AzureOpenAI(_Balanced, openai.AzureOpenAI):
    """``openai.AzureOpenAI`` balancing its requests over ``backends``.

    ```python
    client = AzureOpenAI(
        backends=[
            Backend("https://ptu.openai.azure.com", priority=1),
            Backend("https://paygo.openai.azure.com", priority=2),
        ],
        api_key=os.environ["AZURE_OPENAI_API_KEY"],
        api_version="2024-10-21",
    )
    client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
    ```
    """


class AsyncAzureOpenAI(_Balanced, openai.AsyncAzureOpenAI):
    """``openai.AsyncAzureOpenAI`` balancing its requests over ``backends``; token providers may be async."""

    _openai_lb_async: ClassVar[bool] = True
