"""Clients closed, and the SDK's classes swapped, while calls are in flight: nobody else pays for it."""

from __future__ import annotations

import threading
import time
from typing import Any

import openai
import pytest
from e2e_helpers import chat, content, statuses

import openai_lb
from openai_lb import Backend, InMemoryHealthStore
from openai_lb.testing import Stall

pytestmark = pytest.mark.timeout(60)


def wait_until(condition: Any, what: str, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.01)


def test_closing_a_client_under_a_request_in_flight_blames_no_backend(servers, balanced) -> None:
    ptu = servers("ptu")
    ptu.script(Stall(5.0))
    store = InMemoryHealthStore()
    backend = Backend(ptu.url, name="ptu")
    closing = balanced([backend], store=store, timeout=10)
    errors: list[BaseException] = []

    def call() -> None:
        try:
            chat(closing)
        except BaseException as error:
            errors.append(error)

    caller = threading.Thread(target=call)
    caller.start()
    wait_until(lambda: ptu.requests, "the request to reach the server")
    closing.close()
    caller.join(10)
    assert not caller.is_alive(), "the call did not end when its client was closed"
    assert len(errors) == 1, "the closed client's call should fail"
    assert not isinstance(errors[0], openai.RateLimitError), f"a closed client is not a 429: {errors[0]!r}"

    other = balanced([backend], store=store)
    assert content(chat(other)) == "ptu:gpt-4o", "another client of the backend must not see it as broken"
    assert store.snapshot(backend.key, time.monotonic()).open_until is None, "the breaker tripped"
    status = statuses(closing)["ptu"]
    assert (status.failures, status.in_flight) == (0, 0), status


def test_patch_and_unpatch_never_break_module_client_calls_in_flight(servers, monkeypatch) -> None:
    ptu = servers("ptu")
    for name, value in {
        "api_type": "azure",
        "api_version": "2024-10-21",
        "azure_endpoint": ptu.url,
        "api_key": "k",
        "max_retries": 0,
        "http_client": None,
    }.items():
        monkeypatch.setattr(openai, name, value)
    monkeypatch.setattr(openai, "_client", None)
    stop = threading.Event()
    failures: list[BaseException] = []
    answered = 0

    def caller() -> None:
        nonlocal answered
        while not stop.is_set():
            try:
                answer = openai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
            except BaseException as error:
                failures.append(error)
                return
            assert answer.choices[0].message.content == "ptu:gpt-4o"
            answered += 1

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 20
        while answered < 300 and not failures and time.monotonic() < deadline:
            openai_lb.patch([Backend(ptu.url)])
            time.sleep(0.001)
            openai_lb.unpatch()
            time.sleep(0.001)
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert not failures, f"calls in flight broke while patching: {failures[:3]!r}"
    assert answered > 0
