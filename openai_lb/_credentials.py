"""Where the SDK's Azure clients find a credential in the environment, and which one they send.

The SDK's own order: with both variables set, an Azure client sends the Entra ID token as a bearer
token, not the key. The balanced clients and ``check`` read the environment only through here.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Literal, NamedTuple

__all__ = ["AD_TOKEN_ENV", "API_KEY_ENV", "EnvironmentCredential", "environment_credential"]

API_KEY_ENV = "AZURE_OPENAI_API_KEY"
"""Where a client without a credential of its own takes a key."""
AD_TOKEN_ENV = "AZURE_OPENAI_AD_TOKEN"
"""Where it takes an Entra ID bearer token; it comes before the key."""

_SDK_ORDER: tuple[tuple[str, Literal["authorization", "api-key"]], ...] = (
    (AD_TOKEN_ENV, "authorization"),
    (API_KEY_ENV, "api-key"),
)


class EnvironmentCredential(NamedTuple):
    """The credential an SDK client would send, and where from."""

    variable: str
    """``AZURE_OPENAI_AD_TOKEN`` or ``AZURE_OPENAI_API_KEY``."""
    header: Literal["authorization", "api-key"]
    """The header carrying it (``authorization`` as ``Bearer <token>``)."""
    value: str

    def __repr__(self) -> str:
        # The value is a key or a token: a repr reaches tracebacks and debug output.
        return f"EnvironmentCredential(variable={self.variable!r}, header={self.header!r}, value=<hidden>)"


def environment_credential(environ: Mapping[str, str] | None = None) -> EnvironmentCredential | None:
    """The first variable of the SDK's order set (not empty) in ``environ`` (default ``os.environ``)."""
    env = os.environ if environ is None else environ
    for variable, header in _SDK_ORDER:
        value = env.get(variable)
        if value:
            return EnvironmentCredential(variable, header, value)
    return None
