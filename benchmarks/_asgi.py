"""A minimal, fast Azure-OpenAI-shaped server for the overhead benchmarks (uvicorn, one process).

The project's own fake server favours fidelity over speed; to measure a client's overhead the
server must be quick and steady, so this one answers every chat completion with a fixed body.
Run as ``python benchmarks/_asgi.py PORT``; serves ``/{name}/openai/deployments/{d}/chat/completions``
for any ``name``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


def _completion(name: str, deployment: str) -> bytes:
    return json.dumps(
        {
            "id": "chatcmpl-bench",
            "object": "chat.completion",
            "created": 1_700_000_000,
            "model": deployment,
            "choices": [
                {
                    "index": 0,
                    "finish_reason": "stop",
                    "message": {"role": "assistant", "content": f"{name}:{deployment}"},
                }
            ],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        }
    ).encode()


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    parts = scope["path"].split("/")
    # ["", name, "openai", "deployments", deployment, "chat", "completions"]
    if len(parts) >= 7 and parts[2:4] == ["openai", "deployments"]:
        status, body = 200, _completion(parts[1], parts[4])
    else:
        status, body = 404, b'{"error": {"code": "404", "message": "Resource not found"}}'
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": body})


if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="error", access_log=False, backlog=4096)
