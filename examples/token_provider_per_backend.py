"""Each backend with its own credential: an Entra ID token provider, a key, or the client's.

Needs `pip install azure-identity` for the token provider.
"""

from __future__ import annotations

import os

import openai_lb
from openai_lb import Backend


def entra_token_provider() -> openai_lb.TokenProvider:
    from azure.identity import DefaultAzureCredential, get_bearer_token_provider  # type: ignore[import-not-found,unused-ignore]

    provider: openai_lb.TokenProvider = get_bearer_token_provider(
        DefaultAzureCredential(), "https://cognitiveservices.azure.com/.default"
    )
    return provider


client = openai_lb.AzureOpenAI(
    backends=[
        # Entra ID on the PTU: a fresh bearer token per attempt, never an api-key.
        Backend(os.environ["PTU_ENDPOINT"], priority=1, azure_ad_token_provider=entra_token_provider()),
        # Its own key: sent only to this backend.
        Backend(os.environ["PAYGO_ENDPOINT"], priority=2, api_key=os.environ["PAYGO_KEY"]),
        # A gateway in front of another region, with a different deployment name there.
        Backend(
            os.environ["APIM_URL"],  # e.g. https://apim.example.net/team-a (the path prefix is kept)
            priority=3,
            name="apim",
            api_key=os.environ["APIM_KEY"],
            deployments={"gpt-4o": "gpt-4o-global"},
        ),
    ],
    # No client credential needed: every backend brings its own.
    api_version="2024-10-21",
)

if __name__ == "__main__":
    answer = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "Hi"}])
    print(answer.choices[0].message.content)
