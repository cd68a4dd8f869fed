"""The fleet benchmark's metrics, computed on made-up answers whose counts are known."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
bench_fleet = pytest.importorskip("bench_fleet")
bench_spillover = pytest.importorskip("bench_spillover")


def test_429s_are_counted_in_the_window_they_were_answered_in() -> None:
    # Windows of 1 s from the first answer at t=10: [10, 11), [11, 12), [12, 13).
    answers = [(10.0, 200), (10.5, 429), (10.9, 429), (11.0, 200), (11.2, 429), (12.99, 429)]
    assert bench_fleet.rejections_per_window(answers, 1.0, until=13.0) == [2, 1, 1]


def test_a_window_that_has_not_ended_by_the_end_of_the_load_is_left_out() -> None:
    answers = [(0.0, 200), (0.5, 429), (1.5, 429), (2.2, 429)]
    assert bench_fleet.rejections_per_window(answers, 1.0, until=2.5) == [1, 1], "the window [2, 3) is partial"


def test_windows_start_at_the_first_answer_even_when_answers_are_out_of_order() -> None:
    answers = [(5.4, 429), (5.0, 200), (6.1, 429)]
    assert bench_fleet.rejections_per_window(answers, 1.0, until=7.0) == [1, 1]


def test_a_backend_that_never_answered_has_no_windows() -> None:
    assert bench_fleet.rejections_per_window([], 1.0, until=10.0) == []


def test_successes_and_other_errors_are_not_429s() -> None:
    answers = [(0.0, 200), (0.1, 500), (0.2, 404), (0.3, 200)]
    assert bench_fleet.rejections_per_window(answers, 1.0, until=1.0) == [0]


@given(
    st.lists(st.tuples(st.floats(0, 100), st.sampled_from([200, 429])), min_size=1),
    st.floats(0.1, 10),
    st.floats(0, 120),
)
def test_no_429_is_counted_twice_or_outside_the_whole_windows(
    answers: list[tuple[float, int]], window: float, until: float
) -> None:
    counts = bench_fleet.rejections_per_window(answers, window, until)
    start = min(t for t, _ in answers)
    assert len(counts) * window <= until - start + 1e-6 or not counts, "a window ends after the load"
    assert sum(counts) <= sum(1 for _, status in answers if status == 429)


def test_the_percentile_is_the_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert bench_spillover._percentile(values, 0.5) == 50.0
    assert bench_spillover._percentile(values, 0.99) == 99.0
    assert bench_spillover._percentile([3.0], 0.99) == 3.0
    assert bench_spillover._percentile([2.0, 1.0], 0.5) == 1.0, "the values need not come sorted"


def run(workers: int, store: str, share: float, per_window: float | None) -> dict[str, object]:
    return {
        "workers": workers,
        "store": store,
        "success_share": share,
        "ptu_utilisation": 1.0,
        "ptu_429s_per_window": per_window,
        "latency_ms": {"p99": 10.0},
    }


def test_the_summary_gives_the_median_and_range_over_rounds_per_configuration() -> None:
    runs = [run(8, "redis", 1.0, 1.0), run(8, "redis", 0.9, 2.0), run(8, "redis", 0.8, 6.0), run(1, "memory", 1.0, 1)]
    summary = bench_fleet.summarise(runs)
    assert [(row["workers"], row["store"]) for row in summary] == [(1, "memory"), (8, "redis")]
    redis = summary[1]
    assert redis["rounds"] == 3
    assert redis["ptu_429s_per_window"] == {"median": 2.0, "min": 1.0, "max": 6.0}
    assert redis["success_share"] == {"median": 0.9, "min": 0.8, "max": 1.0}


def test_a_configuration_without_whole_windows_has_no_429_figure() -> None:
    summary = bench_fleet.summarise([run(4, "memory", 1.0, None), run(4, "memory", 1.0, 3.0)])
    assert "ptu_429s_per_window" not in summary[0], "a round without windows would skew the median"
