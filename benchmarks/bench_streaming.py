"""Time to first and last chunk of a streamed chat completion, balanced vs plain."""

from __future__ import annotations

import random
import time
from typing import Any

from _measure import MESSAGES, spread
from _servers import ServerProcess
from _systems import sync_client
from bench_overhead import _backends


def streaming(rounds: int, chunks: int, delay: float, systems: list[str]) -> dict[str, Any]:
    """Each round streams one answer per system; the server pauses ``delay`` seconds between chunks."""
    servers = [
        {"name": n, "stream_chunks": chunks, "chunk_delay": delay, "path_prefix": f"/{n}"}
        for n in ("target", "spare-a", "spare-b")
    ]
    # One port for all three: the existing package can change only a URL's host.
    with ServerProcess(servers, group=True) as process:
        clients = {s: sync_client(s, _backends(lambda n: process.urls[n], s), max_retries=0) for s in systems}
        first: dict[str, list[float]] = {s: [] for s in systems}
        last: dict[str, list[float]] = {s: [] for s in systems}
        for client in clients.values():
            list(client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True))
        for _ in range(rounds):
            for system in random.sample(systems, len(systems)):
                started = time.perf_counter()
                seen_first = None
                for _ in clients[system].chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True):
                    if seen_first is None:
                        seen_first = time.perf_counter() - started
                first[system].append(seen_first or 0.0)
                last[system].append(time.perf_counter() - started)
        for client in clients.values():
            client.close()
    plain_first, plain_last = first["plain"], last["plain"]
    return {
        "rounds": rounds,
        "chunks": chunks,
        "chunk_delay_s": delay,
        "first_chunk_ms": {s: spread([v * 1e3 for v in values]) for s, values in first.items()},
        "last_chunk_ms": {s: spread([v * 1e3 for v in values]) for s, values in last.items()},
        "first_chunk_minus_plain_ms": {
            s: spread([(v - p) * 1e3 for v, p in zip(values, plain_first, strict=True)]) for s, values in first.items()
        },
        "last_chunk_minus_plain_ms": {
            s: spread([(v - p) * 1e3 for v, p in zip(values, plain_last, strict=True)]) for s, values in last.items()
        },
    }
