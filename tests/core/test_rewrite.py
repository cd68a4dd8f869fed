"""Turning the caller's request into an attempt on one backend: URL, credentials, deployment."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from openai_lb import Backend
from openai_lb._rewrite import Header, RequestTemplate, lowered

CHAT = b"/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
SDK_HEADERS = lowered(
    [
        (b"Host", b"client-endpoint.openai.azure.com"),
        (b"Content-Type", b"application/json"),
        (b"Content-Length", b"42"),
        (b"api-key", b"CLIENT-KEY"),
        (b"Authorization", b"Bearer CLIENT-KEY"),
        (b"X-Stainless-Retry-Count", b"0"),
    ]
)


def names(headers: list[Header]) -> dict[bytes, bytes]:
    assert all(lower == name.lower() for name, lower, _ in headers), "each triple carries its name lowercased"
    return {lower: v for _, lower, v in headers}


def test_origin_and_prefix_follow_the_backend_and_the_sdk_path_is_kept() -> None:
    template = RequestTemplate(b"/client-prefix" + CHAT, SDK_HEADERS, b"{}")
    out = template.for_backend(Backend("http://127.0.0.1:8080/team-a/"), "gpt-4o", None)
    assert out.url == "http://127.0.0.1:8080/team-a/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"


def test_host_and_length_headers_follow_the_backend_and_the_body_sent() -> None:
    template = RequestTemplate(CHAT, [*SDK_HEADERS, *lowered([(b"Transfer-Encoding", b"chunked")])], b"{}")
    out = template.for_backend(Backend("http://B.example.com:8080/pre"), "gpt-4o", None)
    headers = names(out.headers)
    assert headers[b"host"] == b"b.example.com:8080"
    assert headers[b"content-length"] == b"2"
    assert b"transfer-encoding" not in headers
    assert sum(1 for _, lower, _ in out.headers if lower == b"host") == 1


def test_a_request_without_body_framing_gets_no_body() -> None:
    out = RequestTemplate(b"/openai/models", lowered([(b"Host", b"x")]), b"").for_backend(
        Backend("https://b.example.com"), None, None
    )
    assert out.body is None
    assert b"content-length" not in names(out.headers)


def test_the_clients_credential_is_kept_for_a_backend_without_its_own() -> None:
    out = RequestTemplate(CHAT, SDK_HEADERS, b"{}").for_backend(Backend("https://b.example.com"), "gpt-4o", None)
    assert names(out.headers)[b"api-key"] == b"CLIENT-KEY"


def test_a_backend_key_replaces_every_client_credential_including_the_sdk_1x_bearer() -> None:
    template = RequestTemplate(CHAT, SDK_HEADERS, b"{}")
    out = template.for_backend(Backend("https://b.example.com"), "gpt-4o", (b"api-key", b"B-KEY"))
    headers = names(out.headers)
    assert headers[b"api-key"] == b"B-KEY"
    assert b"authorization" not in headers, "the client's key sent as a Bearer token must not leak"
    assert b"CLIENT-KEY" not in b"".join(v for _, _, v in out.headers)


def test_a_backend_token_replaces_the_api_key() -> None:
    template = RequestTemplate(CHAT, SDK_HEADERS, b"{}")
    out = template.for_backend(Backend("https://b.example.com"), "gpt-4o", (b"authorization", b"Bearer T"))
    headers = names(out.headers)
    assert headers[b"authorization"] == b"Bearer T"
    assert b"api-key" not in headers


def test_deployment_is_read_from_the_path_and_renamed_there() -> None:
    template = RequestTemplate(CHAT, SDK_HEADERS, b'{"messages": []}')
    assert template.deployment == "gpt-4o"
    out = template.for_backend(Backend("https://b.example.com"), "gpt-4o-global", None)
    assert out.url == "https://b.example.com/openai/deployments/gpt-4o-global/chat/completions?api-version=2024-10-21"
    assert out.body == b'{"messages": []}', "body untouched when the deployment lives in the path"


def test_percent_encoded_deployment_names_round_trip() -> None:
    template = RequestTemplate(b"/openai/deployments/my%20model/embeddings", [], b"")
    assert template.deployment == "my model"
    out = template.for_backend(Backend("https://b.example.com"), "other/name", None)
    assert out.url == "https://b.example.com/openai/deployments/other%2Fname/embeddings"


def test_v1_and_responses_paths_take_the_deployment_from_the_body_model() -> None:
    body = json.dumps({"model": "gpt-4o", "input": "hi"}).encode()
    headers = lowered([(b"content-type", b"application/json")])
    template = RequestTemplate(b"/openai/v1/responses", headers, body)
    assert template.deployment == "gpt-4o"
    same = template.for_backend(Backend("https://a.example.com"), "gpt-4o", None)
    assert same.body is body, "no rename, no re-encoding"
    renamed = template.for_backend(Backend("https://b.example.com"), "gpt-4o-global", None)
    assert json.loads(renamed.body or b"") == {"model": "gpt-4o-global", "input": "hi"}
    assert template.body is body, "the caller's body is never changed"


def test_requests_naming_no_deployment_have_none() -> None:
    template = RequestTemplate(
        b"/openai/files?api-version=1", lowered([(b"content-type", b"multipart/form-data; b=x")]), b"--x"
    )
    assert template.deployment is None
    assert template.for_backend(Backend("https://b.example.com"), None, None).body == b"--x"


def test_a_path_without_openai_is_appended_to_the_backend_url_whole() -> None:
    out = RequestTemplate(b"/custom/route", [], b"").for_backend(Backend("https://b.example.com/pre"), None, None)
    assert out.url == "https://b.example.com/pre/custom/route"


@given(path=st.binary(max_size=80), body=st.binary(max_size=80))
def test_any_path_and_body_build_an_attempt_without_raising(path: bytes, body: bytes) -> None:
    template = RequestTemplate(path, lowered([(b"content-type", b"application/json")]), body)
    out = template.for_backend(Backend("https://b.example.com"), "x", (b"api-key", b"k"))
    assert out.url.startswith("https://b.example.com")


def test_cookies_from_the_clients_jar_are_not_forwarded() -> None:
    template = RequestTemplate(CHAT, [*SDK_HEADERS, *lowered([(b"Cookie", b"gw_session=one-backends-secret")])], b"{}")
    out = template.for_backend(Backend("https://b.example.com"), "gpt-4o", None)
    assert b"cookie" not in names(out.headers)


def test_only_the_path_is_searched_for_openai_not_the_query() -> None:
    template = RequestTemplate(b"/custom/route?next=/openai/deployments/x/y", [], b"")
    assert template.deployment is None
    out = template.for_backend(Backend("https://b.example.com/pre"), None, None)
    assert out.url == "https://b.example.com/pre/custom/route?next=/openai/deployments/x/y"
