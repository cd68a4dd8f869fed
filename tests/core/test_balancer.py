"""The decision core with a fake clock: selection, weights, cooldowns, circuit breaker, synthetic answers."""

from __future__ import annotations

import json
import random
from collections import Counter

import pytest
from helpers import FakeClock, make_balancer, next_answer, next_attempt
from hypothesis import given, settings
from hypothesis import strategies as st

from openai_lb import Backend, InMemoryHealthStore, Policy
from openai_lb._affinity import Stateful
from openai_lb._config import MAX_WEIGHT
from openai_lb._core import Attempt, Balancer, SyntheticResponse

PTU = Backend("https://ptu.example.com", priority=1, name="ptu")
PAYGO_A = Backend("https://paygo-a.example.com", priority=2, name="paygo-a")
PAYGO_B = Backend("https://paygo-b.example.com", priority=2, name="paygo-b")
FAR = Backend("https://far.example.com", priority=3, name="far")

NOT_FOUND = json.dumps({"error": {"code": "DeploymentNotFound", "message": "no"}}).encode()


def headers_of(step: SyntheticResponse) -> dict[str, str]:
    return dict(step.headers)


def rate_limit(balancer: Balancer, backend: Backend, seconds: float, deployment: str = "gpt-4o") -> None:
    call = balancer.begin(deployment)
    step = Attempt(backend, backend.deployment_for(deployment), 1, balancer.clock())
    assert call.report(step, 429, {"retry-after-ms": str(int(seconds * 1000))}, None) is False


def test_lowest_priority_number_is_chosen_while_available(clock: FakeClock) -> None:
    balancer = make_balancer([PAYGO_A, FAR, PTU], clock)
    for _ in range(20):
        assert next_attempt(balancer.begin("gpt-4o")).backend is PTU


def test_429_fails_over_to_the_next_tier_and_cools_for_the_time_asked(clock: FakeClock) -> None:
    balancer = make_balancer([PTU, PAYGO_A], clock)
    call = balancer.begin("gpt-4o")
    first = next_attempt(call)
    assert call.report(first, 429, {"retry-after-ms": "2500"}, None) is False
    assert next_attempt(call).backend is PAYGO_A
    clock.advance(2.499)
    assert next_attempt(balancer.begin("gpt-4o")).backend is PAYGO_A, "PTU still cooling"
    clock.advance(0.001)
    assert next_attempt(balancer.begin("gpt-4o")).backend is PTU, "PTU back the moment its Retry-After passed"


def test_429_without_usable_headers_cools_for_the_default(clock: FakeClock) -> None:
    balancer = make_balancer([PTU, PAYGO_A], clock, policy=Policy(default_cooldown=7))
    call = balancer.begin("gpt-4o")
    call.report(next_attempt(call), 429, {"retry-after": "soon"}, None)
    clock.advance(6.9)
    assert next_attempt(balancer.begin("gpt-4o")).backend is PAYGO_A
    clock.advance(0.1)
    assert next_attempt(balancer.begin("gpt-4o")).backend is PTU


def test_429_cooldown_is_capped(clock: FakeClock) -> None:
    balancer = make_balancer([PTU, PAYGO_A], clock, policy=Policy(max_cooldown=30))
    call = balancer.begin("gpt-4o")
    call.report(next_attempt(call), 429, {"retry-after": "86400"}, None)
    clock.advance(30)
    assert next_attempt(balancer.begin("gpt-4o")).backend is PTU, "a day-long Retry-After is probed after the cap"


def test_http_date_retry_after_uses_the_wall_clock(clock: FakeClock) -> None:
    from email.utils import formatdate

    balancer = make_balancer([PTU, PAYGO_A], clock)
    call = balancer.begin("gpt-4o")
    call.report(next_attempt(call), 429, {"retry-after": formatdate(clock.wall_now + 4, usegmt=True)}, None)
    clock.advance(3.9)
    assert next_attempt(balancer.begin("gpt-4o")).backend is PAYGO_A
    clock.advance(0.2)
    assert next_attempt(balancer.begin("gpt-4o")).backend is PTU


