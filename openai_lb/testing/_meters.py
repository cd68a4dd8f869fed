"""Rate limits as the fake plays them: pure functions of a clock reading, no clock of their own.

Three kinds of limit, each a frozen value the rules replace as a whole after every request:

- The resource-wide request budget (`Window`, `spend`): fixed windows that tile time.
- A standard (pay-as-you-go) deployment's tokens and requests per minute (`Meter` with
  ``provisioned=False`` `Limits`). Azure charges each request, when it arrives, an estimate of
  its prompt tokens plus its ``max_tokens``, not the tokens it is billed for, and answers 429
  while the limit is reached; it checks requests per minute over short periods, "typically 1
  or 10 seconds", so a burst is refused even under the per-minute total, and "unsuccessful
  requests still count toward your per-minute rate limit"
  (https://learn.microsoft.com/azure/foundry/openai/how-to/quota#understanding-rate-limits).
  Azure describes the token count as a running total reset each minute; the fake refills the
  bucket continuously instead (``tokens_per_minute / 60`` a second), which lets no more
  through per minute and has no cliff at the minute's turn. A request is let in only when its
  estimate fits in what is left, so ``x-ratelimit-remaining-tokens`` says exactly what the next
  request may cost; one costing more than the whole bucket waits until the bucket is full.
- A provisioned (PTU) deployment's utilisation (`Meter` with ``provisioned=True``): "a
  variation of the leaky bucket algorithm". Each admitted request adds its estimate, the
  level drains continuously at the deployment's rate, and "when the current utilization is
  above 100%, the service returns a 429 code with the ``retry-after-ms`` header set to the
  time until utilization is below 100%"; a request admitted below 100 % may push it over
  (https://learn.microsoft.com/azure/foundry-classic/openai/concepts/provisioned-throughput#utilization-based-request-evaluation).
  Azure corrects the level by the actual cost when a call ends; the fake's answers are a few
  tokens long and immediate, so it keeps the estimate, as a real deployment does while the
  call runs.

Both token meters are one `Meter`: ``used`` tokens charged and not yet drained, both drain
at the deployment's rate, utilisation is ``used / capacity`` for either; they differ only in
what they admit. When a body names no ``max_tokens`` (nor ``max_completion_tokens``,
``max_output_tokens``), Azure "estimates a value" for provisioned deployments (same page)
and, per a Microsoft answer, reserves the model's context size on standard ones
(https://learn.microsoft.com/answers/questions/1381398); the fake charges its
``default_max_tokens`` instead.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from openai_lb.testing import _payloads as payloads

_MAXIMA = ("max_tokens", "max_completion_tokens", "max_output_tokens")
"""The body fields that cap the answer's length: chat (old and new name) and the Responses API."""

_SHORTEST_WAIT = 0.001
"""A refused request never hears "retry in 0 ms"; a millisecond is the unit of ``retry-after-ms``."""


# -- the resource-wide request budget -----------------------------------------------------


@dataclass(frozen=True, slots=True)
class Window:
    """The current fixed window: its start (None before its first request) and how many it let in."""

    start: float | None = None
    used: int = 0


def spend(window: Window, budget: int, length: float, now: float) -> tuple[Window, float | None]:
    """Spend one request of ``budget`` in fixed windows of ``length`` seconds.

    Returns the new window and, when the budget is exhausted, the seconds until it resets
    (else None). Windows tile time from the first request; they do not slide.
    """
    start, used = window.start, window.used
    if start is None:
        start, used = now, 0
    elif now >= start + length:
        skipped = math.floor((now - start) / length)
        # Rounding can leave the quotient a hair under the whole windows that passed (even under 1).
        if start + (skipped + 1) * length <= now:
            skipped += 1
        start, used = start + skipped * length, 0
    if used >= budget:
        # min() keeps the wait sane if a test clock moves backwards.
        return Window(start, used), min(length, start + length - now)
    return Window(start, used + 1), None


# -- what a request costs ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cost:
    """A request's estimate: prompt tokens from its text (about four characters a token) plus its maximum answer."""

    prompt: int
    completion: int
    named: bool
    """Whether the body named the maximum (else ``completion`` is the fake's default)."""

    @property
    def total(self) -> int:
        return self.prompt + self.completion


def estimate(kind: str, payload: Mapping[str, object], default_max_tokens: int) -> Cost:
    """What Azure's rate limiter would charge a create request of ``kind`` (chat, responses, embeddings).

    The prompt estimate is the one the fake's answers report as ``usage.prompt_tokens``.
    Embeddings have no answer tokens.
    """
    if kind == "embeddings":
        return Cost(payloads.estimate_tokens(payload.get("input", "")), 0, named=False)
    prompt = payloads.estimate_tokens(payload.get("messages" if kind == "chat" else "input", ""))
    for name in _MAXIMA:
        value = payload.get(name)
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return Cost(prompt, value, named=True)
    return Cost(prompt, default_max_tokens, named=False)


