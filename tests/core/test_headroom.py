"""Headroom with a fake clock: header readings, their ageing, request estimates, reservations, passing over."""

from __future__ import annotations

import base64
import json
import logging
import math
import sys
import threading
import types
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import FakeClock, make_balancer
from hypothesis import given, settings
from hypothesis import strategies as st

from openai_lb import (
    AttemptFinished,
    AttemptStarted,
    Backend,
    BackendCooled,
    ConfigurationError,
    Event,
    InMemoryHealthStore,
    Policy,
)
from openai_lb._core import Attempt, Balancer, Call, reset_state
from openai_lb._headroom import (
    HeadroomBook,
    Reading,
    Signals,
    Slot,
    book_for,
    estimate,
    output_tokens,
    parse_count,
    parse_utilization,
    prompt_tokens,
    read_signals,
    tiktoken_counter,
)
from openai_lb._health import default_store
from openai_lb._rewrite import RequestTemplate, lowered

JSON_HEADERS = lowered([(b"content-type", b"application/json")])

PTU, PTU_B, PAYGO, FAR = (
    Backend(f"https://{name}.example.com", priority=priority, name=name)
    for name, priority in (("ptu", 1), ("ptu-b", 1), ("paygo", 2), ("far", 3))
)

HEADER_NAMES = (
    "x-ratelimit-remaining-requests",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-limit-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-reset-requests",
    "x-ratelimit-reset-tokens",
    "azure-openai-deployment-utilization",
    "x-ms-deployment-name",
    "x-ms-spillover-from-deployment",
)
# 4 bytes per token: this body of 40 bytes costs 10 prompt tokens plus its max_tokens.
BODY = b'{"max_tokens": 100, "messages": ["hi."]}'
COST = 10 + 100


def raw(headers: dict[str, str]) -> dict[bytes, bytes]:
    """Headers as the shell hands them to the core: by lowercased name."""
    return {name.lower().encode(): value.encode() for name, value in headers.items()}


def make(
    backends: list[Backend],
    clock: FakeClock,
    *,
    policy: Policy | None = None,
    hooks: list[Callable[[Event], None]] | None = None,
) -> Balancer:
    return make_balancer(backends, clock, policy=policy, on_event=hooks[0] if hooks else None)


def begin(balancer: Balancer, body: bytes = BODY) -> Call:
    return balancer.begin("gpt-4o", None, body)


def attempt(call: Call) -> Attempt:
    step = call.next()
    assert isinstance(step, Attempt), f"expected an attempt, got {step}"
    return step


def answer(balancer: Balancer, backend: Backend, headers: dict[str, str], status: int = 200) -> None:
    """``backend`` answers a request sent to it now with ``headers``."""
    step = Attempt(backend, backend.deployment_for("gpt-4o"), 1, balancer.clock())
    begin(balancer).report(step, status, {}, None, raw(headers))


def answer_chosen(balancer: Balancer, backend: Backend, headers: dict[str, str]) -> None:
    """A request the balancer sends (and reserves for) as usual goes to ``backend``, which answers with ``headers``."""
    call = begin(balancer)
    step = attempt(call)
    assert step.backend is backend, f"expected {backend.name} to be chosen, got {step.backend.name}"
    call.report(step, 200, {}, None, raw(headers))


def slot_of(balancer: Balancer, backend: Backend) -> Slot:
    assert balancer.book is not None
    slot = balancer.book.slot(backend.key, "gpt-4o")
    assert slot is not None, f"{backend.name} has no reading"
    return slot


# -- reading the headers


def test_every_headroom_header_is_read_in_one_pass() -> None:
    signals = read_signals(
        raw(
            {
                "Content-Type": "application/json",
                "x-ratelimit-remaining-requests": "2998",
                "x-ratelimit-remaining-tokens": "1994000",
                "x-ratelimit-limit-requests": "3000",
                "x-ratelimit-limit-tokens": "2000000",
                "x-ratelimit-reset-requests": "20ms",
                "x-ratelimit-reset-tokens": "6m0s",
                "azure-openai-deployment-utilization": "87.5%",
                "x-ms-deployment-name": "gpt-4o-paygo",
                "x-ms-spillover-from-deployment": "gpt-4o-ptu",
            }
        )
    )
    assert signals == Signals(2998, 1994000, 3000, 2000000, 0.02, 360, 87.5, "gpt-4o-paygo", "gpt-4o-ptu")


