"""Work on a few daemon threads that an interrupt does not wait for."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

__all__ = ["MAX_PARALLEL", "in_parallel"]

MAX_PARALLEL = 8

_T = TypeVar("_T")
_R = TypeVar("_R")


def in_parallel(work: Callable[[_T], _R], items: Sequence[_T], *, name: str) -> list[_R]:
    """``work(item)`` for every item on up to `MAX_PARALLEL` threads named ``name-N``; the results in the
    items' order. The first exception raised by ``work`` is raised here.

    Daemon threads and a queue, not a ThreadPoolExecutor: its shutdown, and the interpreter's exit, wait
    for every running call, so Ctrl-C would hang until the slowest one ended. Here the wait on the queue
    ends at once, and the calls still running end on their own or with the process.
    """
    todo: queue.SimpleQueue[tuple[int, _T]] = queue.SimpleQueue()
    done: queue.SimpleQueue[tuple[int, _R | _Raised]] = queue.SimpleQueue()
    for index, item in enumerate(items):
        todo.put((index, item))

    def worker() -> None:
        while True:
            try:
                index, item = todo.get_nowait()
            except queue.Empty:
                return
            try:
                done.put((index, work(item)))
            except BaseException as error:  # handed to the caller, which raises it again
                done.put((index, _Raised(error)))

    for number in range(min(MAX_PARALLEL, len(items))):
        threading.Thread(target=worker, name=f"{name}-{number}", daemon=True).start()
    results: dict[int, _R] = {}
    for _ in items:
        index, outcome = done.get()
        if isinstance(outcome, _Raised):
            raise outcome.error
        results[index] = outcome
    return [results[index] for index in range(len(items))]


@dataclass(frozen=True, slots=True)
class _Raised:
    error: BaseException
