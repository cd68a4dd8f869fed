"""Tests of the fake server's pure rules and routes: no sockets, no threads, no clock."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from openai_lb.testing import CutStream, Reply, ResetConnection, Stall
from openai_lb.testing._routes import Exchange, Incoming, inner_path, normalize_prefix, parse
from openai_lb.testing._rules import (
    Config,
    Cut,
    Decision,
    EventStream,
    JsonBody,
    Reset,
    Response,
    State,
    Wait,
    Window,
    decide,
    scripted,
    spend,
)

CHAT = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
HI = [{"role": "user", "content": "hi"}]
CONFIG = Config(name="ptu", deployments=frozenset({"gpt-4o"}), api_keys=frozenset({"k1"}), path_prefix="/gw")


def exchange(
    target: str = "/gw" + CHAT,
    *,
    body: object = None,
    key: str | None = "k1",
    method: str = "POST",
    prefix: str = "/gw",
) -> Exchange:
    headers = (("Content-Type", "application/json"),) + ((("Api-Key", key),) if key is not None else ())
    raw = b"" if body is None else json.dumps(body).encode()
    return parse(Incoming(method, target, headers, raw), prefix)


def error_of(decision: Decision) -> tuple[int, str]:
    body = decision.response.body
    assert isinstance(body, JsonBody), f"expected a JSON error, got {decision.response}"
    assert isinstance(body.value, dict)
    return decision.response.status, body.value["error"]["code"]


def chat_body(deployment: str = "gpt-4o") -> dict[str, object]:
    return {"model": deployment, "messages": HI}


# -- Azure's order of checks ----------------------------------------------------------------


def test_a_path_outside_the_prefix_is_404_before_any_other_check() -> None:
    # Bad key, unknown route and no body: the prefix is still what answers.
    decision = decide(exchange("/other/nowhere", key="bad"), CONFIG, State(), now=0.0)

    assert error_of(decision) == (404, "404")


def test_a_bad_key_is_401_whatever_the_route_deployment_or_body() -> None:
    for target in ("/gw/nowhere", "/gw/openai/deployments/missing/chat/completions", "/gw" + CHAT):
        decision = decide(exchange(target, body={}, key="bad"), CONFIG, State(), now=0.0)
        assert error_of(decision) == (401, "401"), f"{target} with a bad key"


def test_an_unknown_route_with_a_good_key_is_resource_not_found() -> None:
    for method, target in (("POST", "/gw/openai/deployments/gpt-4o/completions"), ("GET", "/gw" + CHAT)):
        decision = decide(exchange(target, method=method, body=chat_body()), CONFIG, State(), now=0.0)
        assert error_of(decision) == (404, "404"), f"{method} {target}"


def test_a_missing_deployment_is_deployment_not_found_before_the_body_is_validated() -> None:
    decision = decide(exchange("/gw/openai/deployments/missing/chat/completions", body={}), CONFIG, State(), now=0.0)

    assert error_of(decision) == (404, "DeploymentNotFound")


def test_a_body_that_is_not_a_json_object_is_400_before_the_deployment() -> None:
    decision = decide(exchange("/gw/openai/deployments/missing/chat/completions", body=[1]), CONFIG, State(), now=0.0)

    assert error_of(decision) == (400, "BadRequest")


def test_a_v1_request_without_model_is_400() -> None:
    decision = decide(exchange("/gw/openai/v1/chat/completions", body={"messages": HI}), CONFIG, State(), now=0.0)

    assert error_of(decision) == (400, "BadRequest")


def test_a_hosted_deployment_with_a_body_without_messages_is_400_and_spends_no_budget() -> None:
    config = Config(deployments=frozenset({"gpt-4o"}), budget=1)

    decision = decide(exchange(CHAT, body={}, prefix=""), config, State(), now=5.0)

    assert error_of(decision) == (400, "BadRequest")
    body = decision.response.body
    assert isinstance(body, JsonBody)
    assert isinstance(body.value, dict)
    assert "'messages'" in body.value["error"]["message"], "the message names the missing field"
    assert decision.state == State(), "a refused body must not open or use a budget window"


def test_an_exhausted_budget_is_429_with_retry_after_until_the_window_ends() -> None:
    config = Config(budget=1, window=10.0)
    request = exchange(CHAT, body=chat_body(), prefix="")

    first = decide(request, config, State(), now=100.0)
    second = decide(request, config, first.state, now=103.0)

    assert first.response.status == 200
    assert first.response.headers == {"x-ratelimit-remaining-requests": "0"}
    assert not first.over_budget
    assert error_of(second) == (429, "429")
    assert second.over_budget, "the fake counts budget 429s as rejected"
    assert second.response.headers["retry-after"] == "7", "the window opened at t=100 ends at t=110"
    assert second.response.headers["retry-after-ms"] == "7000"
    assert second.state == first.state, "a rejected request uses nothing"


def test_a_normal_answer_names_server_and_deployment() -> None:
    decision = decide(exchange(body=chat_body()), CONFIG, State(), now=0.0)

    body = decision.response.body
    assert decision.response.status == 200
    assert isinstance(body, JsonBody)
    assert isinstance(body.value, dict)
    assert body.value["choices"][0]["message"]["content"] == "ptu:gpt-4o"
    assert decision.response.headers == {}, "no budget, no ratelimit headers"


def test_a_streamed_answer_carries_the_configured_pacing() -> None:
    config = Config(stream_chunks=2, chunk_delay=0.5)

    decision = decide(exchange(CHAT, body={**chat_body(), "stream": True}, prefix=""), config, State(), now=0.0)

    body = decision.response.body
    assert isinstance(body, EventStream)
    assert body.delay == 0.5
    assert body.events[-1] == b"data: [DONE]\n\n"


# -- scripted actions ------------------------------------------------------------------------


def test_scripted_actions_skip_every_check() -> None:
    refused = exchange("/gw/openai/deployments/missing/chat/completions", key="bad", body={})

    reply = scripted(Reply(200), refused, CONFIG)
    cut = scripted(CutStream(after=0, framing="close"), refused, CONFIG)

    assert reply == Response(200, JsonBody({})), "a 2xx reply the endpoint cannot answer gets {}"
    assert isinstance(cut, Cut)
    assert (cut.after, cut.framing) == (0, "close")
    assert scripted(ResetConnection(), refused, CONFIG) == Reset()
    assert scripted(Stall(2.0), refused, CONFIG) == Wait(2.0, refused)


def test_a_scripted_error_without_json_gets_azures_error_body() -> None:
    response = scripted(Reply(429, headers={"retry-after": "3"}), exchange(body=chat_body()), CONFIG)

    assert isinstance(response, Response)
    assert isinstance(response.body, JsonBody)
    assert isinstance(response.body.value, dict)
    assert "retry after 3 seconds" in response.body.value["error"]["message"]
    assert response.headers == {"retry-after": "3"}


# -- budget windows and routes ---------------------------------------------------------------


@given(
    budget=st.integers(min_value=0, max_value=5),
    length=st.floats(min_value=0.5, max_value=100.0),
    steps=st.lists(st.floats(min_value=0.0, max_value=50.0), max_size=30),
)
def test_budget_windows_never_let_more_than_the_budget_through(budget: int, length: float, steps: list[float]) -> None:
    window, now = Window(), 1000.0
    accepted: dict[float, int] = {}
    for step in steps:
        now += step
        window, wait = spend(window, budget, length, now)
        assert window.start is not None
        assert window.start <= now < window.start + length, f"{now} is outside the window from {window.start}"
        if wait is None:
            accepted[window.start] = accepted.get(window.start, 0) + 1
        else:
            assert 0 < wait <= length, f"a wait of {wait} in a window of {length}"
            assert window.used == budget
    assert all(count <= budget for count in accepted.values()), accepted


@given(st.text(alphabet="/ab", max_size=8), st.text(alphabet="/ab", max_size=8))
def test_inner_path_strips_the_prefix_only_at_a_slash(prefix: str, path: str) -> None:
    prefix = normalize_prefix(prefix)
    inner = inner_path(prefix, path)

    if inner is None:
        assert prefix
        assert path != prefix
        assert not path.startswith(prefix + "/")
    else:
        assert prefix + inner == path


def test_parse_records_the_deployment_and_joins_repeated_headers() -> None:
    incoming = Incoming(
        "POST",
        "/gw/openai/v1/responses?api-version=preview",
        (("X-Tag", "a"), ("x-tag", "b")),
        json.dumps({"model": "gpt-4o", "input": "hi"}).encode(),
    )

    parsed = parse(incoming, "/gw")

    assert parsed.request.path == "/gw/openai/v1/responses", "the recorded path keeps the prefix"
    assert parsed.request.query == {"api-version": "preview"}
    assert parsed.request.headers == {"x-tag": "a, b"}
    assert parsed.request.deployment == "gpt-4o", "the v1 routes take the deployment from the model field"
    assert parsed.route is not None
    assert parsed.route.kind == "responses"
    assert parsed.operation == "Responses_Create"
