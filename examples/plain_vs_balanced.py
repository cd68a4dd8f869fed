"""The conventional client next to the balanced one: the calls are the same.

Set PTU_ENDPOINT, PAYGO_EAST_ENDPOINT, PAYGO_WEST_ENDPOINT and AZURE_OPENAI_API_KEY, then run it.
"""

from __future__ import annotations

import os

import openai
from openai.types.chat import ChatCompletionMessageParam

import openai_lb
from openai_lb import Backend

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say hello in one word."}]


def conventional() -> openai.AzureOpenAI:
    # One endpoint: when the PTU answers 429 the SDK waits and retries the same PTU.
    return openai.AzureOpenAI(
        azure_endpoint=os.environ["PTU_ENDPOINT"],
        api_key=os.environ["AZURE_OPENAI_API_KEY"],
        api_version="2024-10-21",
    )


def balanced() -> openai.AzureOpenAI:
    # PTU first; while it answers 429 the same request goes at once to a pay-as-you-go region.
    return openai_lb.AzureOpenAI(
        backends=[
            Backend(os.environ["PTU_ENDPOINT"], priority=1, name="ptu"),
            Backend(os.environ["PAYGO_EAST_ENDPOINT"], priority=2, name="paygo-east"),
            Backend(os.environ["PAYGO_WEST_ENDPOINT"], priority=3, name="paygo-west"),  # farther: last resort
        ],
        api_key=os.environ["AZURE_OPENAI_API_KEY"],
        api_version="2024-10-21",
    )


if __name__ == "__main__":
    for client in (conventional(), balanced()):
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o", messages=MESSAGES)
        served_by = raw.headers.get(openai_lb.BACKEND_HEADER, "(one endpoint)")
        print(f"{type(client).__module__}: {raw.parse().choices[0].message.content!r} from {served_by}")
