"""The ``openai-lb`` entry point: runs as a program, stays out of the library's imports, names its missing extra."""

from __future__ import annotations

import subprocess
import sys

import pytest

from openai_lb.__main__ import MISSING_EXTRA, main


def test_import_openai_lb_loads_no_cli_library() -> None:
    # httpx imports its own command line (click, rich) whenever click is installed, so the SDK may
    # bring those two along; openai_lb must add none of them.
    probe = (
        "import sys\n"
        "def cli(): return {name for name in sys.modules if name.split('.')[0] in ('typer', 'click', 'rich')}\n"
        "import importlib.util\n"
        "for name in ('openai', 'httpx', 'httpx2'):\n"
        "    if importlib.util.find_spec(name): __import__(name)\n"
        "before = cli()\n"
        "import openai_lb, openai_lb.testing, openai_lb._check, openai_lb._demo\n"
        "print(sorted(cli() - before), sorted(name for name in cli() if name.startswith('typer')))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=False)

    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[] []", (
        "the library, the fake server, the check and the demo logic need no CLI library"
    )


@pytest.mark.parametrize("library", ["typer", "rich"])
def test_missing_extra_says_what_to_install_and_exits_2(
    library: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # None in sys.modules makes "import typer" fail as if it were not installed.
    monkeypatch.setitem(sys.modules, library, None)
    monkeypatch.delitem(sys.modules, "openai_lb._cli", raising=False)

    assert main(["check", "backends.toml"]) == 2

    captured = capsys.readouterr()
    assert captured.err == MISSING_EXTRA + "\n", "one line"
    assert 'pip install "openai-lb[cli]"' in captured.err
    assert captured.out == ""


def test_other_import_errors_are_not_taken_for_a_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openai_lb._check", None)
    monkeypatch.delitem(sys.modules, "openai_lb._cli", raising=False)

    with pytest.raises(ImportError):
        main(["demo"])


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


def test_unknown_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["balance"]) == 2
    assert "balance" in capsys.readouterr().err
