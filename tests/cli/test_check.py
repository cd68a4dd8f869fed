"""``openai-lb check``: every backend probed without spending tokens, against fake Azure OpenAI servers."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import sdk_http_module
from rich.console import Console

from openai_lb import Backend
from openai_lb.__main__ import main
from openai_lb._check import DEFAULT_API_VERSION, check_backends, deployments_to_check
from openai_lb._cli import run
from openai_lb.testing import FakeAzureOpenAI, Reply, closed_port_url

GOOD_KEY = "good-key-0123456789abcdef"
ENV_KEY = "env-key-fedcba9876543210"
SDK_HTTP = sdk_http_module()


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AZURE_OPENAI_API_KEY", "OPENAI_API_VERSION", "GOOD_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("GOOD_KEY", GOOD_KEY)


@pytest.fixture
def good() -> Iterator[FakeAzureOpenAI]:
    with FakeAzureOpenAI(name="good", deployments={"gpt-4o-global", "embed"}, api_keys={GOOD_KEY}) as server:
        yield server


@pytest.fixture
def other() -> Iterator[FakeAzureOpenAI]:
    """A resource behind a gateway path that only accepts a key of its own."""
    with FakeAzureOpenAI(name="other", deployments={"gpt-4o"}, api_keys={ENV_KEY}, path_prefix="/team-a") as server:
        yield server


Config = Callable[..., Path]


@pytest.fixture
def config(tmp_path: Path) -> Config:
    """Write a backends.toml from (name, url, extra TOML lines) entries."""

    def write(*entries: tuple[str, str, str]) -> Path:
        path = tmp_path / "backends.toml"
        text = "".join(f'[[backends]]\nname = "{name}"\nurl = "{url}"\n{extra}\n\n' for name, url, extra in entries)
        path.write_text(text, encoding="utf-8")
        return path

    return write


GOOD = 'api_key_env = "GOOD_KEY"\ndeployments = { "gpt-4o" = "gpt-4o-global" }'


def check(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = main(["check", *map(str, args)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def line_of(out: str, start: str) -> str:
    found = [line for line in out.splitlines() if line.startswith(start)]
    assert len(found) == 1, f"expected one line starting {start!r} in:\n{out}"
    return found[0]


# -- per-backend verdicts ---------------------------------------------------------------------------


def test_good_backend_passes_without_spending_tokens(
    good: FakeAzureOpenAI, config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = check(capsys, config(("good", good.url, GOOD)), "--deployment", "embed")

    assert code == 0, out
    assert re.fullmatch(
        rf"OK    good \({re.escape(good.url)}\): reachable, \d+ ms, credential accepted \(backend key\)",
        line_of(out, "OK    good ("),
    )
    assert line_of(out, "OK    good: deployment gpt-4o-global") == (
        "OK    good: deployment gpt-4o-global (for gpt-4o) exists (HTTP 400)"
    )
    assert line_of(out, "OK    good: deployment embed") == "OK    good: deployment embed exists (HTTP 400)"
    assert out.splitlines()[-1] == f"1 of 1 backends passed (api-version {DEFAULT_API_VERSION})."
    probes = [(r.method, r.path, r.query, r.headers.get("api-key"), r.body) for r in good.requests]
    assert probes == [
        ("GET", "/openai/models", {"api-version": DEFAULT_API_VERSION}, GOOD_KEY, b""),
        (
            "POST",
            "/openai/deployments/gpt-4o-global/chat/completions",
            {"api-version": DEFAULT_API_VERSION},
            GOOD_KEY,
            b"{}",
        ),
        ("POST", "/openai/deployments/embed/chat/completions", {"api-version": DEFAULT_API_VERSION}, GOOD_KEY, b"{}"),
    ]
    assert [status for _, status in good.answers] == [200, 400, 400], "no completion was generated"


def test_wrong_key_is_rejected_and_its_deployments_are_skipped(
    good: FakeAzureOpenAI, other: FakeAzureOpenAI, config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(("good", good.url, GOOD), ("wrong-key", other.url, 'api_key_env = "GOOD_KEY"'))

    code, out, _ = check(capsys, path, "-d", "gpt-4o")

    assert code == 1, out
    assert re.fullmatch(
        rf"FAIL  wrong-key \({re.escape(other.url)}\): reachable, \d+ ms, "
        r"credential rejected \(backend key, HTTP 401\)",
        line_of(out, "FAIL  wrong-key ("),
    )
    assert line_of(out, "SKIP  wrong-key:") == "SKIP  wrong-key: deployment gpt-4o not checked (credential rejected)"
    assert line_of(out, "OK    good (").startswith("OK    good"), "one bad backend does not hide the good one"
    assert out.splitlines()[-1].startswith("1 of 2 backends passed")
    assert [r.path for r in other.requests] == ["/team-a/openai/models"], "probes keep the backend's path prefix"


def test_closed_port_is_unreachable_with_the_error_type(config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    url = closed_port_url()

    code, out, _ = check(capsys, config(("down", url, GOOD)))

    assert code == 1, out
    assert line_of(out, "FAIL  down (").startswith(f"FAIL  down ({url}): unreachable (ConnectError"), out
    assert line_of(out, "SKIP  down:") == (
        "SKIP  down: deployment gpt-4o-global (for gpt-4o) not checked (backend unreachable)"
    )


def test_missing_deployment_fails_the_check(
    good: FakeAzureOpenAI, config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = check(capsys, config(("good", good.url, GOOD)), "--deployment", "gpt-35")

    assert code == 1, out
    assert line_of(out, "OK    good (")
    assert line_of(out, "FAIL  good:") == "FAIL  good: deployment gpt-35 missing (DeploymentNotFound)"
    assert out.splitlines()[-1].startswith("0 of 1 backends passed")


def test_backend_without_any_credential_is_broken_and_says_how_to_fix_it(
    good: FakeAzureOpenAI, config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = check(capsys, config(("keyless", good.url, "")))

    assert code == 1, out
    line = line_of(out, "FAIL  keyless (")
    assert "no credential" in line
    assert "api_key_env" in line
    assert "AZURE_OPENAI_API_KEY" in line
    assert good.requests == [], "nothing is sent without a credential"


def test_backend_without_a_key_uses_the_environments(
    other: FakeAzureOpenAI, config: Config, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", ENV_KEY)

    code, out, _ = check(capsys, config(("other", other.url, "")), "-d", "gpt-4o")

    assert code == 0, out
    assert "credential accepted ($AZURE_OPENAI_API_KEY)" in line_of(out, "OK    other (")
    assert {r.headers.get("api-key") for r in other.requests} == {ENV_KEY}


@pytest.mark.parametrize(
    ("option", "environment", "expected"),
    [
        (["--api-version", "2025-01-01-preview"], "2024-06-01", "2025-01-01-preview"),
        ([], "2024-06-01", "2024-06-01"),
        ([], None, DEFAULT_API_VERSION),
    ],
)
def test_api_version_comes_from_the_option_then_the_environment_then_the_default(
    option: list[str], environment: str | None, expected: str, good: FakeAzureOpenAI, config: Config
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        if environment:
            patch.setenv("OPENAI_API_VERSION", environment)
        code = main(["check", str(config(("good", good.url, GOOD))), *option])

    assert code == 0
    assert {r.query["api-version"] for r in good.requests} == {expected}


# -- configuration errors ---------------------------------------------------------------------------


def test_config_errors_exit_2_with_the_message_naming_file_entry_and_field(
    config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(("bad", "https://a.openai.azure.com", "colour = 'blue'"))

    code, out, err = check(capsys, path)

    assert code == 2
    assert out == ""
    assert f"{path}: backends[0]: unknown field(s) colour" in err


def test_unset_key_variable_and_missing_file_are_config_errors(
    config: Config, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = config(("ptu", "https://a.openai.azure.com", 'api_key_env = "NOT_SET_ANYWHERE"'))

    assert check(capsys, path)[0] == 2
    assert check(capsys, tmp_path / "absent.toml")[:2] == (2, "")


def test_bad_timeout_is_a_usage_error(config: Config, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = check(capsys, config(("ptu", "https://a.openai.azure.com", "")), "--timeout", "0")

    assert code == 2
    assert "--timeout" in err


# -- secrets and rendering --------------------------------------------------------------------------


def test_credentials_never_appear_in_any_output(
    good: FakeAzureOpenAI,
    other: FakeAzureOpenAI,
    config: Config,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", ENV_KEY)
    # A careless server that repeats the key it got must not make us print it.
    good.script(Reply(500, json={"error": {"code": "500", "message": f"key {GOOD_KEY} broke us"}}))
    path = config(("good", good.url, GOOD), ("other", other.url, ""), ("down", closed_port_url(), GOOD))

    code, out, err = check(capsys, path, "-d", "gpt-35")
    screen = io.StringIO()
    rich_code = run(["check", str(path)], console=Console(file=screen, force_terminal=True, width=200))

    assert (code, rich_code) == (1, 1), out
    assert "500: key [credential] broke us" in out, "server text is shown with the credential cut out"
    for secret in (GOOD_KEY, ENV_KEY):
        for text in (out, err, screen.getvalue()):
            assert secret not in text
            assert secret[:8] not in text, "not even part of it"


def test_a_terminal_gets_a_table_with_the_same_facts(
    good: FakeAzureOpenAI, other: FakeAzureOpenAI, config: Config
) -> None:
    # Brackets would be rich markup if names were not passed as plain text.
    path = config(("good[eu]", good.url, GOOD), ("wrong-key", other.url, 'api_key_env = "GOOD_KEY"'))
    screen = io.StringIO()
    console = Console(file=screen, force_terminal=True, width=200, color_system=None)

    code = run(["check", str(path), "-d", "gpt-35"], console=console)

    out = screen.getvalue()
    assert code == 1
    assert "┃ backend" in out, "a table, not lines"
    for fact in (
        "good[eu]",
        "wrong-key",
        other.url,
        "accepted (backend key)",
        "rejected (backend key, HTTP 401)",
        "gpt-4o-global (for gpt-4o) exists",
        "gpt-35 missing (DeploymentNotFound)",
        "0 of 2 backends passed",
    ):
        assert fact in out, fact


def test_check_runs_as_a_program(good: FakeAzureOpenAI, config: Config) -> None:
    path = config(("good", good.url, GOOD))

    done = subprocess.run(
        [sys.executable, "-m", "openai_lb", "check", str(path), "-d", "gpt-4o", "-d", "nope"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "GOOD_KEY": GOOD_KEY},
    )

    assert done.returncode == 1, done.stderr
    assert "OK    good: deployment gpt-4o-global (for gpt-4o) exists (HTTP 400)" in done.stdout.splitlines()
    assert "FAIL  good: deployment nope missing (DeploymentNotFound)" in done.stdout.splitlines()
    assert GOOD_KEY not in done.stdout + done.stderr


# -- the probes themselves, over a mock transport ---------------------------------------------------


def mock(answers: dict[str, Any]) -> Any:
    """A MockTransport answering by path: a status, (status, JSON body), or an exception to raise."""

    def handler(request: Any) -> Any:
        answer = answers[request.url.path]
        if isinstance(answer, BaseException):
            raise answer
        status, body = answer if isinstance(answer, tuple) else (answer, {})
        return SDK_HTTP.Response(status, json=body)

    return SDK_HTTP.MockTransport(handler)


MODELS = "/openai/models"
CHAT = "/openai/deployments/gpt-4o/chat/completions"


@pytest.mark.parametrize(
    ("answer", "reachable", "accepted", "problem"),
    [
        (200, True, True, None),
        (403, True, False, "credential rejected (HTTP 403"),
        ((503, {"error": {"code": "503", "message": "busy"}}), True, None, "HTTP 503, 503: busy"),
        (SDK_HTTP.ReadTimeout("slow"), False, None, "unreachable (ReadTimeout: slow)"),
    ],
)
def test_models_probe_verdicts(answer: Any, reachable: bool, accepted: bool | None, problem: str | None) -> None:
    backend = Backend("https://a.example.com", api_key="k", name="a")

    found = check_backends([backend], transport=mock({MODELS: answer, CHAT: 400}), deployments=["gpt-4o"])

    result = found.backends[0]
    assert (result.reachable, result.credential_accepted) == (reachable, accepted)
    assert (result.problem is None) if problem is None else (problem in (result.problem or ""))
    assert found.ok is (problem is None)


@pytest.mark.parametrize(
    ("answer", "verdict"),
    [
        (400, "exists"),
        (429, "exists"),
        ((404, {"error": {"code": "DeploymentNotFound", "message": "no"}}), "missing"),
        ((404, {"error": {"code": "404", "message": "Resource not found"}}), "unknown"),
        (500, "unknown"),
        (SDK_HTTP.ConnectError("gone"), "unknown"),
    ],
)
def test_deployment_probe_verdicts(answer: Any, verdict: str) -> None:
    backend = Backend("https://a.example.com", api_key="k")

    found = check_backends([backend], transport=mock({MODELS: 200, CHAT: answer}), deployments=["gpt-4o"])

    assert [d.verdict for d in found.backends[0].deployments] == [verdict]
    assert found.ok is (verdict == "exists")


def test_token_providers_sync_or_async_send_a_bearer_token() -> None:
    seen: list[str | None] = []

    def handler(request: Any) -> Any:
        seen.append(request.headers.get("authorization"))
        return SDK_HTTP.Response(200, json={})

    async def async_token() -> str:
        return "t2"

    backends = [
        Backend("https://a.example.com", azure_ad_token_provider=lambda: "t1"),
        Backend("https://b.example.com", azure_ad_token_provider=async_token),
    ]
    found = check_backends(backends, transport=SDK_HTTP.MockTransport(handler))

    assert found.ok
    assert [b.credential for b in found.backends] == ["token provider", "token provider"]
    assert sorted(seen) == ["Bearer t1", "Bearer t2"]


def test_a_failing_token_provider_is_that_backends_problem() -> None:
    def broken() -> str:
        raise RuntimeError("no login")

    found = check_backends(
        [Backend("https://a.example.com", azure_ad_token_provider=broken)], transport=mock({MODELS: 200})
    )

    assert not found.ok
    assert found.backends[0].problem == "the token provider failed (RuntimeError)"


def test_deployments_to_check_maps_requested_names_and_drops_repeats() -> None:
    backend = Backend("https://a.example.com", deployments={"gpt-4o": "gpt-4o-global", "mini": "gpt-4o-global"})

    assert deployments_to_check(backend, ["gpt-4o", "embed", "embed"]) == [
        ("gpt-4o-global", "gpt-4o"),
        ("embed", None),
    ]
