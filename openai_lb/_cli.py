"""The ``openai-lb`` commands, built on typer and rich (the ``cli`` extra).

Only ``__main__`` imports this module, so ``import openai_lb`` never loads typer, click or rich.
Each command renders for a terminal with rich (a live table, a results table) and as plain
lines otherwise, from the same results: `run_demo` and `check_backends` do the work.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from ._check import (
    API_VERSION_ENV,
    DEFAULT_API_VERSION,
    BackendCheck,
    CheckReport,
    DeploymentCheck,
    StoreCheck,
    check_backends,
    check_proxy,
)
from ._demo import DemoResult, DemoSettings, DemoStep, PlainView, intro, run_demo, step_line
from ._errors import ConfigurationError
from ._loading import load_backends
from ._status import BackendStatus

__all__ = ["EXIT_INTERNAL_ERROR", "EXIT_INTERRUPTED", "EXIT_PROBLEM", "EXIT_USAGE", "app", "run"]

EXIT_PROBLEM = 1
"""``check``: a backend or deployment has a problem (``demo``: a request went unanswered)."""
EXIT_USAGE = 2
"""A bad option, a bad config file, or the ``cli`` extra missing."""
EXIT_INTERNAL_ERROR = 3
"""A bug: one line names the exception type, never its text or a traceback (either could hold a key)."""
EXIT_INTERRUPTED = 130
"""Ctrl-C."""

# `run` calls the click command itself, so typer's own exception display (pretty_exceptions_*) never applies.
app = typer.Typer(
    name="openai-lb",
    help="openai_lb: priority and failover load balancing across Azure OpenAI deployments.",
    add_completion=False,
    no_args_is_help=True,
)

_DEMO = DemoSettings()
_STATE_STYLES = {"available": "green", "cooling": "yellow", "probing": "cyan", "circuit_open": "red"}


def run(argv: Sequence[str] | None = None, *, console: Console | None = None) -> int:
    """Run the command line on ``argv`` (default: ``sys.argv[1:]``) and return its exit status.

    ``console`` replaces the terminal (tests give one writing to a string). No traceback is ever
    printed: an unexpected error is one line naming its type, and exit status 3.
    """
    try:
        command = typer.main.get_command(app)
        command.main(args=None if argv is None else list(argv), prog_name="openai-lb", obj=console)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 0 if done.code is None else EXIT_PROBLEM
    except KeyboardInterrupt:
        print("openai-lb: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as error:
        # Neither the text nor a traceback: either could quote a credential, a traceback's locals too.
        print(f"openai-lb: internal error ({type(error).__name__}); exit status {EXIT_INTERNAL_ERROR}", file=sys.stderr)
        return EXIT_INTERNAL_ERROR
    return 0  # pragma: no cover - standalone click commands always exit


def _console(ctx: typer.Context) -> Console:
    given = ctx.obj
    return given if isinstance(given, Console) else Console()


def _plain(console: Console) -> PlainView:
    # console.file is read at each call: stdout as it is then (pytest swaps it), or the injected file.
    return PlainView(lambda line: print(line, file=console.file))


def _seconds(*, allow_zero: bool) -> Callable[[float], float]:
    """An option callback accepting finite seconds, > 0 or >= 0."""

    def check(value: float) -> float:
        if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
            raise typer.BadParameter(f"must be a finite number of seconds {'>= 0' if allow_zero else '> 0'}.")
        return value

    return check


def _proxy_url(value: str | None) -> str | None:
    if value is not None:
        try:
            check_proxy(value)
        except ConfigurationError as error:
            # The message never repeats the URL: it may hold a password.
            raise typer.BadParameter(str(error)) from None
    return value


# -- demo ---------------------------------------------------------------------------------------


@app.command()
def demo(
    ctx: typer.Context,
    requests: Annotated[int, typer.Option(min=1, help="How many requests to send.")] = _DEMO.requests,
    interval: Annotated[
        float, typer.Option(callback=_seconds(allow_zero=True), help="Seconds between requests.")
    ] = _DEMO.interval,
    budget: Annotated[int, typer.Option(min=1, help="PTU requests per window.")] = _DEMO.budget,
    window: Annotated[
        float, typer.Option(callback=_seconds(allow_zero=False), help="PTU window in seconds.")
    ] = _DEMO.window,
) -> None:
    """Offline demo on fake Azure OpenAI servers on 127.0.0.1: PTU first, spill over, return."""
    settings = DemoSettings(requests, interval, budget, window)
    console = _console(ctx)
    result = live_demo(settings, console) if console.is_terminal else run_demo(settings, _plain(console))
    raise typer.Exit(0 if result.ok else EXIT_PROBLEM)


class LiveDemoView:
    """The demo as one table that `rich.live.Live` redraws: progress, and per backend what it served and its state.

    The live display also renders from its own thread, so every field is replaced whole, never changed in place.
    """

    def __init__(self, refresh: Callable[[], None] = lambda: None) -> None:
        self._refresh = refresh
        self.settings = _DEMO
        self.status: tuple[BackendStatus, ...] = ()
        self.step: DemoStep | None = None
        self.recent: tuple[str, ...] = ()

    def started(self, settings: DemoSettings, status: tuple[BackendStatus, ...]) -> None:
        self.settings, self.status = settings, status
        self._refresh()

    def stepped(self, step: DemoStep) -> None:
        self.step, self.status = step, step.status
        self.recent = (*self.recent[-4:], step_line(step))
        # Every request is drawn, so a short cooldown shows even between two timed refreshes.
        self._refresh()

    def finished(self, result: DemoResult) -> None:
        self._refresh()

    def __rich__(self) -> RenderableType:
        step, settings = self.step, self.settings
        done = step.number if step else 0
        progress = Table.grid(padding=(0, 1))
        progress.add_row(
            ProgressBar(total=settings.requests, completed=done, width=40),
            Text(f"{done}/{settings.requests} requests, {step.elapsed if step else 0:.2f} s"),
        )
        # The state column keeps its width so the table does not jump as cooldowns come and go.
        table = Table(box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
        table.add_column("backend", no_wrap=True)
        table.add_column("prio", justify="right")
        table.add_column("state", min_width=20, no_wrap=True)
        # served: answers it gave the demo; sent: attempts; ok: answers below 400; 429: rate limited;
        # full: requests that passed it over because its headroom headers said it could not take them.
        for column in ("served", "sent", "ok", "429", "full", "failed"):
            table.add_column(column, justify="right")
        served = step.served if step else {}
        for status in self.status:
            table.add_row(
                Text(status.name, style="bold" if step and step.backend == status.name else ""),
                str(status.priority),
                _state_text(status),
                str(served.get(status.name, 0)),
                str(status.attempts),
                str(status.successes),
                str(status.rate_limited),
                str(status.passed_over),
                str(status.failures),
            )
        recent = Text("\n".join(self.recent), style="dim")
        return Group(Text(intro(settings)), progress, table, recent)


def _state_text(status: BackendStatus) -> Text:
    text = Text(status.state, style=_STATE_STYLES.get(status.state, ""))
    waits = [f"{status.seconds_until_available:.1f} s"] if status.seconds_until_available > 0 else []
    waits += [f"{c.deployment or '(no deployment)'} {c.seconds_left:.1f} s" for c in status.deployments]
    if waits:
        text.append(f" ({', '.join(waits)})")
    return text


def live_demo(settings: DemoSettings, console: Console) -> DemoResult:
    """Run the demo under a live table on ``console``, then print the summary below it."""
    live = Live(console=console, refresh_per_second=10)
    view = LiveDemoView(live.refresh)
    live.update(view)
    with live:
        result = run_demo(settings, view)
    console.print(Text(result.summary()))
    return result


# -- check --------------------------------------------------------------------------------------


@app.command()
def check(
    ctx: typer.Context,
    config: Annotated[
        Path,
        typer.Argument(
            metavar="CONFIG", help="Backends file (.toml or .json), as for openai_lb.load_backends.", show_default=False
        ),
    ],
    *,
    deployment: Annotated[
        list[str] | None,
        typer.Option(
            "--deployment",
            "-d",
            metavar="NAME",
            help="A deployment (model) name callers use, checked on every backend through its mapping; repeatable.",
            show_default=False,
        ),
    ] = None,
    api_version: Annotated[
        str, typer.Option(envvar=API_VERSION_ENV, help="Azure OpenAI api-version of the probes.")
    ] = DEFAULT_API_VERSION,
    timeout: Annotated[
        float, typer.Option(callback=_seconds(allow_zero=False), help="Seconds each probe may take.")
    ] = 10.0,
    proxy: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            callback=_proxy_url,
            help="Send the probes through this proxy (HTTP(S)_PROXY are ignored, as by the balanced clients).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Probe every backend without spending tokens: reachable, credential accepted, deployments present.

    A backend uses its own key (api_key_env in the file), else $AZURE_OPENAI_AD_TOKEN, else $AZURE_OPENAI_API_KEY.
    With $OPENAI_LB_HEALTH_STORE set, the shared health store is checked too (read only).

    Exit status: 0 all passed, 1 a backend or the health store has a problem, 2 a bad file or option,
    3 an internal error, 130 interrupted.
    """
    try:
        backends = load_backends(config)
    except ConfigurationError as error:
        typer.echo(f"openai-lb check: {error}", err=True)
        raise typer.Exit(EXIT_USAGE) from None
    console = _console(ctx)
    probe = functools.partial(
        check_backends, backends, api_version=api_version, deployments=deployment or (), timeout=timeout, proxy=proxy
    )
    try:
        if console.is_terminal:
            # Text, not str: rich would read brackets in a path or a name as markup.
            with console.status(Text(f"Probing {len(backends)} backend(s) from {config}...")):
                report = probe()
        else:
            report = probe()
    except KeyboardInterrupt:
        # Whatever typer does with an interrupt: 130, at once (the probes still running are abandoned).
        typer.echo("openai-lb check: interrupted", err=True)
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if console.is_terminal:
        console.print(check_table(report, str(config)))
        console.print(Text(_summary(report)))
    else:
        for line in check_lines(report, str(config)):
            print(line, file=console.file)
    raise typer.Exit(0 if report.ok else EXIT_PROBLEM)


