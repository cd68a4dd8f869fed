"""A throwaway ``redis-server`` on a free 127.0.0.1 port, without persistence, for tests.

```python
with RedisServer() as server:          # or RedisServer(password="s3cret")
    store = RedisHealthStore(server.url)
    server.kill()                       # SIGKILL, as a crash would
    server.start()                      # the same port again, empty
```

Whether the Redis tests run: without the ``redis`` package they skip, unless
``OPENAI_LB_TEST_REDIS=required`` (the tox cell with the ``redis`` extra sets it); without a
``redis-server`` binary they skip, unless in CI (``CI=true``) or required, where they fail.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from importlib.util import find_spec
from types import TracebackType

import pytest

REQUIRED = os.environ.get("OPENAI_LB_TEST_REDIS") == "required"
IN_CI = os.environ.get("CI", "").lower() == "true"


def require_redis() -> str:
    """The path of ``redis-server``; skips (or fails, where Redis is required) when it cannot run."""
    if find_spec("redis") is None:
        if REQUIRED:
            pytest.fail("OPENAI_LB_TEST_REDIS=required but the redis package is not installed")
        pytest.skip("the redis package is not installed (pip install 'openai-lb[redis]')")
    binary = shutil.which("redis-server")
    if binary is None:
        if REQUIRED or IN_CI:
            pytest.fail("redis-server is not installed, and the Redis tests must run here (CI or required)")
        pytest.skip("no redis-server on PATH (apt-get install redis-server)")
    return binary


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class RedisServer:
    """One ``redis-server`` process; ``start()`` after ``kill()`` or ``stop()`` reuses the port."""

    def __init__(self, *, password: str | None = None, binary: str | None = None) -> None:
        self.binary = binary or require_redis()
        self.password = password
        self.port = free_port()
        self._dir = tempfile.mkdtemp(prefix="openai_lb-redis-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and wait (at most ``timeout`` s) until it answers."""
        assert self.process is None, "the server is running already"
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        command += ["--dir", self._dir, "--daemonize", "no", "--loglevel", "warning"]
        if self.password:
            command += ["--requirepass", self.password]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as connection:
                    connection.sendall(b"PING\r\n")
                    answer = connection.recv(64)
                if answer.startswith((b"+PONG", b"-NOAUTH")):
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server did not start on port {self.port} within {timeout} s")
            time.sleep(0.02)

    def kill(self) -> None:
        """SIGKILL: the server vanishes without closing anything cleanly."""
        self._end(signal.SIGKILL)

    def stop(self) -> None:
        self._end(signal.SIGTERM)

    def _end(self, sig: int) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.process = None

    def client(self) -> object:
        """A plain redis-py client on the server (to look at keys or write foreign values)."""
        import redis

        return redis.Redis.from_url(self.url)

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
        shutil.rmtree(self._dir, ignore_errors=True)


def wait_until(condition: object, timeout: float = 5.0, what: str = "the condition") -> None:
    """Poll ``condition()`` every millisecond until true; fail after ``timeout`` seconds."""
    assert callable(condition)
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout} s")
        time.sleep(0.001)