def test_429_cools_only_that_deployment_of_the_backend(clock: FakeClock) -> None:
    balancer = make_balancer([PTU, PAYGO_A], clock)
    rate_limit(balancer, PTU, 10, deployment="gpt-4o")
    assert next_attempt(balancer.begin("gpt-4o")).backend is PAYGO_A
    assert next_attempt(balancer.begin("gpt-4o-mini")).backend is PTU, "other deployments on the PTU stay in use"


def test_deployment_mapping_names_the_backend_deployment_and_keys_its_cooldown(clock: FakeClock) -> None:
    mapped = Backend("https://m.example.com", priority=1, deployments={"gpt-4o": "gpt-4o-global"}, name="m")
    balancer = make_balancer([mapped, PAYGO_A], clock)
    step = next_attempt(balancer.begin("gpt-4o"))
    assert step.deployment == "gpt-4o-global"
    rate_limit(balancer, mapped, 5, deployment="gpt-4o")
    assert next_attempt(balancer.begin("gpt-4o")).backend is PAYGO_A


def test_each_backend_is_tried_at_most_once_per_call(clock: FakeClock) -> None:
    balancer = make_balancer([PTU, PAYGO_A, PAYGO_B, FAR], clock)
    call = balancer.begin("gpt-4o")
    seen = []
    while isinstance(step := call.next(), Attempt):
        seen.append(step.backend.name)
        call.report(step, 503, {}, None)
    assert sorted(seen) == ["far", "paygo-a", "paygo-b", "ptu"]
    assert seen[0] == "ptu", f"tiers in order: {seen}"
    assert seen[-1] == "far", f"tiers in order: {seen}"
    assert call.attempts == 4


def test_weights_share_traffic_inside_a_tier() -> None:
    heavy = Backend("https://heavy.example.com", priority=2, weight=3, name="heavy")
    light = Backend("https://light.example.com", priority=2, weight=1, name="light")
    balancer = make_balancer([heavy, light], FakeClock(), rng=random.Random(99))
    picks = Counter(next_attempt(balancer.begin("gpt-4o")).backend.name for _ in range(20_000))
    share = picks["heavy"] / 20_000
    # Binomial(20000, 0.75): the standard deviation is about 0.003; 0.02 is over six of them.
    assert abs(share - 0.75) < 0.02, f"heavy should get ~75% of traffic, got {share:.3f}"


def test_the_largest_weights_allowed_still_share_traffic() -> None:
    a = Backend("https://a.example.com", weight=MAX_WEIGHT, name="a")
    b = Backend("https://b.example.com", weight=MAX_WEIGHT, name="b")
    balancer = make_balancer([a, b], FakeClock(), rng=random.Random(5))
    picks = Counter(next_attempt(balancer.begin("gpt-4o")).backend.name for _ in range(4000))
    assert abs(picks["a"] / 4000 - 0.5) < 0.04, f"equal huge weights must split evenly, got {picks}"


def test_equal_weights_use_every_backend_of_the_tier() -> None:
    balancer = make_balancer([PAYGO_A, PAYGO_B, FAR], FakeClock(), rng=random.Random(3))
    picks = Counter(next_attempt(balancer.begin("gpt-4o")).backend.name for _ in range(4000))
    assert set(picks) == {"paygo-a", "paygo-b"}
    assert abs(picks["paygo-a"] / 4000 - 0.5) < 0.04


def test_5xx_opens_the_circuit_for_the_whole_backend_doubling_to_a_cap(clock: FakeClock) -> None:
    policy = Policy(breaker_base=5, breaker_max=12)
    balancer = make_balancer([PTU, PAYGO_A], clock, policy=policy)
    expected = [5, 10, 12, 12]
    for seconds in expected:
        call = balancer.begin("gpt-4o")
        step = next_attempt(call)
        assert step.backend is PTU
        call.report(step, 500, {}, None)
        assert next_attempt(balancer.begin("other-deployment")).backend is PAYGO_A, "the whole backend cools"
        clock.advance(seconds - 0.01)
        assert next_attempt(balancer.begin("gpt-4o")).backend is PAYGO_A, f"still open before {seconds}s"
        clock.advance(0.01)