# -- a deployment's token meter ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Limits:
    """One deployment's rate limits."""

    tokens_per_minute: int
    """A standard deployment's TPM, or a provisioned one's capacity in tokens per minute."""
    requests_per_minute: int | None = None
    """Standard deployments only; None leaves requests unlimited."""
    provisioned: bool = False

    @property
    def rate(self) -> float:
        """Tokens drained (standard: refilled) per second."""
        return self.tokens_per_minute / 60.0

    @property
    def request_period(self) -> tuple[float, int]:
        """Seconds per request check, and requests let in per check.

        Azure checks over 1 or 10 seconds; the fake takes 1 s when the limit allows one
        request a second, else 10 s, and lets in at least one request per period.
        """
        requests = self.requests_per_minute or 0
        period = 1.0 if requests >= 60 else 10.0
        return period, max(1, int(requests * period) // 60)


@dataclass(frozen=True, slots=True)
class Meter:
    """A deployment's tokens charged and not yet drained, as of clock reading ``at``, and its request check."""

    used: float = 0.0
    at: float | None = None
    """None before the first request."""
    requests: Window = Window()


@dataclass(frozen=True, slots=True)
class Verdict:
    """The outcome of `admit`: the meter to keep, and how long the request must wait (None: admitted)."""

    meter: Meter
    wait: float | None = None
    refused_by: Literal["tokens", "requests"] | None = None


def drained(meter: Meter, limits: Limits, now: float) -> float:
    """The tokens still in use at ``now`` (never below 0; a clock that moves back drains nothing)."""
    if meter.at is None or now <= meter.at:
        return meter.used
    return max(0.0, meter.used - limits.rate * (now - meter.at))


def utilization(meter: Meter, limits: Limits, now: float) -> float:
    """Percent of the deployment's capacity in use at ``now``; above 100 after a burst, back to 0 when idle."""
    return 100.0 * drained(meter, limits, now) / limits.tokens_per_minute


def admit(meter: Meter, limits: Limits, cost: int, now: float) -> Verdict:
    """Charge a request costing ``cost`` tokens if the deployment lets it in now.

    Provisioned: admitted while utilisation is under 100 %, else the wait until it is.
    Standard: the request check first (every request received counts, admitted or not),
    then the tokens: admitted when ``cost`` fits in what is left, else the wait until it does.
    """
    used = drained(meter, limits, now)
    at = now if meter.at is None else max(now, meter.at)
    capacity = limits.tokens_per_minute
    if limits.provisioned:
        if used >= capacity:
            # "The time until utilization is below 100%": at exactly this wait it would still be 100 %.
            wait = (used - capacity) / limits.rate + _SHORTEST_WAIT
            return Verdict(Meter(used, at, meter.requests), wait, "tokens")
        return Verdict(Meter(used + cost, at, meter.requests))
    requests = meter.requests
    if limits.requests_per_minute is not None:
        period, allowed = limits.request_period
        requests, wait_for_requests = spend(requests, allowed, period, now)
        if wait_for_requests is not None:
            return Verdict(Meter(used, at, requests), max(_SHORTEST_WAIT, wait_for_requests), "requests")
    # A request larger than the whole bucket could never fit: it goes in once the bucket is full.
    if used + cost > capacity and used > 0:
        missing = used if cost > capacity else used + cost - capacity
        return Verdict(Meter(used, at, requests), max(_SHORTEST_WAIT, missing / limits.rate), "tokens")
    return Verdict(Meter(min(capacity, used + cost), at, requests))


@dataclass(frozen=True, slots=True)
class Headroom:
    """What a deployment's answer tells about its limits, as of the request just admitted or refused."""

    tokens_left: int
    tokens_reset: float
    """Seconds until the bucket is full again."""
    requests_left: int | None
    requests_reset: float | None
    """Seconds until the current request check ends; None without a request limit."""
    utilization: float
    """Percent, as `utilization`."""


def headroom(meter: Meter, limits: Limits, now: float) -> Headroom:
    """Read ``meter`` (as `admit` left it at ``now``) for the answer's headers."""
    used = drained(meter, limits, now)
    requests_left: int | None = None
    requests_reset: float | None = None
    start = meter.requests.start
    if limits.requests_per_minute is not None and start is not None:
        period, allowed = limits.request_period
        requests_left = max(0, allowed - meter.requests.used)
        requests_reset = max(0.0, start + period - now)
    return Headroom(
        tokens_left=max(0, math.floor(limits.tokens_per_minute - used)),
        tokens_reset=used / limits.rate,
        requests_left=requests_left,
        requests_reset=requests_reset,
        utilization=100.0 * used / limits.tokens_per_minute,
    )
