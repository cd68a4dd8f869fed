"""The fake server's Azure-like rate limits end to end: the real SDK on 127.0.0.1, a fake clock for the meters."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from helpers import FakeClock
from openai.types.chat import ChatCompletionMessageParam

from openai_lb.testing import FakeAzureOpenAI

API_VERSION = "2024-10-21"
HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def azure_client(server: FakeAzureOpenAI, **options: Any) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(
        azure_endpoint=server.url, api_key="k1", api_version=API_VERSION, max_retries=0, **options
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(100.0)


@pytest.fixture
def resource(clock: FakeClock) -> Iterator[FakeAzureOpenAI]:
    """One Azure resource: a PTU of 6000 tokens a minute spilling to a standard deployment, and a small one."""
    with FakeAzureOpenAI(
        name="east",
        deployments={"ptu", "paygo", "small"},
        tokens_per_minute={"ptu": 6_000, "paygo": 60_000, "small": 1_000},
        requests_per_minute={"paygo": 600},
        provisioned={"ptu"},
        spillover={"ptu": "paygo"},
        context_limits={"ptu": 8_000, "small": 1_000},
        clock=clock,
    ) as server:
        yield server


def test_a_standard_deployment_answers_with_its_remaining_tokens_and_requests(resource: FakeAzureOpenAI) -> None:
    answer = azure_client(resource).chat.completions.with_raw_response.create(
        model="paygo", messages=HI, max_tokens=100
    )

    usage = answer.parse().usage
    assert usage is not None
    charged = usage.prompt_tokens + 100
    assert answer.headers["x-ratelimit-limit-tokens"] == "60000"
    assert answer.headers["x-ratelimit-remaining-tokens"] == str(60_000 - charged), "prompt + max_tokens are charged"
    assert answer.headers["x-ratelimit-limit-requests"] == "600"
    assert answer.headers["x-ratelimit-remaining-requests"] == "9", "600 RPM let 10 requests in per second"
    assert answer.headers["x-ms-deployment-name"] == "paygo"
    assert (resource.tokens_used, resource.tokens_used_by("paygo")) == (charged, charged)


def test_a_standard_deployment_answers_429_until_its_tokens_refill(resource: FakeAzureOpenAI, clock: FakeClock) -> None:
    client = azure_client(resource)
    client.chat.completions.create(model="small", messages=HI, max_tokens=900)

    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="small", messages=HI, max_tokens=900)
    wait_ms = int(refused.value.response.headers["retry-after-ms"])
    clock.advance(wait_ms / 1000)
    after = client.chat.completions.create(model="small", messages=HI, max_tokens=900)

    assert 0 < wait_ms <= 60_000, f"the wait until 900 tokens fit again, got {wait_ms} ms"
    assert refused.value.response.headers["x-ratelimit-remaining-tokens"] != "0", "what is left, too little"
    assert "exceeded token rate limit" in str(refused.value)
    assert after.choices[0].message.content == "east:small", "admitted once the bucket refilled"
    assert (resource.throttled, resource.served) == (1, 2)


def test_a_ptu_reports_utilisation_refuses_from_100_percent_and_drains(
    resource: FakeAzureOpenAI, clock: FakeClock
) -> None:
    client = azure_client(resource)
    resource.spillover = {}  # the PTU alone, to see its own 429
    first = client.chat.completions.with_raw_response.create(model="ptu", messages=HI, max_tokens=6_000)

    with pytest.raises(openai.RateLimitError) as refused:
        client.chat.completions.create(model="ptu", messages=HI, max_tokens=10)
    full = resource.utilization("ptu")
    clock.advance(int(refused.value.response.headers["retry-after-ms"]) / 1000)
    after = client.chat.completions.with_raw_response.create(model="ptu", messages=HI, max_tokens=10)
    clock.advance(120)

    assert first.headers["azure-openai-deployment-utilization"] == f"{full:.1f}%"
    assert full > 100, "the request admitted below 100 % took it over"
    assert refused.value.response.headers["azure-openai-deployment-utilization"] == f"{full:.1f}%"
    assert "x-ratelimit-remaining-tokens" not in refused.value.response.headers, "a PTU reports utilisation only"
    assert float(after.headers["azure-openai-deployment-utilization"].rstrip("%")) < 101
    assert resource.utilization("ptu") == 0.0, "an idle PTU drains to 0"
    assert resource.throttled == 1


def test_a_prompt_over_the_context_limit_is_a_400_context_length_exceeded(resource: FakeAzureOpenAI) -> None:
    long: list[ChatCompletionMessageParam] = [{"role": "user", "content": "word " * 2_000}]

    with pytest.raises(openai.BadRequestError) as refused:
        azure_client(resource).chat.completions.create(model="small", messages=long)

    assert refused.value.code == "context_length_exceeded"
    assert refused.value.param == "messages"
    assert "This model's maximum context length is 1000 tokens. However, your messages" in refused.value.message
    assert resource.tokens_used == 0, "a refused request is charged nothing"


def test_a_full_ptu_spills_to_the_standard_deployment_azure_style(resource: FakeAzureOpenAI) -> None:
    client = azure_client(resource)
    client.chat.completions.create(model="ptu", messages=HI, max_tokens=6_000)

    spilled = client.chat.completions.with_raw_response.create(model="ptu", messages=HI)
    long: list[ChatCompletionMessageParam] = [{"role": "user", "content": "word " * 10_000}]
    too_long_for_the_ptu = client.chat.completions.with_raw_response.create(model="ptu", messages=long)

    assert spilled.parse().choices[0].message.content == "east:paygo", "the standard deployment served it"
    assert spilled.headers["x-ms-spillover-from-deployment"] == "ptu"
    assert spilled.headers["x-ms-deployment-name"] == "paygo"
    assert too_long_for_the_ptu.headers["x-ms-spillover-from-deployment"] == "ptu", "a 400 spills too"
    assert (resource.spilled, resource.throttled) == (2, 0), "the caller saw no 429"
    assert resource.tokens_used_by("ptu") + resource.tokens_used_by("paygo") == resource.tokens_used


def test_the_spillover_header_picks_the_deployment_and_a_failed_spill_says_why(resource: FakeAzureOpenAI) -> None:
    resource.spillover = {}
    client = azure_client(resource)
    client.chat.completions.create(model="ptu", messages=HI, max_tokens=6_000)

    asked = client.chat.completions.with_raw_response.create(
        model="ptu", messages=HI, extra_headers={"x-ms-spillover-deployment": "small"}
    )
    with pytest.raises(openai.RateLimitError) as nowhere:
        client.chat.completions.create(model="ptu", messages=HI, extra_headers={"x-ms-spillover-deployment": "gone"})

    assert asked.headers["x-ms-deployment-name"] == "small"
    assert nowhere.value.response.headers["x-ms-spillover-error"] == "404", "no such deployment to spill to"
    assert nowhere.value.response.headers["x-ms-deployment-name"] == "ptu"


def test_a_burst_of_concurrent_requests_gets_exactly_what_the_ptu_admits(clock: FakeClock) -> None:
    results: list[int] = []
    lock = threading.Lock()
    with FakeAzureOpenAI(tokens_per_minute=6_000, provisioned=True, clock=clock) as server:
        client = azure_client(server)

        def call() -> None:
            try:
                client.chat.completions.create(model="ptu", messages=HI, max_tokens=1_000)
                status = 200
            except openai.RateLimitError:
                status = 429
            with lock:
                results.append(status)

        threads = [threading.Thread(target=call) for _ in range(100)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=30)

    # The clock stands still: each request costs 1008 tokens, so the sixth is the last one admitted below 100 %.
    assert len(results) == 100, "every request was answered"
    assert results.count(200) == 6, f"admitted while under 100 %: {results.count(200)}"
    assert server.throttled == 94


def test_latency_delays_every_answer() -> None:
    with FakeAzureOpenAI(deployments={"gpt-4o"}, latency=0.2) as server:
        client = azure_client(server)
        started = time.perf_counter()
        client.chat.completions.create(model="gpt-4o", messages=HI)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="missing", messages=HI)
        elapsed = time.perf_counter() - started

    assert elapsed >= 0.4, f"two answers, each 0.2 s late, took {elapsed:.3f} s"


def test_no_rate_settings_means_no_headroom_headers() -> None:
    with FakeAzureOpenAI() as server:
        answer = azure_client(server).chat.completions.with_raw_response.create(model="gpt-4o", messages=HI)

    added = {name for name in answer.headers if name.startswith(("x-ratelimit", "x-ms-", "azure-openai"))}
    assert added == set(), f"headers an unconfigured fake must not send: {added}"
    assert server.tokens_used > 0, "tokens are counted even without limits"


@pytest.mark.parametrize(
    ("options", "problem"),
    [
        ({"tokens_per_minute": 0}, "tokens_per_minute"),
        ({"tokens_per_minute": {"a": True}}, "tokens_per_minute"),
        ({"requests_per_minute": 6}, "requests_per_minute"),
        ({"tokens_per_minute": 1_000, "provisioned": True, "requests_per_minute": 6}, "requests_per_minute"),
        ({"tokens_per_minute": {"a": 1}, "requests_per_minute": {"b": 6}}, "'b'"),
        ({"provisioned": True}, "capacity"),
        ({"tokens_per_minute": {"a": 1}, "provisioned": {"b"}}, "capacity"),
        ({"tokens_per_minute": 1, "spillover": {"a": "b"}}, "provisioned"),
        ({"tokens_per_minute": 1, "provisioned": True, "spillover": {"a": "b"}}, "standard"),
        ({"tokens_per_minute": 1, "provisioned": {"a"}, "spillover": {"a": "a"}}, "another"),
        ({"deployments": {"a"}, "tokens_per_minute": 1, "provisioned": {"a"}, "spillover": {"a": "b"}}, "'b'"),
        ({"context_limits": {"a": 0}}, "context_limits"),
        ({"default_max_tokens": -1}, "default_max_tokens"),
        ({"latency": float("inf")}, "latency"),
        ({"provisioned": "ptu"}, "single string"),
    ],
)
def test_inconsistent_rate_settings_are_refused_with_a_clear_message(options: dict[str, Any], problem: str) -> None:
    with pytest.raises((ValueError, TypeError)) as refused:
        FakeAzureOpenAI(**options)

    assert problem in str(refused.value), f"{options} gave {refused.value}"
