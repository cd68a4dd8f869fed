"""Shared fixtures: a fake clock, a fresh health store per test, and the HTTP stack under test."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from helpers import FakeClock

import openai_lb
from openai_lb._clients import sdk_transport_class


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store() -> openai_lb.InMemoryHealthStore:
    return openai_lb.InMemoryHealthStore()


@pytest.fixture
def rng() -> random.Random:
    return random.Random(1234)


@pytest.fixture(autouse=True)
def _isolated_state() -> Iterator[None]:
    """Every test starts with no process-wide cooldowns and no patch in place."""
    openai_lb.reset_state()
    yield
    openai_lb.unpatch()
    openai_lb.reset_state()


def transport_class() -> type[Any]:
    """The balancing transport for the stack under test (a legacy httpx client when asked)."""
    if os.environ.get("OPENAI_LB_TEST_HTTP_STACK") == "httpx":
        return openai_lb.HTTPXTransport
    return sdk_transport_class()


@pytest.fixture
def transport_cls() -> type[Any]:
    return transport_class()


@pytest.fixture
def http(transport_cls: type[Any]) -> ModuleType:
    """The HTTP library module (httpx or httpx2) the tests drive."""
    module: ModuleType = transport_cls._http
    return module


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