def test_success_resets_the_circuit_breaker(clock: FakeClock) -> None:
    balancer = make_balancer([PTU, PAYGO_A], clock, policy=Policy(breaker_base=5, breaker_max=100))
    for _ in range(3):
        call = balancer.begin("gpt-4o")
        call.report(next_attempt(call), 502, {}, None)
        clock.advance(100)
    call = balancer.begin("gpt-4o")
    assert call.report(next_attempt(call), 200, {}, None) is True
    call = balancer.begin("gpt-4o")
    call.report(next_attempt(call), 502, {}, None)
    clock.advance(5)
    assert next_attempt(balancer.begin("gpt-4o")).backend is PTU, "after a success the next failure cools for the base"


def test_transport_errors_trip_the_breaker_like_5xx(clock: FakeClock) -> None:
    balancer = make_balancer([PTU, PAYGO_A], clock)
    call = balancer.begin("gpt-4o")
    call.report_error(next_attempt(call), ConnectionResetError())
    assert next_attempt(call).backend is PAYGO_A
    clock.advance(4.99)
    assert next_attempt(balancer.begin("gpt-4o")).backend is PAYGO_A


def test_429s_do_not_count_toward_the_breaker(clock: FakeClock) -> None:
    balancer = make_balancer([PTU, PAYGO_A], clock, policy=Policy(breaker_base=5))
    for _ in range(5):
        rate_limit(balancer, PTU, 1)
        clock.advance(1)
    call = balancer.begin("gpt-4o")
    call.report(next_attempt(call), 500, {}, None)
    clock.advance(5)
    assert next_attempt(balancer.begin("gpt-4o")).backend is PTU, "first failure: base cooldown, not doubled"


@pytest.mark.parametrize("status", [400, 401, 403, 409, 422])
def test_other_4xx_go_back_to_the_caller_without_failover(clock: FakeClock, status: int) -> None:
    balancer = make_balancer([PTU, PAYGO_A], clock)
    call = balancer.begin("gpt-4o")
    assert call.report(next_attempt(call), status, {}, None) is True
    assert next_attempt(balancer.begin("gpt-4o")).backend is PTU


def test_failover_statuses_are_configurable(clock: FakeClock) -> None:
    balancer = make_balancer([PTU, PAYGO_A], clock, policy=Policy(failover_statuses=frozenset({500})))
    call = balancer.begin("gpt-4o")
    assert call.report(next_attempt(call), 503, {}, None) is True, "503 left out of the policy is delivered"
    call = balancer.begin("gpt-4o")
    assert call.report(next_attempt(call), 500, {}, None) is False


def test_plain_404_is_delivered_but_deployment_not_found_fails_over(clock: FakeClock) -> None:
    balancer = make_balancer([PTU, PAYGO_A], clock)
    call = balancer.begin("gpt-4o")
    assert call.needs_body(404)
    assert call.report(next_attempt(call), 404, {}, b'{"error": {"code": "404"}}') is True
    call = balancer.begin("gpt-4o")
    assert call.report(next_attempt(call), 404, {}, NOT_FOUND) is False
    assert next_attempt(call).backend is PAYGO_A


def test_missing_deployment_is_skipped_for_the_cooldown_cap(clock: FakeClock) -> None:
    balancer = make_balancer([PTU, PAYGO_A], clock, policy=Policy(max_cooldown=60))
    call = balancer.begin("gpt-4o")
    call.report(next_attempt(call), 404, {}, NOT_FOUND)
    clock.advance(59.9)
    assert next_attempt(balancer.begin("gpt-4o")).backend is PAYGO_A
    assert next_attempt(balancer.begin("gpt-4o-mini")).backend is PTU
    clock.advance(0.1)
    assert next_attempt(balancer.begin("gpt-4o")).backend is PTU, "probed again after the cap"


def test_a_deployment_no_backend_has_answers_404_every_time_never_429(clock: FakeClock) -> None:
    balancer = make_balancer([PTU, PAYGO_A], clock)
    for _ in range(3):
        call = balancer.begin("nope")
        while isinstance(step := call.next(), Attempt):
            call.report(step, 404, {}, NOT_FOUND)
        assert step.status == 404
        assert json.loads(step.body)["error"]["code"] == "DeploymentNotFound"
        assert "'nope'" in json.loads(step.body)["error"]["message"]
        clock.advance(1)


