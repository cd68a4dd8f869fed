"""Small helpers shared by the end-to-end tests."""

from __future__ import annotations

import inspect
import threading
from dataclasses import dataclass
from typing import Any, TypeVar

from openai_lb import AttemptStarted, Balancer, Event

E = TypeVar("E", bound=Event)


def chat(client: Any, model: str = "gpt-4o") -> Any:
    """One chat completion; returns the raw response (headers) and the parsed completion."""
    return client.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": "hi"}])


async def done(value: Any) -> Any:
    """What an SDK call gave: awaited for an async client, as it is for a sync one (a sync call blocks
    the event loop meanwhile, which the fake servers, in threads of their own, do not mind)."""
    return await value if inspect.isawaitable(value) else value


def content(raw: Any) -> str:
    text: str = raw.parse().choices[0].message.content
    return text


def assert_stream_cut(error: BaseException) -> None:
    """The error (or one it wraps: openai 3.x wraps it) is the HTTP library's incomplete-body error."""
    seen: BaseException | None = error
    while seen is not None:
        if "incomplete chunked read" in str(seen):
            return
        seen = seen.__cause__ or seen.__context__
    raise AssertionError(f"expected an incomplete-body error, got {error!r}")


def balancer_of(client: Any) -> Balancer:
    """The balancer under ``client`` (also for an SDK client over our transport)."""
    balancer: Balancer = client._client._transport.balancer
    return balancer


def statuses(client: Any) -> dict[str, Any]:
    """``status()`` of the balancer under ``client`` by backend name (also for an SDK client over our transport)."""
    return {status.name: status for status in balancer_of(client).status()}


class Recorder:
    """A thread-safe hook keeping every event."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._lock = threading.Lock()

    def __call__(self, event: Event) -> None:
        with self._lock:
            self.events.append(event)

    def of(self, kind: type[E]) -> list[E]:
        return [e for e in self.events if isinstance(e, kind)]


@dataclass
class Balanced:
    """A balanced SDK client (sync or async) and every event its balancer announced."""

    client: Any
    events: Recorder

    def routes(self) -> list[tuple[str, str | None]]:
        """(backend, affinity) of every attempt, in order."""
        return [(event.backend, event.affinity) for event in self.events.of(AttemptStarted)]
