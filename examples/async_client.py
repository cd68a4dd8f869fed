"""An async balanced client with many concurrent requests sharing it.

Set PTU_ENDPOINT, PAYGO_ENDPOINT and AZURE_OPENAI_API_KEY, then run it.
"""

from __future__ import annotations

import asyncio
import os
from collections import Counter

import openai_lb
from openai_lb import Backend


async def main() -> None:
    client = openai_lb.AsyncAzureOpenAI(
        backends=[
            Backend(os.environ["PTU_ENDPOINT"], priority=1, name="ptu"),
            Backend(os.environ["PAYGO_ENDPOINT"], priority=2, name="paygo"),
        ],
        api_key=os.environ["AZURE_OPENAI_API_KEY"],
        api_version="2024-10-21",
    )

    async def ask(number: int) -> str:
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-4o", messages=[{"role": "user", "content": f"Give me the number {number}."}]
        )
        return raw.headers[openai_lb.BACKEND_HEADER]

    async with client:
        served = Counter(await asyncio.gather(*(ask(n) for n in range(50))))
    print(dict(served))


if __name__ == "__main__":
    asyncio.run(main())
