"""``openai-lb check``: every backend probed without spending tokens, against fake Azure OpenAI servers."""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from helpers import sdk_http_module
from rich.console import Console

from openai_lb import Backend, ConfigurationError
from openai_lb.__main__ import main
from openai_lb._check import DEFAULT_API_VERSION, check_backends, deployments_to_check
from openai_lb._cli import run
from openai_lb.testing import FakeAzureOpenAI, Reply, Stall, closed_port_url

GOOD_KEY = "good-key-0123456789abcdef"
ENV_KEY = "env-key-fedcba9876543210"
SDK_HTTP = sdk_http_module()


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AZURE_OPENAI_API_KEY", "AZURE_OPENAI_AD_TOKEN", "OPENAI_API_VERSION", "GOOD_KEY"):
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


@pytest.mark.parametrize(("name", "text"), [("deep.json", "[" * 100_000), ("deep.toml", "a = " + "{b = " * 100_000)])
def test_a_deeply_nested_file_is_a_config_error_with_exit_status_2(
    name: str, text: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / name
    path.write_text(text)

    code, out, err = check(capsys, path)

    assert code == 2, f"not the exit status of a bad file: {code}\n{err}"
    assert out == ""
    assert err.startswith(f"openai-lb check: {path} is nested too deeply"), err


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
    ("answer", "reach", "accepted", "problem"),
    [
        (200, "answered", True, None),
        (403, "answered", False, "credential rejected (HTTP 403"),
        # A 429 comes after authentication on Azure: the key was accepted, the backend is just busy.
        (429, "answered", True, None),
        # A failing backend fails the check, though the deployment probe's 400 shows the key was accepted.
        ((503, {"error": {"code": "503", "message": "busy"}}), "answered", True, "HTTP 503, 503: busy"),
        # The connection was made; nothing came back in time.
        (SDK_HTTP.ReadTimeout("slow"), "no answer", None, "no answer within 10 s"),
        (SDK_HTTP.ConnectTimeout("slow"), "unreachable", None, "unreachable (ConnectTimeout: slow)"),
        (SDK_HTTP.ConnectError("refused"), "unreachable", None, "unreachable (ConnectError: refused)"),
    ],
)
def test_models_probe_verdicts(answer: Any, reach: str, accepted: bool | None, problem: str | None) -> None:
    backend = Backend("https://a.example.com", api_key="k", name="a")

    found = check_backends([backend], transport=mock({MODELS: answer, CHAT: 400}), deployments=["gpt-4o"])

    result = found.backends[0]
    assert (result.reach, result.credential_accepted) == (reach, accepted), result
    if problem is None:
        assert result.problem is None, result.problem
    else:
        assert problem in (result.problem or ""), f"expected {problem!r} in the problem {result.problem!r}"
    assert found.ok is (problem is None), result


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


# -- credentials that cannot be sent ----------------------------------------------------------------