def test_every_backend_cooling_answers_429_with_the_soonest_recovery(clock: FakeClock) -> None:
    balancer = make_balancer([PTU, PAYGO_A, PAYGO_B], clock)
    rate_limit(balancer, PTU, 30)
    rate_limit(balancer, PAYGO_A, 2.5)
    rate_limit(balancer, PAYGO_B, 9)
    step = next_answer(balancer.begin("gpt-4o"))
    assert step.status == 429
    headers = headers_of(step)
    assert headers["retry-after-ms"] == "2500"
    assert headers["retry-after"] == "3", "seconds are rounded up"
    assert "x-should-retry" not in headers
    error = json.loads(step.body)["error"]
    assert error["code"] == "429"
    assert "paygo-a" in error["message"]


def test_a_pinned_request_whose_holder_cools_is_told_so_not_that_every_backend_cools(clock: FakeClock) -> None:
    balancer = make_balancer([PAYGO_A, PAYGO_B], clock)
    balancer.store.remember(("resp_1",), PAYGO_B.key, clock() + 60, 10)
    rate_limit(balancer, PAYGO_B, 2)
    step = next_answer(balancer.begin("gpt-4o", Stateful(("resp_1",), None, None)))
    assert headers_of(step)["retry-after-ms"] == "2000"
    message = json.loads(step.body)["error"]["message"]
    assert "holding the objects this request names, 'paygo-b'" in message, message
    assert "Every backend" not in message, "paygo-a is idle: only the holder cools"


def test_last_backend_answering_429_within_the_call_gives_the_synthetic_429(clock: FakeClock) -> None:
    balancer = make_balancer([PTU, PAYGO_A], clock)
    call = balancer.begin("gpt-4o")
    call.report(next_attempt(call), 429, {"retry-after-ms": "4000"}, None)
    call.report(next_attempt(call), 429, {"retry-after-ms": "1200"}, None)
    assert headers_of(next_answer(call))["retry-after-ms"] == "1200"


def test_last_backend_failing_with_5xx_gives_the_synthetic_429(clock: FakeClock) -> None:
    balancer = make_balancer([PTU, PAYGO_A], clock, policy=Policy(breaker_base=5))
    call = balancer.begin("gpt-4o")
    call.report(next_attempt(call), 429, {"retry-after-ms": "9000"}, None)
    call.report_error(next_attempt(call), TimeoutError())
    assert headers_of(next_answer(call))["retry-after-ms"] == "5000"


def test_waits_beyond_what_the_sdk_honours_say_do_not_retry(clock: FakeClock) -> None:
    balancer = make_balancer([PTU], clock, limit=60)
    rate_limit(balancer, PTU, 61)
    headers = headers_of(next_answer(balancer.begin("gpt-4o")))
    assert headers["x-should-retry"] == "false"
    assert headers["retry-after"] == "61"


def test_missing_deployments_do_not_count_as_soonest_recovery(clock: FakeClock) -> None:
    balancer = make_balancer([PTU, PAYGO_A], clock)
    call = balancer.begin("gpt-4o")
    call.report(next_attempt(call), 404, {}, NOT_FOUND)
    call.report(next_attempt(call), 429, {"retry-after-ms": "3000"}, None)
    step = next_answer(call)
    assert step.status == 429
    assert headers_of(step)["retry-after-ms"] == "3000"


def test_requests_without_a_deployment_cool_apart_from_every_deployment(clock: FakeClock) -> None:
    balancer = make_balancer([PTU, PAYGO_A], clock)
    call = balancer.begin(None)
    step = next_attempt(call)
    assert step.deployment is None
    call.report(step, 429, {"retry-after": "5"}, None)
    assert next_attempt(balancer.begin(None)).backend is PAYGO_A
    assert next_attempt(balancer.begin("gpt-4o")).backend is PTU


def test_health_is_shared_by_balancers_over_the_same_store(clock: FakeClock) -> None:
    store = InMemoryHealthStore()
    first = Balancer([PTU, PAYGO_A], store=store, clock=clock)
    second = Balancer([Backend("HTTPS://ptu.example.com/", priority=1), PAYGO_A], store=store, clock=clock)
    rate_limit(first, PTU, 10)
    assert next_attempt(second.begin("gpt-4o")).backend is PAYGO_A, "same URL after normalisation, same health"


