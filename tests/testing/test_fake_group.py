"""Tests of FakeAzureGroup: several fake Azure OpenAI servers on one port, told apart by path prefix."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from helpers import FakeClock, sdk_http_module
from openai.types.chat import ChatCompletionMessageParam

from openai_lb.testing import FakeAzureGroup, FakeAzureOpenAI, Reply, Stall

API_VERSION = "2024-10-21"
HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
NOT_FOUND = {"error": {"code": "404", "message": "Resource not found"}}


SDK_HTTP = sdk_http_module()


def chat_path(deployment: str = "gpt-4o") -> str:
    return f"/openai/deployments/{deployment}/chat/completions?api-version={API_VERSION}"


def azure_client(server: FakeAzureOpenAI, key: str = "k1") -> openai.AzureOpenAI:
    return openai.AzureOpenAI(azure_endpoint=server.url, api_key=key, api_version=API_VERSION, max_retries=0)


def keep_alive_connection(port: int, path: str, key: str) -> http.client.HTTPConnection:
    """Open a connection, send one request on it and leave it idle but open."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
    connection.request("GET", path, headers={"api-key": key})
    response = connection.getresponse()
    response.read()
    assert response.status == 200
    assert not response.will_close, "the server must keep the connection alive for the test to mean anything"
    return connection


@pytest.fixture
def ptu() -> FakeAzureOpenAI:
    return FakeAzureOpenAI(name="ptu", path_prefix="/ptu", deployments={"gpt-4o"}, api_keys={"k1"})


@pytest.fixture
def east() -> FakeAzureOpenAI:
    return FakeAzureOpenAI(name="east", path_prefix="/paygo-east", deployments={"gpt-4o", "mini"}, api_keys={"k2"})


@pytest.fixture
def group(ptu: FakeAzureOpenAI, east: FakeAzureOpenAI) -> Iterator[FakeAzureGroup]:
    with FakeAzureGroup([ptu, east]) as running:
        yield running


# -- routing -------------------------------------------------------------------------------


def test_members_share_the_group_port_and_differ_by_prefix(
    group: FakeAzureGroup, ptu: FakeAzureOpenAI, east: FakeAzureOpenAI
) -> None:
    assert group.url == f"http://127.0.0.1:{group.port}"
    assert ptu.port == east.port == group.port, "members report the group's port while grouped"
    assert ptu.url == group.url + "/ptu"
    assert east.url == group.url + "/paygo-east"
    assert group.members == (ptu, east)


def test_sdk_requests_reach_the_member_of_their_prefix(
    group: FakeAzureGroup, ptu: FakeAzureOpenAI, east: FakeAzureOpenAI
) -> None:
    from_ptu = azure_client(ptu, key="k1").chat.completions.create(model="gpt-4o", messages=HI)
    raw_east = azure_client(east, key="k2").chat.completions.with_raw_response.create(model="mini", messages=HI)
    streamed = azure_client(ptu, key="k1").chat.completions.create(model="gpt-4o", messages=HI, stream=True)
    pieces = [chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices]

    assert from_ptu.choices[0].message.content == "ptu:gpt-4o"
    assert raw_east.parse().choices[0].message.content == "east:mini"
    assert raw_east.headers["x-fake-server"] == "east"
    assert "".join(pieces) == "ptu:gpt-4o", "streaming works through the group"
    assert [r.path for r in ptu.requests] == ["/ptu/openai/deployments/gpt-4o/chat/completions"] * 2
    assert [r.deployment for r in east.requests] == ["mini"]
    assert (ptu.served, east.served) == (2, 1)


def test_each_member_checks_its_own_keys_and_deployments(ptu: FakeAzureOpenAI, east: FakeAzureOpenAI) -> None:
    with FakeAzureGroup([ptu, east]):
        with pytest.raises(openai.AuthenticationError):
            azure_client(ptu, key="k2").chat.completions.create(model="gpt-4o", messages=HI)
        with pytest.raises(openai.NotFoundError) as not_hosted:
            azure_client(ptu, key="k1").chat.completions.create(model="mini", messages=HI)
        models = [model.id for model in azure_client(east, key="k2").models.list()]

    assert not_hosted.value.code == "DeploymentNotFound", "ptu hosts no 'mini', unlike east"
    assert models == ["gpt-4o", "mini"], "the models list is the member's own"
    assert [r.deployment for r in ptu.requests] == ["gpt-4o", "mini"]
    assert east.served == 1
    assert ptu.served == 0


