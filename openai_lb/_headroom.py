"""Headroom: how much a deployment can still take, read from its answers, and what a request will cost.

Azure OpenAI tells the client on every answer how much room its deployment has left: standard
deployments send ``x-ratelimit-remaining-requests`` / ``-tokens`` (with their limits and reset times),
provisioned (PTU) ones ``azure-openai-deployment-utilization``. It charges a request, when it admits
it, its prompt tokens plus ``max_tokens``. With both, the balancer passes over a backend that cannot
fit a request *before* sending it, instead of learning that from a 429.

Pure and total like ``_headers``: garbage in a header is absent, never an error; the clock is the
caller's. The ``HeadroomBook`` is the only mutable thing here: per (backend, deployment) the latest
reading and the requests sent since it, behind one lock.

How a reading and the requests in flight add up (``Slot.fits``): a reading describes what Azure had
admitted when the attempt it answered was *sent*; the attempts this process sent since then (at or
after that moment) and not yet answered are what it cannot know, so their estimates are reserved
against it. Each answer brings a newer reading, which then counts the attempts sent before it. A
reservation ends with its attempt's answer (a stream's too, at its headers: the reading they carry
counts the request) or with whatever else ends the attempt: an error, a skip, a cancellation. A
deployment's first attempt opens its slot, so that a burst sent before the first reading arrives
counts against it; a deployment whose first answer carries none of these headers (a gateway that
drops them, another service) is silent: nothing is estimated or reserved there until one does.

Provisioned deployments report a utilisation percentage, not tokens. To reserve against it the book
learns, per deployment, how many percent one token adds: between two readings whose attempts it
sent, the utilisation rose by some amount while it had sent a known number of estimated tokens
(every reservation advances a running ``mark``), and rise / tokens is a sample of the rate (averaged
with the previous value). Samples where the utilisation did not rise say only that the PTU drained
faster than it was filled and are skipped; ignoring the drain makes the rate err low, so reservations
err on the side of sending to the PTU, which the threshold's margin absorbs. Until a rate is known, a
utilisation-only deployment is held to the threshold alone, as if nothing were in flight. The rate
model was chosen over counting requests in flight because requests differ in size by orders of
magnitude: a rate per token needs no other knob and reads as tokens of room left, like the
standard deployments' headers.
"""

from __future__ import annotations

import json
import math
import re
import threading
import weakref
from collections.abc import Callable, Mapping
from typing import NamedTuple

from ._errors import ConfigurationError
from ._headers import parse_reset

__all__ = [
    "SPILLOVER_DEPLOYMENT",
    "HeadroomBook",
    "Reading",
    "Signals",
    "Slot",
    "book_for",
    "estimate",
    "output_tokens",
    "parse_count",
    "parse_utilization",
    "prompt_tokens",
    "read_signals",
    "tiktoken_counter",
]

SPILLOVER_DEPLOYMENT = b"x-ms-spillover-deployment"
"""The request header naming the standard deployment Azure spills a provisioned one's overflow to."""

_REMAINING_REQUESTS = b"x-ratelimit-remaining-requests"
_REMAINING_TOKENS = b"x-ratelimit-remaining-tokens"
_LIMIT_REQUESTS = b"x-ratelimit-limit-requests"
_LIMIT_TOKENS = b"x-ratelimit-limit-tokens"
_RESET_REQUESTS = b"x-ratelimit-reset-requests"
_RESET_TOKENS = b"x-ratelimit-reset-tokens"
_UTILIZATION = b"azure-openai-deployment-utilization"
# Azure's own spillover (learn.microsoft.com/azure/ai-foundry/openai/how-to/spillover-traffic-management,
# "How to know a request spilled over"): the answer of a spilled request names the provisioned deployment it
# spilled from, and x-ms-deployment-name the deployment that served it. The page renders both names with a
# placeholder ("x-ms-spillover-from-<deployment-name>"); answers carry them as written here.
_SERVED_BY = b"x-ms-deployment-name"
_SPILLED_FROM = b"x-ms-spillover-from-deployment"
_NAMES = (
    _REMAINING_REQUESTS,
    _REMAINING_TOKENS,
    _LIMIT_REQUESTS,
    _LIMIT_TOKENS,
    _RESET_REQUESTS,
    _RESET_TOKENS,
    _UTILIZATION,
    _SERVED_BY,
    _SPILLED_FROM,
)

