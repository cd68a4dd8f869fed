"""Small helpers shared by the end-to-end tests."""

from __future__ import annotations

from typing import Any


def chat(client: Any, model: str = "gpt-4o") -> Any:
    """One chat completion; returns the raw response (headers) and the parsed completion."""
    raw = client.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": "hi"}])
    return raw


def content(raw: Any) -> str:
    text: str = raw.parse().choices[0].message.content
    return text