@dataclass(frozen=True, slots=True)
class _Row:
    """One backend's results in words, shared by the plain lines and the table."""

    healthy: bool
    """Answered, the credential accepted and no problem (the deployments tell their own)."""
    reach: str
    latency: str
    credential: str
    """Accepted, rejected, not tried or not confirmed, and where it came from; or why nothing was sent."""
    notes: tuple[str, ...]
    """The backend's problem and note, when the words above do not already say them."""
    deployments: tuple[tuple[str, str], ...]
    """(OK, FAIL or SKIP, what was found) per deployment."""


def _row(backend: BackendCheck) -> _Row:
    source, reach, problem = backend.credential, backend.reach, backend.problem
    notes: tuple[str | None, ...] = ()
    if reach == "answered":
        reach_text = "reachable"
        verdict = {True: "accepted", False: "rejected", None: "not confirmed"}[backend.credential_accepted]
        status = f", HTTP {backend.status}" if backend.status in (401, 403) else ""
        credential = f"credential {verdict} ({source}{status})"
        # A rejection is said by the credential words and the deployments' lines.
        notes = (None if backend.credential_accepted is False else problem, backend.note)
    elif reach == "no answer":
        reach_text, credential = f"reachable, {problem}", f"credential not confirmed ({source})"
    elif reach == "unreachable":
        reach_text, credential = problem or "unreachable", f"credential not tried ({source})"
    else:
        # Not probed (no usable credential, or nothing could be sent), or the check itself failed.
        reach_text, credential = "not probed" if reach == "not probed" else "reach unknown", problem or ""
    latency = "" if backend.latency_ms is None else f"{backend.latency_ms:.0f} ms"
    deployments = tuple(
        ("OK" if found.exists else "SKIP" if found.verdict == "not checked" else "FAIL", _deployment(found))
        for found in backend.deployments
    )
    healthy = bool(reach == "answered" and backend.credential_accepted and problem is None)
    return _Row(healthy, reach_text, latency, credential, tuple(filter(None, notes)), deployments)