# tuple.__new__ skips a named tuple's own constructor, which is written in Python: one per answer.
_new = tuple.__new__

_DECIMAL = re.compile(rb"[ \t]*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)[ \t]*")
_PERCENT = re.compile(rb"[ \t]*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)[ \t]*%?[ \t]*")


def parse_count(value: bytes) -> float | None:
    """A non-negative count ("2998", " 12 ", "12.5"); None for anything else (signs, exponents, garbage)."""
    if len(value) < 19 and value.isdigit():  # ASCII digits (what Azure sends), short enough for int() to be quick
        return int(value)
    match = _DECIMAL.fullmatch(value)
    if match is None:
        return None
    number = float(match[1])
    return number if math.isfinite(number) else None


def parse_utilization(value: bytes) -> float | None:
    """A utilisation percentage ("87%", "87.5 %", "87"); None for anything else (negatives, NaN, garbage)."""
    match = _PERCENT.fullmatch(value)
    if match is None:
        return None
    number = float(match[1])
    return number if math.isfinite(number) else None


def _name(value: bytes | None) -> str | None:
    if not value:
        return None
    text = value.decode("latin-1").strip()
    return text or None


class Signals(NamedTuple):
    """What one answer's headers say of its deployment; None where a header is absent or unusable."""

    remaining_requests: float | None
    remaining_tokens: float | None
    limit_requests: float | None
    limit_tokens: float | None
    reset_requests: float | None
    """Seconds until the requests window refills."""
    reset_tokens: float | None
    utilization: float | None
    """Percent of a provisioned deployment in use."""
    deployment: str | None
    """The deployment that served a spilled request (``x-ms-deployment-name``); None when it did not spill."""
    spilled_from: str | None
    """The provisioned deployment Azure spilled this request from (``x-ms-spillover-from-deployment``)."""

    @property
    def has_room(self) -> bool:
        """Whether any header says how much room the deployment has."""
        return not (
            self.remaining_requests is None
            and self.remaining_tokens is None
            and self.utilization is None
            and self.limit_requests is None
            and self.limit_tokens is None
        )


def _count(value: bytes | None) -> float | None:
    if value is None:
        return None
    return int(value) if len(value) < 19 and value.isdigit() else parse_count(value)  # parse_count's quick case


def _reset(value: bytes | None) -> float | None:
    if value is None:
        return None
    if len(value) < 19 and value.isdigit():  # whole seconds, as Azure sends them
        return int(value) or None
    return parse_reset(value.decode("latin-1"))


def read_signals(headers: Mapping[bytes, bytes]) -> Signals | None:
    """The ``Signals`` of headers by lowercased name; None when none of the headers is there (nothing is parsed
    for an answer without them)."""
    if headers.keys().isdisjoint(_NAMES):  # in C: one lookup per name, no Python loop over the headers
        return None
    get = headers.get
    utilization = get(_UTILIZATION)
    spilled = get(_SPILLED_FROM)
    return _new(
        Signals,
        (
            _count(get(_REMAINING_REQUESTS)),
            _count(get(_REMAINING_TOKENS)),
            _count(get(_LIMIT_REQUESTS)),
            _count(get(_LIMIT_TOKENS)),
            _reset(get(_RESET_REQUESTS)),
            _reset(get(_RESET_TOKENS)),
            None if utilization is None else parse_utilization(utilization),
            # Which deployment served matters only when Azure spilled the request (it names it on every answer).
            None if spilled is None else _name(get(_SERVED_BY)),
            None if spilled is None else _name(spilled),
        ),
    )


# -- what a request costs


BYTES_PER_TOKEN = 4
"""A token of English text or JSON is about four bytes; the estimate rounds up."""
_BASE64 = b";base64,"
_JSON_START = re.compile(rb"[ \t\r\n]*[\[{]")
_OPENERS = b"{["
# A number of output tokens under one of the keys Azure reads; a longer number or a fraction is not one.
_MAX_LIMIT = 10**12
_MAX_OUTPUT = re.compile(rb'"max_(?:completion_|output_)?tokens"[ \t\r\n]*:[ \t\r\n]*([0-9]{1,12})(?![0-9.eE])')
_OUTPUT_KEYS = ("max_tokens", "max_completion_tokens", "max_output_tokens")


