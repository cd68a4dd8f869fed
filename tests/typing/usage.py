"""Typed usage of the public API, checked by ``mypy --strict`` (the ``type`` tox environment).

Nothing here runs in the test suite; it keeps the public signatures honest.
"""

from __future__ import annotations

import openai

import openai_lb
from openai_lb import AsyncAzureOpenAI, AzureOpenAI, Backend, HealthStore, InMemoryHealthStore, Policy


def token() -> str:
    return "token"


async def async_token() -> str:
    return "token"


backends = [
    Backend("https://ptu-eastus.openai.azure.com", priority=1, api_key="key", spillover_deployment="gpt-4o-std"),
    Backend("https://paygo-eastus.openai.azure.com", priority=2, weight=2),
    Backend(
        "https://apim.example.net/team-a",
        priority=2,
        name="apim",
        azure_ad_token_provider=token,
        deployments={"gpt-4o": "gpt-4o-global"},
    ),
]
store: HealthStore = InMemoryHealthStore()
client: openai.AzureOpenAI = AzureOpenAI(
    backends=backends, api_version="2024-10-21", api_key="key", policy=Policy(default_cooldown=5), health_store=store
)
same_client: openai.AzureOpenAI = client.with_options(timeout=10)
fleet_store: HealthStore = openai_lb.RedisHealthStore("redis://127.0.0.1:6379/0", namespace="app", password="pw")
fleet_client = AzureOpenAI(backends=backends, api_key="k", api_version="v", health_store="redis://127.0.0.1:6379/0")
found: openai_lb.Block | None = store.blocked("https://a.openai.azure.com", "gpt-4o", 0.0)
tripped: openai_lb.Trip | None = store.trip("https://a.openai.azure.com", 0.0, 1.0, lambda failures: 5.0)
origin: openai_lb.Origin = "fleet"
async_client: openai.AsyncAzureOpenAI = AsyncAzureOpenAI(
    backends=[Backend("https://a.openai.azure.com", azure_ad_token_provider=async_token)], api_version="2024-10-21"
)
handle: openai_lb.Patch = openai_lb.patch(backends)
with openai_lb.patch(backends):
    pass
openai_lb.unpatch()
openai_lb.reset_state()
parsed: list[Backend] = openai_lb.backends_from_json('[{"url": "https://a.openai.azure.com"}]')
name: str = backends[0].name
version: str = openai_lb.__version__
transport = openai_lb.HTTPX2Transport(backends)
legacy = openai_lb.HTTPXTransport(backends, policy=Policy())
spilling = Policy(headroom=True, headroom_horizon=2.0, headroom_utilization=90.0, headroom_output_tokens=500)
exact = Policy(headroom_tokenizer="o200k_base")
stateful = Policy(affinity=True, affinity_capacity=10_000, affinity_ttl=86_400.0, context_failover=False)
store.remember(["resp_1"], "https://a.openai.azure.com", 60.0, 10_000)
holder: str | None = store.owner("resp_1", 0.0)
store.forget("resp_1")
header: str = openai_lb.BACKEND_HEADER
balancer: openai_lb.Balancer | None = AzureOpenAI(backends=backends, api_key="k", api_version="v").balancer
statuses: tuple[openai_lb.BackendStatus, ...] = balancer.status() if balancer is not None else ()
state: openai_lb.BackendState = statuses[0].state if statuses else "available"
full_and_spilled: tuple[int, int] = (statuses[0].passed_over, statuses[0].spilled) if statuses else (0, 0)
pinned_and_discovered: tuple[int, int] = (statuses[0].pinned, statuses[0].discovered) if statuses else (0, 0)


def on_attempt(event: openai_lb.Event) -> None:
    if isinstance(event, openai_lb.AttemptFinished) and event.failed_over:
        outcome: openai_lb.Outcome = event.outcome
        print(event.backend, outcome, event.status, event.latency)
    if isinstance(event, openai_lb.AttemptFinished) and event.spilled_to is not None:
        served_by: str = event.spilled_to
        print(served_by)
    if isinstance(event, openai_lb.AttemptStarted) and event.passed_over:
        full: tuple[str, ...] = event.passed_over
        print(full)
    if isinstance(event, (openai_lb.AttemptStarted, openai_lb.AttemptFinished)) and event.affinity is not None:
        why: openai_lb.Affinity = event.affinity
        print(why)
    if isinstance(event, openai_lb.OwnerDiscovered):
        ids: tuple[str, ...] = event.object_ids
        print(event.backend, event.url, ids, event.attempts)


class CountCooldowns:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self, event: openai_lb.Event) -> None:
        if isinstance(event, openai_lb.BackendCooled):
            self.count += 1


hooked = AzureOpenAI(backends=backends, api_key="k", api_version="v", on_event=on_attempt)
several = AsyncAzureOpenAI(backends=backends, api_key="k", api_version="v", on_event=[on_attempt, CountCooldowns()])
hooked_transport = openai_lb.HTTPX2Transport(backends, on_event=on_attempt)
openai_lb.patch(backends, on_event=[on_attempt])