def test_an_answer_without_headroom_headers_reads_as_none() -> None:
    assert read_signals(raw({"content-type": "application/json", "content-length": "2"})) is None
    assert read_signals({}) is None


@pytest.mark.parametrize(("value", "expected"), [("87%", 87.0), ("87.5 %", 87.5), ("87", 87.0), (" 0 ", 0.0)])
def test_utilization_is_read_with_or_without_its_percent_sign(value: str, expected: float) -> None:
    assert parse_utilization(value.encode()) == expected


@pytest.mark.parametrize("value", ["-3%", "nan", "NaN%", "inf", "87%%", "%", "", "eighty", "8 7", "1e2", "\u0663"])
def test_unusable_utilization_is_absent(value: str) -> None:
    assert parse_utilization(value.encode()) is None, f"{value!r} must read as absent"


@pytest.mark.parametrize(("value", "expected"), [("2998", 2998.0), (" 12 ", 12.0), ("12.5", 12.5), ("0", 0.0)])
def test_counts_are_plain_non_negative_numbers(value: str, expected: float) -> None:
    assert parse_count(value.encode()) == expected


@pytest.mark.parametrize("value", ["-5", "+5", "1e3", "1_000", "inf", "NaN", "", " ", "12 tokens", "\u0663"])
def test_unusable_counts_are_absent(value: str) -> None:
    assert parse_count(value.encode()) is None, f"{value!r} must read as absent"


def test_a_count_too_long_for_a_float_is_absent() -> None:
    assert parse_count(b"1." + b"9" * 400) is not None, "a long fraction is still a number"
    assert parse_count(b"9" * 400 + b".5") is None, "overflows to infinity: absent"
    assert parse_count(b"9" * 5000) is None, "beyond what int() takes from a string: absent, not an error"


def test_reset_times_use_the_cooldown_parser_and_unusable_ones_are_absent() -> None:
    signals = read_signals(raw({"x-ratelimit-reset-requests": "0s", "x-ratelimit-reset-tokens": "1.5"}))
    assert signals is not None
    assert (signals.reset_requests, signals.reset_tokens) == (None, 1.5)


def test_empty_spillover_headers_are_absent() -> None:
    signals = read_signals(raw({"x-ms-spillover-from-deployment": " ", "x-ms-deployment-name": ""}))
    assert signals is not None
    assert (signals.deployment, signals.spilled_from, signals.has_room) == (None, None, False)


def test_the_deployment_that_served_is_read_only_from_a_spilled_answer() -> None:
    signals = read_signals(raw({"x-ms-deployment-name": "gpt-4o", "x-ratelimit-remaining-requests": "3"}))
    assert signals is not None
    assert signals.deployment is None, "Azure names the deployment on every answer; only a spilled one tells"


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(HEADER_NAMES), st.binary(max_size=40)))
def test_no_header_value_raises_and_every_number_read_is_usable(headers: dict[str, bytes]) -> None:
    signals = read_signals({name.encode(): value for name, value in headers.items()})
    assert signals is not None or not any(headers.values()), "an empty value is as good as none"
    if signals is not None:
        for value in signals[:7]:
            assert value is None or (math.isfinite(value) and value >= 0), f"unusable number {value!r} read"


# -- ageing


def reading(signals: Signals, *, sent: float, received: float, mark: int | None = None) -> Reading:
    return Reading(signals, sent, received, mark)


def tokens_left(remaining: float, *, reset: float | None = None, limit: float | None = None) -> Signals:
    return Signals(None, remaining, None, limit, None, reset, None, None, None)


def test_a_reading_counts_until_the_horizon() -> None:
    slot = Slot()
    slot.learn(reading(tokens_left(50), sent=99.0, received=100.0))
    assert not slot.fits(60, 100.5, 1.0, 95.0), "50 tokens left cannot fit 60"
    assert slot.fits(60, 101.0, 1.0, 95.0), "the reading is a horizon old: it no longer counts"


def test_a_reading_counts_until_its_window_resets_and_then_the_limit_does() -> None:
    slot = Slot()
    slot.learn(reading(tokens_left(0, reset=0.5, limit=100), sent=100.0, received=100.0))
    assert not slot.fits(60, 100.4, 10.0, 95.0)
    assert slot.fits(60, 100.5, 10.0, 95.0), "the window refilled: its limit of 100 fits 60"
    book = HeadroomBook()
    assert book.reserve(slot, 100.6, 60) is not None
    assert not slot.fits(60, 100.7, 10.0, 95.0), "60 of the refilled 100 are already sent"


