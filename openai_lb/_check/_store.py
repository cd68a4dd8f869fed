"""The health store ``$OPENAI_LB_HEALTH_STORE`` names: reachable, credentials accepted, keys in the namespace.

A plain connection that reads and never writes (``PING``, ``SCAN``), not a ``RedisHealthStore``: the check
must not publish this machine's state nor start threads. No message ever quotes the URL or the
server's text, only the URL without its password and the error's type.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

from openai_lb._check._results import StoreCheck
from openai_lb._health import DEFAULT_NAMESPACE

__all__ = ["DEFAULT_NAMESPACE", "check_store"]


def check_store(url: str, *, timeout: float, namespace: str = DEFAULT_NAMESPACE) -> StoreCheck:
    """Connect to the store at ``url`` within ``timeout`` seconds and count the keys of ``namespace``."""
    try:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        from openai_lb._redis import SCHEMES, display_url, key_prefix
    except ImportError:
        problem = "needs the redis package (pip install 'openai-lb[redis]')"
        return StoreCheck(
            None, namespace, reachable=False, authenticated=None, keys=None, latency_ms=None, problem=problem
        )
    shown = display_url(url)

    def result(**found: Any) -> StoreCheck:
        facts: dict[str, Any] = {"reachable": False, "authenticated": None, "keys": None, "latency_ms": None}
        return StoreCheck(shown, namespace, **{**facts, **found})

    if urlsplit(url).scheme not in SCHEMES:
        return result(problem="not a redis://, rediss:// or unix:// URL")
    try:
        client = redis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, retry=Retry(NoBackoff(), 0)
        )
    except (ValueError, TypeError) as error:
        return result(problem=f"not a usable Redis URL ({type(error).__name__})")
    try:
        started = time.perf_counter()
        client.ping()
        latency_ms = (time.perf_counter() - started) * 1000
        keys = sum(1 for _ in client.scan_iter(match=f"{key_prefix(namespace)}*", count=1000))
    except redis.AuthenticationError as error:  # a ConnectionError too: first
        return result(reachable=True, authenticated=False, problem=f"credentials refused ({type(error).__name__})")
    except (redis.ConnectionError, redis.TimeoutError, OSError) as error:
        return result(problem=f"unreachable ({type(error).__name__})")
    except redis.RedisError as error:  # a command refused: an ACL, a server in trouble
        return result(reachable=True, authenticated=True, problem=f"refused a read ({type(error).__name__})")
    finally:
        client.close()
    return result(reachable=True, authenticated=True, keys=keys, latency_ms=latency_ms, problem=None)
