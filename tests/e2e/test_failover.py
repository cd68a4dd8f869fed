"""Through the real SDK against fake Azure OpenAI servers: priority, spill-over, failover, recovery."""

from __future__ import annotations

import json

import openai
import pytest
from e2e_helpers import assert_stream_cut, chat, content
from helpers import FakeClock

from openai_lb import Backend, Policy
from openai_lb.testing import CutStream, Reply, ResetConnection, Stall, closed_port_url

MESSAGES = [{"role": "user", "content": "hi"}]


def test_ptu_is_used_first_while_it_answers(servers, balanced) -> None:
    ptu, paygo = servers("ptu"), servers("paygo")
    client = balanced([Backend(ptu.url, priority=1, name="ptu"), Backend(paygo.url, priority=2, name="paygo")])
    answers = [chat(client) for _ in range(5)]
    assert [content(a) for a in answers] == ["ptu:gpt-4o"] * 5
    assert {a.headers["x-openai-lb-backend"] for a in answers} == {"ptu"}
    assert paygo.requests == []


def test_429_spills_to_pay_as_you_go_and_traffic_returns_when_retry_after_passes(
    servers, balanced, clock: FakeClock
) -> None:
    ptu, paygo = servers("ptu"), servers("paygo")
    client = balanced([Backend(ptu.url, priority=1), Backend(paygo.url, priority=2)], clock=clock)
    ptu.script(Reply(429, headers={"retry-after-ms": "2000"}))
    assert content(chat(client)) == "paygo:gpt-4o", "the same request is resent at once to the next backend"
    assert content(chat(client)) == "paygo:gpt-4o", "the PTU is not asked while it cools"
    assert len(ptu.requests) == 1
    clock.advance(2.0)
    assert content(chat(client)) == "ptu:gpt-4o", "back on the PTU as soon as Retry-After has passed"


@pytest.mark.parametrize("status", [408, 500, 502, 503, 504])
def test_server_errors_fail_over(servers, balanced, status: int) -> None:
    ptu, paygo = servers("ptu"), servers("paygo")
    client = balanced([Backend(ptu.url, priority=1), Backend(paygo.url, priority=2)])
    ptu.script(Reply(status))
    assert content(chat(client)) == "paygo:gpt-4o"


def test_connection_refused_fails_over(servers, balanced) -> None:
    paygo = servers("paygo")
    client = balanced([Backend(closed_port_url(), priority=1), Backend(paygo.url, priority=2)])
    assert content(chat(client)) == "paygo:gpt-4o"


def test_connection_reset_fails_over(servers, balanced) -> None:
    ptu, paygo = servers("ptu"), servers("paygo")
    client = balanced([Backend(ptu.url, priority=1), Backend(paygo.url, priority=2)])
    ptu.script(ResetConnection())
    assert content(chat(client)) == "paygo:gpt-4o"


def test_timeouts_fail_over(servers, balanced) -> None:
    ptu, paygo = servers("ptu"), servers("paygo")
    client = balanced([Backend(ptu.url, priority=1), Backend(paygo.url, priority=2)], timeout=0.3)
    ptu.script(Stall(2.0))
    assert content(chat(client)) == "paygo:gpt-4o"


def test_a_failing_backend_is_left_alone_for_its_breaker_time(servers, balanced, clock: FakeClock) -> None:
    ptu, paygo = servers("ptu"), servers("paygo")
    client = balanced(
        [Backend(ptu.url, priority=1), Backend(paygo.url, priority=2)], clock=clock, policy=Policy(breaker_base=5)
    )
    ptu.script(Reply(503))
    chat(client)
    clock.advance(4.9)
    assert content(chat(client)) == "paygo:gpt-4o"
    clock.advance(0.1)
    assert content(chat(client)) == "ptu:gpt-4o"


@pytest.mark.parametrize("status", [400, 401, 403])
def test_client_errors_are_returned_unchanged_without_failover(servers, balanced, status: int) -> None:
    ptu, paygo = servers("ptu"), servers("paygo")
    client = balanced([Backend(ptu.url, priority=1), Backend(paygo.url, priority=2)])
    ptu.script(Reply(status, json={"error": {"code": "custom", "message": "from the PTU"}}))
    with pytest.raises(openai.APIStatusError) as caught:
        chat(client)
    assert caught.value.status_code == status
    assert "from the PTU" in str(caught.value)
    assert paygo.requests == []


