"""``patch()``: make the SDK's own Azure clients balance, process-wide; ``unpatch()`` undoes it.

The SDK's names are swapped for subclasses of ours whose isinstance checks defer to the
SDK's original classes, so ``isinstance(client, openai.AzureOpenAI)`` holds for clients
made before and after, and the SDK's internal checks keep working.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from types import TracebackType
from typing import Any

import openai
import openai.lib.azure as sdk_azure

from ._clients import AsyncAzureOpenAI, AzureOpenAI, Balancing
from ._config import Backend, Policy, validate_backends
from ._events import EventHook, hooks_from
from ._health import HealthStore
from ._loading import backends_from_env
from ._stores import resolve_store

__all__ = ["Patch", "is_patched", "patch", "unpatch"]

_lock = threading.Lock()
_originals: dict[str, Any] = {}
# The SDK's own default http clients, which it stores where the module-level client keeps its settings.
_SDK_DEFAULT_CLIENTS = frozenset({"SyncHttpxClientWrapper", "AsyncHttpxClientWrapper"})
# The module-level client's class is looked up by name each time the SDK builds it.
_NAMES = ("AzureOpenAI", "AsyncAzureOpenAI", "_AzureModuleClient")


class _DefersToSDK(type):
    """Metaclass: isinstance/issubclass against a patched class ask the SDK's original class."""

    _openai_lb_original: type

    def __instancecheck__(cls, instance: Any) -> bool:
        # Only the swapped-in classes stand for the SDK's; a user's subclass of them is itself.
        if "_openai_lb_original" in cls.__dict__:
            return isinstance(instance, cls._openai_lb_original)
        return type.__instancecheck__(cls, instance)

    def __subclasscheck__(cls, subclass: type) -> bool:
        if "_openai_lb_original" in cls.__dict__:
            return issubclass(subclass, cls._openai_lb_original)
        return type.__subclasscheck__(cls, subclass)


class _OwnModuleSettings:
    """Keeps a balancing module-level client's http client and key on the instance.

    The SDK's module-level client reads and writes them as module globals (``openai.http_client``,
    ``openai.api_key``). Kept there, a swap would have to clear them, pulling the http client out
    from under calls in flight, and would leave a balancing client or the placeholder key behind for
    the SDK's own class. Kept here, the globals stay the application's (or the SDK's) throughout.
    """

    def __init__(self, **kwargs: Any) -> None:
        given = kwargs.get("http_client")
        # The SDK hands over the global, which holds its own default client once its class has run.
        if given is not None and type(given).__name__ in _SDK_DEFAULT_CLIENTS:
            kwargs["http_client"] = None
        super().__init__(**kwargs)

    @property
    def _client(self) -> Any:
        return self.__dict__["_openai_lb_http_client"]

    @_client.setter
    def _client(self, value: Any) -> None:
        self.__dict__["_openai_lb_http_client"] = value

    @property
    def api_key(self) -> Any:
        return self.__dict__.get("_openai_lb_api_key")

    @api_key.setter
    def api_key(self, value: Any) -> None:
        self.__dict__["_openai_lb_api_key"] = value


class Patch:
    """The handle ``patch()`` returns: ``undo()`` it, or use it as a context manager."""

    def undo(self) -> None:
        unpatch()

    def __enter__(self) -> Patch:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        unpatch()


def patch(
    backends: Sequence[Backend] | None = None,
    *,
    policy: Policy | None = None,
    health_store: HealthStore | str | None = None,
    on_event: EventHook | Iterable[EventHook] | None = None,
) -> Patch:
    """Make ``openai.AzureOpenAI``, ``openai.AsyncAzureOpenAI`` and the module-level Azure client balance.

    Call it at start-up; code that reads the SDK's names afterwards gets balancing clients,
    whatever endpoint it passes. With ``backends=None`` they come from ``$OPENAI_LB_BACKENDS``
    (a JSON list, or the path of a TOML or JSON file). Calling it again replaces the backends.
    ``policy``, ``health_store`` and ``on_event`` apply to every client that does not pass its own;
    ``health_store`` may be the URL of a store shared across processes (``"redis://cache:6379/0"``).
    Clients given their own ``http_client`` are left as they are.
    """
    hooks = hooks_from(on_event)
    if isinstance(health_store, str):  # a malformed URL fails here, not at the first client
        health_store = resolve_store(health_store)
    checked = validate_backends(backends if backends is not None else backends_from_env())
    defaults = Balancing(checked, policy, health_store, hooks)
    with _lock:
        if not _originals:
            _originals.update({name: getattr(openai, name) for name in _NAMES})
        sync_cls = _DefersToSDK(
            "AzureOpenAI",
            (AzureOpenAI,),
            {
                "_openai_lb_original": _originals["AzureOpenAI"],
                "_openai_lb_defaults": defaults,
                "__module__": __name__,
                "__qualname__": "AzureOpenAI",
            },
        )
        async_cls = _DefersToSDK(
            "AsyncAzureOpenAI",
            (AsyncAzureOpenAI,),
            {
                "_openai_lb_original": _originals["AsyncAzureOpenAI"],
                "_openai_lb_defaults": defaults,
                "__module__": __name__,
                "__qualname__": "AsyncAzureOpenAI",
            },
        )
        module_cls = _DefersToSDK(
            "_AzureModuleClient",
            (_OwnModuleSettings, _originals["_AzureModuleClient"], sync_cls),
            {"_openai_lb_original": _originals["_AzureModuleClient"], "__module__": __name__},
        )
        _install(sync_cls, async_cls, module_cls)
    return Patch()


def unpatch() -> None:
    """Restore the SDK's own classes; a no-op when not patched."""
    with _lock:
        if _originals:
            _install(*(_originals[name] for name in _NAMES))
            _originals.clear()


def is_patched() -> bool:
    return bool(_originals)


def _install(*classes: type) -> None:
    for name, cls in zip(_NAMES, classes, strict=True):
        setattr(openai, name, cls)
        if hasattr(sdk_azure, name):
            setattr(sdk_azure, name, cls)
    # A module-level client built before the swap would keep its old transport.
    if isinstance(getattr(openai, "_client", None), classes[0]):
        openai._reset_client()
