"""Fake Azure OpenAI servers in a process of their own, so their CPU time never lands in the client's.

Run as ``python benchmarks/_serve.py CONFIG`` where CONFIG is JSON:
``{"group": bool, "servers": [{"name": ..., "path_prefix": ..., "budget": ..., "window": ..., ...}]}``.
It prints one JSON line ``{"urls": {name: url}}``, then answers commands read from stdin, one per
line: ``stats`` prints ``{name: {"served": n, "rejected": n, "answers": [[t, status], ...]}}``
(``t`` on the machine's monotonic clock, shared by every process), ``reset`` clears counters;
end of input stops the servers.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from openai_lb.testing import FakeAzureGroup, FakeAzureOpenAI


def main() -> None:
    config = json.loads(sys.argv[1])
    servers = [FakeAzureOpenAI(**options) for options in config["servers"]]
    group = FakeAzureGroup(servers) if config.get("group") else None
    for runner in [group] if group is not None else servers:
        runner.start()
    print(json.dumps({"urls": {s.name: s.url for s in servers}}), flush=True)
    for line in sys.stdin:
        command = line.strip()
        if command == "stats":
            stats: dict[str, Any] = {
                s.name: {"served": s.served, "rejected": s.rejected, "answers": s.answers} for s in servers
            }
            print(json.dumps(stats), flush=True)
        elif command == "reset":
            for server in servers:
                server.reset()
            print("{}", flush=True)
    for runner in [group] if group is not None else servers:
        runner.stop()


if __name__ == "__main__":
    main()
