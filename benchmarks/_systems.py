"""The systems compared, each built as its users would build it, over the same fake servers.

- ``plain``: the SDK's own client talking to one backend directly (the floor);
- ``openai_lb-1`` / ``openai_lb-3``: openai_lb with one backend, and with three (the target
  first, two more at a lower priority);
- ``priority-lb``: the ``openai-priority-loadbalancer`` package (1.1.1), wired as its README says;
- ``round-robin``: a naive transport cycling over every backend (spill-over simulation only).
"""

from __future__ import annotations

import itertools
import logging
import threading
from typing import Any
from urllib.parse import urlsplit

import httpx
import openai

import openai_lb

# The package logs every non-2xx answer at WARNING through the root logger's last-resort handler.
logging.getLogger("openai-priority-loadbalancer").setLevel(logging.ERROR)

API_VERSION = "2024-10-21"
API_KEY = "bench-key"


def _common(**kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("api_key", API_KEY)
    kwargs.setdefault("api_version", API_VERSION)
    return kwargs


def _priority_lb_backends(backends: list[tuple[str, int]]) -> tuple[str, list[Any]]:
    """The package changes only the host of a URL, so every backend must share one host and port."""
    import openai_priority_loadbalancer as oplb

    origins = {urlsplit(url)._replace(path="").geturl() for url, _ in backends}
    if len(origins) != 1:
        raise ValueError(f"openai-priority-loadbalancer needs backends on one host and port, got {origins}")
    converted = [
        oplb.Backend(urlsplit(url).hostname, priority, path=urlsplit(url).path.strip("/") or None)
        for url, priority in backends
    ]
    return origins.pop(), converted


def sync_client(system: str, backends: list[tuple[str, int]], **kwargs: Any) -> openai.AzureOpenAI:
    """A sync SDK client for ``system`` over ``backends`` (url, priority); ``plain`` uses the first."""
    kwargs = _common(**kwargs)
    if system == "plain":
        return openai.AzureOpenAI(azure_endpoint=backends[0][0], **kwargs)
    if system.startswith("openai_lb"):
        return openai_lb.AzureOpenAI(
            backends=[openai_lb.Backend(url, priority=p) for url, p in backends],
            health_store=openai_lb.InMemoryHealthStore(),
            **kwargs,
        )
    if system == "priority-lb":
        import openai_priority_loadbalancer as oplb

        origin, converted = _priority_lb_backends(backends)
        return openai.AzureOpenAI(
            azure_endpoint=origin, http_client=httpx.Client(transport=oplb.LoadBalancer(converted)), **kwargs
        )
    if system == "round-robin":
        transport = RoundRobinTransport([url for url, _ in backends])
        return openai.AzureOpenAI(
            azure_endpoint=backends[0][0], http_client=httpx.Client(transport=transport), **kwargs
        )
    raise ValueError(system)


def async_client(system: str, backends: list[tuple[str, int]], **kwargs: Any) -> openai.AsyncAzureOpenAI:
    """The async twin of `sync_client`."""
    kwargs = _common(**kwargs)
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    if system == "plain":
        return openai.AsyncAzureOpenAI(
            azure_endpoint=backends[0][0], http_client=openai.DefaultAsyncHttpxClient(limits=limits), **kwargs
        )
    if system.startswith("openai_lb"):
        transport = openai_lb.HTTPXTransport(
            [openai_lb.Backend(url, priority=p) for url, p in backends],
            async_transport=httpx.AsyncHTTPTransport(limits=limits),
            health_store=openai_lb.InMemoryHealthStore(),
        )
        return openai.AsyncAzureOpenAI(
            azure_endpoint=backends[0][0], http_client=openai.DefaultAsyncHttpxClient(transport=transport), **kwargs
        )
    if system == "priority-lb":
        import openai_priority_loadbalancer as oplb

        origin, converted = _priority_lb_backends(backends)
        lb = oplb.AsyncLoadBalancer(converted)
        lb._transport = httpx.AsyncClient(limits=limits)  # its default pool holds 100 connections
        return openai.AsyncAzureOpenAI(azure_endpoint=origin, http_client=httpx.AsyncClient(transport=lb), **kwargs)
    if system == "round-robin":
        transport = RoundRobinTransport([url for url, _ in backends], limits=limits)
        return openai.AsyncAzureOpenAI(
            azure_endpoint=backends[0][0], http_client=httpx.AsyncClient(transport=transport), **kwargs
        )
    raise ValueError(system)


class RoundRobinTransport(httpx.BaseTransport, httpx.AsyncBaseTransport):
    """The naive reference: each request goes to the next backend in turn, whatever it answered last."""

    def __init__(self, urls: list[str], limits: httpx.Limits | None = None) -> None:
        self._targets = itertools.cycle([urlsplit(url) for url in urls])
        self._lock = threading.Lock()
        self._sync = httpx.HTTPTransport(limits=limits or httpx.Limits())
        self._async = httpx.AsyncHTTPTransport(limits=limits or httpx.Limits())

    def _route(self, request: httpx.Request) -> httpx.Request:
        with self._lock:
            target = next(self._targets)
        path = request.url.raw_path.decode()
        url = f"{target.scheme}://{target.netloc}{target.path.rstrip('/')}{path[path.find('/openai/') :]}"
        headers = [(k, v) for k, v in request.headers.raw if k.lower() != b"host"]
        return httpx.Request(
            request.method, url, headers=headers, content=request.read(), extensions=request.extensions
        )

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        return self._sync.handle_request(self._route(request))

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        await request.aread()
        return await self._async.handle_async_request(self._route(request))