def _deployment(found: DeploymentCheck) -> str:
    name = found.name if found.requested is None else f"{found.name} (for {found.requested})"
    return f"{name} {found.verdict} ({found.detail})"


def _heading(report: CheckReport, source: str) -> str:
    proxy = f", through proxy {report.proxy}" if report.proxy else ""
    return f"openai-lb check: {len(report.backends)} backend(s) from {source}, api-version {report.api_version}{proxy}"


def _summary(report: CheckReport) -> str:
    passed = sum(backend.ok for backend in report.backends)
    store = "" if report.store is None else f", the health store {'passed' if report.store.ok else 'failed'}"
    return f"{passed} of {len(report.backends)} backends passed{store} (api-version {report.api_version})."


@dataclass(frozen=True, slots=True)
class _StoreRow:
    """The health store's results in words, shared by the plain line and the table."""

    name: str
    reach: str
    latency: str
    credential: str
    keys: str


def _store_row(store: StoreCheck) -> _StoreRow:
    name = f"{store.url} (namespace {store.namespace})" if store.url else "$OPENAI_LB_HEALTH_STORE"
    reach = "reachable" if store.reachable else store.problem or "unreachable"
    # Once reached, the problem is about the credentials or the commands.
    trouble = store.problem if store.reachable else None
    credential = ", ".join(filter(None, ("authenticated" if store.authenticated else None, trouble)))
    latency = "" if store.latency_ms is None else f"{store.latency_ms:.0f} ms"
    keys = "" if store.keys is None else f"{store.keys} key(s) in the namespace"
    return _StoreRow(name, reach, latency, credential, keys)


