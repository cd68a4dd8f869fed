"""patch()/unpatch(): the SDK's own Azure clients balance process-wide, and stop when undone."""

from __future__ import annotations

import json

import openai
import openai.lib.azure
import pytest
from e2e_helpers import chat, content

import openai_lb
from openai_lb import Backend, ConfigurationError
from openai_lb.testing import Reply

SDK_SYNC, SDK_ASYNC = openai.AzureOpenAI, openai.AsyncAzureOpenAI
KW = {"api_key": "k", "api_version": "2024-10-21", "max_retries": 0}


def module_client_settings(monkeypatch: pytest.MonkeyPatch, **settings: object) -> None:
    """Configure the SDK's module-level client for Azure (restored after the test)."""
    defaults = {"api_type": "azure", "api_version": "2024-10-21", "azure_endpoint": "https://x.invalid"}
    for name, value in {**defaults, "max_retries": 0, "http_client": None, **settings}.items():
        monkeypatch.setattr(openai, name, value)
    monkeypatch.setattr(openai, "_client", None)


def test_sdk_clients_made_after_patch_balance_whatever_endpoint_they_name(servers) -> None:
    ptu, paygo = servers("ptu"), servers("paygo")
    openai_lb.patch([Backend(ptu.url, priority=1), Backend(paygo.url, priority=2)])
    from openai import AzureOpenAI  # as application code would, after start-up

    client = AzureOpenAI(azure_endpoint="https://my-old-endpoint.openai.azure.com", **KW)
    ptu.script(Reply(429))
    assert content(chat(client)) == "paygo:gpt-4o"
    assert content(chat(openai.lib.azure.AzureOpenAI(azure_endpoint="https://x.invalid", **KW))) == "paygo:gpt-4o"


@pytest.mark.anyio
async def test_async_sdk_clients_balance_after_patch(servers) -> None:
    ptu = servers("ptu")
    openai_lb.patch([Backend(ptu.url)])
    client = openai.AsyncAzureOpenAI(azure_endpoint="https://x.invalid", **KW)
    answer = await client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert answer.choices[0].message.content == "ptu:gpt-4o"
    await client.close()


def test_isinstance_holds_for_clients_made_before_and_after(servers) -> None:
    ptu = servers("ptu")
    before = openai.AzureOpenAI(azure_endpoint=ptu.url, **KW)
    with openai_lb.patch([Backend(ptu.url)]):
        after = openai.AzureOpenAI(azure_endpoint=ptu.url, **KW)
        assert isinstance(before, openai.AzureOpenAI)
        assert isinstance(after, openai.AzureOpenAI)
        assert isinstance(after, SDK_SYNC)
        assert issubclass(openai.AzureOpenAI, SDK_SYNC)
    assert isinstance(after, openai.AzureOpenAI), "still an SDK client after unpatch"


def test_unpatch_restores_every_swapped_name() -> None:
    module_client = openai._AzureModuleClient
    openai_lb.patch([Backend("https://a.example.com")])
    assert openai_lb.is_patched()
    assert openai.AzureOpenAI is not SDK_SYNC
    assert openai.lib.azure.AsyncAzureOpenAI is not SDK_ASYNC
    openai_lb.unpatch()
    assert (openai.AzureOpenAI, openai.AsyncAzureOpenAI) == (SDK_SYNC, SDK_ASYNC)
    assert (openai.lib.azure.AzureOpenAI, openai.lib.azure.AsyncAzureOpenAI) == (SDK_SYNC, SDK_ASYNC)
    assert openai._AzureModuleClient is module_client
    assert not openai_lb.is_patched()
    openai_lb.unpatch()  # a second unpatch is harmless


def test_patch_is_idempotent_and_the_last_backends_win(servers) -> None:
    first, second = servers("first"), servers("second")
    openai_lb.patch([Backend(first.url)])
    openai_lb.patch([Backend(second.url)])
    assert content(chat(openai.AzureOpenAI(azure_endpoint="https://x.invalid", **KW))) == "second:gpt-4o"
    openai_lb.unpatch()
    assert openai.AzureOpenAI is SDK_SYNC, "one unpatch undoes any number of patches"


