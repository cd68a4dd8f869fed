"""patch() once at start-up: every openai.AzureOpenAI the application makes afterwards balances.

Backends come from $OPENAI_LB_BACKENDS, a JSON list, for example:

    export OPENAI_LB_BACKENDS='[
      {"url": "https://ptu-eastus.openai.azure.com", "priority": 1, "name": "ptu"},
      {"url": "https://paygo-eastus.openai.azure.com", "priority": 2},
      {"url": "https://paygo-westus.openai.azure.com", "priority": 3}
    ]'
"""

from __future__ import annotations

import os

import openai_lb

openai_lb.patch()  # before the application imports or builds its clients


def application_code() -> None:
    # Unchanged application code: it still names one endpoint, openai_lb spreads its requests.
    from openai import AzureOpenAI

    client = AzureOpenAI(
        azure_endpoint=os.environ.get("AZURE_OPENAI_ENDPOINT", "https://ptu-eastus.openai.azure.com"),
        api_key=os.environ["AZURE_OPENAI_API_KEY"],
        api_version="2024-10-21",
    )
    answer = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
    print(answer.choices[0].message.content)


if __name__ == "__main__":
    application_code()
