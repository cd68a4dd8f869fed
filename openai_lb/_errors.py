"""The exceptions openai_lb raises itself.

Failures of a backend never surface as these: the transport answers them with HTTP
responses (a synthetic 429 or 404) or the HTTP library's own transport errors, so the
SDK's retry logic keeps working. These are for mistakes in how openai_lb is set up.
"""

from __future__ import annotations

__all__ = ["ConfigurationError", "OpenAILBError"]


class OpenAILBError(Exception):
    """Base class of every exception raised by openai_lb."""


class ConfigurationError(OpenAILBError, ValueError):
    """A backend list, a backend or a policy is invalid; the message names which and how to fix it."""
