"""Tests of openai_lb._headers: how a 429 answer's headers become a cooldown."""

import math
from datetime import datetime, timezone
from email.utils import format_datetime, formatdate

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from openai_lb._headers import (
    RESET_REQUESTS,
    RESET_TOKENS,
    RETRY_AFTER,
    RETRY_AFTER_MS,
    cooldown_from_headers,
    parse_duration,
    parse_http_date,
    parse_milliseconds,
    parse_reset,
    parse_retry_after,
    parse_seconds,
)

# 1994-11-06 08:49:07 UTC: thirty seconds before the RFC 9110 example date.
EXAMPLE_DATE_EPOCH = 784111777.0
WALL_NOW = EXAMPLE_DATE_EPOCH - 30.0
ALL_HEADERS = (RETRY_AFTER_MS, RETRY_AFTER, RESET_REQUESTS, RESET_TOKENS)

GARBAGE = [
    "",
    "   ",
    "\t\n",
    "0",
    "0.0",
    "-0",
    "-1",
    "-2.5",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "Infinity",
    "1e400",
    "1_000",
    "0x10",
    "1,5",
    "1.2.3",
    ".",
    "+",
    "e3",
    "3 s",
    "abc",
    "\u0663",  # ARABIC-INDIC DIGIT THREE: float() takes it, HTTP does not
    "\uff13",  # FULLWIDTH DIGIT THREE
    "None",
]


def about(seconds: float, source: str, rel: float = 1e-9) -> object:
    """An expected cooldown_from_headers answer, with float tolerance on the seconds."""
    return (pytest.approx(seconds, rel=rel), source)


def cooldown(headers: dict[str, str], wall_now: float = WALL_NOW) -> tuple[float, str] | None:
    return cooldown_from_headers(headers, wall_now=wall_now)


# --- retry-after-ms --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("1500", 1.5), ("1500.5", 1.5005), (" 20 ", 0.02), ("+7", 0.007), (".5", 0.0005), ("1e3", 1.0)],
)
def test_retry_after_ms_is_milliseconds(value: str, seconds: float) -> None:
    got = cooldown({RETRY_AFTER_MS: value})
    assert got == about(seconds, RETRY_AFTER_MS), f"retry-after-ms {value!r} gave {got}"


# --- retry-after -----------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "seconds"), [("3", 3.0), ("2.5", 2.5), (" 10 ", 10.0), ("+4", 4.0), ("1e3", 1000.0)])
def test_retry_after_is_seconds(value: str, seconds: float) -> None:
    got = cooldown({RETRY_AFTER: value})
    assert got == about(seconds, RETRY_AFTER), f"retry-after {value!r} gave {got}"


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 06 Nov 1994 08:49:37 GMT",  # IMF-fixdate
        "Sunday, 06-Nov-94 08:49:37 GMT",  # obsolete RFC 850
        "Sun Nov  6 08:49:37 1994",  # asctime, UTC by definition
        "  Sun, 06 Nov 1994 08:49:37 GMT  ",
        "Sun, 06 Nov 1994 09:49:37 +0100",  # a zone offset is honoured
    ],
)
def test_retry_after_http_date_is_delay_from_wall_now(value: str) -> None:
    got = cooldown({RETRY_AFTER: value})
    assert got == about(30.0, RETRY_AFTER), f"HTTP-date {value!r} at now=date-30s gave {got}"


@pytest.mark.parametrize("wall_now", [EXAMPLE_DATE_EPOCH, EXAMPLE_DATE_EPOCH + 1.0, EXAMPLE_DATE_EPOCH + 1e6])
def test_retry_after_http_date_not_in_future_is_absent(wall_now: float) -> None:
    headers = {RETRY_AFTER: "Sun, 06 Nov 1994 08:49:37 GMT"}
    assert cooldown(headers, wall_now) is None, f"date at or before now={wall_now} should be absent"
    headers[RESET_TOKENS] = "5s"
    got = cooldown(headers, wall_now)
    assert got == (5.0, RESET_TOKENS), f"past date should fall through to the reset header, got {got}"


@pytest.mark.parametrize(
    "value",
    [
        "Sun, 31 Feb 1994 08:49:37 GMT",  # no such day
        "Sun, 06 Nov 1994 25:49:37 GMT",  # no such hour
        "Sun, 06 Foo 1994 08:49:37 GMT",
        "06 Nov",
        "Sun, 06 Nov 99999 08:49:37 GMT",
    ],
)
def test_retry_after_invalid_http_date_is_absent(value: str) -> None:
    assert parse_http_date(value, 0.0) is None, f"{value!r} is no valid date"


