"""Shared fixtures: a fake clock, a fresh health store per test, the HTTP stack under test, fake servers."""

from __future__ import annotations

import os
import random
from collections.abc import Callable, Iterator
from types import ModuleType
from typing import Any

import pytest
from helpers import FakeClock

import openai_lb
from openai_lb._clients import transport_class
from openai_lb._stacks import HttpStack, load_stack, sdk_stack
from openai_lb.testing import FakeAzureOpenAI, reset_state


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
    reset_state()
    yield
    openai_lb.unpatch()
    reset_state()


def stack_under_test() -> HttpStack:
    """The HTTP stack the SDK is driven through: the SDK's own, or a legacy httpx client when asked."""
    if os.environ.get("OPENAI_LB_TEST_HTTP_STACK") == "httpx":
        return load_stack("httpx")
    return sdk_stack()


@pytest.fixture
def stack() -> HttpStack:
    return stack_under_test()


@pytest.fixture
def transport_cls(stack: HttpStack) -> type[Any]:
    return transport_class(stack)


@pytest.fixture
def http(stack: HttpStack) -> ModuleType:
    """The HTTP library module (httpx or httpx2) the tests drive."""
    module: ModuleType = stack.module
    return module


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


ServerFactory = Callable[..., FakeAzureOpenAI]


@pytest.fixture
def servers() -> Iterator[ServerFactory]:
    """Start fake servers on demand (serving ``gpt-4o`` unless told); all are stopped after the test."""
    started: list[FakeAzureOpenAI] = []

    def start(name: str, **kwargs: Any) -> FakeAzureOpenAI:
        kwargs.setdefault("deployments", {"gpt-4o"})
        server = FakeAzureOpenAI(name=name, **kwargs)
        server.start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
