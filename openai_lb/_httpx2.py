"""The balancing transport bound to httpx2 (openai 3.x)."""

from __future__ import annotations

from typing import ClassVar

import httpx2

from ._shell import BalancingShell
from ._stacks import HttpStack, load_stack

__all__ = ["HTTPX2Transport"]


class HTTPX2Transport(BalancingShell, httpx2.BaseTransport, httpx2.AsyncBaseTransport):
    """Balancing transport for ``httpx2.Client`` and ``httpx2.AsyncClient``.

    ``httpx2.Client(transport=HTTPX2Transport([Backend("https://a.openai.azure.com")]))``
    """

    _stack: ClassVar[HttpStack] = load_stack("httpx2")