def output_tokens(parsed: object) -> int | None:
    """The largest output limit a parsed JSON body names at its top level; None when it names none."""
    if not isinstance(parsed, dict):
        return None
    found = None
    for key in _OUTPUT_KEYS:
        value = parsed.get(key)
        # Bounded like the byte search: a limit of hundreds of digits would overflow the float arithmetic.
        if (
            isinstance(value, int)
            and not isinstance(value, bool)
            and 0 <= value < _MAX_LIMIT
            and (found is None or value > found)
        ):
            found = value
    return found


def _searched_output(body: bytes) -> int | None:
    """The largest output limit named anywhere in the body's bytes (no parse; a nested key counts too)."""
    found = [int(number) for number in _MAX_OUTPUT.findall(body)]
    return max(found) if found else None


def _image_bytes(body: bytes) -> int:
    """Bytes of base64 data URLs (``data:image/png;base64,...``) up to their closing quote: not text."""
    total = 0
    at = body.find(_BASE64)
    while at >= 0:
        end = body.find(b'"', at)
        if end < 0:
            end = len(body)
        total += end - at
        at = body.find(_BASE64, end)
    return total


def prompt_tokens(body: bytes | None, count: Callable[[str], int] | None = None) -> int:
    """Prompt tokens of a JSON body: its bytes / ``BYTES_PER_TOKEN`` (JSON punctuation and keys included, base64
    image data left out), or, with ``count`` (a tokenizer's), the tokens of its string values; 0 for a body that
    is not JSON (a multipart upload). Never raises."""
    if not body or (body[0] not in _OPENERS and _JSON_START.match(body) is None):
        return 0  # no body, or not JSON (a multipart upload): no prompt text
    if count is not None:
        counted = _counted(body, count)
        if counted is not None:
            return counted
    return -(-(len(body) - _image_bytes(body)) // BYTES_PER_TOKEN)


def _counted(body: bytes, count: Callable[[str], int]) -> int | None:
    try:
        parsed = json.loads(body.decode())
    except (ValueError, RecursionError):
        return None
    total = 0
    stack = [parsed]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if not (item.startswith("data:") and ";base64," in item):
                total += count(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return total


def estimate(
    body: bytes | None,
    named_output: int | None,
    default_output: int,
    count: Callable[[str], int] | None = None,
) -> int:
    """What Azure charges a request when it admits it: prompt tokens plus its output limit.

    ``named_output`` is the limit the body names, when a parse already found it; otherwise the body's bytes
    are searched for ``max_tokens`` / ``max_completion_tokens`` / ``max_output_tokens``, and with none,
    ``default_output``. Never raises, whatever the body.
    """
    output = named_output
    # find(), not ``in``: bytes.__contains__ first tries its operand as an integer, and that failure costs more
    # than the search of a small body.
    if output is None and body and body.find(b'"max_') >= 0:
        output = _searched_output(body)
    return prompt_tokens(body, count) + (default_output if output is None else output)


def tiktoken_counter(encoding: str) -> Callable[[str], int]:
    """Exact token counts with tiktoken's ``encoding`` (the ``tokens`` extra); a ConfigurationError without it.

    tiktoken reads its encoding file on first use (from its cache, else from the network), so this is called
    once, when a balancer is built, never on a request.
    """
    try:
        import tiktoken  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        raise ConfigurationError(
            f"Policy.headroom_tokenizer={encoding!r} needs tiktoken: pip install 'openai-lb[tokens]' "
            f"(or leave headroom_tokenizer None for the character estimate)."
        ) from None
    try:
        encoder = tiktoken.get_encoding(encoding)
    except Exception as error:  # an unknown name, or the encoding file out of reach
        raise ConfigurationError(
            f"Policy.headroom_tokenizer: tiktoken cannot load the encoding {encoding!r} ({type(error).__name__})."
        ) from None

    def count(text: str) -> int:
        return len(encoder.encode(text, disallowed_special=()))

    return count


# -- the book


class Reading(NamedTuple):
    """One answer's ``Signals`` with when they hold: the clock of the core."""

    signals: Signals
    sent: float
    """When the attempt this answers was chosen: Azure had admitted what was sent before it."""
    received: float
    mark: int | None
    """The slot's running token count through the answered attempt (None: it was sent before the slot existed)."""


class Slot:
    """One (backend, deployment): its latest reading and the attempts sent to it and not yet answered.

    Changed only under the book's lock.
    """

    __slots__ = ("admitted", "pending", "rate", "reading")

    def __init__(self) -> None:
        self.reading: Reading | None = None
        # ticket -> (started, tokens, mark through it), oldest first (a dict keeps the order of insertion)
        self.pending: dict[int, tuple[float, int, int]] = {}
        self.admitted = 0
        """Tokens reserved here so far: a running mark that orders readings and measures what came between."""
        self.rate: float | None = None
        """Utilisation percent one token adds (provisioned deployments), once learned."""

    def _since(self, moment: float) -> tuple[int, int]:
        """Requests and tokens of the attempts in flight sent at or after ``moment``."""
        requests = tokens = 0
        for started, cost, _ in reversed(self.pending.values()):
            if started < moment:
                break
            requests += 1
            tokens += cost
        return requests, tokens

    def fits(self, tokens: int, now: float, horizon: float, threshold: float) -> bool:
        """Whether a request costing ``tokens`` fits what the latest reading (if it still holds) leaves."""
        reading = self.reading
        if reading is None or now >= reading.received + horizon:
            return True
        signals = reading.signals
        # Each quota as the reading has it, unless attempts are in flight or its window refilled since (``_left``).
        requests = signals.remaining_requests
        if requests is not None:
            reset = signals.reset_requests
            if self.pending or (reset is not None and now >= reading.received + reset):
                requests = self._left(reading, now, 0)
            if requests is not None and requests < 1:
                return False
        remaining = signals.remaining_tokens
        if remaining is not None:
            reset = signals.reset_tokens
            if self.pending or (reset is not None and now >= reading.received + reset):
                remaining = self._left(reading, now, 1)
            if remaining is not None and remaining < tokens:
                return False
        utilization = signals.utilization
        if utilization is None:
            return True
        if self.rate is not None:
            utilization += self.rate * (self._since(reading.sent)[1] + tokens)
        return utilization < threshold

    def _left(self, reading: Reading, now: float, of: int) -> float | None:
        """What one quota (``of`` 0: requests, 1: tokens) has left by the reading, less what was sent after it;
        once the quota's window has refilled, its limit less what was sent since. None: the reading does not say."""
        signals = reading.signals
        if of == 0:
            remaining, limit, reset = signals.remaining_requests, signals.limit_requests, signals.reset_requests
        else:
            remaining, limit, reset = signals.remaining_tokens, signals.limit_tokens, signals.reset_tokens
        if remaining is None:
            return None
        moment = reading.sent
        if reset is not None and now >= reading.received + reset:
            if limit is None:
                return None
            remaining, moment = limit, reading.received + reset
        return remaining - self._since(moment)[of] if self.pending else remaining

    def learn(self, reading: Reading) -> None:
        """Take ``reading`` (the caller has checked it is the newer one), learning the utilisation rate from it."""
        held = self.reading
        if (
            held is not None
            and reading.mark is not None
            and held.mark is not None
            and reading.mark > held.mark
            and reading.signals.utilization is not None
            and held.signals.utilization is not None
        ):
            rise = reading.signals.utilization - held.signals.utilization
            if rise > 0:
                sample = rise / (reading.mark - held.mark)
                self.rate = sample if self.rate is None else (self.rate + sample) / 2
        self.reading = reading


class HeadroomBook:
    """Readings and reservations per (backend key, deployment), shared by every balancer of one health store
    in this process (``book_for``). Thread-safe; bounded to ``max_slots`` deployments."""

    __slots__ = ("__weakref__", "_lock", "_tickets", "max_slots", "silent", "slots")

    def __init__(self, *, max_slots: int = 10_000) -> None:
        self.slots: dict[tuple[str, str], Slot] = {}
        """(backend key, deployment) -> its slot; read without the lock (one dict lookup), changed under it."""
        self.silent: set[tuple[str, str]] = set()
        """Deployments whose first answer carried no headroom headers (a gateway that drops them, another
        service): nothing is reserved there until an answer brings a reading."""
        self._lock = threading.Lock()
        self._tickets = 0
        self.max_slots = max_slots

    def __len__(self) -> int:
        return len(self.slots)

    def slot(self, key: str, deployment: str) -> Slot | None:
        """The slot of a deployment; None before its first attempt or reading."""
        return self.slots.get((key, deployment))

    def open(self, key: str, deployment: str) -> Slot | None:
        """The slot of a deployment, made at its first attempt, so that what is sent before its first reading
        arrives counts against that reading; None for a silent deployment, or while the book is full."""
        name = (key, deployment)
        slot = self.slots.get(name)
        if slot is not None or name in self.silent:
            return slot
        with self._lock:
            slot = self.slots.get(name)
            if slot is None and len(self.slots) < self.max_slots:
                slot = self.slots[name] = Slot()
            return slot

    def reserve(
        self, slot: Slot, started: float, tokens: int, *, check: tuple[float, float, float] | None = None
    ) -> int | None:
        """Reserve ``tokens`` on ``slot`` for an attempt chosen at ``started``; the ticket that releases it.

        With ``check`` (now, horizon, threshold), only if the request fits: None when it does not. Checking and
        reserving are one step under the lock, so concurrent callers never both take the last room.
        """
        lock = self._lock
        lock.acquire()  # not ``with``: on the path of every request, and its exit costs more than this work
        try:
            if check is not None and not slot.fits(tokens, check[0], check[1], check[2]):
                return None
            self._tickets = ticket = self._tickets + 1
            slot.admitted = admitted = slot.admitted + tokens
            slot.pending[ticket] = (started, tokens, admitted)
            return ticket
        finally:
            lock.release()

    def release(self, slot: Slot, ticket: int) -> None:
        """End a reservation (its answer brought no reading)."""
        with self._lock:
            slot.pending.pop(ticket, None)

    def hush(self, key: str, deployment: str, hold: tuple[Slot, int] | None) -> None:
        """End the reservation ``hold`` (if any) of an answer that could have brought a reading and did not. A
        deployment that has never sent one is silent from now on: its slot goes, and nothing is reserved there."""
        name = (key, deployment)
        with self._lock:
            if hold is not None:
                hold[0].pending.pop(hold[1], None)
            slot = self.slots.get(name)
            if slot is not None and slot.reading is None and not slot.pending and len(self.silent) < self.max_slots:
                del self.slots[name]
                self.silent.add(name)

    def record(
        self,
        key: str,
        deployment: str,
        hold: tuple[Slot, int] | None,
        signals: Signals,
        *,
        sent: float,
        received: float,
        horizon: float,
    ) -> None:
        """End the reservation ``hold`` (if any) of the attempt sent at ``sent`` and keep the reading its answer
        brought, unless the one held is newer and still holds."""
        name = (key, deployment)
        lock = self._lock
        lock.acquire()  # not ``with``: on the path of every answer, and its exit costs more than this work
        try:
            mark = None
            if hold is not None:
                held = hold[0].pending.pop(hold[1], None)
                if held is not None:
                    mark = held[2]
            if self.silent:
                self.silent.discard(name)
            slot = self.slots.get(name)
            if slot is None:
                if len(self.slots) >= self.max_slots and not self._forget_idle(received, horizon):
                    return
                slot = self.slots[name] = Slot()
            current = slot.reading
            if current is None or sent >= current.sent or received >= current.received + horizon:
                reading = _new(Reading, (signals, sent, received, mark))
                if signals.utilization is not None:
                    slot.learn(reading)
                else:
                    slot.reading = reading
        finally:
            lock.release()

    def _forget_idle(self, now: float, horizon: float) -> bool:
        """Forget the slots whose reading no longer holds and that have nothing in flight; whether any went."""
        idle = [
            name
            for name, slot in self.slots.items()
            if not slot.pending and (slot.reading is None or now >= slot.reading.received + horizon)
        ]
        for name in idle:
            del self.slots[name]
        return bool(idle)

    def clear(self) -> None:
        with self._lock:
            self.slots.clear()
            self.silent.clear()


_books: weakref.WeakKeyDictionary[object, HeadroomBook] = weakref.WeakKeyDictionary()
_books_lock = threading.Lock()


def book_for(store: object) -> HeadroomBook:
    """The book of the balancers sharing ``store``: readings are shared the way cooldowns are, and a client
    given a store of its own (a test) has a book of its own."""
    with _books_lock:
        try:
            book = _books.get(store)
            if book is None:
                book = _books[store] = HeadroomBook()
        except TypeError:  # a store of the user's own that cannot be hashed or weakly referenced
            return HeadroomBook()
        return book
