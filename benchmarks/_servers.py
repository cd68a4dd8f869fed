"""Start and query the fake servers of ``_serve.py`` from the benchmark process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

HERE = Path(__file__).resolve().parent


def pin(core: int, pid: int = 0) -> None:
    """Keep a process on one core (the client on one, the servers on the other) to cut noise."""
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) >= 2:
        os.sched_setaffinity(pid, {core})


def stop(process: subprocess.Popen[Any]) -> None:
    """SIGTERM, and SIGKILL if the process is still there 10 seconds later."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class FastServer:
    """The minimal uvicorn server of ``_asgi.py`` in a child process; ``url(name)`` is one backend."""

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self._process = subprocess.Popen([sys.executable, str(HERE / "_asgi.py"), str(self.port)], cwd=HERE.parent)
        pin(1, self._process.pid)
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or self._process.poll() is not None:
                    self._process.kill()
                    raise RuntimeError("the uvicorn benchmark server did not start") from None
                time.sleep(0.05)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        stop(self._process)

    def __enter__(self) -> FastServer:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()


class ServerProcess:
    """Fake Azure OpenAI servers on 127.0.0.1, served by a child process."""

    def __init__(self, servers: list[dict[str, Any]], *, group: bool = False, sample: float | None = None) -> None:
        """``sample``: seconds between samples of each server's tokens charged and utilisation (none without)."""
        config = json.dumps({"group": group, "servers": servers, "sample": sample})
        self._process = subprocess.Popen(
            [sys.executable, str(HERE / "_serve.py"), config],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=HERE.parent,
        )
        pin(1, self._process.pid)
        self.urls: dict[str, str] = json.loads(self._readline())["urls"]

    def _readline(self) -> str:
        assert self._process.stdout is not None
        line = self._process.stdout.readline()
        if not line:
            raise RuntimeError("the fake server process exited; see its error output above")
        return line

    def _ask(self, command: str) -> Any:
        assert self._process.stdin is not None
        self._process.stdin.write(command + "\n")
        self._process.stdin.flush()
        return json.loads(self._readline())

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._ask("stats")
        return result

    def reset(self) -> None:
        self._ask("reset")

    def close(self) -> None:
        if self._process.stdin is not None:
            self._process.stdin.close()
        self._process.wait(timeout=10)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()
