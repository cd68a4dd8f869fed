"""What stateful affinity costs: the isolated transport benchmark with ``Policy(affinity=False)`` and
``Policy(affinity=True)`` side by side, on stateless calls and on calls about a stored response.

    python benchmarks/run.py --only affinity

Each case is one request the SDK builds, sent through the balancing transport (3 backends, PTU +
spares) over an inner transport answering from memory: no network. The response the requests name
is held, as far as the store knows, by a spare: pinned, such a request goes there, past the
preferred backend. A create's answer names a new response each time, whose holder is learned.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
from _measure import COMPLETION, InMemory, balancing, paired, sdk_request, spread, timed

import openai_lb
from openai_lb import InMemoryHealthStore, Policy
from openai_lb._affinity import created_id
from openai_lb._rewrite import RequestTemplate

OWNER = 2
"""The backend holding ``OWNED``: a spare, so a pinned request goes where it would not otherwise."""
OWNED = "resp_owned"
JSON = (("content-type", "application/json"),)
BIG = 200_000
"""Bytes of the large input and of the large answer."""
TARGET_US = 1.0
"""The most affinity may add to a stateless call."""
WORDS = "lorem ipsum dolor sit amet " * 74
"""About 2 KB of text: a message of the large input, a part of the large answer."""


@dataclass(frozen=True)
class Case:
    request: httpx.Request
    inner: Callable[[], httpx.BaseTransport]
    pinned: bool = False
    """It names ``OWNED``: with affinity it goes to its owner."""
    creates: bool = False
    """Its answer names a new object: with affinity the store learns who holds it."""


def _response(text: str, pieces: int = 1) -> dict[str, Any]:
    """A Responses API answer (without its id) whose output is ``pieces`` messages of ``text``."""
    message = {"type": "output_text", "text": text, "annotations": []}
    return {
        "object": "response",
        "created_at": 0,
        "status": "completed",
        "model": "gpt-4o",
        "output": [
            {"type": "message", "id": f"msg_{i}", "status": "completed", "role": "assistant", "content": [message]}
            for i in range(pieces)
        ],
        "usage": {"input_tokens": 1, "output_tokens": 1, "total_tokens": 2},
    }


class _Creating(httpx.BaseTransport):
    """Answers each request with a new response: the answer, pretty-printed as the API sends it, opens
    with a numbered id."""

    def __init__(self, answer: dict[str, Any]) -> None:
        self._head, self._tail = json.dumps({"id": "\0", **answer}, indent=2).encode().split(b"\\u0000")
        self._count = 0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self._count += 1
        content = b"%bresp_%d%b" % (self._head, self._count, self._tail)
        return httpx.Response(200, headers=JSON, content=content, request=request)


def cases() -> dict[str, Case]:
    # A long conversation sent whole: 100 messages of about 2 KB, naming the response it follows.
    history: Any = [{"role": ("user", "assistant")[i % 2], "content": WORDS} for i in range(100)]
    completion = json.dumps(COMPLETION).encode()
    return {
        "chat completion, /openai/deployments/": Case(sdk_request(), lambda: InMemory(completion, JSON)),
        "chat completion, /openai/v1/": Case(sdk_request(v1=True), lambda: InMemory(completion, JSON)),
        "responses.create": Case(
            sdk_request(lambda c: c.responses.create(model="gpt-4o", input="hi"), v1=True),
            lambda: _Creating(_response("hello")),
            creates=True,
        ),
        "responses.create, previous_response_id (pinned)": Case(
            sdk_request(
                lambda c: c.responses.create(model="gpt-4o", input="more", previous_response_id=OWNED), v1=True
            ),
            lambda: _Creating(_response("hello")),
            pinned=True,
            creates=True,
        ),
        "GET /responses/{id} (pinned)": Case(
            sdk_request(lambda c: c.responses.retrieve(OWNED), v1=True),
            lambda: InMemory(json.dumps({"id": OWNED, **_response("hello")}, indent=2).encode(), JSON),
            pinned=True,
        ),
        "responses.create, 200 KB input, previous_response_id (pinned)": Case(
            sdk_request(
                lambda c: c.responses.create(model="gpt-4o", input=history, previous_response_id=OWNED), v1=True
            ),
            lambda: _Creating(_response("hello")),
            pinned=True,
            creates=True,
        ),
        "responses.create, 200 KB answer": Case(
            sdk_request(lambda c: c.responses.create(model="gpt-4o", input="hi"), v1=True),
            lambda: _Creating(_response(WORDS, pieces=BIG // len(WORDS))),
            creates=True,
        ),
    }


def _subject(case: Case, affinity: bool) -> openai_lb.HTTPXTransport:
    store = InMemoryHealthStore()
    transport = balancing(3, tiered=True, store=store, policy=Policy(affinity=affinity), inner=case.inner())
    balancer = transport.balancer
    policy = balancer.policy
    store.remember((OWNED,), balancer.backends[OWNER].key, balancer.clock() + policy.affinity_ttl, 1000)
    return transport


def _check(name: str, case: Case, transport: openai_lb.HTTPXTransport, affinity: bool) -> None:
    """The request goes where it should and teaches what it should: else the numbers measure something else."""
    balancer = transport.balancer
    response = transport.handle_request(case.request)
    content = response.read()
    expected = balancer.backends[OWNER if affinity and case.pinned else 0]
    assert response.status_code == 200, f"{name}: answered {response.status_code}"
    went = response.headers["x-openai-lb-backend"]
    assert went == expected.name, f"{name}, affinity={affinity}: went to {went}, not {expected.name}"
    if case.creates:
        created = json.loads(content)["id"]
        holder = balancer.store.owner(created, balancer.clock())
        wanted = expected.key if affinity else None
        assert holder == wanted, f"{name}, affinity={affinity}: the store says {created} is on {holder}, not {wanted}"


def affinity(rounds: int, seconds: float = 0.01) -> dict[str, Any]:
    """Per case, µs per request with affinity off and on, measured one right after the other in each round;
    each measurement makes as many calls as take about ``seconds``."""
    chosen = cases()
    pairs: dict[str, dict[str, Callable[[], object]]] = {}
    for name, case in chosen.items():
        pairs[name] = {}
        for switch in (False, True):
            transport = _subject(case, switch)
            _check(name, case, transport, switch)
            pairs[name][_SWITCH[switch]] = partial(transport.handle_request, case.request)
    calls, samples = timed(rounds, pairs, seconds)
    return {
        "rounds": rounds,
        "target_us": TARGET_US,
        "cases": {
            name: {"calls_per_round": calls[name]["off"], "pinned": case.pinned, "creates": case.creates}
            | paired(samples[name], 1e6)
            for name, case in chosen.items()
        },
        "template_ns": template_alone(rounds, [chosen[name].request for name in list(chosen)[:2]], seconds),
        "created_id_ns": created_id_alone(rounds, seconds),
    }


def template_alone(rounds: int, requests: list[httpx.Request], seconds: float) -> dict[str, Any]:
    """ns per request of parsing a stateless request once (``RequestTemplate``), affinity off and on: the
    only step a stateless call takes differently. Without the transport around it, far less noisy."""
    pairs: dict[str, dict[str, Callable[[], object]]] = {}
    for request in requests:
        headers = [(name, name.lower(), value) for name, value in request.headers.raw]
        pairs[request.url.path] = {
            _SWITCH[switch]: partial(
                RequestTemplate, request.url.raw_path, headers, request.read(), method=request.method, affinity=switch
            )
            for switch in (False, True)
        }
    _, samples = timed(rounds, pairs, seconds)
    return {path: paired(pair, 1e9) for path, pair in samples.items()}


def created_id_alone(rounds: int, seconds: float) -> dict[str, dict[str, float]]:
    """ns to learn the id a create's answer names: a small answer, a 200 KB one (its leading id read without
    parsing it), and, for scale, parsing that 200 KB answer whole."""
    small = json.dumps({"id": "resp_1", **_response("hello")}, indent=2).encode()
    big = json.dumps({"id": "resp_1", **_response(WORDS, pieces=BIG // len(WORDS))}, indent=2).encode()
    assert created_id(("id",), big) == "resp_1", "the 200 KB answer's id is not learned"
    steps: dict[str, Callable[[], object]] = {
        f"created_id, {len(small):,} B answer": partial(created_id, ("id",), small),
        f"created_id, {len(big):,} B answer": partial(created_id, ("id",), big),
        f"json.loads of the {len(big):,} B answer": partial(json.loads, big),
    }
    _, samples = timed(rounds, {"": steps}, seconds)
    return {name: spread([v * 1e9 for v in values]) for name, values in samples[""].items()}


_SWITCH = {False: "off", True: "on"}