def test_every_backend_cooling_gives_the_sdk_a_429_with_the_soonest_recovery(servers, balanced) -> None:
    ptu, paygo = servers("ptu"), servers("paygo")
    client = balanced([Backend(ptu.url, priority=1), Backend(paygo.url, priority=2, name="paygo")])
    ptu.script(Reply(429, headers={"retry-after-ms": "30000"}))
    paygo.script(Reply(429, headers={"retry-after-ms": "20000"}))
    with pytest.raises(openai.RateLimitError) as caught:
        chat(client)
    headers = caught.value.response.headers
    assert 19_000 < int(headers["retry-after-ms"]) <= 20_000
    assert headers["retry-after"] == "20"
    assert "paygo" in caught.value.message
    with pytest.raises(openai.RateLimitError):
        chat(client)
    assert len(ptu.requests) == len(paygo.requests) == 1, "cooling backends are not asked again"


def test_the_sdk_retry_waits_exactly_until_a_backend_recovers(servers, balanced) -> None:
    ptu, paygo = servers("ptu"), servers("paygo")
    client = balanced([Backend(ptu.url, priority=1), Backend(paygo.url, priority=2)], max_retries=1)
    ptu.script(Reply(429, headers={"retry-after-ms": "150"}))
    paygo.script(Reply(429, headers={"retry-after-ms": "400"}))
    assert content(chat(client)) == "ptu:gpt-4o", "the SDK slept for our retry-after-ms, then the PTU answered"
    assert len(ptu.requests) == 2


def test_a_deployment_missing_on_one_backend_is_served_by_another(servers, balanced) -> None:
    ptu, paygo = servers("ptu", deployments={"gpt-4o-mini"}), servers("paygo", deployments={"gpt-4o"})
    client = balanced([Backend(ptu.url, priority=1), Backend(paygo.url, priority=2)])
    assert content(chat(client, "gpt-4o")) == "paygo:gpt-4o"
    assert content(chat(client, "gpt-4o-mini")) == "ptu:gpt-4o-mini"
    assert content(chat(client, "gpt-4o")) == "paygo:gpt-4o"
    assert [r.deployment for r in ptu.requests] == ["gpt-4o", "gpt-4o-mini"], "the missing pair is skipped"


def test_a_deployment_no_backend_has_is_a_404_every_time(servers, balanced) -> None:
    ptu, paygo = servers("ptu"), servers("paygo")
    client = balanced([Backend(ptu.url, priority=1), Backend(paygo.url, priority=2)])
    for _ in range(3):
        with pytest.raises(openai.NotFoundError) as caught:
            chat(client, "no-such-model")
        assert "no-such-model" in caught.value.message


def test_a_stream_is_delivered_as_it_comes_and_a_cut_surfaces_as_an_error(servers, balanced, http) -> None:
    ptu, paygo = servers("ptu"), servers("paygo")
    client = balanced([Backend(ptu.url, priority=1), Backend(paygo.url, priority=2)])
    ptu.script(CutStream(after=1))
    stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    chunks = iter(stream)
    first = next(chunks)
    # Had the balancer buffered the body, the cut would have failed create() before any chunk.
    assert first.choices[0].delta.content
    with pytest.raises((http.RemoteProtocolError, openai.APIConnectionError)) as caught:
        list(chunks)
    assert_stream_cut(caught.value)
    assert paygo.requests == [], "no failover after the first byte"


def test_streaming_fails_over_before_the_first_byte(servers, balanced) -> None:
    ptu, paygo = servers("ptu"), servers("paygo")
    client = balanced([Backend(ptu.url, priority=1), Backend(paygo.url, priority=2)])
    ptu.script(Reply(429, headers={"retry-after": "3"}))
    stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "paygo:gpt-4o"


def test_embeddings_and_responses_apis_are_balanced(servers, balanced) -> None:
    ptu, paygo = servers("ptu"), servers("paygo")
    client = balanced([Backend(ptu.url, priority=1), Backend(paygo.url, priority=2)])
    ptu.script(Reply(429))
    assert client.embeddings.create(model="gpt-4o", input="x").data
    response = client.responses.create(model="gpt-4o", input="hi")
    assert response.output_text == "paygo:gpt-4o", "the PTU's deployment cools for the default 10 s"
    assert [r.path.rsplit("/", 1)[-1] for r in paygo.requests] == ["embeddings", "responses"]
    assert len(ptu.requests) == 1


