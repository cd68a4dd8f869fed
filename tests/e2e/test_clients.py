"""openai_lb.AzureOpenAI / AsyncAzureOpenAI: construction, credentials, copies, closing."""

from __future__ import annotations

import logging
from pathlib import Path

import openai
import pytest
from e2e_helpers import chat, content

import openai_lb
from openai_lb import Backend, ConfigurationError, InMemoryHealthStore
from openai_lb.testing import Reply

API_VERSION = "2024-10-21"


def make(backends: list[Backend], **kwargs) -> openai_lb.AzureOpenAI:
    kwargs.setdefault("api_version", API_VERSION)
    kwargs.setdefault("max_retries", 0)
    kwargs.setdefault("health_store", InMemoryHealthStore())
    return openai_lb.AzureOpenAI(backends=backends, **kwargs)


def test_balanced_client_is_an_sdk_azure_client(servers) -> None:
    ptu = servers("ptu")
    client = make([Backend(ptu.url)], api_key="k")
    assert isinstance(client, openai.AzureOpenAI)
    assert isinstance(
        openai_lb.AsyncAzureOpenAI(backends=[Backend(ptu.url)], api_key="k", api_version="v"), openai.AsyncAzureOpenAI
    )


def test_no_client_credential_is_needed_when_every_backend_brings_one(servers, monkeypatch) -> None:
    for name in ("AZURE_OPENAI_API_KEY", "AZURE_OPENAI_AD_TOKEN", "AZURE_OPENAI_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    ptu, entra = servers("ptu", api_keys={"ptu-key"}), servers("entra", tokens={"tok"})
    client = make(
        [
            Backend(ptu.url, priority=1, api_key="ptu-key"),
            Backend(entra.url, priority=2, azure_ad_token_provider=lambda: "tok"),
        ]
    )
    assert content(chat(client)) == "ptu:gpt-4o"
    ptu.script(Reply(500))
    assert content(chat(client)) == "entra:gpt-4o"
    assert "openai-lb" not in str(entra.requests[0].headers), "the placeholder key never reaches a backend"


def test_a_backend_without_credential_needs_a_client_credential(servers, monkeypatch) -> None:
    monkeypatch.delenv("AZURE_OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("AZURE_OPENAI_AD_TOKEN", raising=False)
    with pytest.raises(ConfigurationError, match=r"'paygo' have no credential.*pass api_key="):
        make([Backend("https://a.example.com", api_key="k"), Backend("https://b.example.com", name="paygo")])


def test_the_client_credential_may_come_from_the_environment(servers, monkeypatch) -> None:
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", "env-key")
    ptu = servers("ptu", api_keys={"env-key"})
    assert content(chat(make([Backend(ptu.url)]))) == "ptu:gpt-4o"


def test_async_token_provider_on_a_sync_client_is_a_value_error_at_construction() -> None:
    async def token() -> str:
        return "t"

    with pytest.raises(ValueError, match=r"'entra'.*async.*AsyncAzureOpenAI"):
        make([Backend("https://e.example.com", azure_ad_token_provider=token, name="entra")], api_key="k")


@pytest.mark.parametrize("backends", [[], None, "https://x.example.com", [Backend("https://a.example.com")] * 2])
def test_bad_backend_lists_fail_at_construction(backends) -> None:
    with pytest.raises(ConfigurationError):
        openai_lb.AzureOpenAI(backends=backends, api_key="k", api_version=API_VERSION)


def test_with_options_and_copy_keep_balancing(servers) -> None:
    ptu, paygo = servers("ptu"), servers("paygo")
    client = make([Backend(ptu.url, priority=1), Backend(paygo.url, priority=2)], api_key="k")
    ptu.script(Reply(503), Reply(503))
    assert content(chat(client.with_options(timeout=5))) == "paygo:gpt-4o"
    copied = client.copy(max_retries=0)
    assert isinstance(copied, openai_lb.AzureOpenAI)
    assert content(chat(copied)) == "paygo:gpt-4o", "the copy shares the balancer and its knowledge"


def test_a_callers_own_http_client_is_used_as_given(servers) -> None:
    direct = servers("direct")
    own = openai.DefaultHttpxClient()
    client = openai_lb.AzureOpenAI(api_key="k", api_version=API_VERSION, http_client=own, azure_endpoint=direct.url)
    assert client._client is own
    assert content(chat(client)) == "direct:gpt-4o", "no balancing: the request goes to azure_endpoint"


def test_backends_and_an_own_http_client_together_are_refused() -> None:
    with pytest.raises(ConfigurationError, match=r"backends=.* would be ignored next to http_client="):
        make([Backend("https://a.example.com")], api_key="k", http_client=openai.DefaultHttpxClient())


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"on_event": print}, "on_event="),
        ({"policy": openai_lb.Policy()}, "policy="),
        ({"health_store": openai_lb.InMemoryHealthStore(), "on_event": [print]}, "health_store=, on_event="),
    ],
)
def test_balancing_arguments_next_to_an_own_http_client_are_refused_not_ignored(given: dict, named: str) -> None:
    with pytest.raises(ConfigurationError, match=f"{named} would be ignored next to http_client="):
        openai_lb.AzureOpenAI(api_key="k", api_version="v", http_client=openai.DefaultHttpxClient(), **given)


