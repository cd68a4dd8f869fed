"""Turning the caller's request into an attempt on one backend: URL, credentials, deployment."""

from __future__ import annotations

import json
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from openai_lb import Backend
from openai_lb._rewrite import Header, RequestTemplate, endpoint_path, lowered, model_span

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
JSON_HEADERS = lowered([(b"content-type", b"application/json")])


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


# -- the client's endpoint, found from its base URL


def test_the_endpoint_is_the_azure_endpoint_even_when_its_path_holds_openai() -> None:
    assert endpoint_path(b"/openai/eu/openai/", b"/openai/eu/") == b"/openai/eu"
    assert endpoint_path(b"/openai/eu/openai/deployments/openai/", b"/openai/eu") == b"/openai/eu"


def test_the_endpoint_of_a_base_url_is_what_precedes_the_sdks_own_suffix() -> None:
    assert endpoint_path(b"/openai/") == b""
    assert endpoint_path(b"/openai/eu/openai/") == b"/openai/eu"
    assert endpoint_path(b"/openai/eu/openai/v1/") == b"/openai/eu"
    assert endpoint_path(b"/p/openai/deployments/openai/") == b"/p", "a deployment named openai is the SDK's"
    assert endpoint_path(b"/custom/route/") == b"/custom/route", "no SDK suffix: the base URL is the endpoint"


def test_a_known_endpoint_whose_path_holds_openai_is_replaced_whole() -> None:
    template = RequestTemplate(b"/openai/eu" + CHAT, SDK_HEADERS, b"{}", (b"/openai/eu",))
    out = template.for_backend(Backend("https://gw.example.org/openai/x"), "gpt-4o", None)
    assert out.url == "https://gw.example.org/openai/x" + CHAT.decode()
    assert template.deployment == "gpt-4o"


def test_the_longest_known_endpoint_that_holds_the_sdk_path_wins() -> None:
    endpoints = (b"/openai/eu", b"")
    out = RequestTemplate(CHAT, SDK_HEADERS, b"{}", endpoints).for_backend(
        Backend("https://b.example.com/p"), None, None
    )
    assert out.url == "https://b.example.com/p" + CHAT.decode()
    out = RequestTemplate(b"/openai/eu" + CHAT, SDK_HEADERS, b"{}", endpoints).for_backend(
        Backend("https://b.example.com/p"), None, None
    )
    assert out.url == "https://b.example.com/p" + CHAT.decode()


def test_a_path_outside_every_known_endpoints_openai_base_is_marked_outside() -> None:
    assert RequestTemplate(b"/openai/eu/x/chat/completions", SDK_HEADERS, b"{}", (b"/openai/eu",)).outside
    assert RequestTemplate(b"/openai/euro/openai/models", SDK_HEADERS, b"", (b"/openai/eu",)).outside
    assert not RequestTemplate(b"/openai/eu/openai?x=1", SDK_HEADERS, b"", (b"/openai/eu",)).outside
    assert not RequestTemplate(b"/x/chat/completions", SDK_HEADERS, b"{}").outside, "no endpoint known: no judgement"


# -- renaming the body's model by splicing bytes

JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(["model", "input", "mod\u00e9l", "x"]) | st.text(max_size=6), inner, max_size=4
        )
    ),
    max_leaves=12,
)
WHITESPACE = st.sampled_from(["", " ", "\n", "\t", " \r\n "])


@st.composite
def json_bodies(draw: st.DrawFn) -> tuple[bytes, dict[str, object]]:
    """A JSON object as bytes in varied spelling (whitespace, escapes, duplicate keys) and what it parses to."""
    items = draw(st.lists(st.tuples(st.sampled_from(["model", "input", "x"]) | st.text(max_size=6), JSON_VALUES)))
    items += [("model", draw(JSON_VALUES | st.text(min_size=1)))] * draw(st.integers(0, 1))
    ascii_only = draw(st.booleans())
    parts = []
    for key, value in items:
        space = draw(WHITESPACE)
        encoded_key = json.dumps(key, ensure_ascii=ascii_only)
        if key == "model" and draw(st.booleans()):
            encoded_key = '"mod\\u0065l"'
        parts.append(f"{space}{encoded_key}{draw(WHITESPACE)}:{space}{json.dumps(value, ensure_ascii=ascii_only)}")
    text = f"{draw(WHITESPACE)}{{{','.join(parts)}{draw(WHITESPACE)}}}{draw(WHITESPACE)}"
    return text.encode(), json.loads(text)


