"""The balancing transport bound to httpx (openai 1.x and 2.x, or a legacy client on 3.x)."""

from __future__ import annotations

from typing import Any, ClassVar

import httpx

from ._shell import BalancingShell

__all__ = ["HTTPXTransport"]


class HTTPXTransport(BalancingShell, httpx.BaseTransport, httpx.AsyncBaseTransport):
    """Balancing transport for ``httpx.Client`` and ``httpx.AsyncClient``.

    ``httpx.Client(transport=HTTPXTransport([Backend("https://a.openai.azure.com")]))``
    """

    _http: ClassVar[Any] = httpx
    _failover_errors: ClassVar[tuple[type[BaseException], ...]] = (httpx.TransportError,)
    _local_errors: ClassVar[tuple[type[BaseException], ...]] = (
        httpx.LocalProtocolError,
        httpx.UnsupportedProtocol,
        httpx.PoolTimeout,
    )
