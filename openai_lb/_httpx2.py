"""The balancing transport bound to httpx2 (openai 3.x)."""

from __future__ import annotations

import ssl
from typing import Any, ClassVar

import anyio
import httpx2

from ._shell import BalancingShell

__all__ = ["HTTPX2Transport"]


class HTTPX2Transport(BalancingShell, httpx2.BaseTransport, httpx2.AsyncBaseTransport):
    """Balancing transport for ``httpx2.Client`` and ``httpx2.AsyncClient``.

    ``httpx2.Client(transport=HTTPX2Transport([Backend("https://a.openai.azure.com")]))``
    """

    _http: ClassVar[Any] = httpx2
    # httpx2 lets some TLS and stream-end failures of its I/O layer through unmapped.
    _failover_errors: ClassVar[tuple[type[BaseException], ...]] = (
        httpx2.TransportError,
        ssl.SSLError,
        anyio.EndOfStream,
    )
    _local_errors: ClassVar[tuple[type[BaseException], ...]] = (
        httpx2.LocalProtocolError,
        httpx2.UnsupportedProtocol,
        httpx2.PoolTimeout,
    )
