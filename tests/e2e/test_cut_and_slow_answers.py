"""Answers that arrive too slowly or only in part, through the SDK: fail over while it can, never end clean."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from e2e_helpers import chat, content, statuses

from openai_lb import Backend, Policy
from openai_lb.testing import CutStream, Stall

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def trickling() -> Iterator[str]:
    """A server on 127.0.0.1 that sends its status line one byte every 0.1 s: no single read ever times out."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.1)
    stop = threading.Event()

    def serve(connection: socket.socket) -> None:
        with connection:
            connection.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n" * 20:
                if stop.wait(0.1):
                    return
                try:
                    connection.sendall(bytes([byte]))
                except OSError:
                    return

    def accept() -> None:
        while not stop.is_set():
            try:
                connection, _ = listener.accept()
            except TimeoutError:
                continue
            threading.Thread(target=serve, args=(connection,), daemon=True).start()

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    stop.set()
    thread.join(5)
    listener.close()


def test_headers_timeout_fails_over_from_a_backend_trickling_its_headers(trickling, servers, balanced) -> None:
    paygo = servers("paygo")
    client = balanced(
        [Backend(trickling, priority=1, name="slow"), Backend(paygo.url, priority=2, name="paygo")],
        policy=Policy(headers_timeout=0.5),
        timeout=2,
    )
    started = time.monotonic()
    assert content(chat(client)) == "paygo:gpt-4o"
    assert time.monotonic() - started < 5, "the per-read timeout alone would have waited far longer"
    slow = statuses(client)["slow"]
    assert (slow.state, slow.failures, slow.in_flight) == ("circuit_open", 1, 0), slow
    assert slow.last_failure == "ReadTimeout"


@pytest.mark.anyio
async def test_headers_timeout_fails_over_for_async_clients_too(trickling, servers, balanced) -> None:
    paygo = servers("paygo")
    client = balanced(
        [Backend(trickling, priority=1, name="slow"), Backend(paygo.url, priority=2, name="paygo")],
        policy=Policy(headers_timeout=0.5),
        timeout=2,
        is_async=True,
    )
    with anyio.fail_after(10):
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": "hi"}]
        )
    assert raw.headers["x-openai-lb-backend"] == "paygo"
    await client.close()


@pytest.mark.parametrize("after", [0, 1], ids=["before-any-byte", "midway"])
def test_a_json_answer_cut_by_a_closed_connection_fails_over(servers, balanced, after: int) -> None:
    ptu, paygo = servers("ptu"), servers("paygo")
    ptu.script(CutStream(after=after, framing="close"))
    client = balanced([Backend(ptu.url, priority=1, name="ptu"), Backend(paygo.url, priority=2, name="paygo")])
    answer = client.embeddings.with_raw_response.create(model="gpt-4o", input="hi")
    assert answer.headers["x-openai-lb-backend"] == "paygo", "a truncated JSON body must not reach the caller"
    ptu_status = statuses(client)["ptu"]
    assert ptu_status.failures == 1
    assert ptu_status.last_failure == "RemoteProtocolError"


@pytest.mark.anyio
@pytest.mark.parametrize("after", [0, 1], ids=["before-any-byte", "midway"])
async def test_a_json_answer_cut_by_a_closed_connection_fails_over_for_async_clients_too(
    servers, balanced, after: int
) -> None:
    ptu, paygo = servers("ptu"), servers("paygo")
    ptu.script(CutStream(after=after, framing="close"))
    client = balanced(
        [Backend(ptu.url, priority=1, name="ptu"), Backend(paygo.url, priority=2, name="paygo")], is_async=True
    )
    with anyio.fail_after(10):
        answer = await client.embeddings.with_raw_response.create(model="gpt-4o", input="hi")
    assert answer.headers["x-openai-lb-backend"] == "paygo", "a truncated JSON body must fail over, not raise"
    ptu_status = statuses(client)["ptu"]
    assert (ptu_status.failures, ptu_status.last_failure) == (1, "RemoteProtocolError"), ptu_status
    await client.close()


@pytest.mark.parametrize("after", [0, 2], ids=["before-any-byte", "midway"])
def test_an_event_stream_cut_by_a_closed_connection_raises_instead_of_ending_clean(
    servers, balanced, after: int
) -> None:
    ptu = servers("ptu")
    ptu.script(CutStream(after=after, framing="close"))
    client = balanced([Backend(ptu.url, name="ptu")])
    stream = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True)
    with pytest.raises(Exception) as caught:  # noqa: PT011 - each SDK major wraps it its own way
        list(stream)
    assert "terminal event" in _chain(caught.value), f"expected the cut to be named, got {caught.value!r}"
    status = statuses(client)["ptu"]
    assert status.failures == 1, "the cut counts against the backend"
    assert status.last_failure == "body cut: RemoteProtocolError"


def test_a_whole_close_delimited_event_stream_ends_clean(servers, balanced) -> None:
    ptu = servers("ptu")
    ptu.script(CutStream(after=10_000, framing="close"))
    client = balanced([Backend(ptu.url, name="ptu")])
    chunks = list(
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}], stream=True)
    )
    assert chunks, "the stream should have carried events"
    status = statuses(client)["ptu"]
    assert status.failures == 0


def _chain(error: BaseException) -> str:
    texts = []
    seen: BaseException | None = error
    while seen is not None and len(texts) < 10:
        texts.append(str(seen))
        seen = seen.__cause__ or seen.__context__
    return " | ".join(texts)


def test_an_attempt_given_up_on_never_holds_the_interpreter_at_exit(servers) -> None:
    hung, paygo = servers("hung"), servers("paygo")
    hung.script(Stall(30.0))
    code = f"""
import openai_lb
client = openai_lb.AzureOpenAI(
    backends=[openai_lb.Backend({hung.url!r}, priority=1), openai_lb.Backend({paygo.url!r}, priority=2)],
    policy=openai_lb.Policy(headers_timeout=0.3), api_key="k", api_version="2024-10-21", timeout=25, max_retries=0,
)
answer = client.chat.completions.create(model="gpt-4o", messages=[{{"role": "user", "content": "hi"}}])
print(answer.choices[0].message.content)
"""
    root = Path(__file__).resolve().parents[2]
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=40, cwd=root
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "paygo:gpt-4o"
    assert time.monotonic() - started < 15, "the abandoned attempt's thread kept the interpreter from exiting"
