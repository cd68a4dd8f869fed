"""The spill-over simulation's metrics, computed on a made-up timeline whose answers are known."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
bench_spillover = pytest.importorskip("bench_spillover")

SCENARIO = bench_spillover.Scenario("test", [("ptu", 1, 2), ("paygo", 2, 10)], window=1.0, rate=4, duration=3)


def outcome(arrived: float, ok: bool = True) -> object:
    return bench_spillover.Outcome(arrived, arrived + 0.01, ok)


def test_a_perfect_balancer_scores_full_utilisation_and_an_immediate_return() -> None:
    arrivals = [i * 0.25 for i in range(12)]  # 4 per second for 3 windows of 1 s
    ptu = [(t, 200) for t in arrivals if t % 1 < 0.5]  # the first 2 of each window
    paygo = [(t, 200) for t in arrivals if t % 1 >= 0.5]
    stats = {"ptu": {"served": len(ptu), "answers": ptu}, "paygo": {"served": len(paygo), "answers": paygo}}
    result = bench_spillover._analyse(SCENARIO, [outcome(t) for t in arrivals], stats)
    assert result["success_share"] == 1.0
    assert result["ptu_utilisation"] == 1.0
    assert result["requests_elsewhere_after_reset"] == {"median": 0, "max": 0}
    assert result["upstream_attempts_per_success"] == 1.0


def test_a_late_return_and_wasted_attempts_are_counted() -> None:
    arrivals = [i * 0.25 for i in range(12)]
    # The PTU serves its 2 in the first window only; after each reset two requests go elsewhere first.
    ptu = [(0.0, 200), (0.25, 200), (0.5, 429), (1.5, 200), (2.5, 200)]
    paygo = [(t, 200) for t in arrivals if t not in (0.0, 0.25, 1.5, 2.5)]
    stats = {
        "ptu": {"served": 4, "answers": ptu},
        "paygo": {"served": len(paygo), "answers": paygo},
    }
    outcomes = [outcome(t) for t in arrivals[:-1]] + [outcome(arrivals[-1], ok=False)]
    result = bench_spillover._analyse(SCENARIO, outcomes, stats)
    assert result["success_share"] == pytest.approx(11 / 12)
    assert result["ptu_utilisation"] == pytest.approx(4 / 6)
    assert result["requests_elsewhere_after_reset"] == {"median": 2, "max": 2}
    assert result["ptu_back_after_reset_ms"]["median"] == pytest.approx(500)
    assert result["upstream_attempts_per_success"] == pytest.approx((len(ptu) + len(paygo)) / 11)


def test_a_balancer_that_never_returns_to_the_ptu_scores_every_miss() -> None:
    arrivals = [i * 0.25 for i in range(12)]
    ptu = [(0.0, 200), (0.25, 200)]
    paygo = [(t, 200) for t in arrivals[2:]]
    stats = {"ptu": {"served": 2, "answers": ptu}, "paygo": {"served": len(paygo), "answers": paygo}}
    result = bench_spillover._analyse(SCENARIO, [outcome(t) for t in arrivals], stats)
    assert result["requests_elsewhere_after_reset"] == {"median": 4, "max": 4}
    assert result["ptu_utilisation"] == pytest.approx(2 / 6)


def test_arrivals_are_a_seeded_poisson_process_at_the_scenario_rate() -> None:
    times = bench_spillover.arrival_times(bench_spillover.TWO_TIERS)
    assert times == bench_spillover.arrival_times(bench_spillover.TWO_TIERS), "same seed, same arrivals"
    assert times == sorted(times)
    expected = bench_spillover.TWO_TIERS.rate * bench_spillover.TWO_TIERS.duration
    assert abs(len(times) - expected) < 4 * expected**0.5