def check_lines(report: CheckReport, source: str) -> list[str]:
    """Plain lines, one per backend and one per deployment, each starting with OK, FAIL or SKIP and the backend."""
    lines = [_heading(report, source)]
    if report.store is not None:
        store = _store_row(report.store)
        facts = ", ".join(fact for fact in (store.reach, store.latency, store.credential, store.keys) if fact)
        lines.append(f"{'OK' if report.store.ok else 'FAIL':<5} health store {store.name}: {facts}")
    for backend in report.backends:
        row = _row(backend)
        facts = ", ".join(fact for fact in (row.reach, row.latency, row.credential, *row.notes) if fact)
        lines.append(f"{'OK' if row.healthy else 'FAIL':<5} {backend.name} ({backend.url}): {facts}")
        lines.extend(f"{mark:<5} {backend.name}: deployment {text}" for mark, text in row.deployments)
    lines.append(_summary(report))
    return lines


def check_table(report: CheckReport, source: str) -> Table:
    """The same facts as `check_lines`, one row per backend and one for the health store."""
    table = Table(title=Text(_heading(report, source)), title_justify="left")
    for column in ("backend", "reachable", "latency", "credential", "deployments", "result"):
        table.add_column(column, justify="right" if column == "latency" else "left")
    styles = {"OK": "green", "FAIL": "red", "SKIP": "dim"}
    for backend in report.backends:
        row = _row(backend)
        deployments = Text("\n").join(Text(text, style=styles[mark]) for mark, text in row.deployments)
        table.add_row(
            Text(f"{backend.name}\n{backend.url}"),
            Text(row.reach, style="green" if backend.reach == "answered" else "red"),
            row.latency,
            Text("\n".join(filter(None, (row.credential, *row.notes))), style="green" if row.healthy else "red"),
            deployments if row.deployments else Text("none named", style="dim"),
            Text("OK", style="bold green") if backend.ok else Text("FAIL", style="bold red"),
        )
    if report.store is not None:
        ok, store = report.store.ok, _store_row(report.store)
        table.add_section()
        table.add_row(
            Text(f"health store\n{store.name}"),
            Text(store.reach, style="green" if report.store.reachable else "red"),
            store.latency,
            Text(store.credential, style="green" if ok else "red"),
            Text(store.keys, style="dim"),
            Text("OK", style="bold green") if ok else Text("FAIL", style="bold red"),
        )
    return table
