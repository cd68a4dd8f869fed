"""The balancing transport bound to httpx (openai 1.x and 2.x, or a legacy client on 3.x)."""

from __future__ import annotations

from typing import ClassVar

import httpx

from ._shell import BalancingShell
from ._stacks import HttpStack, load_stack

__all__ = ["HTTPXTransport"]


class HTTPXTransport(BalancingShell, httpx.BaseTransport, httpx.AsyncBaseTransport):
    """Balancing transport for ``httpx.Client`` and ``httpx.AsyncClient``.

    ``httpx.Client(transport=HTTPXTransport([Backend("https://a.openai.azure.com")]))``
    """

    _stack: ClassVar[HttpStack] = load_stack("httpx")