def test_a_window_that_refilled_with_no_limit_known_says_nothing() -> None:
    slot = Slot()
    slot.learn(reading(tokens_left(0, reset=0.5), sent=100.0, received=100.0))
    assert slot.fits(10**9, 100.5, 10.0, 95.0)


def test_an_older_reading_does_not_replace_a_newer_one_unless_that_one_aged() -> None:
    book = HeadroomBook()
    book.record("k", "d", None, tokens_left(500), sent=10.0, received=11.0, horizon=1.0)
    book.record("k", "d", None, tokens_left(5), sent=9.0, received=11.5, horizon=1.0)
    slot = book.slot("k", "d")
    assert slot is not None
    assert slot.reading is not None
    assert slot.reading.signals.remaining_tokens == 500, "the answer to an earlier attempt is older news"
    book.record("k", "d", None, tokens_left(5), sent=9.5, received=12.0, horizon=1.0)
    assert slot.reading.signals.remaining_tokens == 5, "the held reading had aged: any reading is better"


def test_the_book_is_bounded_and_forgets_idle_slots_first() -> None:
    book = HeadroomBook(max_slots=2)
    for name in ("a", "b"):
        book.record(name, "d", None, tokens_left(1), sent=0.0, received=0.0, horizon=1.0)
    busy = book.slot("a", "d")
    assert busy is not None
    book.reserve(busy, 0.5, 1)
    book.record("c", "d", None, tokens_left(1), sent=5.0, received=5.0, horizon=1.0)
    assert (book.slot("a", "d") is not None, book.slot("b", "d"), book.slot("c", "d") is not None) == (
        True,
        None,
        True,
    ), "the idle, aged slot made room; the one with a request in flight stays"
    book.record("e", "d", None, tokens_left(1), sent=5.0, received=5.0, horizon=1.0)
    assert book.slot("e", "d") is None, "nothing idle to forget: the new reading is dropped"
    assert len(book) == 2


def test_the_book_follows_the_store() -> None:
    store = InMemoryHealthStore()
    assert book_for(store) is book_for(store)
    assert book_for(store) is not book_for(InMemoryHealthStore())
    book_for(default_store()).record("k", "d", None, tokens_left(1), sent=0.0, received=0.0, horizon=1.0)
    reset_state()
    assert len(book_for(default_store())) == 0, "reset_state forgets the process-wide readings too"


class _SlottedStore:
    """A health store of the user's own, as the ``HealthStore`` protocol allows: no ``__weakref__`` slot."""

    __slots__ = ("_inner",)

    def __init__(self) -> None:
        self._inner = InMemoryHealthStore()

    def __getattr__(self, name: str) -> object:
        return getattr(self._inner, name)


class _UnhashableStore(_SlottedStore):
    """A store that compares by value, so cannot be a dictionary key (a dataclass with eq=True, say)."""

    __slots__ = ()
    __hash__ = None  # type: ignore[assignment]

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _UnhashableStore)


@pytest.mark.parametrize("store_type", [_SlottedStore, _UnhashableStore], ids=["no-weakref", "unhashable"])
def test_a_health_store_of_the_users_own_that_cannot_be_a_weak_key_still_makes_a_balancer(
    clock: FakeClock, store_type: type[_SlottedStore]
) -> None:
    store: object = store_type()
    balancer = Balancer([PTU, PAYGO], store=store, clock=clock, wall_clock=clock.wall)  # type: ignore[arg-type]
    assert balancer.book is not None, "headroom is on by default: the balancer has a book of its own"
    assert isinstance(balancer.begin("gpt-4o", None, BODY).next(), Attempt)


# -- the estimate


def test_the_estimate_is_bytes_over_four_rounded_up_plus_the_output_limit() -> None:
    assert estimate(b'{"max_tokens": 7}', None, 1000) == 5 + 7
    assert estimate(b'{"a": 1}', None, 1000) == 2 + 1000, "no limit named: the policy's default"
    assert estimate(None, None, 1000) == 1000


@pytest.mark.parametrize("key", ["max_tokens", "max_completion_tokens", "max_output_tokens"])
def test_each_output_key_is_found_in_the_bytes(key: str) -> None:
    body = json.dumps({"messages": [], key: 256}).encode()
    assert estimate(body, None, 1000) == prompt_tokens(body) + 256