@given(body_and_parsed=json_bodies(), new_name=st.text(min_size=1))
def test_renaming_the_model_changes_only_the_bytes_of_the_top_level_model_value(
    body_and_parsed: tuple[bytes, dict[str, object]], new_name: str
) -> None:
    body, parsed = body_and_parsed
    template = RequestTemplate(b"/openai/v1/responses", JSON_HEADERS, body)
    model = parsed.get("model")
    if not isinstance(model, str):
        assert model_span(body) is None, f"the scan found a model string in {body!r}"
    if not (isinstance(model, str) and model):
        assert template.deployment is None, f"no string model in {body!r}, yet deployment {template.deployment!r}"
        return
    assert template.deployment == model
    renamed = template.for_backend(Backend("https://b.example.com"), new_name, None).body
    assert renamed is not None
    assert json.loads(renamed) == {**parsed, "model": new_name}
    if new_name == model:
        assert renamed == body, "a backend using the caller's name gets the body untouched"
        return
    span = model_span(body)
    assert span is not None
    start, end = span
    tail = len(body) - end
    assert renamed[:start] == body[:start], "bytes before the model value changed"
    assert renamed[len(renamed) - tail :] == body[end:], "bytes after the model value changed"
    if "\\" not in new_name and '"' not in new_name and new_name.isprintable():
        assert renamed[start : len(renamed) - tail] == f'"{new_name}"'.encode(), "non-ASCII is kept as UTF-8"


@pytest.mark.parametrize("pad", [0, 2 << 20], ids=["parsed", "scanned"])
def test_the_last_top_level_model_is_renamed_in_small_and_large_bodies(pad: int) -> None:
    body = (
        '{"model": "first", "tools": [{"model": "nested"}], "input": "%s \\" \u00e9 ü",'
        ' "model" : "gpt-4o", "n": [1, {"x": "]}"}]}' % ("é" * pad)
    ).encode()
    template = RequestTemplate(b"/openai/v1/responses", JSON_HEADERS, body)
    assert template.deployment == "gpt-4o"
    renamed = template.for_backend(Backend("https://b.example.com"), 'glöbal "x"', None).body
    assert renamed == body.replace(b'"gpt-4o"', '"glöbal \\"x\\""'.encode())


@pytest.mark.parametrize(
    "body",
    [
        b"[]",
        b'{"model": 1}',
        b'{"model": "a"',
        b'{"model": "a"} x',
        b'{"a": "b}',
        b'{"model": "a", "model": null}',
        b"{",
    ],
)
def test_bodies_that_name_no_string_model_at_the_top_level_name_no_deployment(body: bytes) -> None:
    assert RequestTemplate(b"/openai/v1/responses", JSON_HEADERS, body).deployment is None


def test_renaming_a_20_mb_body_makes_one_new_copy_of_it() -> None:
    prompt = "Grüße, 世界! " * 1_700_000
    body = json.dumps({"model": "gpt-4o", "input": prompt}, ensure_ascii=False).encode()
    assert len(body) > 20_000_000
    tracemalloc.start()
    try:
        template = RequestTemplate(b"/openai/v1/responses", JSON_HEADERS, body)
        out = template.for_backend(Backend("https://b.example.com"), "gpt-4o-global", None)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert out.body is not None
    assert len(out.body) == len(body) + len("-global")
    # The caller's body is already held; the attempt's body is the one new copy (the JSON-parsing
    # rename it replaces needed a parsed copy, a decoded copy and an ASCII-escaped one, over 3x).
    assert peak < 1.5 * len(body), f"renaming a {len(body)} byte body allocated up to {peak} bytes"


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32"])
def test_a_body_in_another_unicode_encoding_names_no_deployment_and_is_sent_unchanged(encoding: str) -> None:
    body = json.dumps({"model": "gpt-4o", "input": "hi"}).encode(encoding)
    template = RequestTemplate(b"/openai/v1/responses", JSON_HEADERS, body)
    assert template.deployment is None
    mapped = Backend("https://b.example.com", deployments={"gpt-4o": "east"})
    assert template.for_backend(mapped, mapped.deployment_for(template.deployment), None).body == body


def test_the_output_limit_comes_from_the_parse_that_finds_the_model() -> None:
    body = json.dumps({"model": "gpt-4o", "max_output_tokens": 55, "input": "hi"}).encode()
    assert RequestTemplate(b"/openai/v1/responses", JSON_HEADERS, body).output_tokens == 55
    assert RequestTemplate(b"/openai/v1/responses", JSON_HEADERS, b'{"model": "m"}').output_tokens is None
    unparsed = RequestTemplate(CHAT, SDK_HEADERS, b'{"max_tokens": 5}')
    assert unparsed.output_tokens is None, "a deployment path is not parsed: the estimate searches the bytes"


def test_embeddings_claim_no_output_tokens() -> None:
    path = b"/openai/deployments/ada/embeddings?api-version=2024-10-21"
    assert RequestTemplate(path, SDK_HEADERS, b'{"input": "x"}').output_tokens == 0


def test_a_backends_spillover_deployment_replaces_the_callers_header() -> None:
    headers = [*SDK_HEADERS, (b"X-MS-Spillover-Deployment", b"x-ms-spillover-deployment", b"theirs")]
    template = RequestTemplate(CHAT, headers, b"{}")
    spilling = Backend("https://ptu.example.com", spillover_deployment="gpt-4o-standard")
    sent = template.for_backend(spilling, "gpt-4o", None).headers
    assert [v for _, name, v in sent if name == b"x-ms-spillover-deployment"] == [b"gpt-4o-standard"]
    plain = template.for_backend(Backend("https://paygo.example.com"), "gpt-4o", None).headers
    assert [v for _, name, v in plain if name == b"x-ms-spillover-deployment"] == [b"theirs"]
