"""``openai-lb check`` with ``$OPENAI_LB_HEALTH_STORE``: the shared store checked beside the backends, on a real
redis-server, read only, its password never shown."""

from __future__ import annotations

import io
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis_server import RedisServer, free_port, require_redis
from rich.console import Console

from openai_lb.__main__ import main
from openai_lb._cli import run
from openai_lb.testing import FakeAzureOpenAI

pytestmark = pytest.mark.timeout(60)

KEY = "store-check-key-0123456789"
SECRET = "Store-Check-Secret-9876"
WRONG = "Store-Check-Wrong-5432"


@pytest.fixture(autouse=True)
def _environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AZURE_OPENAI_AD_TOKEN", "OPENAI_API_VERSION", "OPENAI_LB_HEALTH_STORE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_OPENAI_API_KEY", KEY)


@pytest.fixture
def backends(tmp_path: Path) -> Iterator[tuple[Path, FakeAzureOpenAI]]:
    with FakeAzureOpenAI(name="good", deployments={"gpt-4o"}, api_keys={KEY}) as server:
        path = tmp_path / "backends.toml"
        path.write_text(f'[[backends]]\nname = "good"\nurl = "{server.url}"\n', encoding="utf-8")
        yield path, server


@pytest.fixture
def server() -> Iterator[RedisServer]:
    require_redis()
    with RedisServer(password=SECRET) as running:
        yield running


def check(capsys: pytest.CaptureFixture[str], path: Path) -> tuple[int, str]:
    code = main(["check", str(path), "-d", "gpt-4o"])
    captured = capsys.readouterr()
    for secret in (SECRET, WRONG, KEY):
        assert secret not in captured.out + captured.err, "a secret was printed"
    return code, captured.out


def store_line(out: str) -> str:
    found = [line for line in out.splitlines() if line.startswith(("OK    health store", "FAIL  health store"))]
    assert len(found) == 1, f"expected one health store line in:\n{out}"
    return found[0]


def test_without_the_variable_no_store_is_checked(
    backends: tuple[Path, FakeAzureOpenAI], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = check(capsys, backends[0])
    assert code == 0, out
    assert "health store" not in out


def test_a_reachable_store_reports_its_keys_without_the_password_and_writes_nothing(
    backends: tuple[Path, FakeAzureOpenAI],
    server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path, fake = backends
    redis = server.client()
    redis.set("openai_lb:v1:block:one", "{}")  # type: ignore[attr-defined]
    redis.set("openai_lb:v1:breaker:two", "{}")  # type: ignore[attr-defined]
    redis.set("elsewhere:v1:block:three", "{}")  # type: ignore[attr-defined]
    monkeypatch.setenv("OPENAI_LB_HEALTH_STORE", server.url)

    code, out = check(capsys, path)

    assert code == 0, out
    assert re.fullmatch(
        rf"OK    health store redis://127\.0\.0\.1:{server.port}/0 \(namespace openai_lb\): "
        r"reachable, \d+ ms, authenticated, 2 key\(s\) in the namespace",
        store_line(out),
    ), out
    assert out.splitlines()[-1].startswith("1 of 1 backends passed, the health store passed"), out
    assert redis.dbsize() == 3, "the check wrote to the store"  # type: ignore[attr-defined]
    assert [status for _, status in fake.answers] == [200, 400], "the backend probes still spend no tokens"


def test_a_store_without_a_password_passes(
    backends: tuple[Path, FakeAzureOpenAI], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with RedisServer() as open_server:
        monkeypatch.setenv("OPENAI_LB_HEALTH_STORE", open_server.url)
        code, out = check(capsys, backends[0])
    assert code == 0, out
    assert store_line(out).endswith("authenticated, 0 key(s) in the namespace"), out


def test_a_wrong_password_is_a_problem_saying_the_credentials_were_refused(
    backends: tuple[Path, FakeAzureOpenAI],
    server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("OPENAI_LB_HEALTH_STORE", server.url.replace(SECRET, WRONG))

    code, out = check(capsys, backends[0])

    assert code == 1, "a store problem is a problem (1), not an internal error (3)"
    assert store_line(out) == (
        f"FAIL  health store redis://127.0.0.1:{server.port}/0 (namespace openai_lb): "
        "reachable, credentials refused (AuthenticationError)"
    )
    assert out.splitlines()[-1].startswith("1 of 1 backends passed, the health store failed"), out


def test_a_missing_password_is_refused_too(
    backends: tuple[Path, FakeAzureOpenAI],
    server: RedisServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("OPENAI_LB_HEALTH_STORE", server.url.replace(f":{SECRET}@", ""))
    code, out = check(capsys, backends[0])
    assert code == 1, out
    assert store_line(out).endswith("reachable, credentials refused (AuthenticationError)"), out


def test_an_unreachable_store_is_a_problem(
    backends: tuple[Path, FakeAzureOpenAI], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    require_redis()
    port = free_port()
    monkeypatch.setenv("OPENAI_LB_HEALTH_STORE", f"redis://:{WRONG}@127.0.0.1:{port}/0")
    code, out = check(capsys, backends[0])
    assert code == 1, out
    assert store_line(out) == (
        f"FAIL  health store redis://127.0.0.1:{port}/0 (namespace openai_lb): unreachable (ConnectionError)"
    )


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        (f"memcached://:{WRONG}@127.0.0.1:11211", "not a redis://, rediss:// or unix:// URL"),
        (f"redis://:{WRONG}@127.0.0.1:notaport/0", "malformed URL"),
    ],
)
def test_a_url_that_names_no_redis_server_is_a_problem_and_not_repeated(
    backends: tuple[Path, FakeAzureOpenAI],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    url: str,
    problem: str,
) -> None:
    require_redis()
    monkeypatch.setenv("OPENAI_LB_HEALTH_STORE", url)
    code, out = check(capsys, backends[0])
    assert code == 1, out
    line = store_line(out)
    assert line.startswith("FAIL  health store "), line
    assert problem in line, line


def test_without_the_redis_package_the_store_line_says_what_to_install(
    backends: tuple[Path, FakeAzureOpenAI], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "redis", None)  # import redis raises ImportError
    monkeypatch.setenv("OPENAI_LB_HEALTH_STORE", f"redis://:{WRONG}@127.0.0.1:6379/0")
    code, out = check(capsys, backends[0])
    assert code == 1, out
    assert store_line(out) == (
        "FAIL  health store $OPENAI_LB_HEALTH_STORE: needs the redis package (pip install 'openai-lb[redis]')"
    )


def test_a_terminal_gets_the_store_as_a_row_of_the_table(
    backends: tuple[Path, FakeAzureOpenAI], server: RedisServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_LB_HEALTH_STORE", server.url.replace(SECRET, WRONG))
    screen = io.StringIO()
    code = run(["check", str(backends[0])], console=Console(file=screen, force_terminal=True, width=200))
    out = screen.getvalue()
    assert code == 1
    for fact in ("health store", f"redis://127.0.0.1:{server.port}/0", "credentials refused (AuthenticationError)"):
        assert fact in out, fact
    assert SECRET not in out
    assert WRONG not in out
