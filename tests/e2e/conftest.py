"""End-to-end fixtures: balanced SDK clients over the fake Azure OpenAI servers (``servers``, tests/conftest.py)."""

from __future__ import annotations

import os
import random
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import openai
import pytest
from e2e_helpers import Balanced, Recorder, balancer_of
from helpers import FakeClock

import openai_lb
from openai_lb import Backend, InMemoryHealthStore, Policy
from openai_lb._stacks import HttpStack

API_VERSION = "2024-10-21"
CLIENT_KEY = "client-key"
LEGACY_HTTPX = os.environ.get("OPENAI_LB_TEST_HTTP_STACK") == "httpx"
SEED = 20261211
"""Seeds the weighted picks of ``balanced_over``'s balancers, so which backend a call lands on is the same every run."""

ClientFactory = Callable[..., Any]


@pytest.fixture
def balanced(transport_cls: type[Any], stack: HttpStack) -> Iterator[ClientFactory]:
    """Build a balanced SDK client, sync or async.

    Normally this is ``openai_lb.AzureOpenAI``; with a ``clock`` (or in the legacy-httpx
    tox cell) it is the SDK's own class over an http client built around the transport,
    the recipe the README gives for bringing your own http client.
    """
    clients: list[Any] = []

    def make(
        backends: list[Backend],
        *,
        is_async: bool = False,
        clock: FakeClock | None = None,
        policy: Policy | None = None,
        store: InMemoryHealthStore | None = None,
        on_event: Any = None,
        **kwargs: Any,
    ) -> Any:
        kwargs.setdefault("api_version", API_VERSION)
        kwargs.setdefault("max_retries", 0)
        kwargs.setdefault("api_key", CLIENT_KEY)
        store = store if store is not None else InMemoryHealthStore()
        if clock is not None or LEGACY_HTTPX:
            timing = {"clock": clock, "wall_clock": clock.wall} if clock is not None else {}
            transport = transport_cls(backends, policy=policy, health_store=store, on_event=on_event, **timing)
            http = stack.module
            kwargs.setdefault("azure_endpoint", "http://127.0.0.1:9")
            if is_async:
                client: Any = openai.AsyncAzureOpenAI(http_client=http.AsyncClient(transport=transport), **kwargs)
            else:
                client = openai.AzureOpenAI(http_client=http.Client(transport=transport), **kwargs)
        else:
            cls = openai_lb.AsyncAzureOpenAI if is_async else openai_lb.AzureOpenAI
            client = cls(backends=backends, policy=policy, health_store=store, on_event=on_event, **kwargs)
        clients.append(client)
        return client

    yield make
    for client in clients:
        if isinstance(client, openai.AzureOpenAI):
            client.close()


@pytest.fixture(params=[False, True], ids=["sync", "async"])
def is_async(request: pytest.FixtureRequest) -> bool:
    flag: bool = request.param
    return flag


@pytest.fixture
async def balanced_over(balanced: ClientFactory, is_async: bool) -> AsyncIterator[Callable[..., Balanced]]:
    """Build a sync or async balanced client (``is_async``) with a recorder hook (before ``hooks``) and a seeded
    pick; the async ones are closed after the test."""
    made: list[Any] = []

    def make(backends: list[Backend], *, hooks: tuple[Any, ...] = (), **kwargs: Any) -> Balanced:
        events = Recorder()
        client = balanced(backends, is_async=is_async, on_event=[events, *hooks], **kwargs)
        balancer_of(client).rng = random.Random(SEED)
        made.append(client)
        return Balanced(client, events)

    yield make
    if is_async:
        for client in made:
            await client.close()