def test_budgets_scripts_and_counters_are_per_member() -> None:
    clock = FakeClock(100.0)
    ptu = FakeAzureOpenAI(name="ptu", path_prefix="/ptu", budget=1, window=1.0, clock=clock)
    east = FakeAzureOpenAI(name="east", path_prefix="/east", clock=clock)
    with FakeAzureGroup([ptu, east]):
        east.script(Reply(500))
        first = azure_client(ptu).chat.completions.create(model="gpt-4o", messages=HI)
        with pytest.raises(openai.RateLimitError) as over_budget:
            azure_client(ptu).chat.completions.create(model="gpt-4o", messages=HI)
        with pytest.raises(openai.InternalServerError):
            azure_client(east).chat.completions.create(model="gpt-4o", messages=HI)
        unlimited = [azure_client(east).chat.completions.create(model="gpt-4o", messages=HI) for _ in range(3)]
        clock.now += 1.0
        after_window = azure_client(ptu).chat.completions.create(model="gpt-4o", messages=HI)

    assert first.choices[0].message.content == "ptu:gpt-4o"
    assert over_budget.value.response.headers["retry-after-ms"] == "1000"
    assert [answer.choices[0].message.content for answer in unlimited] == ["east:gpt-4o"] * 3
    assert after_window.choices[0].message.content == "ptu:gpt-4o", "ptu's window resets on its own"
    assert (ptu.served, ptu.rejected, len(ptu.requests)) == (2, 1, 3)
    assert (east.served, east.rejected, len(east.requests)) == (3, 0, 4)
    assert east.pending_actions == 0


def test_unknown_prefix_is_resource_not_found_and_recorded_by_no_member(
    group: FakeAzureGroup, ptu: FakeAzureOpenAI, east: FakeAzureOpenAI
) -> None:
    ptu.script(Reply(500))
    answers: list[tuple[int, str | None, Any]] = []
    # "/ptux" only starts with "/ptu" inside a segment, "/paygo" is a mere part of "/paygo-east".
    for path in ("/west", "/ptux", "/paygo", ""):
        connection = http.client.HTTPConnection("127.0.0.1", group.port, timeout=2)
        try:
            connection.request("POST", path + chat_path(), body=b'{"messages": []}', headers={"api-key": "k1"})
            response = connection.getresponse()
            answers.append((response.status, response.getheader("x-fake-server"), json.loads(response.read())))
        finally:
            connection.close()
    with pytest.raises(openai.NotFoundError):
        openai.AzureOpenAI(
            azure_endpoint=group.url + "/west", api_key="k1", api_version=API_VERSION, max_retries=0
        ).chat.completions.create(model="gpt-4o", messages=HI)

    assert answers == [(404, "group", NOT_FOUND)] * 4
    assert ptu.requests == east.requests == [], "no member records a request outside its prefix"
    assert ptu.pending_actions == 1, "nor spends a scripted action on it"


def test_one_keep_alive_connection_can_alternate_members(
    group: FakeAzureGroup, ptu: FakeAzureOpenAI, east: FakeAzureOpenAI
) -> None:
    ptu_chat = "/ptu" + chat_path()
    east_chat = "/paygo-east" + chat_path("mini")
    body = {"messages": HI}
    plan = [
        (ptu_chat, "k1", body),
        (east_chat, "k2", body),
        ("/nowhere" + chat_path(), "k1", body),
        (east_chat, "k2", {**body, "stream": True}),
        (ptu_chat, "k1", body),
    ]
    statuses: list[int] = []
    texts: list[str] = []
    client_ports: set[int] = set()
    with SDK_HTTP.Client(base_url=group.url, timeout=5) as client:
        for path, key, payload in plan:
            response = client.post(path, json=payload, headers={"api-key": key})
            statuses.append(response.status_code)
            texts.append(response.headers.get("x-fake-server", ""))
            client_ports.add(response.extensions["network_stream"].get_extra_info("client_addr")[1])

    assert statuses == [200, 200, 404, 200, 200]
    assert texts == ["ptu", "east", "group", "east", "ptu"], "each request is routed on its own"
    assert len(client_ports) == 1, f"all requests must share one connection, used {client_ports}"
    assert len(ptu.requests) == 2
    assert len(east.requests) == 2
    assert east.served == 2


def test_concurrent_clients_of_all_members_are_all_answered(
    group: FakeAzureGroup, ptu: FakeAzureOpenAI, east: FakeAzureOpenAI
) -> None:
    clients = {"ptu": azure_client(ptu, key="k1"), "east": azure_client(east, key="k2")}
    results: list[str | None] = []
    lock = threading.Lock()

    def work(name: str) -> None:
        for _ in range(5):
            content = clients[name].chat.completions.create(model="gpt-4o", messages=HI).choices[0].message.content
            with lock:
                results.append(content)

    workers = [threading.Thread(target=work, args=(name,)) for name in ("ptu", "east") * 5]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)

    assert sorted(results, key=str) == ["east:gpt-4o"] * 25 + ["ptu:gpt-4o"] * 25
    assert (ptu.served, east.served) == (25, 25)


# -- lifecycle -----------------------------------------------------------------------------


def test_stop_is_fast_with_keep_alive_clients_of_several_members_connected(
    ptu: FakeAzureOpenAI, east: FakeAzureOpenAI
) -> None:
    with FakeAzureGroup([ptu, east]) as group:
        connections = [
            keep_alive_connection(group.port, "/ptu/openai/models", "k1"),
            keep_alive_connection(group.port, "/paygo-east/openai/models", "k2"),
        ]
        started = time.perf_counter()
        group.stop()
        elapsed = time.perf_counter() - started
    # Leaving the with block stopped the group a second time: stop() is idempotent.

    assert elapsed < 0.5, f"stop() took {elapsed:.3f}s with idle keep-alive connections"
    for connection in connections:
        assert connection.sock is not None
        assert connection.sock.recv(1) == b"", "idle connections are closed by the server on stop"
        connection.close()