outcomes = st.sampled_from(["ok", "429", "500", "error", "missing", "400"])


@given(
    priorities=st.lists(st.integers(min_value=-2, max_value=3), min_size=1, max_size=8),
    script=st.lists(outcomes, max_size=30),
    advance=st.floats(min_value=0, max_value=400),
)
@settings(max_examples=200, deadline=None)
def test_a_call_never_loops_and_ends_in_a_delivery_or_an_answer(
    priorities: list[int], script: list[str], advance: float
) -> None:
    clock = FakeClock()
    backends = [Backend(f"https://b{i}.example.com", priority=p) for i, p in enumerate(priorities)]
    balancer = make_balancer(backends, clock)
    feed = iter(script)
    for _ in range(3):
        call = balancer.begin("gpt-4o")
        tried = []
        while True:
            step = call.next()
            if isinstance(step, SyntheticResponse):
                assert step.status in (404, 429)
                if step.status == 429:
                    assert int(dict(step.headers)["retry-after-ms"]) >= 1
                break
            tried.append(step.backend.key)
            outcome = next(feed, "ok")
            if outcome == "error":
                call.report_error(step, OSError())
                continue
            status, body = {"ok": (200, None), "429": (429, None), "500": (500, None), "400": (400, None)}.get(
                outcome, (404, NOT_FOUND)
            )
            if call.report(step, status, {}, body):
                break
        assert len(tried) == len(set(tried)) <= len(backends), "each backend at most once per call"
        clock.advance(advance)


def test_requests_in_flight_when_a_backend_fails_count_as_one_failure(clock: FakeClock) -> None:
    balancer = make_balancer([PTU, PAYGO_A], clock, policy=Policy(breaker_base=5, breaker_max=120))
    calls = [balancer.begin("gpt-4o") for _ in range(16)]
    attempts = [next_attempt(call) for call in calls]
    for call, step in zip(calls, attempts, strict=True):
        call.report(step, 503, {}, None)
    clock.advance(5)
    assert next_attempt(balancer.begin("gpt-4o")).backend is PTU, "one blip cools for the base time, not the cap"


def test_attempts_sent_before_a_trip_do_not_extend_it_even_after_the_block_ends(clock: FakeClock) -> None:
    balancer = make_balancer([PTU, PAYGO_A], clock, policy=Policy(breaker_base=5, breaker_max=120))
    slow = [balancer.begin("gpt-4o") for _ in range(3)]
    sent = [next_attempt(call) for call in slow]
    slow[0].report_error(sent[0], TimeoutError())
    clock.advance(30)  # the others time out long after the 5 s block has ended
    for call, step in zip(slow[1:], sent[1:], strict=True):
        call.report_error(step, TimeoutError())
    assert next_attempt(balancer.begin("gpt-4o")).backend is PTU, "the stragglers of one outage do not trip it again"
    call = balancer.begin("gpt-4o")
    call.report_error(next_attempt(call), TimeoutError())
    clock.advance(9.99)
    assert next_attempt(balancer.begin("gpt-4o")).backend is PAYGO_A, "a new failure is the second step: 10 s"
    clock.advance(0.01)
    assert next_attempt(balancer.begin("gpt-4o")).backend is PTU


def test_concurrent_failures_of_one_outage_trip_the_breaker_once() -> None:
    import sys
    import threading

    store = InMemoryHealthStore()
    clock = FakeClock()
    balancer = Balancer([PTU, PAYGO_A], store=store, clock=clock, policy=Policy(breaker_base=5))
    calls = [balancer.begin("gpt-4o") for _ in range(32)]
    sent = [next_attempt(call) for call in calls]
    barrier = threading.Barrier(32)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:

        def fail(index: int) -> None:
            barrier.wait()
            calls[index].report(sent[index], 503, {}, None)

        threads = [threading.Thread(target=fail, args=(i,)) for i in range(32)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert store.blocked(PTU.key, "gpt-4o", clock.now) == (clock.now + 5, "failure")
