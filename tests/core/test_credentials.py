"""Tests of openai_lb._credentials: the environment's credential, picked as the SDK's Azure client picks it."""

from __future__ import annotations

from typing import Any

import openai
import pytest
from helpers import sdk_http_module

import openai_lb
from openai_lb._credentials import AD_TOKEN_ENV, API_KEY_ENV, EnvironmentCredential, environment_credential

SDK_HTTP = sdk_http_module()
ENVIRONMENTS = [
    {API_KEY_ENV: "env-key"},
    {AD_TOKEN_ENV: "env-token"},
    {API_KEY_ENV: "env-key", AD_TOKEN_ENV: "env-token"},
]


@pytest.fixture(autouse=True)
def _no_credential_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (API_KEY_ENV, AD_TOKEN_ENV):
        monkeypatch.delenv(name, raising=False)


def sdk_sends(environ: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The headers the SDK's own Azure client sends with ``environ`` (nothing leaves the process: a mock
    transport answers)."""
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    seen: list[dict[str, str]] = []

    def handler(request: Any) -> Any:
        seen.append(dict(request.headers))
        return SDK_HTTP.Response(200, json={"object": "list", "data": []})

    client = openai.AzureOpenAI(
        azure_endpoint="https://a.example.com",
        api_version="2024-10-21",
        http_client=openai.DefaultHttpxClient(transport=SDK_HTTP.MockTransport(handler)),
    )
    client.models.list()
    (headers,) = seen
    return headers


@pytest.mark.parametrize("environ", ENVIRONMENTS, ids="+".join)
def test_the_environments_credential_is_the_one_the_sdk_sends(
    environ: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    found = environment_credential(environ)

    assert found is not None
    headers = sdk_sends(environ, monkeypatch)
    sent = f"Bearer {found.value}" if found.header == "authorization" else found.value
    assert headers.get(found.header) == sent, f"the SDK sends {headers}, not {found}"
    for other in set(environ.values()) - {found.value}:
        # openai 1.x also sends a key as a bearer token; never the credential that was passed over.
        assert other not in str(headers), f"the SDK sends {other!r}, which {found} passed over"


def test_the_entra_token_comes_before_the_key_and_empty_variables_are_unset() -> None:
    both = {API_KEY_ENV: "k", AD_TOKEN_ENV: "t"}

    assert environment_credential(both) == EnvironmentCredential(AD_TOKEN_ENV, "authorization", "t")
    assert environment_credential({**both, AD_TOKEN_ENV: ""}) == EnvironmentCredential(API_KEY_ENV, "api-key", "k")
    assert environment_credential({API_KEY_ENV: "", AD_TOKEN_ENV: ""}) is None
    assert environment_credential({"OTHER": "x"}) is None


def test_the_process_environment_is_read_when_none_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    assert environment_credential() is None
    monkeypatch.setenv(API_KEY_ENV, "env-key")

    assert environment_credential() == EnvironmentCredential(API_KEY_ENV, "api-key", "env-key")


@pytest.mark.parametrize("environ", ENVIRONMENTS, ids="+".join)
def test_a_balanced_client_takes_either_variable_as_its_credential(
    environ: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    backends = [openai_lb.Backend("https://a.example.com")]
    with pytest.raises(openai_lb.ConfigurationError, match="no credential"):
        openai_lb.AzureOpenAI(backends=backends, api_version="2024-10-21")
    for name, value in environ.items():
        monkeypatch.setenv(name, value)

    client = openai_lb.AzureOpenAI(backends=backends, api_version="2024-10-21")

    assert client.balancer is not None


def test_the_repr_of_an_environment_credential_never_shows_it() -> None:
    found = environment_credential({"AZURE_OPENAI_API_KEY": "SECRET-KEY-123"})
    assert found is not None
    assert "SECRET-KEY-123" not in repr(found)
    assert "SECRET-KEY-123" not in str(found)
