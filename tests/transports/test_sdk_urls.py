"""The URL an attempt goes to is the one the plain SDK would send if pointed at that backend.

Both clients run the installed SDK over a ``MockTransport`` that records what would go on the
wire: one balanced, with a nominal endpoint of its own, the other plain, configured with the
backend's URL. Endpoints and backend prefixes hold ``openai`` on purpose.
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import openai_lb
from openai_lb import Backend, InMemoryHealthStore

API_VERSION = "2024-10-21"
CLIENT_ENDPOINTS = ("https://client.example.com", "https://apim.example.net/openai/eu", "https://c.example/a b/ö")
BACKEND_URLS = ("https://b.example.com", "https://gw.example.org/openai/x/y", "http://127.0.0.1:8080/pré fix")
# Model names: dot segments, slashes, escapes, spaces, non-ASCII, query and fragment marks. The
# alphabet cannot spell an endpoint's or a prefix's segments, so a name that climbs above the
# client's endpoint cannot land inside it again (that one case is indistinguishable once httpx has
# removed the dot segments; see RequestTemplate).
MODEL_NAMES = st.text(alphabet="gt-4./%2F Ü中?#&+:~", max_size=24)


class Recorder:
    """A MockTransport that remembers the URL of every request and answers 200."""

    def __init__(self, http: ModuleType) -> None:
        self.urls: list[str] = []
        self.transport = http.MockTransport(self._handle)
        self._http = http

    def _handle(self, request: Any) -> Any:
        self.urls.append(str(request.url))
        return self._http.Response(200, json={})


def send(client: Any, model: str) -> str | type[Exception]:
    """The URL ``client`` sends a chat completion for ``model`` to, or the exception it raises first."""
    recorder: Recorder = client._openai_lb_test_recorder
    raised: type[Exception] | None = None
    try:
        client.chat.completions.with_raw_response.create(model=model, messages=[{"role": "user", "content": "hi"}])
    except (ValueError, openai.APIStatusError) as error:
        raised = type(error)
    if raised is not None:
        assert not recorder.urls, f"{raised.__name__} raised, yet {recorder.urls} went out"
        return raised
    assert len(recorder.urls) == 1, f"one request per call, got {recorder.urls}"
    return recorder.urls.pop()


def plain_client(http: ModuleType, backend_url: str) -> Any:
    recorder = Recorder(http)
    client = openai.AzureOpenAI(
        azure_endpoint=backend_url,
        api_key="k",
        api_version=API_VERSION,
        max_retries=0,
        http_client=http.Client(transport=recorder.transport),
    )
    client._openai_lb_test_recorder = recorder
    return client


def balanced_client(http: ModuleType, transport_cls: type[Any], client_endpoint: str, backend_url: str) -> Any:
    recorder = Recorder(http)
    transport = transport_cls(
        [Backend(backend_url, name="b")], transport=recorder.transport, health_store=InMemoryHealthStore()
    )
    client = openai_lb.AzureOpenAI(
        azure_endpoint=client_endpoint,
        api_key="k",
        api_version=API_VERSION,
        max_retries=0,
        http_client=http.Client(transport=transport),
    )
    client._openai_lb_test_recorder = recorder
    return client


@settings(suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
@given(model=MODEL_NAMES, client_endpoint=st.sampled_from(CLIENT_ENDPOINTS), backend_url=st.sampled_from(BACKEND_URLS))
def test_every_model_name_goes_where_the_plain_sdk_sends_it_or_nowhere(
    http: ModuleType, transport_cls: type[Any], model: str, client_endpoint: str, backend_url: str
) -> None:
    plain = send(plain_client(http, backend_url), model)
    ours = send(balanced_client(http, transport_cls, client_endpoint, backend_url), model)
    if ours is openai.BadRequestError:
        # Refused by the transport: only a name whose dot segments left the SDK's /openai base.
        base = str(http.URL(backend_url.rstrip("/") + "/openai/"))
        assert isinstance(plain, str), f"the plain SDK raised {plain!r} where the transport refused"
        assert not plain.startswith(base), f"refused {model!r} although the plain SDK sends it to {plain}"
    else:
        assert ours == plain, f"model {model!r} from {client_endpoint}: sent to {ours}, the plain SDK sends {plain}"


@pytest.mark.parametrize("model", ["gpt-4o", "a/b", "x%2Fy", "sp ace", "ünï中", "../v1", "a/../b"])
def test_named_model_names_go_where_the_plain_sdk_sends_them(
    http: ModuleType, transport_cls: type[Any], model: str
) -> None:
    backend_url = "https://gw.example.org/openai/x/y"
    plain = send(plain_client(http, backend_url), model)
    ours = send(balanced_client(http, transport_cls, "https://apim.example.net/openai/eu", backend_url), model)
    assert ours == plain, f"model {model!r}: sent to {ours}, the plain SDK sends {plain}"


def test_a_model_name_climbing_out_of_the_sdk_base_is_refused_not_sent_elsewhere(
    http: ModuleType, transport_cls: type[Any]
) -> None:
    backend_url = "https://gw.example.org/openai/x/y"
    plain = send(plain_client(http, backend_url), "../../up")
    ours = send(balanced_client(http, transport_cls, "https://apim.example.net/openai/eu", backend_url), "../../up")
    if plain == "https://gw.example.org/openai/x/y/up/chat/completions?api-version=2024-10-21":  # SDK 1.x, 2.x
        assert ours is openai.BadRequestError, f"sent to {ours} instead of being refused"
    else:  # SDK 3.x quotes the name into one segment
        assert (
            plain
            == "https://gw.example.org/openai/x/y/openai/deployments/..%2F..%2Fup/chat/completions?api-version=2024-10-21"
        )
        assert ours == plain
