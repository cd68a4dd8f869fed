"""The balancing transport over an in-memory inner transport (MockTransport), for the stack under test."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator, Iterator
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from openai_lb import Backend, ConfigurationError, InMemoryHealthStore
from openai_lb._stacks import HttpStack, keeps_header_triples

CHAT_URL = "https://client.example.com/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
PTU = Backend("https://ptu.example.com", priority=1, api_key="PTU-KEY", name="ptu")
PAYGO = Backend("https://paygo.example.com/pre", priority=2, name="paygo")


def ok(http: ModuleType, **extra: Any) -> Any:
    return http.Response(200, json={"ok": True}, **extra)


def chat_request(http: ModuleType, **kwargs: Any) -> Any:
    headers = {"api-key": "CLIENT-KEY", "Authorization": "Bearer CLIENT-KEY", "content-type": "application/json"}
    return http.Request("POST", CHAT_URL, headers=headers, json={"messages": []}, **kwargs)


def by_host(http: ModuleType, answers: dict[str, list[Any]], seen: list[Any]) -> Any:
    """A MockTransport answering per backend host from a list of responses or exceptions."""

    def handler(request: Any) -> Any:
        seen.append(request)
        answer = answers[request.url.host].pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return http.MockTransport(handler)


def make(transport_cls: type[Any], inner: Any, backends: list[Backend] | None = None) -> Any:
    return transport_cls(backends or [PTU, PAYGO], transport=inner, health_store=InMemoryHealthStore())


def test_429_fails_over_and_the_answer_names_the_backend(http: ModuleType, transport_cls: type[Any]) -> None:
    seen: list[Any] = []
    inner = by_host(
        http,
        {"ptu.example.com": [http.Response(429, headers={"retry-after": "5"})], "paygo.example.com": [ok(http)]},
        seen,
    )
    response = make(transport_cls, inner).handle_request(chat_request(http))
    assert response.status_code == 200
    assert response.headers["x-openai-lb-backend"] == "paygo"
    assert [str(r.url) for r in seen] == [
        "https://ptu.example.com/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
        "https://paygo.example.com/pre/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21",
    ]


def test_each_backend_gets_only_its_own_credential(http: ModuleType, transport_cls: type[Any]) -> None:
    seen: list[Any] = []
    inner = by_host(http, {"ptu.example.com": [http.Response(503)], "paygo.example.com": [ok(http)]}, seen)
    make(transport_cls, inner).handle_request(chat_request(http))
    ptu, paygo = seen
    assert ptu.headers["api-key"] == "PTU-KEY"
    assert "authorization" not in ptu.headers, "the client's key as Bearer must not reach the PTU"
    assert ptu.headers["host"] == "ptu.example.com"
    assert paygo.headers["api-key"] == "CLIENT-KEY", "a backend without its own key uses the client's"
    assert "PTU-KEY" not in str(paygo.headers.raw)


@pytest.mark.parametrize(
    "error_name", ["ConnectError", "ReadTimeout", "RemoteProtocolError", "ReadError", "ProxyError"]
)
def test_transport_errors_fail_over(http: ModuleType, transport_cls: type[Any], error_name: str) -> None:
    seen: list[Any] = []
    error = getattr(http, error_name)("boom")
    inner = by_host(http, {"ptu.example.com": [error], "paygo.example.com": [ok(http)]}, seen)
    response = make(transport_cls, inner).handle_request(chat_request(http))
    assert response.headers["x-openai-lb-backend"] == "paygo"


def test_exceptions_that_are_not_transport_errors_propagate(http: ModuleType, transport_cls: type[Any]) -> None:
    inner = by_host(http, {"ptu.example.com": [KeyError("bug")], "paygo.example.com": [ok(http)]}, [])
    with pytest.raises(KeyError):
        make(transport_cls, inner).handle_request(chat_request(http))


def test_everything_cooling_answers_a_synthetic_429(http: ModuleType, transport_cls: type[Any]) -> None:
    inner = by_host(
        http,
        {
            "ptu.example.com": [http.Response(429, headers={"retry-after-ms": "8000"})],
            "paygo.example.com": [http.Response(429, headers={"retry-after-ms": "2000"})],
        },
        [],
    )
    transport = make(transport_cls, inner)
    response = transport.handle_request(chat_request(http))
    assert response.status_code == 429
    assert response.headers["retry-after-ms"] in ("2000", "1999"), response.headers
    assert json.loads(response.read())["error"]["code"] == "429"


class _Tracked:
    """Mixin recording whether a response stream was closed."""

    closed = False


def test_responses_failed_over_from_are_closed(http: ModuleType, transport_cls: type[Any]) -> None:
    class Stream(_Tracked, http.SyncByteStream):  # type: ignore[name-defined,misc]
        def __iter__(self) -> Iterator[bytes]:
            yield b"{}"

        def close(self) -> None:
            self.closed = True

    stream = Stream()
    inner = by_host(http, {"ptu.example.com": [http.Response(500, stream=stream)], "paygo.example.com": [ok(http)]}, [])
    make(transport_cls, inner).handle_request(chat_request(http))
    assert stream.closed, "the 500 response's stream must be closed before failing over"


@pytest.mark.anyio
async def test_async_responses_failed_over_from_are_closed(http: ModuleType, transport_cls: type[Any]) -> None:
    class Stream(_Tracked, http.AsyncByteStream):  # type: ignore[name-defined,misc]
        async def __aiter__(self) -> AsyncIterator[bytes]:
            yield b"{}"

        async def aclose(self) -> None:
            self.closed = True

    stream = Stream()
    inner = by_host(http, {"ptu.example.com": [http.Response(429, stream=stream)], "paygo.example.com": [ok(http)]}, [])
    response = await make(transport_cls, inner).handle_async_request(chat_request(http))
    assert response.headers["x-openai-lb-backend"] == "paygo"
    assert stream.closed


def test_the_callers_request_is_never_mutated(http: ModuleType, transport_cls: type[Any]) -> None:
    inner = by_host(http, {"ptu.example.com": [http.Response(502)], "paygo.example.com": [ok(http)]}, [])
    request = chat_request(http)
    before = (str(request.url), list(request.headers.raw), request.read())
    make(transport_cls, inner).handle_request(request)
    assert (str(request.url), list(request.headers.raw), request.read()) == before


def test_the_installed_stack_takes_header_triples_directly(stack: HttpStack) -> None:
    """The shortcut past header normalisation is in use here; if a release of the HTTP library stores
    headers differently this fails, and the transport still works through the public API."""
    assert stack.header_triples


def test_a_library_keeping_headers_otherwise_gets_the_public_api(http: ModuleType) -> None:
    class PairHeaders(http.Headers):  # type: ignore[name-defined,misc]
        def __init__(self, headers: Any = None, encoding: str | None = None) -> None:
            super().__init__(headers, encoding)
            self._list = [(name, value) for name, _, value in self._list]

    assert keeps_header_triples(http)
    assert not keeps_header_triples(SimpleNamespace(**{**vars(http), "Headers": PairHeaders}))
    assert not keeps_header_triples(SimpleNamespace(Headers=dict))


@pytest.mark.parametrize("shortcut", [True, False], ids=["triples", "public-api"])
def test_attempts_are_built_alike_with_and_without_the_header_shortcut(
    http: ModuleType, stack: HttpStack, transport_cls: type[Any], monkeypatch: pytest.MonkeyPatch, shortcut: bool
) -> None:
    monkeypatch.setattr(transport_cls, "_stack", dataclasses.replace(stack, header_triples=shortcut))
    seen: list[Any] = []
    inner = by_host(http, {"ptu.example.com": [http.Response(503)], "paygo.example.com": [ok(http)]}, seen)
    request = chat_request(http, cookies={"gw": "secret"})
    assert "cookie" in request.headers
    response = make(transport_cls, inner).handle_request(request)
    assert response.headers["x-openai-lb-backend"] == "paygo"
    ptu, paygo = seen
    body = request.read()
    kept = [(n, v) for n, v in request.headers.raw if n.lower() not in (b"host", b"content-length", b"cookie")]
    length = (b"Content-Length", str(len(body)).encode())
    assert paygo.headers.raw == [(b"Host", b"paygo.example.com"), *kept, length]
    ptu_kept = [(n, v) for n, v in kept if n.lower() not in (b"api-key", b"authorization")]
    assert ptu.headers.raw == [(b"Host", b"ptu.example.com"), *ptu_kept, (b"api-key", b"PTU-KEY"), length]
    for attempt in seen:
        assert attempt.read() == body
        assert attempt.headers["content-type"] == "application/json"
        assert "cookie" not in attempt.headers
        assert attempt.headers._list == http.Headers(attempt.headers.raw)._list, "as the library normalises them"
    attempt.headers["X-Added"] = "1"
    assert "x-added" not in request.headers, "an inner transport changing an attempt leaves the caller's alone"


def test_multipart_bodies_are_resent_intact_on_failover(http: ModuleType, transport_cls: type[Any]) -> None:
    seen: list[Any] = []
    inner = by_host(http, {"ptu.example.com": [http.ConnectError("refused")], "paygo.example.com": [ok(http)]}, seen)
    payload = bytes(range(256)) * 40
    request = http.Request(
        "POST",
        "https://client.example.com/openai/files?api-version=1",
        files={"file": ("data.jsonl", payload)},
        data={"purpose": "batch"},
    )
    make(transport_cls, inner).handle_request(request)
    first, second = (r.read() for r in seen)
    assert first == second == request.read()
    assert payload in second
    assert seen[1].headers["content-type"] == request.headers["content-type"], "multipart boundary kept"


def test_token_provider_is_called_per_attempt_and_its_token_goes_only_to_its_backend(
    http: ModuleType, transport_cls: type[Any]
) -> None:
    calls: list[str] = []

    def token() -> str:
        calls.append("t")
        return f"TOKEN-{len(calls)}"

    entra = Backend("https://entra.example.com", priority=1, azure_ad_token_provider=token, name="entra")
    seen: list[Any] = []
    inner = by_host(http, {"entra.example.com": [http.Response(503), ok(http)], "paygo.example.com": [ok(http)]}, seen)
    transport = make(transport_cls, inner, [entra, PAYGO])
    transport.handle_request(chat_request(http))
    assert seen[0].headers["authorization"] == "Bearer TOKEN-1"
    assert "api-key" not in seen[0].headers
    assert "TOKEN" not in str(seen[1].headers.raw)


def test_async_token_provider_on_the_sync_path_is_a_clear_error(http: ModuleType, transport_cls: type[Any]) -> None:
    async def token() -> str:
        return "t"

    entra = Backend("https://entra.example.com", azure_ad_token_provider=token, name="entra")
    inner = by_host(http, {"entra.example.com": [ok(http)]}, [])
    with pytest.raises(ConfigurationError, match=r"'entra'.*async"):
        make(transport_cls, inner, [entra]).handle_request(chat_request(http))


@pytest.mark.anyio
async def test_async_token_provider_is_awaited(http: ModuleType, transport_cls: type[Any]) -> None:
    async def token() -> str:
        return "ASYNC-TOKEN"

    entra = Backend("https://entra.example.com", azure_ad_token_provider=token, name="entra")
    seen: list[Any] = []
    inner = by_host(http, {"entra.example.com": [ok(http)]}, seen)
    await make(transport_cls, inner, [entra]).handle_async_request(chat_request(http))
    assert seen[0].headers["authorization"] == "Bearer ASYNC-TOKEN"


def test_closing_the_transport_closes_its_inner_transports(http: ModuleType, transport_cls: type[Any]) -> None:
    closed: list[str] = []

    class Inner(http.BaseTransport):  # type: ignore[name-defined,misc]
        def close(self) -> None:
            closed.append("sync")

    transport = transport_cls([PTU], transport=Inner())
    transport.close()
    assert closed == ["sync"]


def test_transport_repr_names_backends_and_hides_keys(transport_cls: type[Any]) -> None:
    text = repr(transport_cls([PTU, PAYGO]))
    assert "ptu" in text
    assert "paygo" in text
    assert "PTU-KEY" not in text


def test_a_failing_token_provider_fails_over_and_logs_no_detail(
    http: ModuleType, transport_cls: type[Any], caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> str:
        raise RuntimeError("credential cache says: secret-detail")

    entra = Backend("https://entra.example.com", priority=1, azure_ad_token_provider=broken, name="entra")
    inner = by_host(http, {"paygo.example.com": [ok(http)]}, [])
    transport = make(transport_cls, inner, [entra, PAYGO])
    with caplog.at_level("WARNING", logger="openai_lb"):
        response = transport.handle_request(chat_request(http))
    assert response.headers["x-openai-lb-backend"] == "paygo"
    assert "entra: azure_ad_token_provider failed (RuntimeError)" in caplog.text
    assert "secret-detail" not in caplog.text
    assert transport.balancer.store.blocked(entra.key, "gpt-4o", 0.0) is None, (
        "one client's credential problem must not cool the backend for every client"
    )


@pytest.mark.parametrize("error_name", ["LocalProtocolError", "PoolTimeout", "UnsupportedProtocol"])
def test_local_transport_errors_propagate_and_do_not_cool_the_backend(
    http: ModuleType, transport_cls: type[Any], error_name: str
) -> None:
    error = getattr(http, error_name)("ours, not the backend's")
    inner = by_host(http, {"ptu.example.com": [error, ok(http)]}, [])
    transport = make(transport_cls, inner)
    with pytest.raises(getattr(http, error_name)):
        transport.handle_request(chat_request(http))
    assert transport.handle_request(chat_request(http)).headers["x-openai-lb-backend"] == "ptu"


def test_inner_transports_receive_a_request_whose_content_is_readable(
    http: ModuleType, transport_cls: type[Any]
) -> None:
    bodies: list[bytes] = []

    def handler(request: Any) -> Any:
        bodies.append(request.content)
        return ok(http)

    make(transport_cls, http.MockTransport(handler)).handle_request(chat_request(http))
    assert json.loads(bodies[0]) == {"messages": []}


@pytest.mark.anyio
async def test_a_cancelled_request_leaves_nothing_in_flight(http: ModuleType, transport_cls: type[Any]) -> None:
    import anyio

    async def slow_token() -> str:
        await anyio.sleep(60)
        return "never"

    entra = Backend("https://entra.example.com", azure_ad_token_provider=slow_token, name="entra")
    transport = make(transport_cls, by_host(http, {}, []), [entra])
    with anyio.move_on_after(0.05):
        await transport.handle_async_request(chat_request(http))
    (status,) = transport.balancer.status()
    assert (status.attempts, status.in_flight) == (1, 0)
