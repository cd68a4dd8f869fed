"""Tests of the fake server's rate limits: the pure meters and the rules that use them, on clock readings."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openai_lb.testing._meters import Limits, Meter, admit, drained, estimate, headroom, utilization
from openai_lb.testing._routes import Exchange, Incoming, parse
from openai_lb.testing._rules import Config, Decision, JsonBody, State, decide

STANDARD = Limits(tokens_per_minute=6_000)  # refills 100 tokens a second
PTU = Limits(tokens_per_minute=6_000, provisioned=True)


def chat(deployment: str = "gpt-4o", *, headers: dict[str, str] | None = None, **fields: Any) -> Exchange:
    body = {"messages": [{"role": "user", "content": "hi"}], **fields}
    target = f"/openai/deployments/{deployment}/chat/completions?api-version=2024-10-21"
    return parse(Incoming("POST", target, tuple((headers or {}).items()), json.dumps(body).encode()), "")


def prompt_of(exchange: Exchange) -> int:
    return estimate("chat", exchange.payload or {}, 0).prompt


def error_body(decision: Decision) -> dict[str, Any]:
    body = decision.response.body
    assert isinstance(body, JsonBody), f"expected a JSON body, got {decision.response}"
    assert isinstance(body.value, dict)
    return body.value


# -- what a request costs --------------------------------------------------------------------


def test_a_request_costs_its_prompt_estimate_plus_the_maximum_it_names() -> None:
    messages = [{"role": "user", "content": "x" * 400}]

    for name in ("max_tokens", "max_completion_tokens", "max_output_tokens"):
        cost = estimate("chat", {"messages": messages, name: 50}, default_max_tokens=1024)
        assert (cost.completion, cost.named) == (50, True), f"{name} is the answer's maximum"
    cost = estimate("chat", {"messages": messages}, default_max_tokens=1024)

    assert (cost.completion, cost.named) == (1024, False), "no maximum named: the default is charged"
    assert 100 <= cost.prompt <= 110, f"about four characters a token, got {cost.prompt}"


def test_embeddings_cost_their_input_only_and_junk_maxima_are_ignored() -> None:
    assert estimate("embeddings", {"input": "x" * 40, "max_tokens": 99}, 1024).completion == 0
    assert estimate("chat", {"messages": [], "max_tokens": True}, 7).completion == 7, "a bool is no maximum"
    assert estimate("chat", {"messages": [], "max_tokens": -1}, 7).completion == 7, "nor a negative number"
    assert (
        estimate("responses", {"input": "hello", "max_output_tokens": 3}, 7).total
        == 3 + estimate("responses", {"input": "hello"}, 0).prompt
    )


# -- standard deployments: a token bucket refilled continuously ---------------------------------


def test_a_standard_deployment_admits_what_fits_and_tells_when_the_rest_would() -> None:
    first = admit(Meter(), STANDARD, 5_000, now=10.0)
    second = admit(first.meter, STANDARD, 2_000, now=10.0)

    assert first.wait is None, "5000 of 6000 tokens fit"
    assert headroom(first.meter, STANDARD, 10.0).tokens_left == 1_000
    assert (second.wait, second.refused_by) == (pytest.approx(10.0), "tokens"), "1000 tokens are missing at 100/s"
    assert admit(second.meter, STANDARD, 2_000, now=20.0).wait is None, "after the wait it fits"


def test_a_request_larger_than_the_whole_bucket_goes_in_once_the_bucket_is_full() -> None:
    half = admit(Meter(), STANDARD, 3_000, now=0.0).meter

    refused = admit(half, STANDARD, 10_000, now=0.0)
    admitted = admit(half, STANDARD, 10_000, now=30.0)

    assert refused.wait == pytest.approx(30.0), "it waits until the 3000 tokens in use have drained"
    assert admitted.wait is None
    assert headroom(admitted.meter, STANDARD, 30.0).tokens_left == 0, "it empties the bucket, no further"


def test_requests_per_minute_are_checked_per_second_and_refused_ones_count() -> None:
    limits = Limits(tokens_per_minute=1_000_000, requests_per_minute=600)  # 10 a second
    meter, now = Meter(), 5.0
    for _ in range(10):
        verdict = admit(meter, limits, 1, now)
        assert verdict.wait is None
        meter = verdict.meter
    refused = admit(meter, limits, 1, now + 0.25)

    assert (refused.wait, refused.refused_by) == (pytest.approx(0.75), "requests"), "until the second ends"
    assert headroom(refused.meter, limits, now + 0.25).requests_left == 0
    assert admit(refused.meter, limits, 1, now + 1.0).wait is None, "a new second lets requests in again"


def test_under_sixty_requests_a_minute_the_check_spans_ten_seconds() -> None:
    limits = Limits(tokens_per_minute=1_000, requests_per_minute=6)  # Azure's 6 RPM per 1000 TPM

    first = admit(Meter(), limits, 1, now=0.0)
    second = admit(first.meter, limits, 1, now=9.0)

    assert limits.request_period == (10.0, 1)
    assert first.wait is None
    assert second.wait == pytest.approx(1.0), "one request per ten seconds"


# -- provisioned deployments: a draining leaky bucket -------------------------------------------


def test_a_provisioned_deployment_admits_below_100_percent_even_past_it_then_refuses() -> None:
    below = admit(Meter(), PTU, 5_000, now=0.0)
    over = admit(below.meter, PTU, 5_000, now=0.0)
    refused = admit(over.meter, PTU, 1, now=0.0)

    assert below.wait is None
    assert over.wait is None, "83 % is below 100 %: the next request goes in"
    assert utilization(over.meter, PTU, 0.0) == pytest.approx(10_000 / 6_000 * 100)
    assert refused.wait == pytest.approx(40.0, abs=0.01), "4000 tokens over capacity drain at 100/s"
    assert admit(refused.meter, PTU, 1, now=refused.wait).wait is None, "after the wait it is below 100 %"


def test_utilization_drains_to_zero_when_idle() -> None:
    busy = admit(Meter(), PTU, 3_000, now=0.0).meter

    assert utilization(busy, PTU, 15.0) == pytest.approx(25.0)
    assert utilization(busy, PTU, 30.0) == 0.0
    assert utilization(busy, PTU, 1_000.0) == 0.0, "never below 0"
    assert utilization(busy, PTU, -5.0) == pytest.approx(50.0), "a clock moving back drains nothing"


@given(
    provisioned=st.booleans(),
    steps=st.lists(st.tuples(st.floats(0.0, 20.0), st.integers(0, 9_000)), max_size=40),
)
def test_meters_never_go_negative_and_drain_to_zero(provisioned: bool, steps: list[tuple[float, int]]) -> None:
    limits = Limits(tokens_per_minute=6_000, provisioned=provisioned)
    meter, now = Meter(), 0.0
    for advance, cost in steps:
        now += advance
        verdict = admit(meter, limits, cost, now)
        meter = verdict.meter
        assert meter.used >= 0.0, f"the meter went below 0: {meter}"
        assert provisioned or meter.used <= limits.tokens_per_minute, f"a standard bucket overdrawn: {meter}"
        if verdict.wait is not None:
            assert verdict.wait > 0, "a refusal always says how long to wait"
            retried = admit(meter, limits, cost, now + verdict.wait + 1e-6)
            assert retried.wait is None, f"still refused after waiting {verdict.wait} s: {meter}"
        reading = headroom(meter, limits, now)
        assert reading.tokens_left >= 0, reading
        assert reading.utilization >= 0.0, reading
    idle = now + meter.used / limits.rate
    assert drained(meter, limits, idle + 1e-6) == 0.0, f"still {meter.used} in use when idle"
    assert utilization(meter, limits, idle + 1) == 0.0


# -- the rules: headers, refusals, context limits, spillover ------------------------------------


def test_a_standard_deployments_answer_carries_its_headroom() -> None:
    config = Config(tokens_per_minute=6_000, requests_per_minute=600)
    request = chat(max_tokens=100)

    decision = decide(request, config, State(), now=0.0)

    charged = prompt_of(request) + 100
    assert decision.response.status == 200
    assert decision.response.headers == {
        "x-ratelimit-limit-tokens": "6000",
        "x-ratelimit-remaining-tokens": str(6_000 - charged),
        "x-ratelimit-reset-tokens": "2",
        "x-ratelimit-limit-requests": "600",
        "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-reset-requests": "1",
        "x-ms-deployment-name": "gpt-4o",
    }
    assert decision.charged == ("gpt-4o", charged)


def test_a_standard_deployments_429_says_token_rate_limit_and_spends_no_budget() -> None:
    config = Config(tokens_per_minute=6_000, budget=10)
    first = decide(chat(max_tokens=5_000), config, State(), now=0.0)

    refused = decide(chat(max_tokens=5_000), config, first.state, now=0.0)

    assert refused.response.status == 429
    assert refused.throttled, "the fake counts it in throttled"
    assert not refused.over_budget
    assert "exceeded token rate limit" in error_body(refused)["error"]["message"]
    headers = refused.response.headers
    assert int(headers["retry-after-ms"]) > 0
    assert int(headers["retry-after"]) >= 1
    assert int(headers["x-ratelimit-remaining-tokens"]) < 5_000, "a 429 carries the headroom too"
    assert refused.state.window == first.state.window, "the budget is not spent by a refused request"
    assert refused.charged is None


def test_a_provisioned_deployment_reports_utilisation_and_no_ratelimit_headers() -> None:
    config = Config(tokens_per_minute=1_000, provisioned=True)
    request = chat(max_tokens=500)

    decision = decide(request, config, State(), now=0.0)

    utilisation = (prompt_of(request) + 500) / 1_000 * 100
    assert decision.response.headers == {
        "azure-openai-deployment-utilization": f"{utilisation:.1f}%",
        "x-ms-deployment-name": "gpt-4o",
    }


def test_no_rate_settings_add_no_headers_but_tokens_are_still_counted() -> None:
    decision = decide(chat(max_tokens=7), Config(), State(), now=0.0)

    assert decision.response.headers == {}
    assert decision.charged is not None
    assert decision.charged[1] > 7, "the prompt and the maximum are counted"


def test_a_prompt_over_the_context_limit_is_azures_400_and_charges_nothing() -> None:
    long = chat(messages=[{"role": "user", "content": "x" * 800}])
    config = Config(context_limits={"gpt-4o": 100}, tokens_per_minute=6_000)

    decision = decide(long, config, State(), now=0.0)

    assert decision.response.status == 400
    assert decision.too_long
    assert error_body(decision) == {
        "error": {
            "message": f"This model's maximum context length is 100 tokens. However, your messages resulted in "
            f"{prompt_of(long)} tokens. Please reduce the length of the messages.",
            "type": "invalid_request_error",
            "param": "messages",
            "code": "context_length_exceeded",
        }
    }
    assert decision.state == State(), "a refused request is charged nothing"


def test_a_prompt_that_fits_but_leaves_no_room_for_its_max_tokens_is_also_too_long() -> None:
    request = chat(max_tokens=100)
    prompt = prompt_of(request)

    decision = decide(request, Config(context_limits={"gpt-4o": prompt + 50}), State(), now=0.0)
    unnamed = decide(chat(), Config(context_limits={"gpt-4o": prompt + 50}), State(), now=0.0)

    assert error_body(decision)["error"]["message"] == (
        f"This model's maximum context length is {prompt + 50} tokens. However, you requested {prompt + 100} tokens "
        f"({prompt} in the messages, 100 in the completion). Please reduce the length of the messages or completion."
    )
    assert unnamed.response.status == 200, "the fake's default maximum does not count against the context"


PTU_AND_PAYGO = Config(
    deployments=frozenset({"ptu", "paygo"}),
    tokens_per_minute={"ptu": 1_000, "paygo": 100_000},
    provisioned=frozenset({"ptu"}),
    spillover={"ptu": "paygo"},
    context_limits={"ptu": 2_000},
)


def full_ptu(config: Config = PTU_AND_PAYGO) -> State:
    return decide(chat("ptu", max_tokens=1_000), config, State(), now=0.0).state


def test_a_full_ptu_spills_to_its_standard_deployment_which_names_itself() -> None:
    decision = decide(chat("ptu"), PTU_AND_PAYGO, full_ptu(), now=0.0)

    assert decision.response.status == 200
    assert decision.spilled
    assert not decision.throttled, "the caller got no 429"
    assert decision.response.headers["x-ms-spillover-from-deployment"] == "ptu"
    assert decision.response.headers["x-ms-deployment-name"] == "paygo"
    assert "x-ratelimit-remaining-tokens" in decision.response.headers, "the standard deployment's headroom"
    assert error_body(decision)["choices"][0]["message"]["content"] == "fake:paygo"
    assert decision.charged is not None
    assert decision.charged[0] == "paygo", "the deployment that served it is charged"


def test_a_prompt_too_long_for_the_ptu_spills_too() -> None:
    long = chat("ptu", messages=[{"role": "user", "content": "x" * 10_000}])

    decision = decide(long, PTU_AND_PAYGO, State(), now=0.0)

    assert decision.response.status == 200
    assert decision.spilled
    assert decision.response.headers["x-ms-deployment-name"] == "paygo"


def test_the_request_header_chooses_the_spillover_deployment_and_the_setting_wins_over_it() -> None:
    config = Config(
        deployments=frozenset({"ptu", "paygo", "other"}),
        tokens_per_minute={"ptu": 1_000},
        provisioned=frozenset({"ptu"}),
    )
    asked = chat("ptu", headers={"X-Ms-Spillover-Deployment": "other"})

    by_header = decide(asked, config, full_ptu(config), now=0.0)
    by_setting = decide(asked, replace(config, spillover={"ptu": "paygo"}), full_ptu(config), now=0.0)

    assert by_header.response.headers["x-ms-deployment-name"] == "other"
    assert by_setting.response.headers["x-ms-deployment-name"] == "paygo"
    assert decide(chat("ptu"), config, full_ptu(config), now=0.0).throttled, "neither: the PTU's own 429"


def test_a_failed_spill_answers_the_ptus_refusal_with_the_spills_status() -> None:
    small_paygo = replace(PTU_AND_PAYGO, tokens_per_minute={"ptu": 1_000, "paygo": 1_000})
    spilled = decide(chat("ptu"), small_paygo, full_ptu(small_paygo), now=0.0)
    missing = chat("ptu", headers={"x-ms-spillover-deployment": "nowhere"})
    config = replace(PTU_AND_PAYGO, spillover={})

    refused_twice = decide(chat("ptu"), small_paygo, spilled.state, now=0.0)
    not_hosted = decide(missing, config, full_ptu(config), now=0.0)

    assert spilled.spilled
    assert refused_twice.response.status == 429
    assert refused_twice.throttled
    assert not refused_twice.spilled
    assert refused_twice.response.headers["x-ms-spillover-error"] == "429"
    assert refused_twice.response.headers["x-ms-deployment-name"] == "ptu", "the PTU's own answer"
    assert not_hosted.response.headers["x-ms-spillover-error"] == "404"


def test_a_standard_deployment_ignores_the_spillover_header() -> None:
    config = Config(tokens_per_minute=1)
    first = decide(chat(), config, State(), now=0.0)

    decision = decide(chat(headers={"x-ms-spillover-deployment": "other"}), config, first.state, now=0.0)

    assert decision.response.status == 429
    assert "x-ms-spillover-error" not in decision.response.headers


def test_v1_and_responses_requests_are_metered_by_the_deployment_in_their_body() -> None:
    config = Config(tokens_per_minute=6_000)
    v1 = parse(
        Incoming(
            "POST",
            "/openai/v1/responses",
            (),
            json.dumps({"model": "mini", "input": "hi", "max_output_tokens": 9}).encode(),
        ),
        "",
    )

    decision = decide(v1, config, State(), now=0.0)

    assert decision.response.headers["x-ms-deployment-name"] == "mini"
    assert decision.charged == ("mini", estimate("responses", {"input": "hi"}, 0).prompt + 9)