def test_patch_reads_backends_from_the_environment(servers, monkeypatch) -> None:
    ptu = servers("ptu", api_keys={"env-ptu-key"})
    monkeypatch.setenv("OPENAI_LB_BACKENDS", json.dumps([{"url": ptu.url, "api_key": "env-ptu-key", "name": "p"}]))
    openai_lb.patch()
    raw = chat(openai.AzureOpenAI(azure_endpoint="https://x.invalid", **KW))
    assert raw.headers["x-openai-lb-backend"] == "p"


def test_patch_with_bad_environment_fails_clearly_and_patches_nothing(monkeypatch) -> None:
    monkeypatch.setenv("OPENAI_LB_BACKENDS", '[{"url": "ftp://x"}]')
    with pytest.raises(ConfigurationError, match="http:// or https://"):
        openai_lb.patch()
    assert openai.AzureOpenAI is SDK_SYNC


def test_a_callers_own_http_client_is_not_balanced_under_patch(servers) -> None:
    ptu, direct = servers("ptu"), servers("direct")
    openai_lb.patch([Backend(ptu.url)])
    client = openai.AzureOpenAI(azure_endpoint=direct.url, http_client=openai.DefaultHttpxClient(), **KW)
    assert content(chat(client)) == "direct:gpt-4o"


def test_the_module_level_azure_client_balances(servers, monkeypatch) -> None:
    ptu = servers("ptu")
    module_client_settings(monkeypatch, api_key="k")
    with openai_lb.patch([Backend(ptu.url)]):
        answer = openai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content == "ptu:gpt-4o"
    assert openai._client is None, "unpatch drops the balanced module client"


def test_subclasses_of_patched_classes_keep_their_own_isinstance() -> None:
    with openai_lb.patch([Backend("https://a.example.com")]):

        class MyAzure(openai.AzureOpenAI):
            pass

        plain = SDK_SYNC(azure_endpoint="https://x.invalid", **KW)
        assert not isinstance(plain, MyAzure)
        assert not issubclass(SDK_SYNC, MyAzure)
        assert issubclass(MyAzure, SDK_SYNC)


def test_unpatch_leaves_no_placeholder_key_in_the_sdk_settings(servers, monkeypatch) -> None:
    ptu = servers("ptu", api_keys={"own"})
    module_client_settings(monkeypatch, api_key=None)
    for env in ("AZURE_OPENAI_API_KEY", "AZURE_OPENAI_AD_TOKEN"):
        monkeypatch.delenv(env, raising=False)
    with openai_lb.patch([Backend(ptu.url, api_key="own")]):
        answer = openai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content == "ptu:gpt-4o"
    assert openai.api_key is None


def test_the_module_client_stops_balancing_after_unpatch_and_follows_a_new_patch(servers, monkeypatch) -> None:
    first, second, direct = servers("first"), servers("second"), servers("direct")
    module_client_settings(monkeypatch, api_key="k", azure_endpoint=direct.url)

    def ask() -> str:
        answer = openai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        return answer.choices[0].message.content or ""

    openai_lb.patch([Backend(first.url)])
    assert ask() == "first:gpt-4o"
    openai_lb.patch([Backend(second.url)])
    assert ask() == "second:gpt-4o", "a new patch replaces the module client's backends"
    openai_lb.unpatch()
    assert ask() == "direct:gpt-4o", "after unpatch the module client talks to its endpoint again"


def test_a_module_client_used_before_patch_balances_after_it(servers, monkeypatch) -> None:
    ptu, direct = servers("ptu"), servers("direct")
    module_client_settings(monkeypatch, api_key="k", azure_endpoint=direct.url)

    def ask() -> str:
        answer = openai.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        return answer.choices[0].message.content or ""

    assert ask() == "direct:gpt-4o"
    with openai_lb.patch([Backend(ptu.url)]):
        assert ask() == "ptu:gpt-4o", "the SDK's own default http client is not reused under the patch"


def test_an_http_client_the_application_set_for_the_module_client_is_kept(monkeypatch) -> None:
    own = openai.DefaultHttpxClient()
    module_client_settings(monkeypatch, api_key="k", http_client=own)
    with openai_lb.patch([Backend("https://a.example.com")]):
        assert openai.http_client is own
    assert openai.http_client is own