def test_the_largest_output_limit_found_counts_and_escaped_text_is_not_a_key() -> None:
    body = json.dumps({"max_tokens": 10, "max_completion_tokens": 300, "content": '"max_tokens": 99999'}).encode()
    assert estimate(body, None, 0) == prompt_tokens(body) + 300


def test_a_limit_from_a_parse_is_taken_as_is() -> None:
    body = b'{"tools": [{"max_tokens": 5000}], "messages": []}'
    assert estimate(body, 20, 1000) == prompt_tokens(body) + 20
    assert output_tokens(json.loads(body)) is None, "only the top level names the request's limit"
    assert output_tokens({"max_tokens": True, "max_output_tokens": 64}) == 64, "a boolean is no limit"


def test_base64_image_data_is_not_text() -> None:
    image = base64.b64encode(bytes(3000)).decode()
    with_image = json.dumps({"messages": [{"content": [{"image_url": {"url": f"data:image/png;base64,{image}"}}]}]})
    without = json.dumps({"messages": [{"content": [{"image_url": {"url": "data:image/png"}}]}]})
    assert prompt_tokens(with_image.encode()) == prompt_tokens(without.encode())


def test_a_body_that_is_not_json_has_no_prompt_text() -> None:
    assert prompt_tokens(b"--boundary\r\nContent-Disposition: form-data\r\n\r\n" + bytes(4000)) == 0


def test_a_tokenizer_counts_the_string_values_without_image_data() -> None:
    body = json.dumps({"model": "m", "messages": [{"content": "one two three"}, {"url": "data:x;base64,AAAA"}]})
    assert prompt_tokens(body.encode(), lambda text: len(text.split())) == 1 + 3


def test_a_tokenizer_on_a_body_it_cannot_parse_falls_back_to_bytes() -> None:
    assert prompt_tokens(b"[" * 100_000, lambda text: 1) == 25_000
    assert prompt_tokens(b'{"a": "\xff"}', lambda text: 1) == 3


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.builds(lambda s: json.dumps(s).encode(), st.recursive(st.text(), st.lists)))
def test_no_body_makes_the_estimate_raise(body: bytes) -> None:
    for count in (None, len):
        cost = estimate(body, None, 7, count)
        assert cost >= 7, f"the estimate of {body!r} is below the output default"