def test_http_date_matches_stdlib_formatting() -> None:
    moment = datetime(2031, 5, 17, 12, 0, 0, tzinfo=timezone.utc)
    now = moment.timestamp() - 90.0
    for text in (format_datetime(moment, usegmt=True), formatdate(moment.timestamp(), usegmt=True)):
        assert parse_http_date(text, now) == pytest.approx(90.0), f"{text!r} should be 90 s after now"
    asctime = f"{moment:%a %b} {moment.day:2d} {moment:%H:%M:%S %Y}"  # "Sat May 17 12:00:00 2031"
    assert parse_http_date(asctime, now) == pytest.approx(90.0), f"asctime {asctime!r} should be UTC"


# --- x-ratelimit-reset-* ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("12", 12.0),
        ("0.5", 0.5),
        ("20ms", 0.02),
        ("1s", 1.0),
        ("1.5s", 1.5),
        ("6m0s", 360.0),
        ("1h2m3.5s", 3723.5),
        ("250us", 250e-6),
        ("250\u00b5s", 250e-6),  # MICRO SIGN, as Go prints it
        ("250\u03bcs", 250e-6),  # GREEK SMALL LETTER MU
        ("100ns", 100e-9),
        (" 2m ", 120.0),
        ("+1s", 1.0),
        ("1.s", 1.0),
        (".5s", 0.5),
        ("1s500ms", 1.5),
        ("1e3", 1000.0),
    ],
)
def test_reset_header_seconds_or_go_duration(value: str, seconds: float) -> None:
    for name in (RESET_REQUESTS, RESET_TOKENS):
        got = cooldown({name: value})
        assert got == about(seconds, name), f"{name} {value!r} gave {got}"


@pytest.mark.parametrize(
    "value", ["0s", "0ms", "0h0m0s", "-1s", "1", "1x", "1S", "s", "1.5.5s", "1 s", "1h 2m", "+", "++1s", "1d"]
)
def test_invalid_go_duration_is_absent(value: str) -> None:
    assert parse_duration(value) is None, f"{value!r} is no positive Go duration"


@pytest.mark.parametrize(
    ("requests", "tokens", "expected"),
    [
        ("1s", "6m0s", (360.0, RESET_TOKENS)),
        ("6m0s", "1s", (360.0, RESET_REQUESTS)),
        ("20ms", "0.5", (0.5, RESET_TOKENS)),
        ("30", "29s", (30.0, RESET_REQUESTS)),
        ("2s", "2000ms", (2.0, RESET_REQUESTS)),  # a tie goes to requests
    ],
)
def test_longer_reset_header_wins(requests: str, tokens: str, expected: tuple[float, str]) -> None:
    got = cooldown({RESET_REQUESTS: requests, RESET_TOKENS: tokens})
    assert got == expected, f"requests={requests!r} tokens={tokens!r} gave {got}, wanted the longer"


@pytest.mark.parametrize("bad", ["0s", "garbage", "-3", ""])
def test_unusable_reset_header_leaves_the_other(bad: str) -> None:
    assert cooldown({RESET_REQUESTS: bad, RESET_TOKENS: "4s"}) == (4.0, RESET_TOKENS)
    assert cooldown({RESET_REQUESTS: "4s", RESET_TOKENS: bad}) == (4.0, RESET_REQUESTS)


# --- precedence and fall-through -------------------------------------------------------------


def test_ms_beats_seconds_beats_reset_headers() -> None:
    headers = {RETRY_AFTER_MS: "100", RETRY_AFTER: "7", RESET_REQUESTS: "60s", RESET_TOKENS: "90s"}
    assert cooldown(headers) == (0.1, RETRY_AFTER_MS), "retry-after-ms should win even when shorter"
    del headers[RETRY_AFTER_MS]
    assert cooldown(headers) == (7.0, RETRY_AFTER), "retry-after should beat the reset headers"
    del headers[RETRY_AFTER]
    assert cooldown(headers) == (90.0, RESET_TOKENS), "the longer reset header should be left"


@pytest.mark.parametrize("bad", GARBAGE)
def test_unusable_value_falls_through_to_next_header(bad: str) -> None:
    got = cooldown({RETRY_AFTER_MS: bad, RETRY_AFTER: "2"})
    assert got == (2.0, RETRY_AFTER), f"retry-after-ms {bad!r} should count as absent, got {got}"
    got = cooldown({RETRY_AFTER: bad, RESET_REQUESTS: "3s"})
    assert got == (3.0, RESET_REQUESTS), f"retry-after {bad!r} should count as absent, got {got}"
    got = cooldown({RETRY_AFTER_MS: bad, RETRY_AFTER: bad, RESET_REQUESTS: bad, RESET_TOKENS: bad})
    assert got is None, f"{bad!r} everywhere should give None, got {got}"


