"""Read how long a 429 answer asks the caller to wait from its rate-limit headers.

Why these headers, in this order: ``retry-after-ms`` comes first because Azure OpenAI sends it
as the most precise explicit wait (and the OpenAI SDK honours it first too); ``retry-after`` is
the standard HTTP header (RFC 9110: delay in seconds or an HTTP-date), just as explicit but
coarser; ``x-ratelimit-reset-requests`` and ``x-ratelimit-reset-tokens`` only say when each
quota window refills, so they are the fallback, and since a request needs both quotas the
longer of the two is the real wait.

Every parser here is pure and total: garbage in any header gives ``None`` (absent), never an
exception, and any value returned is a finite number of seconds greater than zero.
"""

import math
import re
from collections.abc import Mapping
from datetime import datetime, timezone
from email.utils import parsedate_tz

__all__ = [
    "RESET_REQUESTS",
    "RESET_TOKENS",
    "RETRY_AFTER",
    "RETRY_AFTER_MS",
    "cooldown_from_headers",
    "parse_duration",
    "parse_http_date",
    "parse_milliseconds",
    "parse_reset",
    "parse_retry_after",
    "parse_seconds",
]

RETRY_AFTER_MS = "retry-after-ms"
RETRY_AFTER = "retry-after"
RESET_REQUESTS = "x-ratelimit-reset-requests"
RESET_TOKENS = "x-ratelimit-reset-tokens"

# A plain decimal number: ASCII digits only (float() alone would also take "1_000", "inf",
# "nan" and non-ASCII digits), optional sign, optional exponent ("1e3" is 1000).
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")

# One component of a Go duration ("1h2m3.5s"); "ms" must be tried before "m" and "s".
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")

# Unit -> (multiplier, divisor) to seconds; dividing keeps "20ms" exactly as close as 20 / 1000.
_UNIT_SCALE: dict[str, tuple[float, float]] = {
    "ns": (1.0, 1e9),
    "us": (1.0, 1e6),
    "\u00b5s": (1.0, 1e6),  # MICRO SIGN, what Go prints
    "\u03bcs": (1.0, 1e6),  # GREEK SMALL LETTER MU, also accepted by Go
    "ms": (1.0, 1e3),
    "s": (1.0, 1.0),
    "m": (60.0, 1.0),
    "h": (3600.0, 1.0),
}


def _positive(seconds: float) -> float | None:
    """The value if it is a usable wait (finite and > 0), else None."""
    return seconds if math.isfinite(seconds) and seconds > 0 else None


def _number(text: str) -> float | None:
    """The float of a stripped plain decimal number (may be 0, negative or inf), else None."""
    return float(text) if _NUMBER.fullmatch(text) is not None else None


def parse_seconds(value: str) -> float | None:
    """Seconds as a plain number ("3", " 2.5 ", "+1e3"); None unless finite and > 0."""
    number = _number(value.strip())
    return None if number is None else _positive(number)


def parse_milliseconds(value: str) -> float | None:
    """Milliseconds as a plain number ("1500", "1500.5"), in seconds; None unless finite and > 0."""
    number = _number(value.strip())
    return None if number is None else _positive(number / 1000.0)


def parse_duration(value: str) -> float | None:
    """A Go duration ("20ms", "6m0s", "1h2m3.5s", "250us", "+1s"), in seconds; None unless > 0.

    Units are ns, us (or µs), ms, s, m and h, as Go's ``time.ParseDuration`` takes them; a bare
    number without a unit is not a duration (see ``parse_reset``).
    """
    text = value.strip()
    pos = 1 if text.startswith("+") else 0
    end = len(text)
    if pos == end:
        return None
    total = 0.0
    while pos < end:
        part = _DURATION_PART.match(text, pos)
        if part is None:
            return None
        multiplier, divisor = _UNIT_SCALE[part.group(2)]
        total += float(part.group(1)) * multiplier / divisor
        pos = part.end()
    return _positive(total)


def parse_http_date(value: str, wall_now: float) -> float | None:
    """Seconds from ``wall_now`` until an HTTP-date; None if unparsable or not in the future.

    Takes the three formats of RFC 9110: IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT"), the
    obsolete RFC 850 form ("Sunday, 06-Nov-94 08:49:37 GMT") and asctime ("Sun Nov  6 08:49:37
    1994", read as UTC). Two-digit years follow ``email.utils``: 69-99 are 19xx, 00-68 are 20xx.
    """
    text = value.strip()
    if not text:
        return None
    try:
        fields = parsedate_tz(text)
    except Exception:  # the stdlib parser has raised on odd input in some releases: absent
        return None
    if fields is None:
        return None
    year, month, day, hour, minute, second = fields[:6]
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=timezone.utc)
    except (ValueError, OverflowError):  # 31 Feb, hour 25, year 0 ...
        return None
    offset = fields[9] or 0  # None (no zone, as asctime) means UTC
    return _positive(moment.timestamp() - offset - wall_now)


def parse_retry_after(value: str, wall_now: float) -> float | None:
    """``retry-after``: seconds as a plain number, else an HTTP-date; None if unusable."""
    text = value.strip()
    if _NUMBER.fullmatch(text) is not None:
        return parse_seconds(text)
    return parse_http_date(text, wall_now)


def parse_reset(value: str) -> float | None:
    """``x-ratelimit-reset-*``: seconds as a plain number, else a Go duration; None if unusable."""
    text = value.strip()
    if _NUMBER.fullmatch(text) is not None:
        return parse_seconds(text)
    return parse_duration(text)


def cooldown_from_headers(headers: Mapping[str, str], *, wall_now: float) -> tuple[float, str] | None:
    """Seconds a 429 answer asks the caller to wait, and the header it came from; None if no usable header.

    ``headers`` is looked up with lower-case names (httpx.Headers is case-insensitive);
    ``wall_now`` is the current epoch time, used only to turn an HTTP-date into a delay.
    Precedence: ``retry-after-ms``, then ``retry-after``, then the longer of
    ``x-ratelimit-reset-requests`` and ``x-ratelimit-reset-tokens`` (requests on a tie).
    An unusable value (zero, negative, past, garbage) counts as absent.
    """
    value = headers.get(RETRY_AFTER_MS)
    if value is not None:
        seconds = parse_milliseconds(value)
        if seconds is not None:
            return seconds, RETRY_AFTER_MS

    value = headers.get(RETRY_AFTER)
    if value is not None:
        seconds = parse_retry_after(value, wall_now)
        if seconds is not None:
            return seconds, RETRY_AFTER

    best: tuple[float, str] | None = None
    for name in (RESET_REQUESTS, RESET_TOKENS):
        value = headers.get(name)
        if value is None:
            continue
        seconds = parse_reset(value)
        if seconds is not None and (best is None or seconds > best[0]):
            best = (seconds, name)
    return best