def test_endpoint_is_optional_and_any_given_endpoint_is_replaced(servers, monkeypatch) -> None:
    monkeypatch.delenv("AZURE_OPENAI_ENDPOINT", raising=False)
    ptu = servers("ptu")
    assert content(chat(make([Backend(ptu.url)], api_key="k"))) == "ptu:gpt-4o"
    assert content(chat(make([Backend(ptu.url)], api_key="k", azure_endpoint="https://x.invalid"))) == "ptu:gpt-4o"


def test_cooldowns_are_shared_process_wide_by_default(servers) -> None:
    ptu, paygo = servers("ptu"), servers("paygo")
    backends = [Backend(ptu.url, priority=1), Backend(paygo.url, priority=2)]
    ptu.script(Reply(429, headers={"retry-after": "30"}))
    first = openai_lb.AzureOpenAI(backends=backends, api_key="k", api_version=API_VERSION, max_retries=0)
    assert content(chat(first)) == "paygo:gpt-4o"
    second = openai_lb.AzureOpenAI(
        backends=[Backend(ptu.url.upper().replace("HTTP://", "http://") + "/", priority=1), backends[1]],
        api_key="k",
        api_version=API_VERSION,
        max_retries=0,
    )
    assert content(chat(second)) == "paygo:gpt-4o", "a client made later already knows the PTU is cooling"
    openai_lb.reset_state()
    assert content(chat(second)) == "ptu:gpt-4o", "reset_state() forgets the cooldown"


def test_closing_the_client_closes_the_balancers_connections(servers) -> None:
    ptu = servers("ptu")
    client = make([Backend(ptu.url)], api_key="k")
    chat(client)
    transport = client._client._transport
    client.close()
    assert client.is_closed()
    pool = transport._sync_inner._pool
    assert pool.connections == [], "the inner connection pool is closed with the client"


def test_logs_never_contain_keys_or_tokens(servers, caplog) -> None:
    ptu, entra = servers("ptu"), servers("entra")
    client = make(
        [
            Backend(ptu.url, priority=1, api_key="SECRET-KEY-1"),
            Backend(entra.url, priority=2, azure_ad_token_provider=lambda: "SECRET-TOKEN-2"),
        ],
        api_key="SECRET-CLIENT-3",
    )
    ptu.script(Reply(429, headers={"retry-after": "1"}))
    with caplog.at_level(logging.DEBUG, logger="openai_lb"):
        chat(client)
    text = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("openai_lb"))
    assert "cooling" in text, f"an INFO line on the cooldown expected: {text}"
    assert "attempt" in text, f"DEBUG lines per attempt expected: {text}"
    for secret in ("SECRET-KEY-1", "SECRET-TOKEN-2", "SECRET-CLIENT-3"):
        assert secret not in text


def test_synthetic_429_says_do_not_retry_beyond_what_this_sdk_major_waits() -> None:
    import openai._base_client

    from openai_lb._shell import client_wait_limit

    source = Path(openai._base_client.__file__).read_text()
    expected = 60.0 if "retry_after <= 60" in source else 120.0
    assert client_wait_limit() == expected, f"openai {openai.__version__}"


@pytest.mark.anyio
async def test_closing_the_async_client_closes_the_balancers_connections(servers) -> None:
    ptu = servers("ptu")
    client = openai_lb.AsyncAzureOpenAI(
        backends=[Backend(ptu.url)], api_key="k", api_version=API_VERSION, health_store=InMemoryHealthStore()
    )
    await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    transport = client._client._transport
    await client.close()
    assert transport._async_inner._pool.connections == []


def test_the_client_exposes_its_balancer_status(servers) -> None:
    ptu, paygo = servers("ptu"), servers("paygo")
    client = make([Backend(ptu.url, priority=1, name="ptu"), Backend(paygo.url, priority=2, name="paygo")], api_key="k")
    ptu.script(Reply(503))
    chat(client)
    assert client.balancer is not None
    ptu_status, paygo_status = client.balancer.status()
    assert (ptu_status.state, ptu_status.last_failure, ptu_status.failovers_away) == ("circuit_open", "HTTP 503", 1)
    assert (paygo_status.successes, paygo_status.state) == (1, "available")
    assert client.with_options(timeout=5).balancer is client.balancer, "copies share the balancer"
    own = openai_lb.AzureOpenAI(
        api_key="k", api_version=API_VERSION, http_client=openai.DefaultHttpxClient(), azure_endpoint=ptu.url
    )
    assert own.balancer is None
