"""Tests of openai_lb.testing: the fake Azure OpenAI server, driven by the real openai SDK and raw HTTP."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import openai
import pytest
from helpers import FakeClock, sdk_http_module
from openai.types.chat import ChatCompletionMessageParam

from openai_lb.testing import (
    CutStream,
    FakeAzureOpenAI,
    HoldStream,
    RecordedRequest,
    Reply,
    ResetConnection,
    Stall,
    closed_port_url,
)

API_VERSION = "2024-10-21"
HI: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
CHAT_PATH = f"/openai/deployments/gpt-4o/chat/completions?api-version={API_VERSION}"


SDK_HTTP = sdk_http_module()


@dataclass
class RawAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def raw_request(
    base_url: str,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> RawAnswer:
    """Send one request on a fresh connection; ``path`` is appended to ``base_url``'s path."""
    parts = urlsplit(base_url)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=5)
    try:
        connection.request(method, parts.path + path, body=body, headers=headers or {})
        response = connection.getresponse()
        return RawAnswer(response.status, {key.lower(): value for key, value in response.getheaders()}, response.read())
    finally:
        connection.close()


def post_chat(base_url: str, key: str = "k1", deployment: str = "gpt-4o") -> RawAnswer:
    return raw_request(
        base_url,
        "POST",
        f"/openai/deployments/{deployment}/chat/completions?api-version={API_VERSION}",
        body=json.dumps({"messages": HI}).encode(),
        headers={"api-key": key, "content-type": "application/json"},
    )


def azure_client(server: FakeAzureOpenAI, key: str = "k1", **options: Any) -> openai.AzureOpenAI:
    return openai.AzureOpenAI(azure_endpoint=server.url, api_key=key, api_version=API_VERSION, max_retries=0, **options)


@pytest.fixture
def server() -> Iterator[FakeAzureOpenAI]:
    with FakeAzureOpenAI(name="ptu", deployments={"gpt-4o", "embed"}, api_keys={"k1"}) as fake:
        yield fake


# -- endpoints through the SDK -------------------------------------------------------------


def test_chat_completion_answers_with_server_and_deployment_name(server: FakeAzureOpenAI) -> None:
    completion = azure_client(server).chat.completions.create(model="gpt-4o", messages=HI)

    assert completion.choices[0].message.content == "ptu:gpt-4o", "content must name server and deployment"
    assert completion.model == "gpt-4o"
    assert completion.object == "chat.completion"
    assert completion.choices[0].finish_reason == "stop"
    assert completion.usage is not None, "non-streaming answers carry usage"
    assert completion.usage.total_tokens == completion.usage.prompt_tokens + completion.usage.completion_tokens
    assert server.served == 1


def test_streaming_chat_completion_pieces_join_to_server_and_deployment_name() -> None:
    with FakeAzureOpenAI(name="ptu", stream_chunks=4) as server:
        stream = azure_client(server).chat.completions.create(
            model="gpt-4o",
            messages=HI,
            stream=True,
        )
        chunks = list(stream)

    pieces = [chunk.choices[0].delta.content or "" for chunk in chunks]
    assert len(chunks) == 4, f"expected stream_chunks=4 content events, got {len(chunks)}"
    assert "".join(pieces) == "ptu:gpt-4o", f"streamed pieces {pieces} must join to name:deployment"
    assert chunks[-1].choices[0].finish_reason == "stop", "the last chunk ends the answer"


def test_streaming_with_include_usage_adds_a_usage_chunk(server: FakeAzureOpenAI) -> None:
    stream = azure_client(server).chat.completions.create(
        model="gpt-4o",
        messages=HI,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)

    assert chunks[-1].choices == [], "the usage chunk has no choices, like the real API"
    assert chunks[-1].usage is not None, "include_usage asks for a usage chunk"
    assert chunks[-1].usage.total_tokens > 0


