"""The spill-before-the-429 benchmark's metrics, computed on made-up runs whose answers are known."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
bench = pytest.importorskip("bench_headroom")

START = 1000.0
BEGIN = START + bench.WARMUP
END = BEGIN + bench.MEASURED
PER_SECOND = bench.PTU_TPM / 60


def samples(tokens_per_second: float, level: Any = lambda t: 95.0) -> list[list[Any]]:
    """The PTU's samples every 0.5 s from the start of the load: tokens charged so far and its level."""
    points = []
    t = START
    while t <= END + 1:
        points.append([t, tokens_per_second * (t - START), {bench.DEPLOYMENT: level(t)}])
        t += 0.5
    return points


def stats(ptu_samples: list[list[Any]], ptu_answers: list[tuple[float, int]]) -> dict[str, Any]:
    return {bench.PTU: {"answers": ptu_answers, "samples": ptu_samples}}


def outcome(arrived: float, backend: str | None, took: float = bench.LATENCY) -> Any:
    return bench.Outcome(arrived, arrived + took, backend)


def test_a_ptu_admitting_its_capacity_is_fully_used_and_only_the_windows_429s_count() -> None:
    answers = [(START + 1.0, 429), (BEGIN + 0.1, 429), (BEGIN + 2.0, 200), (END - 0.01, 429), (END + 0.5, 429)]
    outcomes = [
        outcome(START + 0.5, bench.PTU),  # before the window: answered, not measured
        outcome(BEGIN + 1.0, bench.PTU, took=bench.LATENCY + 0.002),
        outcome(BEGIN + 2.0, "paygo-a", took=2 * bench.LATENCY + 0.001),  # a wasted round trip first
        outcome(BEGIN + 3.0, "paygo-b", took=bench.LATENCY + 0.003),
        outcome(BEGIN + 4.0, None),
    ]

    result = bench.analyse(outcomes, stats(samples(PER_SECOND), answers), START)

    assert result["ptu_429s"] == 2, "429s before the window and after it are not counted"
    assert result["ptu_429s_whole_run"] == 4
    assert result["ptu_utilisation"] == pytest.approx(1.0)
    assert result["ptu_processed"] == pytest.approx(1.0), "the level did not move: admitted is what it drained"
    assert result["answered_share"] == pytest.approx(4 / 5)
    assert result["window_requests"] == 4
    assert result["served_by"] == {bench.PTU: 1, "paygo-a": 1, "paygo-b": 1, "failed": 1}
    assert result["spilled_added_ms"]["p50"] == pytest.approx(3.0), "latency less one round trip, spilled only"
    assert result["spilled_added_ms"]["p99"] == pytest.approx(31.0)
    assert result["ptu_added_ms"]["p50"] == pytest.approx(2.0)


def test_a_ptu_left_to_drain_scores_what_it_admitted_and_its_falling_level() -> None:
    def falling(t: float) -> float:
        return 100.0 - 100 * (t - START) / 60 * 0.5  # drains at half its rate more than it is filled

    result = bench.analyse([outcome(BEGIN, "paygo-a")], stats(samples(PER_SECOND / 2, falling), []), START)

    assert result["ptu_utilisation"] == pytest.approx(0.5)
    assert result["ptu_processed"] == pytest.approx(1.0), "a backlog to drain: never idle"
    level = result["ptu_level_percent"]
    assert level["start"] > level["end"]
    assert level["min"] <= level["mean"] <= level["max"]
    assert result["ptu_added_ms"] == {}, "no request was answered by the PTU"


def test_summary_pairs_each_rounds_429s_with_reactives() -> None:
    def run(number: int, system: str, ptu_429s: int) -> dict[str, Any]:
        return {
            "round": number,
            "system": system,
            "driver": "asyncio",
            "answered_share": 1.0,
            "ptu_429s": ptu_429s,
            "ptu_utilisation": 1.0,
            "ptu_processed": 1.0,
            "ptu_passed_over": 0,
            "ptu_level_percent": {"mean": 95.0, "min": 94.0},
            "spilled_added_ms": {"p50": 1.0, "p99": 2.0},
            "ptu_added_ms": {},
        }

    runs = [run(0, "reactive", 10), run(0, "headroom", 1), run(1, "headroom", 0), run(1, "reactive", 20)]

    rows = {row["system"]: row for row in bench.summary(runs)}

    assert rows["headroom"]["fewer_ptu_429s_than_reactive"] == {"median": 0.95, "min": 0.9, "max": 1.0}
    assert rows["reactive"]["fewer_ptu_429s_than_reactive"] is None
    assert rows["reactive"]["ptu_429s"] == {"median": 15, "min": 10, "max": 20}
    assert rows["headroom"]["ptu_added_ms_p50"] is None, "no run had a PTU-served request"


def test_traffic_is_seeded_varied_and_offers_the_load_in_tokens() -> None:
    asks = bench.traffic(seed=3)

    assert asks == bench.traffic(seed=3), "same seed, same requests"
    assert [ask.at for ask in asks] == sorted(ask.at for ask in asks)
    assert {ask.max_tokens for ask in asks} <= {limit for limit, _ in bench.OUTPUT_LIMITS}
    prompts = sorted(len(ask.messages[-1]["content"]) for ask in asks)
    assert prompts[-1] > 10 * prompts[0], "prompts of very different sizes"
    offered = sum(ask.cost for ask in asks) / (bench.WARMUP + bench.MEASURED)
    assert offered == pytest.approx(bench.LOAD * PER_SECOND, rel=0.25), "the load, in tokens a second"