def test_the_tiktoken_extra_counts_with_its_encoding(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("tiktoken")

    class Encoding:
        def encode(self, text: str, disallowed_special: tuple[str, ...] = ("all",)) -> list[int]:
            assert disallowed_special == (), "text that looks like a special token is still text"
            return list(range(len(text.split())))

    def get_encoding(name: str) -> Encoding:
        if name != "o200k_base":
            raise ValueError(name)
        return Encoding()

    fake.get_encoding = get_encoding  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tiktoken", fake)
    assert tiktoken_counter("o200k_base")("a b c") == 3
    with pytest.raises(ConfigurationError, match="cannot load the encoding 'nope'"):
        tiktoken_counter("nope")
    balancer = make([PTU], FakeClock(), policy=Policy(headroom_tokenizer="o200k_base"))
    answer(balancer, PTU, {"x-ratelimit-remaining-tokens": "1000000"})
    attempt(begin(balancer, b'{"max_tokens": 5, "messages": [{"content": "four words right here"}]}'))
    assert [tokens for _, tokens, _ in slot_of(balancer, PTU).pending.values()] == [4 + 5]


def test_the_tokenizer_needs_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tiktoken", None)
    with pytest.raises(ConfigurationError, match=r"openai-lb\[tokens\]"):
        make([PTU], FakeClock(), policy=Policy(headroom_tokenizer="o200k_base"))


def test_a_backend_whose_answers_carry_no_headroom_costs_no_estimate(
    clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    import openai_lb._core as core

    estimates: list[int] = []

    def spy(*args: object) -> int:
        estimates.append(estimate(*args))  # type: ignore[arg-type]
        return estimates[-1]

    monkeypatch.setattr(core, "estimate", spy)
    balancer = make([PTU, PAYGO], clock)
    call = begin(balancer)
    call.report(attempt(call), 200, {}, None, raw({"content-type": "application/json"}))
    assert estimates == [COST], "the first attempt reserves: what its answer will say is not known yet"
    assert balancer.book is not None
    assert balancer.book.slot(PTU.key, "gpt-4o") is None, "an answer without headroom headers: silent"
    for _ in range(3):
        call = begin(balancer)
        call.report(attempt(call), 200, {}, None)
    assert estimates == [COST], "nothing reserved, nothing estimated, for a silent backend"
    answer(balancer, PTU, {"x-ratelimit-remaining-tokens": "100000"})
    call = begin(balancer)
    attempt(call)
    call.next()
    assert estimates == [COST, COST], "a reading ends the silence; one estimate per request"


def test_attempts_sent_before_the_first_reading_count_against_it(clock: FakeClock) -> None:
    balancer = make([PTU, PAYGO], clock)
    first = begin(balancer)
    first_step = attempt(first)
    burst = [attempt(begin(balancer)).backend.name for _ in range(3)]
    assert burst == ["ptu"] * 3, "nothing known yet: the PTU takes them, each reserving its estimate"
    first.report(first_step, 200, {}, None, raw({"x-ratelimit-remaining-tokens": str(3 * COST)}))
    assert attempt(begin(balancer)).backend is PAYGO, "the three sent after the first fill what it said was left"


def test_a_silent_backend_elsewhere_does_not_keep_a_cold_burst_from_counting(clock: FakeClock) -> None:
    store = InMemoryHealthStore()
    gateway = Backend("https://gateway.example.com", name="gateway")
    quiet = make_balancer([gateway], clock, store=store)
    call = begin(quiet)
    call.report(attempt(call), 200, {}, None, raw({"content-type": "application/json"}))
    balancer = make_balancer([PTU, PAYGO], clock, store=store)
    assert balancer.book is quiet.book, "clients of one store share its book"
    first = begin(balancer)
    first_step = attempt(first)
    burst = [attempt(begin(balancer)).backend.name for _ in range(3)]
    assert burst == ["ptu"] * 3
    first.report(first_step, 200, {}, None, raw({"x-ratelimit-remaining-tokens": str(3 * COST)}))
    assert attempt(begin(balancer)).backend is PAYGO, "the three sent after the first fill what it said was left"


# -- deciding with it


def test_a_backend_that_cannot_fit_the_request_is_passed_over_without_cooling(clock: FakeClock) -> None:
    events: list[Event] = []
    balancer = make([PTU, PAYGO], clock, hooks=[events.append])
    answer(balancer, PTU, {"x-ratelimit-remaining-tokens": str(COST - 1)})
    events.clear()
    step = attempt(begin(balancer))
    assert step.backend is PAYGO, "the PTU has one token too few"
    assert balancer.store.blocked(PTU.key, "gpt-4o", clock()) is None, "nothing cooled"
    assert not [e for e in events if isinstance(e, BackendCooled)]
    started = [e for e in events if isinstance(e, AttemptStarted)]
    assert started == [AttemptStarted("paygo", PAYGO.key, "gpt-4o", 1, None, ("ptu",))]
    ptu = balancer.status()[0]
    assert (ptu.passed_over, ptu.rate_limited, ptu.state) == (1, 0, "available")


def test_a_backend_with_room_enough_is_chosen(clock: FakeClock) -> None:
    balancer = make([PTU, PAYGO], clock)
    answer(balancer, PTU, {"x-ratelimit-remaining-tokens": str(COST), "x-ratelimit-remaining-requests": "1"})
    assert attempt(begin(balancer)).backend is PTU


def test_no_requests_left_passes_over_whatever_the_tokens(clock: FakeClock) -> None:
    balancer = make([PTU, PAYGO], clock)
    answer(balancer, PTU, {"x-ratelimit-remaining-tokens": "1000000", "x-ratelimit-remaining-requests": "0"})
    assert attempt(begin(balancer)).backend is PAYGO


def test_the_other_backend_of_the_tier_is_tried_before_the_next_tier(clock: FakeClock) -> None:
    balancer = make([PTU, PTU_B, PAYGO], clock)
    answer(balancer, PTU, {"x-ratelimit-remaining-requests": "0"})
    answer(balancer, PTU_B, {"x-ratelimit-remaining-requests": "50"})
    picks = {attempt(begin(balancer)).backend.name for _ in range(20)}
    assert picks == {"ptu-b"}, f"inside the tier the one with room takes it all: {picks}"


def test_a_whole_tier_without_room_sends_the_request_to_the_next(clock: FakeClock) -> None:
    events: list[Event] = []
    balancer = make([PTU, PAYGO, FAR], clock, hooks=[events.append])
    answer(balancer, PTU, {"x-ratelimit-remaining-requests": "0"})
    answer(balancer, PAYGO, {"x-ratelimit-remaining-requests": "0"})
    events.clear()
    assert attempt(begin(balancer)).backend is FAR
    assert [e.passed_over for e in events if isinstance(e, AttemptStarted)] == [("ptu", "paygo")]


def test_utilisation_at_the_threshold_passes_a_ptu_over(clock: FakeClock) -> None:
    balancer = make([PTU, PAYGO], clock, policy=Policy(headroom_utilization=90))
    answer(balancer, PTU, {"azure-openai-deployment-utilization": "89.9%"})
    assert attempt(begin(balancer)).backend is PTU
    answer(balancer, PTU, {"azure-openai-deployment-utilization": "90%"})
    assert attempt(begin(balancer)).backend is PAYGO


def test_when_every_backend_would_be_passed_over_the_usual_order_holds(clock: FakeClock) -> None:
    events: list[Event] = []
    balancer = make([PTU, PAYGO], clock, hooks=[events.append])
    answer(balancer, PTU, {"x-ratelimit-remaining-requests": "0"})
    answer(balancer, PAYGO, {"x-ratelimit-remaining-requests": "0"})
    events.clear()
    call = begin(balancer)
    step = attempt(call)
    assert step.backend is PTU, "never a 429 on an estimate alone: the first tier, as without headroom"
    assert [e.passed_over for e in events if isinstance(e, AttemptStarted)] == [()]
    assert slot_of(balancer, PTU).pending, "the fallback still reserves its estimate"
    call.report(step, 429, {"retry-after-ms": "100"}, None, raw({"x-ratelimit-remaining-requests": "0"}))
    assert attempt(call).backend is PAYGO, "a real 429 fails over as always"
    assert [s.passed_over for s in balancer.status()] == [0, 0]


def test_a_passed_over_backend_is_tried_again_when_the_request_fails_over(clock: FakeClock) -> None:
    balancer = make([PTU, PAYGO], clock)
    answer(balancer, PTU, {"x-ratelimit-remaining-tokens": "0"})
    call = begin(balancer)
    first = attempt(call)
    assert first.backend is PAYGO
    call.report(first, 503, {}, None)
    assert attempt(call).backend is PTU, "the only backend left: tried in spite of its reading"


def test_headroom_off_reads_nothing_and_passes_nothing_over(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    import openai_lb._core as core

    def refuse(headers: object) -> None:
        raise AssertionError("headers must not be read with Policy(headroom=False)")

    monkeypatch.setattr(core, "read_signals", refuse)
    balancer = make([PTU, PAYGO], clock, policy=Policy(headroom=False))
    assert balancer.book is None
    for _ in range(3):
        answer(balancer, PTU, {"x-ratelimit-remaining-requests": "0"})
    assert [s.passed_over for s in balancer.status()] == [0, 0]


def test_headroom_off_still_counts_azure_spillover_for_a_backend_that_asks_for_it(clock: FakeClock) -> None:
    spilling = Backend("https://s.example.com", name="s", spillover_deployment="gpt-4o-paygo")
    balancer = make([spilling], clock, policy=Policy(headroom=False))
    answer(balancer, spilling, {"x-ms-spillover-from-deployment": "gpt-4o", "x-ms-deployment-name": "gpt-4o-paygo"})
    assert balancer.status()[0].spilled == 1


# -- reservations


def test_requests_in_flight_since_the_reading_count_against_it(clock: FakeClock) -> None:
    balancer = make([PTU, PAYGO], clock)
    answer(balancer, PTU, {"x-ratelimit-remaining-tokens": str(3 * COST)})
    chosen = [attempt(begin(balancer)).backend.name for _ in range(5)]
    assert chosen == ["ptu", "ptu", "ptu", "paygo", "paygo"], "three fit, the rest spill"


def test_requests_sent_before_the_answering_one_are_in_its_reading(clock: FakeClock) -> None:
    balancer = make([PTU, PAYGO], clock)
    answer(balancer, PTU, {"x-ratelimit-remaining-tokens": "1000000"})
    early = begin(balancer)
    early_step = attempt(early)
    clock.advance(0.01)
    answering = begin(balancer)
    step = attempt(answering)
    clock.advance(0.01)
    answering.report(step, 200, {}, None, raw({"x-ratelimit-remaining-tokens": str(COST)}))
    assert attempt(begin(balancer)).backend is PTU, "the earlier request is already in the reading's count"
    early.report(early_step, 200, {}, None)


def endings() -> list[tuple[str, Callable[[Call, Attempt], object]]]:
    return [
        ("success", lambda call, step: call.report(step, 200, {}, None)),
        ("client error", lambda call, step: call.report(step, 400, {}, b"{}")),
        ("429", lambda call, step: call.report(step, 429, {"retry-after-ms": "1"}, None)),
        ("503", lambda call, step: call.report(step, 503, {}, None)),
        ("transport error", lambda call, step: call.report_error(step, ConnectionError())),
        ("token provider", lambda call, step: call.skip(step, RuntimeError())),
        ("abandoned", lambda call, step: call.release(step, KeyboardInterrupt())),
    ]


@pytest.mark.parametrize(("how", "end"), endings(), ids=[name for name, _ in endings()])
def test_every_way_an_attempt_ends_releases_its_reservation(
    clock: FakeClock, how: str, end: Callable[[Call, Attempt], object]
) -> None:
    balancer = make([PTU, PAYGO], clock)
    answer(balancer, PTU, {"x-ratelimit-remaining-tokens": "1000000"})
    call = begin(balancer)
    step = attempt(call)
    assert len(slot_of(balancer, PTU).pending) == 1
    end(call, step)
    assert not slot_of(balancer, PTU).pending, f"{how} left the reservation held"


def test_a_hook_raising_as_the_attempt_starts_releases_the_reservation(clock: FakeClock) -> None:
    def interrupt(event: Event) -> None:
        if isinstance(event, AttemptStarted):
            raise KeyboardInterrupt

    balancer = make([PTU], clock, hooks=[interrupt])
    answer(balancer, PTU, {"x-ratelimit-remaining-tokens": "1000000"})
    with pytest.raises(KeyboardInterrupt):
        begin(balancer).next()
    assert not slot_of(balancer, PTU).pending


def test_a_hundred_threads_never_take_more_than_the_room_there_is(clock: FakeClock) -> None:
    balancer = make([PTU, PAYGO], clock)
    answer(balancer, PTU, {"x-ratelimit-remaining-tokens": str(10 * COST), "x-ratelimit-remaining-requests": "50"})
    barrier = threading.Barrier(100, timeout=30)

    def send(_: int) -> str:
        call = begin(balancer)
        barrier.wait()  # all 100 choose at once
        return attempt(call).backend.name

    with ThreadPoolExecutor(max_workers=100) as pool:
        chosen = list(pool.map(send, range(100), timeout=60))
    assert len(chosen) == 100, "every thread chose a backend"
    assert chosen.count("ptu") == 10, f"room for exactly 10 on the PTU, {chosen.count('ptu')} went there"
    assert len(slot_of(balancer, PTU).pending) == 10


# -- what answers teach


def test_readings_of_429s_failures_and_spilled_answers_are_not_kept(clock: FakeClock) -> None:
    balancer = make([PTU, PAYGO], clock)
    answer(balancer, PTU, {"x-ratelimit-remaining-requests": "0"}, status=429)
    assert balancer.book is not None
    assert balancer.book.slot(PTU.key, "gpt-4o") is None, "the 429's cooldown speaks for it"
    clock.advance(20)
    answer(balancer, PTU, {"x-ratelimit-remaining-requests": "0"}, status=503)
    assert balancer.book.slot(PTU.key, "gpt-4o") is None
    clock.advance(20)
    answer(balancer, PTU, {"x-ratelimit-remaining-requests": "0", "x-ms-spillover-from-deployment": "gpt-4o"})
    assert balancer.book.slot(PTU.key, "gpt-4o") is None, "those are the spillover deployment's limits"


def test_a_spilled_answer_is_counted_and_named_in_the_attempt(clock: FakeClock) -> None:
    events: list[Event] = []
    spilling = Backend("https://s.example.com", name="s", spillover_deployment="gpt-4o-paygo")
    balancer = make([spilling], clock, hooks=[events.append])
    answer(balancer, spilling, {"x-ms-spillover-from-deployment": "gpt-4o", "x-ms-deployment-name": "gpt-4o-std"})
    answer(balancer, spilling, {"x-ms-spillover-from-deployment": "gpt-4o"})
    answer(balancer, spilling, {"x-ms-deployment-name": "gpt-4o"})
    finished = [e.spilled_to for e in events if isinstance(e, AttemptFinished)]
    assert finished == ["gpt-4o-std", "gpt-4o-paygo", None], "the deployment that served; else the configured one"
    status = balancer.status()[0]
    assert (status.spilled, status.successes) == (2, 3)


def test_the_utilisation_rate_is_learned_and_reserved_against(clock: FakeClock) -> None:
    balancer = make([PTU, PAYGO], clock, policy=Policy(headroom_utilization=95))
    answer(balancer, PTU, {"azure-openai-deployment-utilization": "40%"})
    answer_chosen(balancer, PTU, {"azure-openai-deployment-utilization": "50%"})
    assert slot_of(balancer, PTU).rate is None, "the first reading's request was sent before any reading"
    answer_chosen(balancer, PTU, {"azure-openai-deployment-utilization": f"{50 + COST / 100}%"})
    rate = slot_of(balancer, PTU).rate
    assert rate == pytest.approx(0.01), f"one request of {COST} tokens added {COST / 100} %: {rate}"
    # 51.1 % now; each request adds 1.1 %: 39 fit below 95 %, the 40th would reach it.
    chosen = [attempt(begin(balancer)).backend.name for _ in range(41)]
    assert chosen.count("ptu") == 39, f"{chosen.count('ptu')} went to the PTU"


def test_an_output_limit_too_large_for_a_float_never_makes_a_call_raise(clock: FakeClock) -> None:
    balancer = make([PTU, PAYGO], clock)
    answer(balancer, PTU, {"azure-openai-deployment-utilization": "40%"})
    for value in ("50%", "51%"):
        answer_chosen(balancer, PTU, {"azure-openai-deployment-utilization": value})
    assert slot_of(balancer, PTU).rate is not None, "the PTU has learned how much a token adds"
    body = b'{"model": "gpt-4o", "max_tokens": 1' + b"0" * 400 + b', "messages": []}'
    template = RequestTemplate(b"/openai/v1/chat/completions", JSON_HEADERS, body)
    call = balancer.begin(template.deployment, None, template.body, template.output_tokens)
    step = attempt(call)
    assert call.report(step, 400, {}, None, raw({"azure-openai-deployment-utilization": "52%"}))


def test_a_utilisation_that_fell_teaches_no_rate(clock: FakeClock) -> None:
    balancer = make([PTU], clock)
    answer(balancer, PTU, {"azure-openai-deployment-utilization": "50%"})
    for value in ("60%", "20%"):
        answer_chosen(balancer, PTU, {"azure-openai-deployment-utilization": value})
    assert slot_of(balancer, PTU).rate is None


# -- configuration


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("headroom", 1),
        ("headroom_horizon", 0),
        ("headroom_horizon", math.inf),
        ("headroom_utilization", 0),
        ("headroom_utilization", 101),
        ("headroom_utilization", True),
        ("headroom_output_tokens", -1),
        ("headroom_output_tokens", 1.5),
        ("headroom_tokenizer", ""),
    ],
)
def test_headroom_settings_are_validated(field: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match=f"Policy.{field}"):
        Policy(**{field: value})  # type: ignore[arg-type]


# -- in the logs


def test_the_log_names_the_backends_passed_over_and_escapes_a_spilled_deployment(
    clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    spilling = Backend("https://s.example.com", priority=1, name="s")
    balancer = make([spilling, PAYGO], clock)
    answer(balancer, spilling, {"x-ratelimit-remaining-requests": "0"})
    with caplog.at_level(logging.DEBUG, logger="openai_lb"):
        call = begin(balancer)
        step = attempt(call)
        call.report(step, 200, {}, None, raw({"x-ms-spillover-from-deployment": "a", "x-ms-deployment-name": "b\rc"}))
    messages = [record.getMessage() for record in caplog.records]
    assert "attempt 1: paygo (deployment 'gpt-4o'; passed over for headroom: s)" in messages
    assert "attempt 1 on paygo ended: success (HTTP 200, Azure spilled it to deployment 'b\\rc')" in messages


def test_a_backend_with_azures_own_spillover_is_not_passed_over(clock: FakeClock) -> None:
    spilling = Backend("https://ptu.example.com", priority=1, name="ptu", spillover_deployment="gpt-4o-standard")
    balancer = make([spilling, PAYGO], clock)
    answer(balancer, spilling, {"azure-openai-deployment-utilization": "99%"})
    assert attempt(begin(balancer)).backend is spilling, "Azure spills it in the same round trip: no detour"
    assert balancer.status()[0].passed_over == 0
