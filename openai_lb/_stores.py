"""Which health store a client uses: the one it was given, one named by URL, or the process-wide default.

Kept apart from ``_health`` so that the decision core and the in-memory store never import the
network clients a shared store needs; only the clients, the transports and ``patch()`` resolve.
"""

from __future__ import annotations

import os
import threading
from typing import TYPE_CHECKING

from ._health import HealthStore, default_store

if TYPE_CHECKING:
    from ._redis import RedisHealthStore

__all__ = ["STORE_ENV", "process_store", "resolve_store", "store_for_url"]

STORE_ENV = "OPENAI_LB_HEALTH_STORE"
"""The environment variable naming the URL of the process-wide store (unset: this process's memory)."""

_by_url: dict[str, RedisHealthStore] = {}
_by_url_lock = threading.Lock()


def _reset_after_fork() -> None:
    # A lock held by a parent's thread when it forked stays held in the child.
    global _by_url_lock  # noqa: PLW0603
    _by_url_lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def store_for_url(url: str) -> RedisHealthStore:
    """The store shared across processes at ``url``: one per URL in a process, made on first use.

    ``redis://``, ``rediss://`` (TLS) and ``unix://`` URLs name a Redis (or Valkey) server; anything
    else raises ``ConfigurationError``. Needs the ``redis`` extra.
    """
    with _by_url_lock:
        store = _by_url.get(url)
        if store is None or store.closed:
            from ._redis import RedisHealthStore

            store = _by_url[url] = RedisHealthStore(url)
        return store


def process_store() -> HealthStore:
    """The process-wide store: the one at the URL in ``$OPENAI_LB_HEALTH_STORE``, else this process's memory."""
    url = os.environ.get(STORE_ENV)
    return store_for_url(url) if url else default_store()


def resolve_store(store: HealthStore | str | None) -> HealthStore:
    """A ``health_store=`` argument as a store: as given, the store at a URL, or the process-wide one."""
    if store is None:
        return process_store()
    if isinstance(store, str):
        return store_for_url(store)
    return store
