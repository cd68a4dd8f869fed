"""Several fake Azure OpenAI servers on one port, told apart by their path prefixes.

The group depends on `FakeAzureOpenAI` and on `Listener`; the server knows the group only
as an object it was told to answer in, so the import goes one way.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Iterable

from openai_lb.testing._handler import Responder
from openai_lb.testing._listener import HOST, Listener, StartStop
from openai_lb.testing._routes import inner_path
from openai_lb.testing._server import FakeAzureOpenAI


class FakeAzureGroup(StartStop):
    """Serve several `FakeAzureOpenAI` members on one port of 127.0.0.1, chosen by path prefix.

    For clients that can change only the host of a URL, not its port: all members share
    ``http://127.0.0.1:<port>`` and differ by their ``path_prefix`` alone. Each request goes
    to the member whose prefix starts its path (requests on one keep-alive connection may
    go to different members) and is then handled exactly as that member alone would
    handle it: name, deployments, keys, budget, scripted actions, records, counters and
    streaming all stay per member. While the group runs, a member's `url` and `port` are
    the group's, and starting the member on its own raises `RuntimeError`.

    A request whose path no member's prefix starts gets a 404 ``"Resource not found"``
    and is recorded by no member.

    Args:
        members: The servers to serve. Each needs a non-empty ``path_prefix`` that is
            not another member's prefix and does not start with one at a ``/`` boundary
            (``"/a"`` and ``"/ab"`` may be grouped, ``"/a"`` and ``"/a/b"`` may not); none
            may be running. Otherwise `ValueError`, when constructed and again when started.
        name: Told back in the ``x-fake-server`` header of answers no member gives.
    """

    def __init__(self, members: Iterable[FakeAzureOpenAI], *, name: str = "group") -> None:
        self._members = tuple(members)
        _check_members(self._members)
        for member in self._members:
            problem = member._busy_problem()
            if problem is not None:
                raise ValueError(problem)
        self.name = name
        # Serializes start() and stop() so that concurrent calls cannot leak a server.
        self._lifecycle = threading.Lock()
        self._listener: Listener | None = None
        self._port: int | None = None
        # Each member with the responder it handed over when the group last started.
        self._joined: tuple[tuple[FakeAzureOpenAI, Responder], ...] = ()

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Bind a free port on 127.0.0.1 and serve every member on it (does nothing if already serving)."""
        with self._lifecycle:
            if self._listener is not None:
                return
            # Prefixes may have been changed since construction.
            _check_members(self._members)
            listener = Listener(self._member_for, name=self.name, thread_name=f"FakeAzureGroup({self.name})")
            joined: list[tuple[FakeAzureOpenAI, Responder]] = []
            try:
                for member in self._members:
                    joined.append((member, member._join_group(self, listener.port)))
            except BaseException:
                for member, _ in joined:
                    member._leave_group(self)
                listener.close()
                raise
            self._joined = tuple(joined)
            listener.serve_in_background()
            self._listener, self._port = listener, listener.port

    def stop(self) -> None:
        """Stop serving and drop open connections, within a fraction of a second (idempotent).

        The members are then free to be started alone or in another group.
        """
        with self._lifecycle:
            listener, self._listener = self._listener, None
            if listener is None:
                return
            listener.close()
            for member in self._members:
                member._leave_group(self)

    def __repr__(self) -> str:
        prefixes = ", ".join(member.path_prefix for member in self._members)
        where = self.url if self._port is not None else "not started"
        return f"FakeAzureGroup(name={self.name!r}, [{prefixes}], {where})"

    # -- public state ----------------------------------------------------------------

    @property
    def members(self) -> tuple[FakeAzureOpenAI, ...]:
        """The grouped servers, in the order given."""
        return self._members

    @property
    def port(self) -> int:
        """The TCP port every member is served on (raises `RuntimeError` before `start`)."""
        if self._port is None:
            raise RuntimeError("FakeAzureGroup has not been started; use start() or a with block")
        return self._port

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``, without any member's prefix; each member's `url` adds its own."""
        return f"http://{HOST}:{self.port}"

    # -- used by handler threads -----------------------------------------------------

    def _member_for(self, path: str) -> Responder | None:
        for member, responder in self._joined:
            if member.path_prefix and inner_path(member.path_prefix, path) is not None:
                return responder
        return None


def _check_members(members: tuple[FakeAzureOpenAI, ...]) -> None:
    """Raise if the members cannot share one port: each needs its own prefix, none inside another's."""
    if not members:
        raise ValueError("FakeAzureGroup needs at least one FakeAzureOpenAI member")
    for member in members:
        if not isinstance(member, FakeAzureOpenAI):
            raise TypeError(f"FakeAzureGroup members must be FakeAzureOpenAI instances, got {member!r}")
    for first, second in itertools.combinations(members, 2):
        if first is second:
            raise ValueError(f"{first!r} is given twice; each member can be grouped once")
    for member in members:
        if not member.path_prefix:
            raise ValueError(
                f"member {member.name!r} has no path_prefix; in a FakeAzureGroup every member needs its own,"
                f" e.g. path_prefix='/{member.name}'"
            )
    for first, second in itertools.combinations(members, 2):
        if first.path_prefix == second.path_prefix:
            raise ValueError(
                f"members {first.name!r} and {second.name!r} both have the path prefix {first.path_prefix!r};"
                " each member needs a distinct one"
            )
        for outer, inner in ((first, second), (second, first)):
            if inner.path_prefix.startswith(outer.path_prefix + "/"):
                raise ValueError(
                    f"the path prefix {outer.path_prefix!r} of member {outer.name!r} is a prefix of"
                    f" {inner.path_prefix!r} of member {inner.name!r}, so their paths would overlap"
                )
