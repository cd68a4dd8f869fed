"""Stateful APIs follow their objects, through the real SDK against fake Azure OpenAI servers on 127.0.0.1.

Every test runs with a sync and an async client (``balanced_over``, tests/e2e/conftest.py). Its
body is written once, as a coroutine: `done` awaits what an async client's call returns and
passes a sync client's answer through. Each fake server keeps its own objects, as Azure
resources do, so a call that lands on the wrong backend fails the way it would in production.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import openai
import pytest
from e2e_helpers import Recorder, done, statuses

import openai_lb
from openai_lb import (
    AllBackendsCooling,
    AttemptFinished,
    AttemptStarted,
    Backend,
    BackendCooled,
    NoBackendCanServe,
    OwnerDiscovered,
    Policy,
)
from openai_lb.testing import FakeAzureOpenAI, HoldStream, Reply

pytestmark = [pytest.mark.anyio, pytest.mark.timeout(30)]

# A plain SDK client's settings; the balanced ones come from the balanced fixture.
PLAIN = {"api_key": "client-key", "api_version": "2024-10-21"}
TURNS = 10
BATCH_LINE = b'{"custom_id": "1", "method": "POST", "url": "/chat/completions", "body": {"model": "gpt-4o"}}\n'


async def events_of(stream: Any) -> AsyncIterator[Any]:
    """The events of a sync or an async SDK stream, as one async iterator."""
    if isinstance(stream, openai.AsyncStream):
        async for event in stream:
            yield event
    else:
        for event in stream:
            yield event


@pytest.fixture
def three(servers: Callable[..., FakeAzureOpenAI]) -> list[FakeAzureOpenAI]:
    return [servers(name) for name in ("a", "b", "c")]


def equal(fakes: list[FakeAzureOpenAI]) -> list[Backend]:
    """One backend per fake, all of one priority and weight: a balanced call may land on any."""
    return [Backend(fake.url, name=fake.name) for fake in fakes]


def ranked(fakes: list[FakeAzureOpenAI]) -> list[Backend]:
    """One backend per fake, in priority order: a balanced call goes to the first that can take it."""
    return [Backend(fake.url, name=fake.name, priority=rank) for rank, fake in enumerate(fakes, start=1)]


def holder(fakes: list[FakeAzureOpenAI], object_id: str) -> FakeAzureOpenAI:
    """The one fake holding ``object_id``."""
    holding = [fake for fake in fakes if object_id in fake.objects]
    assert len(holding) == 1, f"{object_id} should live on exactly one backend, found on {holding}"
    return holding[0]


def request_counts(fakes: list[FakeAzureOpenAI]) -> dict[str, int]:
    return {fake.name: len(fake.requests) for fake in fakes}


async def chain(client: Any, turns: int) -> list[Any]:
    """A ``previous_response_id`` chain of ``turns`` turns: each answer, or the error a refused turn raised.

    A refused turn leaves the chain where it was: the next one continues the last answered turn.
    """
    outcomes: list[Any] = []
    last: str | None = None
    for turn in range(1, turns + 1):
        try:
            answer = await done(
                client.responses.create(model="gpt-4o", input=f"turn {turn}", previous_response_id=last)
            )
        except (openai.BadRequestError, openai.NotFoundError) as refused:
            outcomes.append(refused)
        else:
            outcomes.append(answer)
            last = answer.id
    return outcomes


async def test_a_ten_turn_chain_stays_on_the_first_turns_backend(three, balanced_over) -> None:
    lb = balanced_over(equal(three))

    outcomes = await chain(lb.client, TURNS)

    refused = [outcome for outcome in outcomes if isinstance(outcome, Exception)]
    assert not refused, f"every turn is answered, got {refused}"
    owner = holder(three, outcomes[0].id)
    assert [answer.output_text for answer in outcomes] == [f"{owner.name}:gpt-4o"] * TURNS
    assert [(answer.metadata or {}).get("turn") for answer in outcomes] == [str(n) for n in range(1, TURNS + 1)], (
        "the owner continued one chain, turn after turn"
    )
    assert owner.objects.responses == {answer.id for answer in outcomes}
    assert request_counts(three) == {fake.name: TURNS if fake is owner else 0 for fake in three}, (
        "no turn reached another backend"
    )
    assert lb.routes() == [(owner.name, None)] + [(owner.name, "pinned")] * (TURNS - 1)
    assert statuses(lb.client)[owner.name].pinned == TURNS - 1


async def test_without_affinity_the_same_chain_breaks(three, balanced_over) -> None:
    lb = balanced_over(equal(three), policy=Policy(affinity=False))

    outcomes = await chain(lb.client, TURNS)

    refused = [outcome for outcome in outcomes if isinstance(outcome, Exception)]
    assert refused, "with affinity off, turns land on backends that do not hold the chain and are refused"
    assert {error.code for error in refused} == {"previous_response_not_found"}, [error.body for error in refused]
    assert all(count > 0 for count in request_counts(three).values()), "the turns were spread over every backend"
    assert {event.affinity for event in lb.events.of(AttemptStarted)} == {None}, "nothing was pinned"


async def test_a_streamed_first_turn_arrives_as_it_comes_and_its_follow_ups_are_pinned(three, balanced_over) -> None:
    # Whichever backend the first turn lands on holds its stream after response.created.
    holds = {fake.name: HoldStream(after=1, timeout=5.0) for fake in three}
    for fake in three:
        fake.script(holds[fake.name])
    lb = balanced_over(equal(three), timeout=5)

    events = events_of(await done(lb.client.responses.create(model="gpt-4o", input="one", stream=True)))
    created = await anext(events)
    owner = holder(three, created.response.id)
    # Asked while the owner still holds the stream: the id was learned from the event as it passed.
    retrieved = await done(lb.client.responses.retrieve(created.response.id))
    holds[owner.name].release.set()
    rest = [event async for event in events]
    second = await done(
        lb.client.responses.create(model="gpt-4o", input="two", previous_response_id=created.response.id)
    )

    assert created.type == "response.created", f"the first event reached the caller during the hold: {created.type}"
    assert rest[-1].type == "response.completed", "the rest followed once released"
    assert retrieved.id == created.response.id
    assert second.output_text == f"{owner.name}:gpt-4o"
    assert (second.metadata or {}).get("turn") == "2", "the follow-up continued the streamed turn"
    assert lb.routes() == [(owner.name, None), (owner.name, "pinned"), (owner.name, "pinned")]
    for fake in three:
        if fake is not owner:
            assert (fake.requests, fake.pending_actions) == ([], 1), f"nothing reached {fake.name}"


async def test_a_batch_and_its_file_stay_on_the_files_backend_until_the_file_is_deleted(servers, balanced_over) -> None:
    two = [servers("east"), servers("west")]
    lb = balanced_over(equal(two))
    client = lb.client

    uploaded = await done(client.files.create(file=("batch.jsonl", BATCH_LINE, "application/jsonl"), purpose="batch"))
    owner = holder(two, uploaded.id)
    (other,) = (fake for fake in two if fake is not owner)
    batch = await done(
        client.batches.create(input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h")
    )
    fetched = await done(client.batches.retrieve(batch.id))
    data = await done(client.files.content(uploaded.id))
    await done(client.files.delete(uploaded.id))
    kept = lb.routes()
    with pytest.raises(openai.NotFoundError):
        await done(client.files.retrieve(uploaded.id))

    assert (fetched.id, fetched.input_file_id) == (batch.id, uploaded.id)
    assert data.content == BATCH_LINE
    assert batch.id in owner.objects
    assert uploaded.id not in owner.objects, "deleted on its backend"
    assert kept == [(owner.name, None)] + [(owner.name, "pinned")] * 4, "batch, retrieve, content and delete"
    assert [request.method for request in other.requests] == ["GET"], "only the look-up after the delete"
    assert other.requests[0].path.endswith(f"/files/{uploaded.id}")
    looked_up = lb.events.of(AttemptFinished)[len(kept) :]
    assert sorted((event.backend, event.affinity) for event in looked_up) == [
        ("east", "discovery"),
        ("west", "discovery"),
    ], "the deleted file was forgotten: the look-up searched every backend"
    assert not lb.events.of(OwnerDiscovered), "and found it nowhere"


async def test_an_owner_answering_429_is_waited_for_and_the_retry_lands_on_it(three, balanced_over) -> None:
    lb = balanced_over(equal(three), max_retries=2)
    first = await done(lb.client.responses.create(model="gpt-4o", input="one"))
    owner = holder(three, first.id)
    before = request_counts(three)
    owner.script(Reply(429, headers={"retry-after-ms": "200"}))

    started = time.monotonic()
    second = await done(lb.client.responses.create(model="gpt-4o", input="two", previous_response_id=first.id))
    waited = time.monotonic() - started

    assert second.output_text == f"{owner.name}:gpt-4o"
    assert (second.metadata or {}).get("turn") == "2"
    assert waited >= 0.15, f"the SDK waited for the owner's Retry-After, not {waited:.3f} s"
    expected = {name: count + 2 if name == owner.name else count for name, count in before.items()}
    assert request_counts(three) == expected, "the 429 and the retry went to the owner; nothing reached the others"
    assert [(event.soonest, event.attempts) for event in lb.events.of(AllBackendsCooling)] == [(owner.name, 1)]
    assert lb.routes()[1:] == [(owner.name, "pinned")] * 2


async def test_an_id_made_by_a_plain_client_is_found_in_one_pass_then_followed(three, is_async) -> None:
    first, _, third = three
    with openai.AzureOpenAI(azure_endpoint=third.url, **PLAIN) as plain:
        made = plain.responses.create(model="gpt-4o", input="before balancing")
    events = Recorder()
    openai_lb.patch(ranked(three), on_event=events)
    sdk_class = openai.AsyncAzureOpenAI if is_async else openai.AzureOpenAI
    client = sdk_class(azure_endpoint=first.url, max_retries=0, **PLAIN)

    follow_up = await done(client.responses.create(model="gpt-4o", input="and?", previous_response_id=made.id))
    searched = [(event.backend, event.outcome, event.status) for event in events.of(AttemptFinished)]
    retrieved = await done(client.responses.retrieve(made.id))
    await done(client.close())

    assert (follow_up.output_text, (follow_up.metadata or {}).get("turn")) == ("c:gpt-4o", "2")
    assert searched == [("a", "not_here", 400), ("b", "not_here", 400), ("c", "success", 200)], "one pass, in order"
    assert [(event.backend, event.object_ids, event.attempts) for event in events.of(OwnerDiscovered)] == [
        ("c", (made.id,), 3)
    ]
    assert retrieved.id == made.id
    assert [(event.backend, event.affinity) for event in events.of(AttemptStarted)][3:] == [("c", "pinned")], (
        "the next call went straight to the owner"
    )
    assert request_counts(three) == {"a": 1, "b": 1, "c": 3}
    assert not events.of(BackendCooled), "a not-here answer cools nothing"
    status = statuses(client)
    assert {name: backend.state for name, backend in status.items()} == dict.fromkeys("abc", "available")
    assert (status["c"].discovered, status["c"].pinned) == (1, 1)


async def test_a_request_naming_objects_on_two_backends_is_refused_unsent(servers, balanced_over) -> None:
    two = [servers("a"), servers("b")]
    lb = balanced_over(ranked(two))
    on_a = await done(lb.client.files.create(file=("a.txt", b"a", "text/plain"), purpose="assistants"))
    two[0].script(Reply(429, headers={"retry-after-ms": "60000"}))
    on_b = await done(lb.client.files.create(file=("b.txt", b"b", "text/plain"), purpose="assistants"))
    before = request_counts(two)

    with pytest.raises(openai.BadRequestError) as refused:
        await done(lb.client.vector_stores.create(name="both", file_ids=[on_a.id, on_b.id]))

    assert (holder(two, on_a.id).name, holder(two, on_b.id).name) == ("a", "b")
    message = refused.value.message
    for named in (on_a.id, on_b.id, "'a'", "'b'"):
        assert named in message, f"{named} is named in {message!r}"
    assert refused.value.code == "ObjectsOnDifferentBackends"
    assert request_counts(two) == before, "nothing was sent"
    assert [(event.status, event.reason, event.attempts) for event in lb.events.of(NoBackendCanServe)] == [
        (400, "objects_apart", 0)
    ]
