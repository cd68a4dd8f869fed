"""Async clients, and one client shared by many threads or many tasks."""

from __future__ import annotations

import asyncio
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import anyio
import openai
import pytest
from e2e_helpers import assert_stream_cut, content

from openai_lb import Backend
from openai_lb.testing import CutStream, Reply, ResetConnection, closed_port_url

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.anyio
async def test_async_client_fails_over_on_429_reset_and_refused(servers, balanced) -> None:
    ptu, paygo = servers("ptu"), servers("paygo")
    client = balanced(
        [Backend(closed_port_url(), priority=0), Backend(ptu.url, priority=1), Backend(paygo.url, priority=2)],
        is_async=True,
    )
    ptu.script(Reply(429, headers={"retry-after": "1"}))
    raw = await client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    assert content(raw) == "paygo:gpt-4o"
    paygo.script(ResetConnection())
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    await client.close()


@pytest.mark.anyio
async def test_async_stream_is_delivered_unbuffered_and_a_cut_is_an_error(servers, balanced, http) -> None:
    ptu = servers("ptu")
    client = balanced([Backend(ptu.url)], is_async=True)
    ptu.script(CutStream(after=1))
    stream = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    iterator = stream.__aiter__()
    first = await iterator.__anext__()
    assert first.choices[0].delta.content, "the first chunk arrived before the stream was cut"
    with pytest.raises((http.RemoteProtocolError, openai.APIConnectionError)) as caught:
        async for _ in iterator:
            pass
    assert_stream_cut(caught.value)
    await client.close()


@pytest.mark.anyio
async def test_async_token_provider_is_awaited_per_request(servers, balanced) -> None:
    entra = servers("entra", tokens={"async-token"})

    async def token() -> str:
        await anyio.sleep(0)
        return "async-token"

    client = balanced([Backend(entra.url, azure_ad_token_provider=token)], is_async=True)
    raw = await client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
    assert content(raw) == "entra:gpt-4o"
    await client.close()


def test_many_threads_share_one_client_without_losing_a_request(servers, balanced) -> None:
    # A PTU budget far below the load makes the threads race on cooldowns all the time.
    ptu = servers("ptu", budget=20, window=60)
    paygo_a, paygo_b = servers("paygo-a"), servers("paygo-b")
    client = balanced(
        [Backend(ptu.url, priority=1), Backend(paygo_a.url, priority=2), Backend(paygo_b.url, priority=2)]
    )
    threads, per_thread = 32, 10

    def work(_: int) -> list[str]:
        return [
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES).choices[0].message.content or ""
            for _ in range(per_thread)
        ]

    with ThreadPoolExecutor(threads) as pool:
        answers = Counter(a.split(":")[0] for batch in pool.map(work, range(threads)) for a in batch)
    assert sum(answers.values()) == threads * per_thread, f"every request answered: {answers}"
    assert answers["ptu"] == 20, f"the PTU serves exactly its budget: {answers}"
    assert answers["paygo-a"] > 0
    assert answers["paygo-b"] > 0
    assert ptu.served + paygo_a.served + paygo_b.served == threads * per_thread
    assert ptu.rejected <= threads, "after its first 429 the PTU is not asked again (at most one race per thread)"


@pytest.mark.anyio
async def test_many_tasks_share_one_async_client_without_losing_a_request(servers, balanced) -> None:
    ptu = servers("ptu", budget=30, window=60)
    paygo_a, paygo_b = servers("paygo-a"), servers("paygo-b")
    client = balanced(
        [Backend(ptu.url, priority=1), Backend(paygo_a.url, priority=2), Backend(paygo_b.url, priority=2)],
        is_async=True,
    )
    tasks = 200

    async def one() -> str:
        answer = await client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        return (answer.choices[0].message.content or "").split(":")[0]

    answers = Counter(await asyncio.gather(*(one() for _ in range(tasks))))
    assert sum(answers.values()) == tasks
    assert answers["ptu"] == 30, f"the PTU serves exactly its budget: {answers}"
    assert ptu.served + paygo_a.served + paygo_b.served == tasks
    await client.close()


def test_status_counters_add_up_after_many_threads(servers, balanced) -> None:
    ptu = servers("ptu", budget=15, window=60)
    paygo = servers("paygo")
    client = balanced([Backend(ptu.url, priority=1, name="ptu"), Backend(paygo.url, priority=2, name="paygo")])
    # openai_lb's clients expose it; an SDK client built around the transport reaches it through that.
    balancer = getattr(client, "balancer", None) or client._client._transport.balancer

    def work(_: int) -> None:
        for _ in range(5):
            client.chat.completions.create(model="gpt-4o", messages=MESSAGES)

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(work, range(16)))
    statuses = {s.name: s for s in balancer.status()}
    for status in statuses.values():
        assert status.in_flight == 0, status
        assert status.attempts == status.successes + status.client_errors + status.rate_limited + status.failures
    assert statuses["ptu"].successes == ptu.served == 15
    assert statuses["ptu"].rate_limited == ptu.rejected
    assert statuses["paygo"].successes == paygo.served
    assert statuses["ptu"].successes + statuses["paygo"].successes == 80
    # Headroom usually passes the PTU over once it reads no requests left; a 429 from a race cools it.
    expected = "cooling" if statuses["ptu"].rate_limited else "available"
    assert statuses["ptu"].state == expected, "a PTU cools only after a 429"