def test_file_uploads_are_resent_intact_on_failover(servers, balanced) -> None:
    ptu, paygo = servers("ptu"), servers("paygo")
    client = balanced([Backend(ptu.url, priority=1), Backend(paygo.url, priority=2)])
    ptu.script(Reply(503))
    payload = b'{"prompt": "x"}\n' * 500
    uploaded = client.files.create(file=("data.jsonl", payload), purpose="batch")
    assert uploaded.bytes == len(payload)
    assert ptu.requests[0].body == paygo.requests[0].body


def test_per_backend_keys_reach_only_their_backend(servers, balanced) -> None:
    ptu = servers("ptu", api_keys={"ptu-key"})
    paygo = servers("paygo", api_keys={"client-key"})
    client = balanced(
        [Backend(ptu.url, priority=1, api_key="ptu-key"), Backend(paygo.url, priority=2)], api_key="client-key"
    )
    ptu.script(Reply(500))
    assert content(chat(client)) == "paygo:gpt-4o"
    assert content(chat(client)) == "paygo:gpt-4o"
    first = ptu.requests[0].headers
    assert first["api-key"] == "ptu-key"
    assert "authorization" not in first
    for recorded in paygo.requests:
        assert "ptu-key" not in json.dumps(recorded.headers)


def test_token_provider_backend_gets_a_bearer_and_no_api_key(servers, balanced) -> None:
    entra = servers("entra", tokens={"entra-token"})
    client = balanced([Backend(entra.url, azure_ad_token_provider=lambda: "entra-token")], api_key="client-key")
    assert content(chat(client)) == "entra:gpt-4o"
    headers = entra.requests[0].headers
    assert headers["authorization"] == "Bearer entra-token"
    assert "api-key" not in headers


def test_path_prefix_of_a_gateway_backend_is_kept(servers, balanced) -> None:
    apim = servers("apim", path_prefix="/team-a")
    client = balanced([Backend(apim.url, name="apim")])
    raw = chat(client)
    assert content(raw) == "apim:gpt-4o"
    assert raw.headers["x-openai-lb-backend"] == "apim"
    assert apim.requests[0].path.startswith("/team-a/openai/deployments/gpt-4o/")


def test_deployment_mapping_renames_in_the_path_and_in_the_body(servers, balanced) -> None:
    ptu = servers("ptu", deployments={"gpt-4o"})
    mapped = servers("glob", deployments={"gpt-4o-global"})
    client = balanced(
        [Backend(ptu.url, priority=1), Backend(mapped.url, priority=2, deployments={"gpt-4o": "gpt-4o-global"})]
    )
    ptu.script(Reply(429), Reply(429))
    assert content(chat(client)) == "glob:gpt-4o-global"
    assert client.responses.create(model="gpt-4o", input="hi").output_text == "glob:gpt-4o-global"
    assert mapped.requests[1].json()["model"] == "gpt-4o-global"


def test_redirects_are_handed_to_the_caller_not_followed(servers, balanced) -> None:
    ptu, paygo = servers("ptu"), servers("paygo")
    client = balanced([Backend(ptu.url, priority=1), Backend(paygo.url, priority=2)])
    ptu.script(Reply(307, headers={"location": paygo.url + "/elsewhere"}))
    with pytest.raises(openai.APIStatusError) as caught:
        chat(client)
    assert caught.value.status_code == 307
    assert len(ptu.requests) == 1
    assert paygo.requests == []


def test_every_token_provider_failing_is_an_authentication_error_naming_the_cause(servers, balanced) -> None:
    ptu, paygo = servers("ptu", tokens={"t"}), servers("paygo", tokens={"t"})

    def broken() -> str:
        raise PermissionError("refresh token abc123 expired")

    client = balanced(
        [
            Backend(ptu.url, priority=1, name="ptu", azure_ad_token_provider=broken),
            Backend(paygo.url, priority=2, name="paygo", azure_ad_token_provider=broken),
        ],
        max_retries=2,
    )
    with pytest.raises(openai.AuthenticationError) as caught:
        chat(client)
    message = str(caught.value)
    assert "'ptu' (PermissionError)" in message
    assert "'paygo' (PermissionError)" in message
    assert "abc123" not in message, "the provider's message may hold a secret"
    assert (ptu.requests, paygo.requests) == ([], []), "nothing can be sent without a token"
