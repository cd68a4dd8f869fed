"""The httpx transport with respx routes underneath: ordered side effects mixing errors and answers."""

from __future__ import annotations

import httpx
import pytest
import respx

from openai_lb import Backend, HTTPXTransport, InMemoryHealthStore

URL = "https://client.example.com/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"


@pytest.fixture
def router() -> respx.MockRouter:
    return respx.MockRouter(assert_all_called=False)


def test_failover_walks_the_tiers_in_order(router: respx.MockRouter) -> None:
    ptu = router.post(host="ptu.example.com").mock(side_effect=[httpx.ConnectTimeout("slow")])
    east = router.post(host="east.example.com").mock(side_effect=[httpx.Response(503)])
    west = router.post(host="west.example.com").mock(side_effect=[httpx.Response(200, json={"ok": 1})])
    transport = HTTPXTransport(
        [
            Backend("https://ptu.example.com", priority=1),
            Backend("https://east.example.com", priority=2),
            Backend("https://west.example.com", priority=3),
        ],
        transport=httpx.MockTransport(router.handler),
        health_store=InMemoryHealthStore(),
    )
    with httpx.Client(transport=transport) as client:
        response = client.post(URL, json={"messages": []}, headers={"api-key": "k"})
    assert response.json() == {"ok": 1}
    assert response.headers["x-openai-lb-backend"] == "west.example.com"
    assert (ptu.call_count, east.call_count, west.call_count) == (1, 1, 1)


@pytest.mark.anyio
async def test_async_client_over_respx_fails_over_on_429(router: respx.MockRouter) -> None:
    router.post(host="ptu.example.com").mock(return_value=httpx.Response(429, headers={"retry-after": "7"}))
    paygo = router.post(host="paygo.example.com").mock(return_value=httpx.Response(200, json={"ok": 2}))
    transport = HTTPXTransport(
        [Backend("https://ptu.example.com", priority=1), Backend("https://paygo.example.com", priority=2)],
        transport=httpx.MockTransport(router.handler),
        health_store=InMemoryHealthStore(),
    )
    async with httpx.AsyncClient(transport=transport) as client:
        for _ in range(3):
            assert (await client.post(URL, json={})).json() == {"ok": 2}
    assert paygo.call_count == 3
    assert router.routes[0].call_count == 1, "the PTU is left alone for its Retry-After"
