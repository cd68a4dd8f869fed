"""Fake Azure OpenAI servers in a process of their own, so their CPU time never lands in the client's.

Run as ``python benchmarks/_serve.py CONFIG`` where CONFIG is JSON:
``{"group": bool, "servers": [{"name": ..., "path_prefix": ..., "budget": ..., "window": ..., ...}],
"sample": seconds}`` (``sample`` optional). It prints one JSON line ``{"urls": {name: url}}``, then
answers commands read from stdin, one per line: ``stats`` prints ``{name: {"served": n, "rejected": n,
"throttled": n, "tokens_used": n, "answers": [[t, status], ...], "samples": [[t, tokens_used,
{deployment: utilisation}], ...]}}`` (``t`` on the machine's monotonic clock, shared by every process;
``samples`` taken every ``sample`` seconds, for the deployments a server names in ``deployments``),
``reset`` clears counters, samples and what the servers remember; end of input stops the servers.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from typing import Any

from openai_lb.testing import FakeAzureGroup, FakeAzureOpenAI


class Sampler:
    """Every ``period`` seconds, each server's tokens charged so far and its deployments' utilisation."""

    def __init__(self, servers: list[FakeAzureOpenAI], period: float) -> None:
        self._servers = servers
        self._period = period
        self._lock = threading.Lock()
        self._samples: dict[str, list[list[Any]]] = {s.name: [] for s in servers}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            with self._lock:
                for server in self._servers:
                    names = sorted(server.deployments or ())
                    point = [time.monotonic(), server.tokens_used, {d: server.utilization(d) for d in names}]
                    self._samples[server.name].append(point)

    def samples(self, name: str) -> list[list[Any]]:
        with self._lock:
            return list(self._samples[name])

    def clear(self) -> None:
        with self._lock:
            for samples in self._samples.values():
                samples.clear()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def main() -> None:
    config = json.loads(sys.argv[1])
    servers = [FakeAzureOpenAI(**options) for options in config["servers"]]
    group = FakeAzureGroup(servers) if config.get("group") else None
    for runner in [group] if group is not None else servers:
        runner.start()
    sampler = Sampler(servers, config["sample"]) if config.get("sample") else None
    print(json.dumps({"urls": {s.name: s.url for s in servers}}), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "stats":
            stats: dict[str, Any] = {
                s.name: {
                    "served": s.served,
                    "rejected": s.rejected,
                    "throttled": s.throttled,
                    "tokens_used": s.tokens_used,
                    "answers": s.answers,
                    "samples": sampler.samples(s.name) if sampler is not None else [],
                }
                for s in servers
            }
            print(json.dumps(stats), flush=True)
        elif command == "reset":
            for server in servers:
                server.reset()
            if sampler is not None:
                sampler.clear()
            print("{}", flush=True)
    if sampler is not None:
        sampler.stop()
    for runner in [group] if group is not None else servers:
        runner.stop()


if __name__ == "__main__":
    main()