def test_streaming_sends_each_event_as_soon_as_it_is_ready() -> None:
    # Two delays of 0.25 s between three events; a buffering server would deliver all three at once.
    # Asking for one delay's worth leaves a loaded machine 0.25 s to read the first event late.
    with FakeAzureOpenAI(stream_chunks=3, chunk_delay=0.25) as server:
        stream = azure_client(server).chat.completions.create(
            model="gpt-4o",
            messages=HI,
            stream=True,
        )
        arrivals = [time.perf_counter() for _ in stream]

    assert len(arrivals) == 3
    assert arrivals[-1] - arrivals[0] >= 0.25, (
        f"events arrived {arrivals[-1] - arrivals[0]:.3f}s apart; the first event must be flushed "
        "before the server sleeps for the next ones"
    )


def test_embeddings_give_one_vector_per_input(server: FakeAzureOpenAI) -> None:
    client = azure_client(server)

    default = client.embeddings.create(model="embed", input=["a", "b", "c"])
    as_floats = client.embeddings.create(model="embed", input="a", encoding_format="float")

    assert [item.index for item in default.data] == [0, 1, 2], "one embedding per input, in order"
    # The SDK may ask for base64 by default; both encodings must decode to the same numbers.
    assert default.data[0].embedding == as_floats.data[0].embedding
    assert len(as_floats.data[0].embedding) >= 3, "a few floats per embedding"
    assert default.model == "embed"


def test_responses_api_output_text_names_server_and_deployment(server: FakeAzureOpenAI) -> None:
    response = azure_client(server).responses.create(model="gpt-4o", input="hi")

    assert response.output_text == "ptu:gpt-4o"
    assert response.model == "gpt-4o"
    assert server.requests[-1].path == "/openai/responses", "the Azure SDK posts to /openai/responses"
    assert server.requests[-1].deployment == "gpt-4o", "the deployment comes from the body's model"


def test_responses_api_stream_gives_the_same_text(server: FakeAzureOpenAI) -> None:
    with azure_client(server).responses.stream(model="gpt-4o", input="hi") as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()

    assert "".join(deltas) == "ptu:gpt-4o"
    assert final.output_text == "ptu:gpt-4o"


def test_v1_routes_take_the_deployment_from_the_model_field(server: FakeAzureOpenAI) -> None:
    client = openai.OpenAI(
        base_url=f"{server.url}/openai/v1/", api_key="unused", default_headers={"api-key": "k1"}, max_retries=0
    )

    chat = client.chat.completions.create(model="gpt-4o", messages=HI)
    response = client.responses.create(model="gpt-4o", input="hi")

    assert chat.choices[0].message.content == "ptu:gpt-4o"
    assert response.output_text == "ptu:gpt-4o"
    assert [request.path for request in server.requests] == ["/openai/v1/chat/completions", "/openai/v1/responses"]
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model="not-hosted", input="hi")
    assert caught.value.code == "DeploymentNotFound"


def test_file_upload_reports_size_and_name_and_records_the_body(server: FakeAzureOpenAI) -> None:
    content = b'{"custom_id": "1"}\r\n--not-a-boundary\r\n' + bytes(range(256))

    uploaded = azure_client(server).files.create(file=("batch.jsonl", content, "application/jsonl"), purpose="batch")

    assert uploaded.bytes == len(content), "bytes must be the exact size of the file part"
    assert uploaded.filename == "batch.jsonl"
    assert uploaded.purpose == "batch"
    recorded = server.requests[-1]
    assert recorded.path == "/openai/files"
    assert content in recorded.body, "the raw multipart body is recorded"
    assert recorded.deployment is None, "uploads are not per deployment"


def test_file_upload_without_a_file_part_is_a_bad_request(server: FakeAzureOpenAI) -> None:
    body = b'--XyZ\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n--XyZ--\r\n'

    answer = raw_request(
        server.url,
        "POST",
        "/openai/files",
        body=body,
        headers={"api-key": "k1", "content-type": "multipart/form-data; boundary=XyZ"},
    )

    assert answer.status == 400, answer.body
    assert answer.json()["error"]["code"] == "BadRequest"


