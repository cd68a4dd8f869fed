"""Endpoints and backend prefixes whose paths hold /openai/, and bodies renamed without re-encoding."""

from __future__ import annotations

import openai
from e2e_helpers import chat, content

import openai_lb
from openai_lb import Backend
from openai_lb.testing import Reply

KW = {"api_key": "k", "api_version": "2024-10-21", "max_retries": 0}


def test_a_backend_prefix_holding_openai_is_kept_once_and_not_given_to_other_backends(servers, balanced) -> None:
    apim = servers("apim", path_prefix="/openai/eu")
    paygo = servers("paygo")
    client = balanced([Backend(apim.url, priority=1, name="apim"), Backend(paygo.url, priority=2, name="paygo")])
    apim.script(Reply(429))
    assert content(chat(client)) == "paygo:gpt-4o"
    assert content(chat(client, model="gpt-4o")) == "paygo:gpt-4o"
    assert apim.requests[0].path == "/openai/eu/openai/deployments/gpt-4o/chat/completions"
    assert [r.path for r in paygo.requests] == ["/openai/deployments/gpt-4o/chat/completions"] * 2


def test_under_patch_an_application_endpoint_holding_openai_reaches_each_backend_with_its_own_path(servers) -> None:
    apim = servers("apim", path_prefix="/gw/openai/x")
    plain = servers("plain")
    openai_lb.patch([Backend(plain.url, priority=1, name="plain"), Backend(apim.url, priority=2, name="apim")])
    client = openai.AzureOpenAI(azure_endpoint="https://apim.example.net/openai/eu", **KW)
    plain.script(Reply(503))  # the plain backend is then cooling down: both requests reach apim
    assert content(chat(client)) == "apim:gpt-4o"
    v1 = openai.AzureOpenAI(base_url="https://apim.example.net/openai/eu/openai/v1/", **KW)
    assert v1.responses.create(model="gpt-4o", input="hi").output_text == "apim:gpt-4o"
    assert [r.path for r in apim.requests] == [
        "/gw/openai/x/openai/deployments/gpt-4o/chat/completions",
        "/gw/openai/x/openai/v1/responses",
    ]
    assert [r.path for r in plain.requests] == ["/openai/deployments/gpt-4o/chat/completions"]
    client.close()
    v1.close()


def test_a_renamed_non_ascii_prompt_is_sent_as_the_plain_sdk_sends_it(servers, balanced) -> None:
    glob = servers("glob", deployments=None)  # hosts any name, so the plain SDK can send either
    prompt = "Grüße aus Zürich, 東京からこんにちは. " * 20_000
    client = balanced([Backend(glob.url, deployments={"gpt-4o": "gpt-4o-global"})])
    assert client.responses.create(model="gpt-4o", input=prompt).output_text == "glob:gpt-4o-global"
    plain = openai.AzureOpenAI(azure_endpoint=glob.url, **KW)
    plain.responses.create(model="gpt-4o", input=prompt)
    plain.responses.create(model="gpt-4o-global", input=prompt)
    plain.close()
    ours, plain_same_name, plain_backend_name = (r.body for r in glob.requests)
    assert len(ours) == len(plain_same_name) + len("-global"), (
        f"{len(ours)} bytes sent, the plain SDK sends {len(plain_same_name)} (+7 for the longer name)"
    )
    assert ours == plain_backend_name, "the renamed body differs from the plain SDK's beyond the model name"
