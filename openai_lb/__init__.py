"""Priority and failover load balancing of OpenAI SDK traffic across Azure OpenAI deployments.

```python
from openai_lb import AzureOpenAI, Backend

client = AzureOpenAI(
    backends=[
        Backend("https://ptu-eastus.openai.azure.com", priority=1),
        Backend("https://paygo-eastus.openai.azure.com", priority=2),
    ],
    api_key="...",
    api_version="2024-10-21",
)
client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
```
"""

from __future__ import annotations

import logging
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any

from ._clients import AsyncAzureOpenAI, AzureOpenAI
from ._config import Backend, Policy, TokenProvider
from ._core import Balancer, reset_state
from ._errors import ConfigurationError, OpenAILBError
from ._events import (
    Affinity,
    AllBackendsCooling,
    AttemptFinished,
    AttemptStarted,
    BackendCooled,
    BackendRecovered,
    Event,
    EventHook,
    NoBackendCanServe,
    Origin,
    Outcome,
    OwnerDiscovered,
    StoreDisconnected,
    StoreReconnected,
)
from ._health import BackendHealth, Block, HealthStore, InMemoryHealthStore, Reason, Trip
from ._loading import backends_from_json, load_backends
from ._patch import Patch, is_patched, patch, unpatch
from ._shell import BACKEND_HEADER
from ._status import BackendState, BackendStatus, DeploymentCooldown
from ._version import __version__

if TYPE_CHECKING:
    from ._httpx import HTTPXTransport as HTTPXTransport
    from ._httpx2 import HTTPX2Transport as HTTPX2Transport
    from ._redis import RedisHealthStore as RedisHealthStore

_TRANSPORTS = {"HTTPXTransport": "httpx", "HTTPX2Transport": "httpx2"}

__all__ = [
    "BACKEND_HEADER",
    "Affinity",
    "AllBackendsCooling",
    "AsyncAzureOpenAI",
    "AttemptFinished",
    "AttemptStarted",
    "AzureOpenAI",
    "Backend",
    "BackendCooled",
    "BackendHealth",
    "BackendRecovered",
    "BackendState",
    "BackendStatus",
    "Balancer",
    "Block",
    "ConfigurationError",
    "DeploymentCooldown",
    "Event",
    "EventHook",
    "HealthStore",
    "InMemoryHealthStore",
    "NoBackendCanServe",
    "OpenAILBError",
    "Origin",
    "Outcome",
    "OwnerDiscovered",
    "Patch",
    "Policy",
    "Reason",
    "StoreDisconnected",
    "StoreReconnected",
    "TokenProvider",
    "Trip",
    "__version__",
    "backends_from_json",
    "is_patched",
    "load_backends",
    "patch",
    "reset_state",
    "unpatch",
]

# Star-imports must not fail on the HTTP library a given SDK major does not install.
__all__ += [name for name, module in _TRANSPORTS.items() if find_spec(module) is not None]
if find_spec("redis") is not None:
    __all__ += ["RedisHealthStore"]

logging.getLogger("openai_lb").addHandler(logging.NullHandler())


def __getattr__(name: str) -> Any:
    # Each transport imports its HTTP library, which may not be installed: load on first use.
    if name == "HTTPXTransport":
        from ._httpx import HTTPXTransport

        return HTTPXTransport
    if name == "HTTPX2Transport":
        from ._httpx2 import HTTPX2Transport

        return HTTPX2Transport
    if name == "RedisHealthStore":  # needs the redis extra
        from ._redis import RedisHealthStore

        return RedisHealthStore
    raise AttributeError(f"module 'openai_lb' has no attribute {name!r}")
