"""The HTTP libraries openai_lb runs on, one frozen object each: httpx (openai 1.x, 2.x) and httpx2 (3.x).

Everything that differs between the two, or that depends on a library's internals, is here: the
module, which of its errors mean "fail over" and which mean "this machine's fault", and how headers
move in and out of its ``Headers``. The shell, ``check`` and the tests all go through these objects.

```python
stack = sdk_stack()            # the library the installed SDK builds its clients on
client = stack.module.Client()
```
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import ssl
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib.util import find_spec
from typing import Any, Literal

import openai

from ._framing import EventStreamEnd
from ._rewrite import Header, lowered

__all__ = ["STACK_NAMES", "HttpStack", "StackName", "installed_stacks", "load_stack", "sdk_stack"]

StackName = Literal["httpx", "httpx2"]
STACK_NAMES: tuple[StackName, ...] = ("httpx", "httpx2")


@dataclass(frozen=True, slots=True)
class HttpStack:
    """One HTTP library as the transport sees it."""

    name: StackName
    module: Any
    failover_errors: tuple[type[BaseException], ...]
    """What the inner transport raises for a backend that is down, refusing, or too slow."""
    local_errors: tuple[type[BaseException], ...]
    """Failover errors that are this machine's fault (bad header, full pool, closed client): they propagate."""
    header_triples: bool
    """Whether ``Headers`` keep ``Header`` triples that can be read and written directly."""
    checked_stream: type
    """A byte stream (sync and async) of this library that raises where an event stream ends early:
    ``checked_stream(inner, on_cut)``, ``on_cut(error)`` told of the cut (or the read error) first."""
    tapped_stream: type
    """A byte stream (sync and async) of this library that shows each chunk to ``tap`` before passing it
    on, until ``tap`` returns False: ``tapped_stream(inner, tap)``."""

    def __repr__(self) -> str:
        return f"HttpStack({self.name!r})"

    def read_headers(self, headers: Any) -> list[Header]:
        """A request's headers as ``Header`` triples (the library's own list when it keeps them so)."""
        if self.header_triples and isinstance(headers, self.module.Headers):
            triples: list[Header] = headers._list
            return triples
        return lowered(headers.raw)

    def build_headers(self, triples: list[Header]) -> Any:
        """The library's ``Headers`` holding ``triples``, without normalising them again."""
        module = self.module
        if not self.header_triples:
            return module.Headers([(name, value) for name, _, value in triples])
        headers = module.Headers()
        headers._list = triples
        return headers


def keeps_header_triples(module: Any) -> bool:
    """Whether ``module.Headers`` keeps its headers in ``_list`` as ``Header`` triples, and takes them back.

    Not public API, but httpx (0.18 on) and httpx2 both do, and reading and writing that list
    directly saves lowercasing the caller's headers and then normalising every attempt's again
    (about a fifth of the transport's cost). Checked once against the public API: should a
    version store headers differently, the stack goes through the public API instead.
    """
    sample: Sequence[tuple[bytes, bytes]] = [(b"Host", b"h.example"), (b"X-Name", b"v"), (b"Content-Length", b"2")]
    try:
        normalised = module.Headers(sample)
        built = module.Headers()
        built._list = lowered(sample)
        request = module.Request("POST", "http://h.example/", headers=built, stream=module.ByteStream(b"{}"))
        return bool(
            normalised._list == lowered(sample)
            and isinstance(request.headers._list, list)
            and request.headers.raw == sample
            and request.headers["x-name"] == "v"
            and request.headers == normalised
        )
    except Exception:
        return False


@functools.cache
def load_stack(name: StackName) -> HttpStack:
    """The stack of the library ``name``; raises ImportError when it is not installed."""
    module = importlib.import_module(name)
    failover: tuple[type[BaseException], ...] = (module.TransportError,)
    if name == "httpx2":
        import anyio

        # httpx2 lets some TLS and stream-end failures of its I/O layer through unmapped.
        failover += (ssl.SSLError, anyio.EndOfStream)
    local = (module.LocalProtocolError, module.UnsupportedProtocol, module.PoolTimeout)
    return HttpStack(
        name,
        module,
        failover,
        local,
        keeps_header_triples(module),
        _checked_stream(module, failover),
        _tapped_stream(module),
    )


def _checked_stream(module: Any, failover: tuple[type[BaseException], ...]) -> type:
    class CheckedStream(module.SyncByteStream, module.AsyncByteStream):  # type: ignore[misc]
        """Passes a close-delimited event stream through as it comes, raising where it ends early."""

        def __init__(self, inner: Any, on_cut: Callable[[BaseException], None]) -> None:
            self._inner = inner
            self._on_cut = on_cut
            self._end = EventStreamEnd()

        def _ended(self) -> None:
            if not self._end.complete():
                cut = module.RemoteProtocolError("the event stream ended without its terminal event (connection cut)")
                self._on_cut(cut)
                raise cut

        @contextlib.contextmanager
        def _watched(self) -> Iterator[None]:
            try:
                yield
            except failover as error:
                self._on_cut(error)
                raise
            self._ended()

        def __iter__(self) -> Iterator[bytes]:
            with self._watched():
                for chunk in self._inner:
                    self._end.feed(chunk)
                    yield chunk

        async def __aiter__(self) -> AsyncIterator[bytes]:
            with self._watched():
                async for chunk in self._inner:
                    self._end.feed(chunk)
                    yield chunk

        def close(self) -> None:
            self._inner.close()

        async def aclose(self) -> None:
            await self._inner.aclose()

    return CheckedStream


def _tapped_stream(module: Any) -> type:
    class TappedStream(module.SyncByteStream, module.AsyncByteStream):  # type: ignore[misc]
        """Passes a stream through as it comes, showing its first chunks to ``tap`` on the way."""

        def __init__(self, inner: Any, tap: Callable[[bytes], bool]) -> None:
            self._inner = inner
            self._tap = tap

        def __iter__(self) -> Iterator[bytes]:
            tapping = True
            for chunk in self._inner:
                if tapping:
                    tapping = self._tap(chunk)
                yield chunk

        async def __aiter__(self) -> AsyncIterator[bytes]:
            tapping = True
            async for chunk in self._inner:
                if tapping:
                    tapping = self._tap(chunk)
                yield chunk

        def close(self) -> None:
            self._inner.close()

        async def aclose(self) -> None:
            await self._inner.aclose()

    return TappedStream


def installed_stacks() -> tuple[HttpStack, ...]:
    """Every supported HTTP library installed here."""
    return tuple(load_stack(name) for name in STACK_NAMES if find_spec(name) is not None)


def sdk_stack() -> HttpStack:
    """The stack the installed SDK builds its clients on."""
    modules = {cls.__module__.split(".")[0] for cls in openai.DefaultHttpxClient.__mro__}
    return load_stack("httpx2" if "httpx2" in modules else "httpx")
