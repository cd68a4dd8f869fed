"""The fake server's stored objects (responses, files, batches, vector stores), through the real openai SDK.

Every test runs on the Azure paths (``AzureOpenAI``, ``?api-version=``) and on the v1 paths
(``OpenAI`` with ``base_url={endpoint}/openai/v1/``), the two ways the SDK reaches Azure.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import openai
import pytest

from openai_lb.testing import FakeAzureGroup, FakeAzureOpenAI, ObjectIds

API_VERSION = "2025-04-01-preview"
BATCH_LINE = b'{"custom_id": "1", "method": "POST", "url": "/chat/completions", "body": {"model": "gpt-4o"}}\n'

Client = openai.OpenAI
ClientFor = Callable[[FakeAzureOpenAI], Client]


def azure_client(server: FakeAzureOpenAI) -> Client:
    return openai.AzureOpenAI(azure_endpoint=server.url, api_key="k1", api_version=API_VERSION, max_retries=0)


def v1_client(server: FakeAzureOpenAI) -> Client:
    return openai.OpenAI(
        base_url=f"{server.url}/openai/v1/", api_key="unused", default_headers={"api-key": "k1"}, max_retries=0
    )


@pytest.fixture(params=[azure_client, v1_client], ids=["azure-paths", "v1-paths"])
def client_for(request: pytest.FixtureRequest) -> ClientFor:
    maker: ClientFor = request.param
    return maker


@pytest.fixture
def east() -> Iterator[FakeAzureOpenAI]:
    with FakeAzureOpenAI(name="east", deployments={"gpt-4o"}, api_keys={"k1"}) as server:
        yield server


@pytest.fixture
def west() -> Iterator[FakeAzureOpenAI]:
    with FakeAzureOpenAI(name="west", deployments={"gpt-4o"}, api_keys={"k1"}) as server:
        yield server


def test_a_three_turn_chain_on_one_server_follows_previous_response_id(
    east: FakeAzureOpenAI, client_for: ClientFor
) -> None:
    client = client_for(east)

    first = client.responses.create(model="gpt-4o", input="one")
    second = client.responses.create(model="gpt-4o", input="two", previous_response_id=first.id)
    third = client.responses.create(model="gpt-4o", input="three", previous_response_id=second.id)

    assert [response.previous_response_id for response in (first, second, third)] == [None, first.id, second.id]
    assert [(response.metadata or {}).get("turn") for response in (first, second, third)] == ["1", "2", "3"]
    assert third.output_text == "east:gpt-4o", "the text still names server and deployment"
    assert east.objects.responses == {first.id, second.id, third.id}
    assert client.responses.retrieve(second.id).previous_response_id == first.id


def test_a_chain_continued_on_another_server_is_previous_response_not_found(
    east: FakeAzureOpenAI, west: FakeAzureOpenAI, client_for: ClientFor
) -> None:
    first = client_for(east).responses.create(model="gpt-4o", input="one")

    with pytest.raises(openai.BadRequestError) as caught:
        client_for(west).responses.create(model="gpt-4o", input="two", previous_response_id=first.id)

    assert caught.value.status_code == 400
    assert caught.value.code == "previous_response_not_found", f"got {caught.value.body}"
    assert caught.value.param == "previous_response_id"
    assert first.id in caught.value.message, "the message names the missing id"
    assert first.id in east.objects
    assert west.objects == ObjectIds(), "the refused turn is not stored on the other server"
    third = client_for(east).responses.create(model="gpt-4o", input="two", previous_response_id=first.id)
    assert (third.metadata or {}).get("turn") == "2", "the chain goes on where it lives"


def test_a_streamed_first_turn_starts_with_response_created_carrying_the_id(
    east: FakeAzureOpenAI, client_for: ClientFor
) -> None:
    client = client_for(east)

    events = list(client.responses.create(model="gpt-4o", input="one", stream=True))
    created = events[0]
    completed = events[-1]
    assert created.type == "response.created", f"first event: {created.type}"
    assert completed.type == "response.completed", f"last event: {completed.type}"
    response_id = created.response.id
    second = client.responses.create(model="gpt-4o", input="two", previous_response_id=response_id)

    assert response_id.startswith("resp_")
    assert completed.response.id == response_id
    assert "".join(event.delta for event in events if event.type == "response.output_text.delta") == "east:gpt-4o"
    assert second.previous_response_id == response_id, "the streamed response is held and can be continued"


def test_input_items_list_what_a_response_was_given(east: FakeAzureOpenAI, client_for: ClientFor) -> None:
    client = client_for(east)
    response = client.responses.create(
        model="gpt-4o", input=[{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]
    )

    items = client.responses.input_items.list(response.id, order="asc")

    texts: list[Any] = [item.content[0].text for item in items.data if item.type == "message"]
    assert texts == ["a", "b"]


def test_a_deleted_response_is_gone(east: FakeAzureOpenAI, client_for: ClientFor) -> None:
    client = client_for(east)
    response = client.responses.create(model="gpt-4o", input="one")

    client.responses.delete(response.id)

    assert response.id not in east.objects
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)


def test_files_feed_batches_and_are_read_back_and_deleted(east: FakeAzureOpenAI, client_for: ClientFor) -> None:
    client = client_for(east)

    uploaded = client.files.create(file=("batch.jsonl", BATCH_LINE, "application/jsonl"), purpose="batch")
    batch = client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    retrieved = client.batches.retrieve(batch.id)
    content = client.files.content(uploaded.id).content
    file_again = client.files.retrieve(uploaded.id)
    cancelling = client.batches.cancel(batch.id)
    cancelled = client.batches.retrieve(batch.id)
    client.files.delete(uploaded.id)

    assert uploaded.id.startswith("file-")
    assert (batch.status, batch.input_file_id) == ("validating", uploaded.id)
    assert retrieved.id == batch.id
    assert retrieved.status in ("validating", "in_progress")
    assert content == BATCH_LINE, "the file's content is the uploaded bytes"
    assert (file_again.bytes, file_again.purpose) == (len(BATCH_LINE), "batch")
    assert (cancelling.status, cancelled.status) == ("cancelling", "cancelled")
    assert east.objects.files == frozenset(), "the deleted file is gone"
    assert east.objects.batches == {batch.id}
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(uploaded.id)


def test_a_batch_naming_a_file_the_server_does_not_hold_is_not_found(
    east: FakeAzureOpenAI, west: FakeAzureOpenAI, client_for: ClientFor
) -> None:
    uploaded = client_for(east).files.create(file=("batch.jsonl", BATCH_LINE), purpose="batch")

    with pytest.raises(openai.NotFoundError) as caught:
        client_for(west).batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        )

    assert uploaded.id in caught.value.message
    assert west.objects == ObjectIds()


def test_vector_stores_are_created_retrieved_and_deleted(east: FakeAzureOpenAI, client_for: ClientFor) -> None:
    client = client_for(east)

    store = client.vector_stores.create(name="docs")
    retrieved = client.vector_stores.retrieve(store.id)
    deleted = client.vector_stores.delete(store.id)

    assert store.id.startswith("vs_")
    assert retrieved.name == "docs"
    assert deleted.deleted
    assert store.id not in east.objects


def test_unknown_ids_are_not_found(east: FakeAzureOpenAI, client_for: ClientFor) -> None:
    client = client_for(east)
    calls: list[Callable[[], object]] = [
        lambda: client.responses.retrieve("resp_unknown"),
        lambda: client.responses.delete("resp_unknown"),
        lambda: client.responses.input_items.list("resp_unknown"),
        lambda: client.files.retrieve("file-unknown"),
        lambda: client.files.content("file-unknown"),
        lambda: client.files.delete("file-unknown"),
        lambda: client.batches.retrieve("batch_unknown"),
        lambda: client.batches.cancel("batch_unknown"),
        lambda: client.vector_stores.retrieve("vs_unknown"),
        lambda: client.vector_stores.delete("vs_unknown"),
    ]

    for index, call in enumerate(calls):
        with pytest.raises(openai.NotFoundError) as caught:
            call()
        assert "unknown" in caught.value.message, f"call {index}: the message names the id: {caught.value.message}"


def test_reset_forgets_the_objects(east: FakeAzureOpenAI, client_for: ClientFor) -> None:
    client = client_for(east)
    response = client.responses.create(model="gpt-4o", input="one")
    client.vector_stores.create(name="docs")

    east.reset()

    assert east.objects == ObjectIds()
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="gpt-4o", input="two", previous_response_id=response.id)


def test_members_of_a_group_keep_their_own_objects() -> None:
    ptu = FakeAzureOpenAI(name="ptu", path_prefix="/ptu")
    paygo = FakeAzureOpenAI(name="paygo", path_prefix="/paygo")
    with FakeAzureGroup([ptu, paygo]):
        first = azure_client(ptu).responses.create(model="gpt-4o", input="one")
        with pytest.raises(openai.BadRequestError) as caught:
            azure_client(paygo).responses.create(model="gpt-4o", input="two", previous_response_id=first.id)

    assert caught.value.code == "previous_response_not_found"
    assert (first.id in ptu.objects, first.id in paygo.objects) == (True, False)
