"""A fake Azure OpenAI server for tests and benchmarks, built on the standard library only.

`FakeAzureOpenAI` serves chat completions (plain and streamed), embeddings, the
Responses API, files, batches, vector stores and the models list on 127.0.0.1 in
shapes the real ``openai`` SDK parses. It checks API keys, deployments, an optional
path prefix and an optional request budget the way Azure does, records every request,
and plays scripted faults one request at a time (`HoldStream` holds an event stream after
its first events until the test releases it). Every answer's assistant text is
``"{name}:{deployment}"``, so a test can tell which server and deployment answered.

Like an Azure resource, each server keeps its own objects, on the Azure paths
(``/openai/...?api-version=``) and the v1 paths (``/openai/v1/...``):

- responses (``responses.create/retrieve/delete/input_items.list``): a
  ``previous_response_id`` must name a response this server holds, else 400
  ``previous_response_not_found``; ``metadata["turn"]`` counts a chain's turns; a
  streamed response starts with ``response.created`` carrying its id;
- files (``files.create/retrieve/content/delete``) keep their bytes;
- batches (``batches.create/retrieve/cancel``) need an ``input_file_id`` the server holds;
- vector stores (``vector_stores.create/retrieve/delete``).

Unknown ids answer 404 in the service's error shape. ``server.objects`` shows the ids a
server holds (``"resp_x" in server.objects``), and ``server.reset()`` forgets them::

    with FakeAzureOpenAI(name="east") as east, FakeAzureOpenAI(name="west") as west:
        first = azure_client(east).responses.create(model="gpt-4o", input="hi")
        assert first.id in east.objects and first.id not in west.objects
        with pytest.raises(openai.BadRequestError) as refused:  # the chain lives on east only
            azure_client(west).responses.create(model="gpt-4o", input="and?", previous_response_id=first.id)
        assert refused.value.code == "previous_response_not_found"

Example::

    import openai
    import pytest

    from openai_lb.testing import FakeAzureOpenAI, Reply, ResetConnection

    with FakeAzureOpenAI(name="ptu", deployments={"gpt-4o"}, api_keys={"k1"}) as server:
        client = openai.AzureOpenAI(
            azure_endpoint=server.url, api_key="k1", api_version="2024-10-21", max_retries=0
        )
        server.script(Reply(429, headers={"retry-after-ms": "1500"}), ResetConnection())
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.APIConnectionError):
            client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        answer = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content == "ptu:gpt-4o"
        assert [r.deployment for r in server.requests] == ["gpt-4o"] * 3

`FakeAzureGroup` serves several `FakeAzureOpenAI` instances on one port, each chosen by
its ``path_prefix`` and otherwise behaving as it would alone, for clients that can change
only the host of a URL::

    ptu = FakeAzureOpenAI(name="ptu", path_prefix="/ptu", budget=10, window=1.0)
    east = FakeAzureOpenAI(name="east", path_prefix="/east")
    with FakeAzureGroup([ptu, east]) as group:
        ...  # group.url is http://127.0.0.1:<port>; ptu.url is group.url + "/ptu"

Rate limits like Azure's, per deployment, for testing and benchmarking headroom-aware
routing: ``tokens_per_minute`` (and ``requests_per_minute``) make a standard deployment a
token bucket whose answers carry ``x-ratelimit-remaining-tokens`` and the like;
``provisioned`` makes it a PTU whose answers carry ``azure-openai-deployment-utilization``;
``context_limits`` answer a too-long prompt with the real 400 ``context_length_exceeded``;
``spillover`` (or the ``x-ms-spillover-deployment`` request header) is Azure's own spill
from a full PTU to a standard deployment; ``latency`` delays every answer like a network.
``server.throttled``, ``server.spilled``, ``server.tokens_used`` and
``server.utilization("ptu")`` tell a test what happened::

    ptu = FakeAzureOpenAI(name="ptu", tokens_per_minute=60_000, provisioned=True, latency=0.03)
    paygo = FakeAzureOpenAI(name="paygo", tokens_per_minute=600_000, requests_per_minute=3_600)

For connection-refused tests, `closed_port_url` gives the URL of a port nothing listens on;
`reset_state` forgets the process-wide cooldowns and headroom readings between tests.
"""

from openai_lb._core import reset_state
from openai_lb.testing._actions import (
    Action,
    CutStream,
    HoldStream,
    RecordedRequest,
    Reply,
    ResetConnection,
    Stall,
)
from openai_lb.testing._group import FakeAzureGroup
from openai_lb.testing._listener import closed_port_url
from openai_lb.testing._objects import ObjectIds
from openai_lb.testing._server import FakeAzureOpenAI

__all__ = [
    "Action",
    "CutStream",
    "FakeAzureGroup",
    "FakeAzureOpenAI",
    "HoldStream",
    "ObjectIds",
    "RecordedRequest",
    "Reply",
    "ResetConnection",
    "Stall",
    "closed_port_url",
    "reset_state",
]