@pytest.mark.parametrize("bad", GARBAGE)
def test_each_parser_rejects_garbage(bad: str) -> None:
    for parse in (parse_seconds, parse_milliseconds, parse_duration, parse_reset):
        assert parse(bad) is None, f"{parse.__name__}({bad!r}) should be None"
    assert parse_retry_after(bad, WALL_NOW) is None, f"parse_retry_after({bad!r}) should be None"


def test_no_headers_is_none() -> None:
    assert cooldown({}) is None
    assert cooldown({"content-type": "application/json", "x-ms-region": "East US"}) is None


def test_huge_finite_values_are_returned_not_capped() -> None:
    assert cooldown({RETRY_AFTER: "1e300"}) == (1e300, RETRY_AFTER)
    assert cooldown({RETRY_AFTER_MS: "9" * 300}) == about(float("9" * 300) / 1000, RETRY_AFTER_MS)
    assert cooldown({RESET_TOKENS: "9" * 400 + "h"}) is None, "a duration overflowing to inf is absent"
    assert cooldown({RETRY_AFTER_MS: "5e-324"}) is None, "a wait that rounds to zero seconds is absent"


# --- properties ------------------------------------------------------------------------------

header_values = st.one_of(
    st.text(),
    st.sampled_from(GARBAGE),
    st.text(alphabet=" \t+-._0123456789eEnsu\u00b5\u03bcmhxa", max_size=16),  # near-numbers
    st.builds(lambda x: formatdate(x, usegmt=True), st.floats(0, 2e11)),
)


# Plain st.text() builds Hypothesis's unicode tables on a cold cache (about 1.5 s, once), which
# the too-slow health check would report as a failure in a fresh CI checkout.
@settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    headers=st.dictionaries(st.sampled_from(ALL_HEADERS), header_values),
    wall_now=st.one_of(st.just(WALL_NOW), st.floats(allow_nan=True, allow_infinity=True)),
)
def test_any_text_never_raises_and_gives_positive_finite_or_none(headers: dict[str, str], wall_now: float) -> None:
    got = cooldown(headers, wall_now)
    if got is not None:
        seconds, source = got
        assert math.isfinite(seconds), f"{headers!r} gave non-finite {seconds}"
        assert seconds > 0, f"{headers!r} gave non-positive {seconds}"
        assert source in headers, f"{headers!r} named {source!r}, which it does not hold"


finite_non_negative = st.floats(min_value=0.0, allow_nan=False, allow_infinity=False)


@given(finite_non_negative, st.sampled_from(["{!r}", " {!r} ", "+{!r}"]))
def test_milliseconds_round_trip(ms: float, fmt: str) -> None:
    text = fmt.format(ms)
    expected = ms / 1000
    got = cooldown({RETRY_AFTER_MS: text})
    if expected > 0:
        assert got == about(expected, RETRY_AFTER_MS, rel=1e-12), f"{text!r} gave {got}"
    else:
        assert got is None, f"{text!r} is zero seconds, yet gave {got}"


@given(finite_non_negative, st.sampled_from([RETRY_AFTER, RESET_REQUESTS, RESET_TOKENS]))
def test_seconds_round_trip(seconds: float, name: str) -> None:
    got = cooldown({name: repr(seconds)})
    if seconds > 0:
        assert got == (seconds, name), f"{name} {seconds!r} gave {got}"
    else:
        assert got is None, f"{name} zero gave {got}"


@given(
    hours=st.none() | st.integers(0, 10**6),
    minutes=st.none() | st.integers(0, 10**4),
    seconds=st.none() | st.tuples(st.integers(0, 10**6), st.integers(0, 999)),
    millis=st.none() | st.integers(0, 10**6),
    micros=st.none() | st.integers(0, 10**6),
)
def test_go_duration_parses_to_sum_of_parts(
    hours: int | None,
    minutes: int | None,
    seconds: tuple[int, int] | None,
    millis: int | None,
    micros: int | None,
) -> None:
    text = ""
    total = 0.0
    if hours is not None:
        text += f"{hours}h"
        total += hours * 3600
    if minutes is not None:
        text += f"{minutes}m"
        total += minutes * 60
    if seconds is not None:
        text += f"{seconds[0]}.{seconds[1]:03d}s"
        total += seconds[0] + seconds[1] / 1000
    if millis is not None:
        text += f"{millis}ms"
        total += millis / 1000
    if micros is not None:
        text += f"{micros}\u00b5s"
        total += micros / 1e6
    got = parse_duration(text)
    if total > 0:
        assert got == pytest.approx(total, rel=1e-12), f"{text!r} should be {total} s, got {got}"
        assert cooldown({RESET_TOKENS: text}) == (got, RESET_TOKENS)
    else:
        assert got is None, f"{text!r} is empty or zero, yet gave {got}"
