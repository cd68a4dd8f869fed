"""Headroom and Azure's spillover through the transport, over a MockTransport of every installed HTTP library."""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest

from openai_lb import AttemptFinished, AttemptStarted, Backend, Event, InMemoryHealthStore, Policy

CHAT_URL = "https://client.example.com/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"
PTU = Backend("https://ptu.example.com", priority=1, name="ptu", spillover_deployment="gpt-4o-standard")
PAYGO = Backend("https://paygo.example.com", priority=2, name="paygo")
PLAIN_PTU = Backend("https://ptu.example.com", priority=1, name="ptu")
"""Without Azure's spillover: openai_lb passes it over when full (a backend with it never is)."""
COMPLETION = {"id": "chatcmpl-1", "object": "chat.completion", "choices": []}


def chat(http: ModuleType, **headers: str) -> Any:
    sent = {"api-key": "k", "content-type": "application/json", **headers}
    return http.Request("POST", CHAT_URL, headers=sent, json={"messages": [], "max_tokens": 100})


def recorded(http: ModuleType, answer: dict[str, dict[str, str]]) -> tuple[Any, list[Any]]:
    """A MockTransport answering 200 with each host's headers, and the requests it saw."""
    seen: list[Any] = []

    def handler(request: Any) -> Any:
        seen.append(request)
        return http.Response(200, json=COMPLETION, headers=answer.get(request.url.host, {}))

    return http.MockTransport(handler), seen


def balanced(
    transport_cls: type[Any], inner: Any, events: list[Event], backends: list[Backend] | None = None, **options: Any
) -> Any:
    return transport_cls(
        backends or [PTU, PAYGO], transport=inner, health_store=InMemoryHealthStore(), on_event=events.append, **options
    )


def test_the_spillover_deployment_is_sent_to_its_backend_only(http: ModuleType, transport_cls: type[Any]) -> None:
    seen: list[Any] = []

    def handler(request: Any) -> Any:
        seen.append(request)
        if request.url.host == "ptu.example.com":  # refused even by Azure's spillover: the request fails over
            return http.Response(429, json={"error": {"code": "429"}}, headers={"retry-after-ms": "1000"})
        return http.Response(200, json=COMPLETION)

    transport = balanced(transport_cls, http.MockTransport(handler), [])
    transport.handle_request(chat(http, **{"x-ms-spillover-deployment": "callers-choice"}))
    ptu, paygo = seen
    assert ptu.url.host == "ptu.example.com"
    assert ptu.headers.get_list("x-ms-spillover-deployment") == ["gpt-4o-standard"], "the backend's own replaces it"
    assert paygo.headers.get_list("x-ms-spillover-deployment") == ["callers-choice"], "others keep the caller's"


def test_a_backend_without_room_is_not_sent_the_next_request(http: ModuleType, transport_cls: type[Any]) -> None:
    events: list[Event] = []
    inner, seen = recorded(http, {"ptu.example.com": {"x-ratelimit-remaining-tokens": "30"}})
    transport = balanced(transport_cls, inner, events, backends=[PLAIN_PTU, PAYGO])
    answers = [transport.handle_request(chat(http)) for _ in range(3)]
    assert [r.headers["x-openai-lb-backend"] for r in answers] == ["ptu", "paygo", "paygo"]
    assert [r.url.host for r in seen] == ["ptu.example.com", "paygo.example.com", "paygo.example.com"]
    ptu = transport.balancer.status()[0]
    assert (ptu.passed_over, ptu.rate_limited, ptu.state) == (2, 0, "available")
    assert [e.passed_over for e in events if isinstance(e, AttemptStarted)] == [(), ("ptu",), ("ptu",)]


@pytest.mark.anyio
async def test_async_requests_reserve_and_release_like_sync_ones(http: ModuleType, transport_cls: type[Any]) -> None:
    inner, seen = recorded(http, {"ptu.example.com": {"x-ratelimit-remaining-requests": "5"}})
    transport = balanced(transport_cls, inner, [])
    for _ in range(3):
        response = await transport.handle_async_request(chat(http))
        assert response.headers["x-openai-lb-backend"] == "ptu"
    assert len(seen) == 3
    slot = transport.balancer.book.slot(PTU.key, "gpt-4o")
    assert slot is not None, "the PTU's reading is kept"
    assert not slot.pending, "every answered attempt gave its reservation back"


def test_answers_azure_spilled_are_counted_and_name_the_deployment(http: ModuleType, transport_cls: type[Any]) -> None:
    events: list[Event] = []
    spilled = {"x-ms-spillover-from-deployment": "gpt-4o", "x-ms-deployment-name": "gpt-4o-standard"}
    inner, _ = recorded(http, {"ptu.example.com": spilled})
    transport = balanced(transport_cls, inner, events)
    response = transport.handle_request(chat(http))
    assert response.status_code == 200
    assert response.headers["x-ms-deployment-name"] == "gpt-4o-standard", "the answer reaches the caller as is"
    assert transport.balancer.status()[0].spilled == 1
    assert [e.spilled_to for e in events if isinstance(e, AttemptFinished)] == ["gpt-4o-standard"]


def test_headroom_off_sends_to_the_ptu_as_before(http: ModuleType, transport_cls: type[Any]) -> None:
    inner, seen = recorded(http, {"ptu.example.com": {"x-ratelimit-remaining-requests": "0"}})
    transport = balanced(transport_cls, inner, [], policy=Policy(headroom=False))
    for _ in range(3):
        transport.handle_request(chat(http))
    assert [r.url.host for r in seen] == ["ptu.example.com"] * 3
