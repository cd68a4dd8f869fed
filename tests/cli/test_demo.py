"""``openai-lb demo``: PTU first, spill-over, and return, on the embedded fake servers; plain lines or a live table."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from openai_lb import BackendStatus
from openai_lb.__main__ import main
from openai_lb._cli import run
from openai_lb._demo import BACKENDS, DemoResult, DemoSettings, DemoStep, run_demo

FAST = ["--requests", "12", "--interval", "0.02", "--budget", "2", "--window", "0.3"]


def test_demo_shows_ptu_first_spill_over_and_return(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--requests", "40", "--interval", "0.02", "--budget", "2", "--window", "0.4"])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = [line for line in out.splitlines() if line.strip()[:1].isdigit() and "s  " in line]
    assert lines[0].split()[2] == "ptu-eastus", out
    assert lines[0].endswith("PTU first"), out
    assert "spilled over before a 429" in out, out
    assert "window reset: back on the PTU" in out, out
    assert "40 of 40 requests answered" in out
    assert "\x1b[" not in out, "output that is not a terminal gets no escape codes"


@pytest.mark.parametrize(
    ("option", "value"),
    [("--budget", "0"), ("--requests", "0"), ("--interval", "-1"), ("--window", "0"), ("--window", "nan")],
)
def test_demo_rejects_nonsense_settings(option: str, value: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", option, value]) == 2
    assert option in capsys.readouterr().err


def test_live_table_on_a_terminal_shows_progress_and_every_backend_with_its_state() -> None:
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=100, color_system=None)

    code = run(["demo", *FAST], console=console)

    out = screen.getvalue()
    assert code == 0, out
    assert "\x1b[" in out, "a terminal gets the live display's cursor moves"
    for name in BACKENDS:
        assert name in out
    assert "12/12 requests" in out, "the progress of the run"
    assert "full" in out, "the column of requests that passed a full PTU over"
    assert "available" in out
    assert "12 of 12 requests answered" in out, "the summary follows the table"


class RecordingView:
    def __init__(self) -> None:
        self.initial: list[tuple[BackendStatus, ...]] = []
        self.steps: list[DemoStep] = []
        self.results: list[DemoResult] = []

    def started(self, settings: DemoSettings, status: tuple[BackendStatus, ...]) -> None:
        self.initial.append(status)

    def stepped(self, step: DemoStep) -> None:
        self.steps.append(step)

    def finished(self, result: DemoResult) -> None:
        self.results.append(result)


def test_views_get_every_request_with_the_balancers_status() -> None:
    view = RecordingView()

    result = run_demo(DemoSettings(requests=6, interval=0.0, budget=2, window=5.0), view)

    assert [[status.state for status in initial] for initial in view.initial] == [["available"] * 3]
    assert [step.number for step in view.steps] == [1, 2, 3, 4, 5, 6]
    assert [status.name for status in view.steps[-1].status] == list(BACKENDS)
    assert view.steps[2].note == "PTU full by its headroom headers: spilled over before a 429"
    ptu_after_spill = view.steps[2].status[0]
    assert ptu_after_spill.passed_over == 1, "each step carries client.balancer.status() right after it"
    assert (ptu_after_spill.state, ptu_after_spill.rate_limited) == ("available", 0), "nothing cooled"
    assert view.results == [result]
    assert result.ok
    assert result.served == view.steps[-1].served
    assert sum(result.served.values()) == 6


@pytest.mark.parametrize(
    ("asked", "rejected", "said"),
    [(6, 1, "asked 6 times and answered 429 once"), (1, 0, "asked once and answered 429 0 times")],
)
def test_the_summary_counts_in_words(asked: int, rejected: int, said: str) -> None:
    result = DemoResult(requests=1, served={BACKENDS[0]: 1}, ptu_asked=asked, ptu_rejected=rejected)
    assert said in result.summary(), result.summary()
