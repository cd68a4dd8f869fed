"""What headroom costs a chat completion: the isolated transport benchmark with ``Policy(headroom=False)`` and
``Policy(headroom=True)`` side by side, over answers without rate-limit headers and with Azure's.

    python benchmarks/run.py --only headroom_cost
    python benchmarks/bench_headroom_cost.py [--quick]   # on its own: a table (no extra packages)

The request is the one the SDK builds for a chat completion, sent through the balancing transport (3
backends, PTU + spares) over an inner transport answering from memory: no network. Its answer carries
either only its framing headers (a gateway that drops the rest) or the headers an Azure OpenAI answer
carries, rate limits included, which with headroom on are read, recorded and reserved against on every
request. The inner transport alone is measured in the same round, so "added" is the balancer's own cost.
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from typing import Any

from _measure import COMPLETION, InMemory, balancing, paired, sdk_request, spread, timed

import openai_lb
from openai_lb import InMemoryHealthStore, Policy

TARGET_US = 2.0
"""The most headroom may add to a chat completion whose answer carries Azure's headers."""
JSON = (("content-type", "application/json"),)
AZURE = (
    *JSON,
    ("apim-request-id", "0c3a9d4e-5b7f-4e62-9a1d-8f2b6c4e7a15"),
    ("strict-transport-security", "max-age=31536000; includeSubDomains; preload"),
    ("x-content-type-options", "nosniff"),
    ("x-ms-region", "Sweden Central"),
    ("x-ratelimit-limit-requests", "3000"),
    ("x-ratelimit-limit-tokens", "2000000"),
    ("x-ratelimit-remaining-requests", "2999"),
    ("x-ratelimit-remaining-tokens", "1998976"),
    ("x-ratelimit-reset-requests", "1"),
    ("x-ratelimit-reset-tokens", "1"),
    ("x-ms-rai-invoked", "true"),
    ("x-request-id", "7e5f2b1c-93a4-4d0e-b6c8-1a2f3e4d5c6b"),
    ("x-ms-client-request-id", "Not-Set"),
    ("x-ms-deployment-name", "gpt-4o"),
    ("azureml-model-session", "d169-20261201051209"),
    ("cmp-upstream-response-duration", "412"),
    ("x-envoy-upstream-service-time", "425"),
    ("date", "Tue, 01 Dec 2026 10:00:00 GMT"),
)
"""The headers of an Azure OpenAI chat completion: its rate limits (as Azure's quota page lists them, reset
times in seconds) among the usual others."""
ANSWERS = {"no rate-limit headers": JSON, "Azure's headers": AZURE}
_SWITCH = {False: "off", True: "on"}


def _subject(headers: tuple[tuple[str, str], ...], headroom: bool) -> openai_lb.HTTPXTransport:
    inner = InMemory(json.dumps(COMPLETION).encode(), headers)
    return balancing(3, tiered=True, store=InMemoryHealthStore(), policy=Policy(headroom=headroom), inner=inner)


def _check(name: str, transport: openai_lb.HTTPXTransport, request: Any, headroom: bool) -> None:
    """The request goes to the preferred backend, and with headroom on and Azure's headers its answer is
    recorded and its reservation given back: else the numbers measure something else."""
    for _ in range(3):
        response = transport.handle_request(request)
        assert response.status_code == 200, f"{name}: answered {response.status_code}"
        went = response.headers["x-openai-lb-backend"]
        assert went == transport.backends[0].name, f"{name}, headroom={headroom}: went to {went}"
    book = transport.balancer.book
    assert (book is not None) == headroom, f"{name}: a book with headroom={headroom}"
    if book is not None and name == "Azure's headers":
        slot = book.slot(transport.backends[0].key, "gpt-4o")
        assert slot is not None and slot.reading is not None, f"{name}: no reading recorded"
        assert not slot.pending, f"{name}: a reservation was left held"


def headroom_cost(rounds: int = 60, seconds: float = 0.02) -> dict[str, Any]:
    """Per kind of answer, µs per request of the inner transport alone and of the balancing transport with
    headroom off and on, one right after the other in each round; each measurement makes as many calls as
    take about ``seconds``."""
    request = sdk_request()
    groups = {}
    for name, headers in ANSWERS.items():
        groups[name] = {"inner": partial(InMemory(json.dumps(COMPLETION).encode(), headers).handle_request, request)}
        for switch in (False, True):
            transport = _subject(headers, switch)
            _check(name, transport, request, switch)
            groups[name][_SWITCH[switch]] = partial(transport.handle_request, request)
    calls, samples = timed(rounds, groups, seconds)
    cases = {}
    for name, steps in samples.items():
        inner = steps["inner"]
        cases[name] = {
            "calls_per_round": calls[name]["on"],
            "inner_us": spread([v * 1e6 for v in inner]),
            "added_us": {
                switch: spread([(v - i) * 1e6 for v, i in zip(steps[switch], inner, strict=True)])
                for switch in ("off", "on")
            },
        } | paired(steps, 1e6)
    return {"rounds": rounds, "target_us": TARGET_US, "cases": cases}


def table(results: dict[str, Any]) -> str:
    """The results as a Markdown table, one row per kind of answer."""

    def cell(stat: dict[str, float]) -> str:
        return f"{stat['median']:.2f} ({stat['min']:.2f}–{stat['max']:.2f})"

    header = ["answer", "inner µs", "headroom off: added µs", "on: added µs", "on − off µs (paired by round)"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, case in results["cases"].items():
        added = case["added_us"]
        cells = [name, cell(case["inner_us"]), cell(added["off"]), cell(added["on"]), cell(case["on_minus_off"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="few rounds")
    parser.add_argument("--json", action="store_true", help="print the results as JSON instead of a table")
    args = parser.parse_args()
    results = headroom_cost(10 if args.quick else 60)
    print(json.dumps(results, indent=1) if args.json else table(results))


if __name__ == "__main__":
    main()
