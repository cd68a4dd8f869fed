"""Fixtures of the store tests: a redis-server per module, a namespace per test, stores closed after it."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from redis_server import RedisServer, require_redis

_namespaces = itertools.count()


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    require_redis()
    with RedisServer() as server:
        yield server


@pytest.fixture
def namespace() -> str:
    return f"test{next(_namespaces)}"


@pytest.fixture
def redis_store(redis_server: RedisServer, namespace: str) -> Iterator[Callable[..., Any]]:
    """Makes ``RedisHealthStore``s on the module's server in this test's namespace; closes them after."""
    from openai_lb import RedisHealthStore

    made: list[Any] = []

    def make(url: str | None = None, **options: Any) -> Any:
        options.setdefault("namespace", namespace)
        options.setdefault("reconnect_base", 0.02)
        options.setdefault("reconnect_max", 0.2)
        store = RedisHealthStore(url or redis_server.url, **options)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()