def test_stop_ends_a_member_stall_and_a_slow_stream_at_once() -> None:
    stalled = FakeAzureOpenAI(name="stalled", path_prefix="/stalled")
    slow = FakeAzureOpenAI(name="slow", path_prefix="/slow", stream_chunks=50, chunk_delay=10.0)
    group = FakeAzureGroup([stalled, slow])
    stalled.script(Stall(30.0))
    outcomes: list[BaseException | str] = []

    def call(member: FakeAzureOpenAI, stream: bool) -> None:
        try:
            client = azure_client(member)
            if stream:
                for _ in client.chat.completions.create(model="gpt-4o", messages=HI, stream=True):
                    pass
            else:
                client.chat.completions.create(model="gpt-4o", messages=HI)
            outcomes.append("answered")
        except Exception as error:
            outcomes.append(error)

    callers = [threading.Thread(target=call, args=(stalled, False)), threading.Thread(target=call, args=(slow, True))]
    with group:
        for caller in callers:
            caller.start()
        deadline = time.monotonic() + 5
        while not (stalled.requests and slow.served) and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.perf_counter()
        group.stop()
    for caller in callers:
        caller.join(timeout=2.0)

    assert time.perf_counter() - started < 0.5, "stop must not wait for a stall or a slow stream"
    assert not any(caller.is_alive() for caller in callers), "both clients must get their connections closed"
    assert len(outcomes) == 2
    dropped = (openai.APIConnectionError, SDK_HTTP.TransportError)
    assert all(isinstance(outcome, dropped) for outcome in outcomes), f"expected dropped connections, got {outcomes}"


def test_member_cannot_start_alone_while_grouped_but_can_after(ptu: FakeAzureOpenAI, east: FakeAzureOpenAI) -> None:
    group = FakeAzureGroup([ptu, east])
    with group:
        group.start()  # already running: no-op
        with pytest.raises(RuntimeError, match="FakeAzureGroup"):
            ptu.start()
        with pytest.raises(ValueError, match="already serving"):
            FakeAzureGroup([ptu])
        group_port = group.port
    with ptu:
        alone = azure_client(ptu).chat.completions.create(model="gpt-4o", messages=HI)
        alone_port = ptu.port
    with group:
        again = azure_client(east, key="k2").chat.completions.create(model="gpt-4o", messages=HI)

    assert alone.choices[0].message.content == "ptu:gpt-4o"
    assert alone_port != group_port, "alone, a member listens on its own port"
    assert again.choices[0].message.content == "east:gpt-4o", "a stopped group can be started again"


def test_group_start_refuses_a_member_already_running_alone(ptu: FakeAzureOpenAI, east: FakeAzureOpenAI) -> None:
    group = FakeAzureGroup([ptu, east])
    with east:
        with pytest.raises(ValueError, match="already running on its own"):
            group.start()
        with pytest.raises(RuntimeError, match="not been started"):
            _ = group.url
        ptu.start()  # a failed group start leaves no member claimed
        ptu.stop()
    with group:
        answer = azure_client(ptu).chat.completions.create(model="gpt-4o", messages=HI)

    assert answer.choices[0].message.content == "ptu:gpt-4o"


def test_group_construction_refuses_members_that_cannot_share_a_port() -> None:
    def member(prefix: str, name: str = "m") -> FakeAzureOpenAI:
        return FakeAzureOpenAI(name=name, path_prefix=prefix)

    with pytest.raises(ValueError, match="at least one"):
        FakeAzureGroup([])
    with pytest.raises(ValueError, match="'plain' has no path_prefix"):
        FakeAzureGroup([member("/a"), member("", name="plain")])
    with pytest.raises(ValueError, match="'root' has no path_prefix"):
        FakeAzureGroup([member("/", name="root")])
    with pytest.raises(ValueError, match="both have the path prefix '/a'"):
        FakeAzureGroup([member("/a"), member("a/")])
    with pytest.raises(ValueError, match="'/a' of member 'outer' is a prefix of '/a/b'"):
        FakeAzureGroup([member("/a/b", name="inner"), member("/a", name="outer")])
    twice = member("/a")
    with pytest.raises(ValueError, match="given twice"):
        FakeAzureGroup([twice, twice])
    with pytest.raises(TypeError, match="FakeAzureOpenAI instances"):
        FakeAzureGroup(["/a"])  # type: ignore[list-item]
    running = member("/run")
    with running, pytest.raises(ValueError, match="already running on its own"):
        FakeAzureGroup([running])

    FakeAzureGroup([member("/a"), member("/ab"), member("/b/a")])  # prefixes of text, not of segments: fine
