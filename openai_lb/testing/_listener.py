"""Listening sockets of the fake: one port on 127.0.0.1, its threads and its connections.

`Listener` serves a lone `FakeAzureOpenAI` or a whole `FakeAzureGroup` in a background
thread; the only difference is ``member_for``, which picks the `Responder` for a path. It
owns the open connections and the stopping flag, so that `Listener.close` ends idle
keep-alive connections, stalls and slow streams at once. Nothing here knows HTTP beyond
handing connections to `Handler`, nor any Azure rule.
"""

from __future__ import annotations

import contextlib
import socket
import sys
import threading
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from socketserver import TCPServer
from types import TracebackType
from typing import Any, TypeVar

from openai_lb.testing._handler import Handler, Responder

HOST = "127.0.0.1"

# How often the accept loop checks for shutdown; it bounds how long close() waits for the loop.
_POLL_INTERVAL = 0.05


def closed_port_url() -> str:
    """Return ``http://127.0.0.1:<port>`` for a port nothing listens on, for connection-refused tests.

    The port comes from the OS and is released at once, so another process could
    take it in between; on a test machine that is very unlikely.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        port = probe.getsockname()[1]
    return f"http://{HOST}:{port}"


_Self = TypeVar("_Self", bound="StartStop")


class StartStop:
    """``with`` support for anything that has ``start`` and ``stop``."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self: _Self) -> _Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _quiet_shutdown(connection: socket.socket) -> None:
    # OSError means it is already closed by its handler or by the peer: nothing left to wake.
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)


class Listener(ThreadingHTTPServer):
    """One listening port on 127.0.0.1 and its threads, for a lone server or a whole group.

    The port is bound on construction; `serve_in_background` starts accepting. It satisfies
    the handler's `Venue`.
    """

    daemon_threads = True
    # The default backlog of 5 makes bursts of new connections (hundreds of tasks at once) wait for SYN retries.
    request_queue_size = 2048
    # Never join handler threads on close: idle keep-alive connections would make close() hang.
    block_on_close = False

    def __init__(self, member_for: Callable[[str], Responder | None], *, name: str, thread_name: str) -> None:
        self.member_for = member_for
        self.name = name
        """Told back in the ``x-fake-server`` header of answers that no member gives."""
        self.stopping = threading.Event()
        # Guards _connections and the check of `stopping` that goes with it.
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._thread = threading.Thread(
            target=self.serve_forever, kwargs={"poll_interval": _POLL_INTERVAL}, name=thread_name, daemon=True
        )
        super().__init__((HOST, 0), Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def serve_in_background(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop accepting, close the port and drop every open connection, within a fraction of a second."""
        with self._lock:
            # Set under the lock so a connection accepted from now on is dropped by track().
            self.stopping.set()
            connections = list(self._connections)
        if self._thread.ident is not None:
            self.shutdown()
        self.server_close()
        # Handler threads of idle keep-alive connections block reading the next request;
        # shutting their sockets down wakes them with EOF so they end now, not when the client leaves.
        for connection in connections:
            _quiet_shutdown(connection)
        if self._thread.ident is not None:
            self._thread.join(timeout=1.0)

    def track(self, connection: socket.socket) -> None:
        with self._lock:
            stopping = self.stopping.is_set()
            if not stopping:
                self._connections.add(connection)
        if stopping:
            _quiet_shutdown(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)

    def wait_unless_stopped(self, seconds: float) -> bool:
        """Sleep ``seconds``; return True at once if the listener stops meanwhile."""
        return self.stopping.wait(seconds) if seconds > 0 else self.stopping.is_set()

    def server_bind(self) -> None:
        # HTTPServer.server_bind would call socket.getfqdn(), a reverse DNS lookup we neither need nor want.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name = str(host)
        self.server_port = int(port)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that hang up or time out are part of the tests; only report real bugs.
        if isinstance(sys.exc_info()[1], OSError):
            return
        super().handle_error(request, client_address)
