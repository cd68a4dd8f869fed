"""``python -m openai_lb demo``: PTU first, spill-over, and return, on the embedded fake servers."""

from __future__ import annotations

import subprocess
import sys

import pytest

from openai_lb.__main__ import main


def test_demo_shows_ptu_first_spill_over_and_return(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--requests", "40", "--interval", "0.02", "--budget", "2", "--window", "0.4"])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = [line for line in out.splitlines() if line.strip()[:1].isdigit() and "s  " in line]
    assert lines[0].split()[2] == "ptu-eastus", out
    assert lines[0].endswith("PTU first"), out
    assert "PTU answered 429: spilled over at once" in out, out
    assert "window reset: back on the PTU" in out, out
    assert "40 of 40 requests answered" in out


def test_demo_rejects_nonsense_settings(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--budget", "0"]) == 2
    assert "--budget" in capsys.readouterr().err


def test_module_runs_as_a_program() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "openai_lb", "demo", "--requests", "3", "--interval", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "3 of 3 requests answered" in done.stdout