def test_models_list_answers_without_a_deployment(server: FakeAzureOpenAI) -> None:
    models = azure_client(server).models.list()

    assert sorted(model.id for model in models.data) == ["embed", "gpt-4o"], "lists hosted deployments"


# -- checks --------------------------------------------------------------------------------


def test_unknown_deployment_is_deployment_not_found(server: FakeAzureOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        azure_client(server).chat.completions.create(model="gpt-35", messages=HI)

    assert caught.value.code == "DeploymentNotFound"
    assert "deployment for this resource does not exist" in caught.value.message
    assert server.requests[-1].deployment == "gpt-35", "refused requests are recorded too"


def test_any_deployment_is_hosted_when_deployments_is_none() -> None:
    with FakeAzureOpenAI(name="any") as server:
        completion = azure_client(server).chat.completions.create(model="whatever", messages=HI)

    assert completion.choices[0].message.content == "any:whatever"


def test_wrong_key_is_401_and_the_key_is_not_echoed(server: FakeAzureOpenAI) -> None:
    answer = post_chat(server.url, key="secret-wrong-key")

    assert answer.status == 401
    assert answer.json()["error"]["code"] == "401"
    assert "Access denied due to invalid subscription key" in answer.json()["error"]["message"]
    assert b"secret-wrong-key" not in answer.body, "the received key must never appear in the answer"
    with pytest.raises(openai.AuthenticationError):
        azure_client(server, key="wrong").chat.completions.create(model="gpt-4o", messages=HI)


def test_bearer_token_is_accepted_when_listed() -> None:
    with FakeAzureOpenAI(name="aad", api_keys={"k1"}, tokens={"t1"}) as server:
        client = openai.AzureOpenAI(
            azure_endpoint=server.url, azure_ad_token="t1", api_version=API_VERSION, max_retries=0
        )
        completion = client.chat.completions.create(model="gpt-4o", messages=HI)
        wrong = raw_request(server.url, "GET", "/openai/models", headers={"authorization": "Bearer not-listed"})

    assert completion.choices[0].message.content == "aad:gpt-4o"
    assert wrong.status == 401, "an unknown token is refused like a wrong key"


def test_path_prefix_is_required_like_an_api_gateway() -> None:
    with FakeAzureOpenAI(name="gw", path_prefix="/team-a/", deployments={"gpt-4o"}) as server:
        assert server.url.endswith(f":{server.port}/team-a"), f"url keeps the prefix: {server.url}"
        completion = azure_client(server).chat.completions.create(model="gpt-4o", messages=HI)
        server.script(Reply(500))
        bare = post_chat(f"http://127.0.0.1:{server.port}")
        pending = server.pending_actions

    assert completion.choices[0].message.content == "gw:gpt-4o"
    assert bare.status == 404
    assert bare.json()["error"] == {"code": "404", "message": "Resource not found"}, "not DeploymentNotFound"
    assert pending == 1, "a request outside the prefix must not consume a scripted action"


def test_unknown_routes_are_resource_not_found(server: FakeAzureOpenAI) -> None:
    legacy = raw_request(
        server.url, "POST", "/openai/deployments/gpt-4o/completions", body=b"{}", headers={"api-key": "k1"}
    )
    wrong_method = raw_request(server.url, "GET", CHAT_PATH, headers={"api-key": "k1"})

    for answer in (legacy, wrong_method):
        assert answer.status == 404
        assert answer.json()["error"]["message"] == "Resource not found"


def test_chat_without_messages_is_a_bad_request_checked_after_key_and_deployment() -> None:
    def probe(server: FakeAzureOpenAI, key: str, deployment: str) -> RawAnswer:
        return raw_request(
            server.url,
            "POST",
            f"/openai/deployments/{deployment}/chat/completions?api-version={API_VERSION}",
            body=b"{}",
            headers={"api-key": key, "content-type": "application/json"},
        )

    with FakeAzureOpenAI(name="ptu", deployments={"gpt-4o"}, api_keys={"k1"}, budget=1) as server:
        wrong_key = probe(server, "wrong", "missing")
        missing = probe(server, "k1", "missing")
        hosted = probe(server, "k1", "gpt-4o")
        not_a_list = raw_request(server.url, "POST", CHAT_PATH, body=b'{"messages": "hi"}', headers={"api-key": "k1"})
        after = post_chat(server.url)

    assert wrong_key.status == 401, "the key is checked first"
    assert missing.status == 404
    assert missing.json()["error"]["code"] == "DeploymentNotFound", "then the deployment"
    assert hosted.status == 400, hosted.body
    assert hosted.json()["error"]["code"] == "BadRequest"
    assert "'messages'" in hosted.json()["error"]["message"], "the message names the missing field"
    assert not_a_list.status == 400
    assert after.status == 200, "refused bodies spend no budget"
    assert server.served == 1


def test_every_answer_carries_server_name_type_and_length(server: FakeAzureOpenAI) -> None:
    server.script(Reply(503))
    answers = [post_chat(server.url), post_chat(server.url), post_chat(server.url, key="bad")]
    answers.append(raw_request(server.url, "GET", "/nowhere", headers={"api-key": "k1"}))

    assert [answer.status for answer in answers] == [503, 200, 401, 404]
    for answer in answers:
        assert answer.headers.get("x-fake-server") == "ptu"
        assert answer.headers.get("content-type", "").startswith("application/json")
        assert answer.headers.get("content-length") == str(len(answer.body))


def test_requests_are_recorded_with_query_headers_and_body(server: FakeAzureOpenAI) -> None:
    post_chat(server.url)

    recorded = server.requests
    assert len(recorded) == 1
    request = recorded[0]
    assert isinstance(request, RecordedRequest)
    assert request.method == "POST"
    assert request.path == "/openai/deployments/gpt-4o/chat/completions", "path excludes the query"
    assert request.query == {"api-version": API_VERSION}
    assert request.headers["api-key"] == "k1", "header names are lower-cased"
    assert request.json() == {"messages": HI}
    assert request.deployment == "gpt-4o"
    recorded.clear()
    assert len(server.requests) == 1, "requests returns a copy"


# -- scripted faults -----------------------------------------------------------------------


def test_scripted_429_keeps_its_headers(server: FakeAzureOpenAI) -> None:
    server.script(Reply(429, headers={"retry-after-ms": "1500"}))

    with pytest.raises(openai.RateLimitError) as caught:
        azure_client(server).chat.completions.create(model="gpt-4o", messages=HI)

    assert caught.value.response.headers["retry-after-ms"] == "1500"
    assert caught.value.response.headers["x-fake-server"] == "ptu"
    assert caught.value.code == "429"
    assert server.rejected == 0, "scripted 429s are not budget rejections"


def test_scripted_500_is_an_internal_server_error(server: FakeAzureOpenAI) -> None:
    server.script(Reply(500))

    with pytest.raises(openai.InternalServerError) as caught:
        azure_client(server).chat.completions.create(model="gpt-4o", messages=HI)

    assert caught.value.status_code == 500


def test_scripted_actions_are_used_in_order_then_behaviour_is_normal(server: FakeAzureOpenAI) -> None:
    server.script(Reply(503), Reply(200, json={"custom": True}), Reply(201))

    statuses_and_bodies = [(answer.status, answer.json()) for answer in (post_chat(server.url) for _ in range(4))]

    assert [status for status, _ in statuses_and_bodies] == [503, 200, 201, 200]
    assert statuses_and_bodies[1][1] == {"custom": True}, "a Reply's json is sent as is"
    normal_content = statuses_and_bodies[2][1]["choices"][0]["message"]["content"]
    assert normal_content == "ptu:gpt-4o", "a 2xx Reply without json gets the normal answer"
    assert server.pending_actions == 0


def test_scripted_headers_replace_defaults_but_not_body_framing(server: FakeAzureOpenAI) -> None:
    server.script(Reply(200, headers={"Content-Type": "text/plain", "Content-Length": "999"}, json="ok"))

    answer = post_chat(server.url)

    assert answer.headers["content-type"] == "text/plain", "a scripted header wins over the default"
    assert answer.headers["content-length"] == str(len(answer.body)) == "4", "framing stays correct"


def test_chunked_request_bodies_are_read(server: FakeAzureOpenAI) -> None:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        connection.request(
            "POST",
            CHAT_PATH,
            body=iter([b'{"messages": ', json.dumps(HI).encode(), b"}"]),
            headers={"api-key": "k1", "transfer-encoding": "chunked"},
            encode_chunked=True,
        )
        status = connection.getresponse().status
    finally:
        connection.close()

    assert status == 200
    assert server.requests[-1].json() == {"messages": HI}, "the chunked body is reassembled"


def test_scripted_reply_skips_auth_and_deployment_checks(server: FakeAzureOpenAI) -> None:
    server.script(Reply(200))

    answer = post_chat(server.url, key="bad", deployment="unknown")

    assert answer.status == 200, "scripted actions answer before auth and deployment checks"


def test_reset_connection_is_a_connection_error(server: FakeAzureOpenAI) -> None:
    server.script(ResetConnection(), ResetConnection())

    with pytest.raises(openai.APIConnectionError):
        azure_client(server).chat.completions.create(model="gpt-4o", messages=HI)
    with pytest.raises(ConnectionResetError):
        post_chat(server.url)
    assert len(server.requests) == 2, "reset requests are still read and recorded"


def test_cut_stream_makes_stream_iteration_fail(server: FakeAzureOpenAI) -> None:
    server.script(CutStream(after=1))
    stream = azure_client(server).chat.completions.create(
        model="gpt-4o",
        messages=HI,
        stream=True,
    )
    received: list[str] = []

    with pytest.raises((SDK_HTTP.TransportError, openai.APIConnectionError)):
        received.extend(chunk.choices[0].delta.content or "" for chunk in stream)

    assert received == ["ptu:"], f"one event then the cut, got {received}"
    assert server.served == 0, "a cut answer is not a success"


def test_cut_stream_on_a_json_endpoint_truncates_the_body(server: FakeAzureOpenAI) -> None:
    server.script(CutStream())

    with pytest.raises(openai.APIConnectionError):
        azure_client(server).embeddings.create(model="embed", input="a")


def raw_exchange(port: int, request: bytes) -> bytes:
    """Send ``request`` on a fresh socket and read everything until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        received = b""
        # Bounded: a server that never closes makes recv time out instead of looping forever.
        for _ in range(1000):
            data = sock.recv(65536)
            if not data:
                return received
            received += data
    raise AssertionError(f"the server kept the connection open after {len(received)} bytes")


def raw_post(path: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\napi-key: k1\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body


def split_answer(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    head, separator, body = raw.partition(b"\r\n\r\n")
    assert separator, f"no end of headers in {raw!r}"
    status_line, *lines = head.decode().split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    return status_line, headers, body


def test_cut_stream_closing_after_zero_events_sends_headers_then_drops_the_connection(
    server: FakeAzureOpenAI,
) -> None:
    server.script(CutStream(after=0, framing="close"), CutStream(after=0, framing="close"))
    chat = json.dumps({"messages": HI, "stream": True}).encode()

    status_line, headers, body = split_answer(raw_exchange(server.port, raw_post(CHAT_PATH, chat)))
    with SDK_HTTP.Client(timeout=5) as client:
        seen = client.post(f"{server.url}{CHAT_PATH}", content=chat, headers={"api-key": "k1"})

    assert status_line == "HTTP/1.1 200 OK"
    assert headers["content-type"].startswith("text/event-stream")
    assert headers["connection"] == "close", "the close is announced"
    assert "content-length" not in headers, f"no framing: {headers}"
    assert "transfer-encoding" not in headers, f"no framing: {headers}"
    assert body == b"", "not a single body byte before the close"
    assert (seen.status_code, seen.content) == (200, b""), "to a client the empty body ends cleanly at the close"
    assert server.served == 0, "a cut answer is not a success"


def test_cut_stream_closing_after_events_ends_the_body_where_the_connection_ends(server: FakeAzureOpenAI) -> None:
    server.script(CutStream(after=1, framing="close"), CutStream(after=2, framing="close"))
    chat = json.dumps({"messages": HI, "stream": True}).encode()

    _, headers, body = split_answer(raw_exchange(server.port, raw_post(CHAT_PATH, chat)))
    stream = azure_client(server).chat.completions.create(model="gpt-4o", messages=HI, stream=True)
    received = [chunk.choices[0].delta.content or "" for chunk in stream]

    assert "transfer-encoding" not in headers
    assert "content-length" not in headers
    assert body.startswith(b"data: {"), f"a bare event, not a chunk: {body!r}"
    assert body.endswith(b"\n\n"), f"a whole event: {body!r}"
    assert body.count(b"data: ") == 1, "exactly after=1 events"
    assert received == ["ptu:", "gpt"], f"the SDK reads two of three events and sees a clean end, got {received}"


def test_cut_stream_closing_a_json_answer_sends_half_its_body_unframed(server: FakeAzureOpenAI) -> None:
    server.script(CutStream(after=1, framing="close"))
    embed = json.dumps({"input": "a"}).encode()

    _, headers, body = split_answer(
        raw_exchange(server.port, raw_post(f"/openai/deployments/embed/embeddings?api-version={API_VERSION}", embed))
    )

    assert headers["content-type"] == "application/json"
    assert "content-length" not in headers
    assert "transfer-encoding" not in headers
    assert body.startswith(b'{"'), body
    with pytest.raises(json.JSONDecodeError):
        json.loads(body)


def test_stall_longer_than_the_client_timeout_is_a_timeout(server: FakeAzureOpenAI) -> None:
    server.script(Stall(5.0))
    client = azure_client(server, timeout=0.2)

    started = time.perf_counter()
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(model="gpt-4o", messages=HI)

    assert time.perf_counter() - started < 2.0, "the client, not the stall, must end the wait"


def test_short_stall_then_normal_answer(server: FakeAzureOpenAI) -> None:
    server.script(Stall(0.05))

    started = time.perf_counter()
    answer = post_chat(server.url)

    assert answer.status == 200
    assert time.perf_counter() - started >= 0.05, "the answer waits for the stall"


def test_stall_ends_when_the_server_stops() -> None:
    server = FakeAzureOpenAI()
    server.start()
    server.script(Stall(30.0))
    outcome: list[BaseException | RawAnswer] = []

    def call() -> None:
        try:
            outcome.append(post_chat(server.url))
        except Exception as error:
            outcome.append(error)

    caller = threading.Thread(target=call)
    caller.start()
    while not server.requests:
        time.sleep(0.01)
    started = time.perf_counter()
    server.stop()
    caller.join(timeout=2.0)

    assert time.perf_counter() - started < 0.5, "stop must not wait for a stall to end"
    assert not caller.is_alive(), "the stalled client must get its connection closed"
    assert len(outcome) == 1, "the caller must have finished"
    assert isinstance(outcome[0], (http.client.HTTPException, OSError)), f"expected a dropped connection, got {outcome}"


def test_hold_stream_sends_the_first_events_then_the_rest_once_released(server: FakeAzureOpenAI) -> None:
    hold = HoldStream(after=1)
    server.script(hold)
    client = azure_client(server, timeout=5)

    events = iter(client.responses.create(model="gpt-4o", input="hi", stream=True))
    created = next(events)
    held = server.served, hold.release.is_set()
    hold.release.set()
    rest = list(events)
    follow_up = client.responses.create(model="gpt-4o", input="and?", previous_response_id=created.response.id)

    assert created.type == "response.created", f"the event before the hold comes first, got {created.type}"
    assert held == (1, False), "the first event arrives while the server holds the rest"
    assert rest[-1].type == "response.completed", "once released, the stream ends normally"
    assert (follow_up.metadata or {}).get("turn") == "2", "a held answer is a normal one: its response is stored"


def test_an_unreleased_hold_is_cut_after_its_timeout(server: FakeAzureOpenAI) -> None:
    server.script(HoldStream(after=1, timeout=0.2))
    started = time.perf_counter()  # before the request: the hold's clock starts at the server's first event
    stream = azure_client(server, timeout=5).chat.completions.create(model="gpt-4o", messages=HI, stream=True)
    received: list[str] = []

    with pytest.raises((SDK_HTTP.TransportError, openai.APIConnectionError)):
        received.extend(chunk.choices[0].delta.content or "" for chunk in stream)

    assert received == ["ptu:"], f"the event before the hold, then the cut, got {received}"
    assert 0.2 <= time.perf_counter() - started < 2.0, "the cut comes when the hold times out"


def test_hold_stream_sends_other_answers_whole(server: FakeAzureOpenAI) -> None:
    server.script(HoldStream(after=0, timeout=5.0))

    started = time.perf_counter()
    answer = post_chat(server.url)

    assert answer.status == 200
    assert answer.json()["choices"][0]["message"]["content"] == "ptu:gpt-4o"
    assert time.perf_counter() - started < 1.0, "a JSON answer is not held"


def test_invalid_actions_are_refused() -> None:
    with pytest.raises(ValueError, match="status"):
        Reply(99)
    with pytest.raises(ValueError, match="after"):
        CutStream(after=-1)
    with pytest.raises(ValueError, match="framing"):
        CutStream(framing="chunked")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seconds"):
        Stall(-1.0)
    with pytest.raises(ValueError, match="after"):
        HoldStream(after=-1)
    with pytest.raises(ValueError, match="timeout"):
        HoldStream(timeout=0)
    with pytest.raises(TypeError):
        FakeAzureOpenAI().script("Reply(500)")  # type: ignore[arg-type]


# -- budget --------------------------------------------------------------------------------


def test_budget_answers_429_until_the_window_resets() -> None:
    clock = FakeClock(100.0)
    with FakeAzureOpenAI(budget=2, window=10, clock=clock) as server:
        first = post_chat(server.url)
        clock.now = 103.0
        second = post_chat(server.url)
        third = post_chat(server.url)
        clock.now = 110.5
        after_reset = [post_chat(server.url), post_chat(server.url), post_chat(server.url)]
        served, rejected = server.served, server.rejected

    assert (first.status, second.status) == (200, 200)
    assert third.status == 429, "the third request in a window of budget 2 is over budget"
    assert third.headers["retry-after-ms"] == "7000", "window began at t=100, so it resets 7 s after t=103"
    assert third.headers["retry-after"] == "7"
    error = third.json()["error"]
    assert error["code"] == "429"
    assert "exceeded call rate limit" in error["message"]
    assert "Please retry after 7 seconds" in error["message"]
    assert [answer.status for answer in after_reset] == [200, 200, 429], "a fresh window has a fresh budget"
    assert after_reset[2].headers["retry-after-ms"] == "9500", "windows are fixed: [110, 120)"
    assert (served, rejected) == (4, 2)


def test_retry_after_rounds_up_to_at_least_one_second() -> None:
    clock = FakeClock(0.0)
    with FakeAzureOpenAI(budget=1, window=1, clock=clock) as server:
        post_chat(server.url)
        clock.now = 0.75
        over = post_chat(server.url)

    assert over.headers["retry-after-ms"] == "250"
    assert over.headers["retry-after"] == "1"


def test_budget_ignores_refused_and_rejected_requests() -> None:
    clock = FakeClock(100.0)
    with FakeAzureOpenAI(deployments={"gpt-4o"}, api_keys={"k1"}, budget=1, clock=clock) as server:
        refused = [post_chat(server.url, key="bad"), post_chat(server.url, deployment="nope")]
        ok = post_chat(server.url)
        over = [post_chat(server.url), post_chat(server.url)]
        server.reset()
        after_reset = post_chat(server.url)

    assert [answer.status for answer in refused] == [401, 404]
    assert ok.status == 200, "401 and 404 answers must not spend the budget"
    assert [answer.status for answer in over] == [429, 429]
    assert after_reset.status == 200, "reset() starts a new budget window"


# -- lifecycle and load --------------------------------------------------------------------


def test_stop_is_fast_with_a_keep_alive_client_connected() -> None:
    server = FakeAzureOpenAI()
    server.start()
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=2)
    connection.request("GET", "/openai/models")
    response = connection.getresponse()
    response.read()
    assert not response.will_close, "the server must keep the connection alive for this test to mean anything"

    started = time.perf_counter()
    server.stop()
    elapsed = time.perf_counter() - started
    server.stop()  # idempotent

    assert elapsed < 0.5, f"stop() took {elapsed:.3f}s with an idle keep-alive connection"
    assert connection.sock is not None
    assert connection.sock.recv(1) == b"", "the idle connection is closed by the server on stop"
    connection.close()


def test_url_needs_a_started_server_and_restart_works() -> None:
    server = FakeAzureOpenAI(name="again")
    with pytest.raises(RuntimeError):
        _ = server.url
    with server:
        server.start()  # already running: no-op
        first = post_chat(server.url)
    with server:
        second = post_chat(server.url)

    assert (first.status, second.status) == (200, 200)


def test_closed_port_url_refuses_connections() -> None:
    url = closed_port_url()
    parts = urlsplit(url)

    assert parts.hostname == "127.0.0.1"
    assert parts.port, f"no port in {url}"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", parts.port), timeout=1).close()
    client = openai.AzureOpenAI(azure_endpoint=url, api_key="k", api_version=API_VERSION, max_retries=0)
    with pytest.raises(openai.APIConnectionError):
        client.models.list()


def test_many_threads_are_all_answered_and_recorded(server: FakeAzureOpenAI) -> None:
    client = azure_client(server)
    threads, per_thread = 50, 4
    contents: list[str | None] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(per_thread):
            try:
                completion = client.chat.completions.create(model="gpt-4o", messages=HI)
            except Exception as error:
                with lock:
                    errors.append(error)
            else:
                with lock:
                    contents.append(completion.choices[0].message.content)

    workers = [threading.Thread(target=work) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=30)

    assert errors == [], f"every request must be answered, got {errors[:3]}"
    assert contents == ["ptu:gpt-4o"] * (threads * per_thread)
    assert len(server.requests) == threads * per_thread, "every request must be recorded"
    assert server.served == threads * per_thread


def test_reset_clears_script_records_and_counters(server: FakeAzureOpenAI) -> None:
    post_chat(server.url)
    server.script(Reply(500))

    server.reset()

    assert server.requests == []
    assert (server.served, server.rejected, server.pending_actions) == (0, 0, 0)
    assert post_chat(server.url).status == 200, "the cleared script no longer applies"


def test_answers_log_every_status_with_the_servers_clock() -> None:
    ticks = iter(range(100, 200))
    with FakeAzureOpenAI(name="log", clock=lambda: float(next(ticks))) as server:
        server.script(Reply(429), Reply(500))
        for _ in range(3):
            post_chat(server.url)
        assert [status for _, status in server.answers] == [429, 500, 200]
        times = [t for t, _ in server.answers]
        assert times == sorted(times)
        server.reset()
        assert server.answers == []
