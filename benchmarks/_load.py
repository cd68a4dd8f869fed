"""Open-loop load: requests sent at fixed offsets from a start, whatever the answers, by asyncio tasks or by a
thread pool. Each ``send(index)`` makes one request and returns what the benchmark keeps of it (it catches
the errors it expects); the drivers return ``(arrived, finished, result)`` per request, on the monotonic clock.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

R = TypeVar("R")
Sent = tuple[float, float, R]


async def paced_tasks(start: float, offsets: Sequence[float], send: Callable[[int], Awaitable[R]]) -> list[Sent[R]]:
    """A task per offset, each sending at ``start + offset``; in the order of ``offsets``."""

    async def one(index: int, offset: float) -> Sent[R]:
        await asyncio.sleep(max(0.0, start + offset - time.monotonic()))
        arrived = time.monotonic()
        result = await send(index)
        return arrived, time.monotonic(), result

    return list(await asyncio.gather(*(one(index, offset) for index, offset in enumerate(offsets))))


def paced_threads(start: float, offsets: Sequence[float], send: Callable[[int], R]) -> list[Sent[R]]:
    """Each request handed to a pool of 256 threads at ``start + offset``; in the order they finished."""
    sent: list[Sent[R]] = []
    lock = threading.Lock()

    def one(index: int) -> None:
        arrived = time.monotonic()
        result = send(index)
        with lock:
            sent.append((arrived, time.monotonic(), result))

    with ThreadPoolExecutor(max_workers=256) as pool:
        for index, offset in enumerate(offsets):
            time.sleep(max(0.0, start + offset - time.monotonic()))
            pool.submit(one, index)
    return sent