@pytest.mark.parametrize("bad_key", [ENV_KEY + "\n", " " + ENV_KEY, "kéy-" + ENV_KEY, "k\u2603y-" + ENV_KEY])
def test_an_unsendable_shared_key_is_that_backends_problem_and_never_printed(
    bad_key: str,
    *,
    good: FakeAzureOpenAI,
    other: FakeAzureOpenAI,
    config: Config,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A trailing newline from a file, or a character outside ASCII (the SDK sends this key as ASCII text).
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", bad_key)
    path = config(("good", good.url, GOOD), ("other", other.url, ""))

    code, out, err = check(capsys, path, "-d", "gpt-4o")
    screen = io.StringIO()
    rich_code = run(["check", str(path)], console=Console(file=screen, force_terminal=True, width=200))

    assert (code, rich_code) == (1, 1), f"a backend problem, not a crash:\n{out}{err}"
    assert line_of(out, "FAIL  other (").endswith(
        "not probed, $AZURE_OPENAI_API_KEY holds whitespace or characters a header cannot carry: strip it"
    ), out
    assert line_of(out, "SKIP  other:") == "SKIP  other: deployment gpt-4o not checked (credential unusable)"
    assert line_of(out, "OK    good (").startswith("OK    good"), "the other backends are still checked"
    assert other.requests == [], "the key is never sent"
    for text in (out, err, screen.getvalue()):
        assert ENV_KEY[:8] not in text, f"the key was printed:\n{text}"
        assert "Traceback" not in text


def test_an_unsendable_token_from_a_provider_is_reported_and_never_sent() -> None:
    sent: list[Any] = []

    def handler(request: Any) -> Any:
        sent.append(request)
        return SDK_HTTP.Response(200, json={})

    secret = "eyJ0eXAiOiJKV1Qi-token\n"
    backend = Backend("https://a.example.com", azure_ad_token_provider=lambda: secret, name="a")

    found = check_backends([backend], transport=SDK_HTTP.MockTransport(handler))

    result = found.backends[0]
    assert not found.ok
    assert (result.credential, result.reach) == ("token provider", "not probed"), result
    assert result.problem == (
        "the token of its token provider holds whitespace or characters a header cannot carry: strip it"
    ), result.problem
    assert sent == [], "a token a header cannot carry is not sent"


def test_the_http_librarys_local_errors_say_nothing_was_sent_and_never_show_their_text() -> None:
    key = "local-secret-0123456789"
    # What the HTTP library says about a header it refuses: the value, escaped.
    refused = SDK_HTTP.LocalProtocolError(f"Illegal header value {key.encode()!r}")
    backend = Backend("https://a.example.com", api_key=key, name="a")

    found = check_backends([backend], transport=mock({MODELS: refused}), deployments=["gpt-4o"])

    result = found.backends[0]
    assert result.reach == "not probed", f"this machine's error is not the backend being unreachable: {result}"
    assert result.problem == "LocalProtocolError on this machine, nothing sent", result.problem
    assert key not in repr(found), "the error's text, which quotes the key, is never kept"


@pytest.mark.parametrize(
    "echo",
    [
        lambda key: f"bad key {key!r}",  # Python's repr: the backslash doubled
        lambda key: f"bad key {key.encode()!r}",  # a bytes repr
        lambda key: f"bad key {json.dumps(key)}",  # JSON-escaped (inside the JSON body)
        lambda key: f"bad key {quote(key, safe='')}",  # URL-quoted
    ],
)
def test_escaped_forms_of_the_credential_are_cut_from_server_text(echo: Callable[[str], str]) -> None:
    key = "back\\slash-key-0123456789"
    body = {"error": {"code": "500", "message": echo(key)}}
    backend = Backend("https://a.example.com", api_key=key, name="a")

    found = check_backends([backend], transport=mock({MODELS: (500, body)}))

    problem = found.backends[0].problem or ""
    assert "[credential]" in problem, problem
    assert "slash-key" not in problem, f"an escaped form of the key was kept: {problem!r}"


def test_control_characters_in_server_text_never_reach_the_terminal(
    good: FakeAzureOpenAI, config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    hostile = "clear\x1b[2J title\x1b]0;pwned\x07 bell\x07 line\nbreak\r\x00"
    path = config(("good", good.url, GOOD))
    # Models and deployment probe, once in plain lines and once on a terminal.
    good.script(*[Reply(500, json={"error": {"code": "500", "message": hostile}})] * 4)

    code, out, _ = check(capsys, path)
    screen = io.StringIO()
    rich_code = run(["check", str(path)], console=Console(file=screen, force_terminal=True, width=200))

    assert (code, rich_code) == (1, 1), out
    assert "\x1b" not in out, f"an escape sequence from the server reached the output: {out!r}"
    for control in ("\x07", "\x00", "\r"):
        assert control not in out, f"{control!r} from the server reached the output: {out!r}"
    assert "clear[2J title]0;pwned bell line break" in line_of(out, "FAIL  good ("), "the rest is kept, on one line"
    for injected in ("\x1b[2J", "\x1b]0;", "\x07"):
        assert injected not in screen.getvalue(), f"{injected!r} from the server reached the terminal"


# -- one backend's surprise, and the program's --------------------------------------------------------


def test_an_unexpected_error_is_that_backends_problem_and_the_others_are_still_checked() -> None:
    def handler(request: Any) -> Any:
        if request.url.host == "a.example.com":
            raise RuntimeError("surprise with secret-key-a")
        return SDK_HTTP.Response(200, json={})

    backends = [
        Backend("https://a.example.com", api_key="secret-key-a", name="a"),
        Backend("https://b.example.com", api_key="k", name="b"),
    ]

    found = check_backends(backends, transport=SDK_HTTP.MockTransport(handler))

    a, b = found.backends
    assert (a.reach, a.problem) == ("unknown", "the check failed unexpectedly (RuntimeError)"), a
    assert b.ok, "one backend's surprise does not abort the check"
    assert "secret-key-a" not in repr(found), "only the exception's type is kept"


def test_an_internal_error_is_one_line_naming_its_type_and_exit_status_3(
    good: FakeAzureOpenAI, config: Config, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        api_key = GOOD_KEY  # a local a traceback with locals would show
        raise RuntimeError(f"bug near {api_key}")

    monkeypatch.setattr("openai_lb._cli.check_backends", broken)

    code, out, err = check(capsys, config(("good", good.url, GOOD)))

    assert code == 3, f"an internal error has its own exit status, not 1 (a backend problem): {code}"
    assert err == "openai-lb: internal error (RuntimeError); exit status 3\n", f"one line, no traceback: {err}"
    assert GOOD_KEY not in out + err


# -- proxies ----------------------------------------------------------------------------------------


def test_proxy_environment_variables_do_not_apply_as_for_the_balanced_clients(
    good: FakeAzureOpenAI, config: Config, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    nowhere = closed_port_url()
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.setenv(name, nowhere)

    code, out, _ = check(capsys, config(("good", good.url, GOOD)))

    assert code == 0, f"the probes went to the proxy of the environment:\n{out}"
    assert [r.path for r in good.requests] == ["/openai/models", "/openai/deployments/gpt-4o-global/chat/completions"]


def test_proxy_option_sends_the_probes_through_that_proxy_and_hides_its_password(
    good: FakeAzureOpenAI, config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    # Nothing listens at the backend's own address: only the proxy (the fake server, which answers
    # absolute-form requests itself) can answer.
    backend_url = closed_port_url()
    proxy = f"http://user:hunter2@127.0.0.1:{good.port}"

    code, out, err = check(capsys, config(("far", backend_url, GOOD)), "--proxy", proxy, "-d", "gpt-4o")

    assert code == 0, out + err
    assert out.splitlines()[0].endswith(f", through proxy http://127.0.0.1:{good.port}"), out
    assert [r.path for r in good.requests] == [
        "/openai/models",
        "/openai/deployments/gpt-4o-global/chat/completions",
    ]
    assert "hunter2" not in out + err


NOT_A_PROXY_URL = "the proxy must be a URL like http://proxy:3128 (http, https or socks5, with a host)"
BAD_PROXIES = [
    ("ftp://user:hunter2@127.0.0.1:3128", NOT_A_PROXY_URL),
    ("http://", NOT_A_PROXY_URL),
    ("user:hunter2@127.0.0.1", NOT_A_PROXY_URL),
    ("http://user:hunter2@127.0.0.1:port", NOT_A_PROXY_URL),
    ("http://user:hunter2@127.0.0.1:99999", NOT_A_PROXY_URL),
    ("http://user:hunter2@[::1:3128", NOT_A_PROXY_URL),
    ("http://user:hunter2@\x00:3128", "the proxy is not a URL the HTTP library accepts as a proxy"),
]


@pytest.mark.parametrize(("proxy", "problem"), BAD_PROXIES)
def test_a_bad_proxy_is_a_configuration_error_naming_the_problem_not_the_url(proxy: str, problem: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        check_backends([Backend("https://a.example.com", api_key="k")], proxy=proxy)

    assert str(raised.value) == problem
    assert "hunter2" not in str(raised.value), f"the proxy URL (and its password) was repeated: {raised.value}"


def test_a_socks_proxy_without_socksio_is_a_configuration_error(monkeypatch: pytest.MonkeyPatch) -> None:
    # None in sys.modules makes "import socksio" fail as if it were not installed.
    monkeypatch.setitem(sys.modules, "socksio", None)

    with pytest.raises(ConfigurationError, match=r"^a SOCKS proxy needs the socksio package"):
        check_backends([Backend("https://a.example.com", api_key="k")], proxy="socks5://127.0.0.1:1080")


@pytest.mark.parametrize(("proxy", "problem"), BAD_PROXIES)
def test_a_bad_proxy_is_a_usage_error_that_says_the_problem_and_does_not_repeat_it(
    proxy: str, problem: str, config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = check(capsys, config(("ptu", "https://a.openai.azure.com", GOOD)), "--proxy", proxy)

    assert code == 2, out + err
    said = " ".join(re.sub("[│╭╮╰╯─]", " ", err).split())  # typer may draw a box around the message
    assert f"Invalid value for '--proxy': {problem}" in said, err
    assert "hunter2" not in err, f"the proxy URL (and its password) was repeated: {err}"


# -- verdicts when the models route tells nothing ---------------------------------------------------

NOT_FOUND = (404, {"error": {"code": "404", "message": "Resource not found"}})
DEPLOYMENT_NOT_FOUND = (404, {"error": {"code": "DeploymentNotFound", "message": "no"}})


@pytest.mark.parametrize(
    ("models", "chat", "accepted", "ok"),
    [
        # A gateway without the models route: the deployment probe decides.
        (NOT_FOUND, 400, True, True),
        (NOT_FOUND, 429, True, True),
        (NOT_FOUND, DEPLOYMENT_NOT_FOUND, True, False),
        (NOT_FOUND, 401, False, False),
        (405, 400, True, True),
        # Nothing decides: the credential stays unknown and the check fails.
        (NOT_FOUND, 500, None, False),
    ],
)
def test_without_a_models_route_the_deployment_probes_judge_the_credential(
    models: Any, chat: Any, accepted: bool | None, ok: bool
) -> None:
    backend = Backend("https://gw.example.com", api_key="k", name="gw")

    found = check_backends([backend], transport=mock({MODELS: models, CHAT: chat}), deployments=["gpt-4o"])

    result = found.backends[0]
    assert result.credential_accepted is accepted, result
    assert found.ok is ok, result
    if accepted is not None:
        assert "the deployment probes judged the credential" in (result.note or ""), result.note


def test_without_a_models_route_and_no_deployment_the_check_fails_saying_what_to_do() -> None:
    backend = Backend("https://gw.example.com", api_key="k", name="gw")

    found = check_backends([backend], transport=mock({MODELS: NOT_FOUND}))

    result = found.backends[0]
    assert not found.ok
    assert result.credential_accepted is None
    assert result.problem == (
        "credential not confirmed: no models route (GET /openai/models answered HTTP 404), "
        "and pass --deployment NAME so a deployment probe can decide"
    ), result.problem


def test_a_gateway_without_the_models_route_passes_on_its_deployment_probe(
    good: FakeAzureOpenAI, config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    good.script(Reply(404, json={"error": {"code": "404", "message": "Resource not found"}}))

    code, out, _ = check(capsys, config(("gw", good.url, GOOD)), "-d", "gpt-4o")

    assert code == 0, out
    assert re.fullmatch(
        rf"OK    gw \({re.escape(good.url)}\): reachable, \d+ ms, credential accepted \(backend key\), "
        r"no models route \(GET /openai/models answered HTTP 404\): the deployment probes judged the credential",
        line_of(out, "OK    gw ("),
    ), out


# -- slow backends ----------------------------------------------------------------------------------


def test_a_backend_that_accepts_but_does_not_answer_is_reachable_without_an_answer(
    good: FakeAzureOpenAI, config: Config, capsys: pytest.CaptureFixture[str]
) -> None:
    good.script(Stall(5))

    code, out, _ = check(capsys, config(("slow", good.url, GOOD)), "--timeout", "0.3")

    assert code == 1, out
    assert line_of(out, "FAIL  slow (") == (
        f"FAIL  slow ({good.url}): reachable, no answer within 0.3 s, credential not confirmed (backend key)"
    ), "a read timeout is not 'unreachable'"
    assert line_of(out, "SKIP  slow:") == (
        "SKIP  slow: deployment gpt-4o-global (for gpt-4o) not checked (backend did not answer)"
    )


# -- Entra ID tokens from the environment -----------------------------------------------------------

AD_TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOi.entra-token"


@pytest.fixture
def entra() -> Iterator[FakeAzureOpenAI]:
    with FakeAzureOpenAI(name="entra", deployments={"gpt-4o"}, tokens={AD_TOKEN}) as server:
        yield server


def test_a_keyless_backend_uses_the_environments_entra_token_as_a_bearer_token(
    entra: FakeAzureOpenAI, config: Config, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AZURE_OPENAI_AD_TOKEN", AD_TOKEN)

    code, out, _ = check(capsys, config(("entra", entra.url, "")), "-d", "gpt-4o")

    assert code == 0, out
    assert "credential accepted ($AZURE_OPENAI_AD_TOKEN)" in line_of(out, "OK    entra ("), out
    assert {r.headers.get("authorization") for r in entra.requests} == {f"Bearer {AD_TOKEN}"}
    assert AD_TOKEN not in out


def test_the_environments_entra_token_comes_before_its_key_as_in_the_sdk(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[str | None, str | None]] = []

    def handler(request: Any) -> Any:
        seen.append((request.headers.get("api-key"), request.headers.get("authorization")))
        return SDK_HTTP.Response(200, json={})

    found = check_backends(
        [Backend("https://a.example.com")],
        transport=SDK_HTTP.MockTransport(handler),
        environ={"AZURE_OPENAI_API_KEY": "env-key", "AZURE_OPENAI_AD_TOKEN": "env-token"},
    )

    assert found.backends[0].credential == "$AZURE_OPENAI_AD_TOKEN"
    assert seen == [(None, "Bearer env-token")]


def test_an_unsendable_entra_token_in_the_environment_is_reported_not_sent() -> None:
    found = check_backends(
        [Backend("https://a.example.com")],
        transport=mock({MODELS: 200}),
        environ={"AZURE_OPENAI_AD_TOKEN": "token\n"},
    )

    result = found.backends[0]
    assert (result.credential, result.reach) == ("$AZURE_OPENAI_AD_TOKEN", "not probed"), result
    assert result.problem == (
        "$AZURE_OPENAI_AD_TOKEN holds whitespace or characters a header cannot carry: strip it"
    ), result.problem


# -- Ctrl-C -----------------------------------------------------------------------------------------


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")
def test_ctrl_c_stops_at_once_with_exit_status_130(good: FakeAzureOpenAI, config: Config) -> None:
    good.script(Stall(60))
    path = config(("stuck", good.url, GOOD))
    # The handler is set in the child: a shell may start background jobs with SIGINT ignored.
    program = (
        "import signal, sys\n"
        "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
        "from openai_lb.__main__ import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", program, "check", str(path), "--timeout", "30"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "GOOD_KEY": GOOD_KEY},
    )
    try:
        deadline = time.monotonic() + 30
        while not good.requests and time.monotonic() < deadline:
            time.sleep(0.02)
        assert good.requests, "the probe never arrived"
        interrupted = time.monotonic()
        child.send_signal(signal.SIGINT)
        try:
            out, err = child.communicate(timeout=8)
        except subprocess.TimeoutExpired:
            pytest.fail("Ctrl-C waited for the running probe to time out")
        took = time.monotonic() - interrupted
    finally:
        if child.poll() is None:
            child.kill()
            child.communicate()

    assert child.returncode == 130, (child.returncode, out, err)
    assert "interrupted" in err, err
    assert "Traceback" not in err, err
    assert took < 5, f"stopping took {took:.1f} s"
