"""Backend and Policy validation: bad input fails at construction with a message naming the fix."""

from __future__ import annotations

import json

import pytest

from openai_lb import Backend, ConfigurationError, Policy, backends_from_json
from openai_lb._config import validate_backends
from openai_lb._loading import backends_from_env


def test_name_defaults_to_url_without_scheme_keeping_port_and_prefix() -> None:
    assert Backend("https://PTU.openai.azure.com/").name == "ptu.openai.azure.com"
    assert Backend("http://127.0.0.1:8080/team-a/").name == "127.0.0.1:8080/team-a"
    assert Backend("https://x.example.com", name="ptu").name == "ptu"


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("https://x.openai.azure.com", "HTTPS://X.OpenAI.Azure.com/"),
        ("https://x.openai.azure.com:443", "https://x.openai.azure.com"),
        ("http://x.example.com:80/pre/", "http://x.example.com/pre"),
    ],
)
def test_urls_that_differ_only_in_case_default_port_or_trailing_slash_share_a_key(a: str, b: str) -> None:
    assert Backend(a).key == Backend(b).key


def test_path_prefix_case_is_kept_in_the_key() -> None:
    assert Backend("https://x.example.com/Team").key != Backend("https://x.example.com/team").key


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"url": "ftp://x.example.com"}, "http:// or https://"),
        ({"url": "x.example.com"}, "http:// or https://"),
        ({"url": ""}, "non-empty string"),
        ({"url": "https://user:pw@x.example.com"}, "must not carry credentials"),
        ({"url": "https://x.example.com?api-version=1"}, "query"),
        ({"url": "https://x.example.com/openai"}, "without the trailing '/openai'"),
        ({"url": "https://x.example.com:99999"}, "cannot be parsed"),
        ({"url": "https://x.example.com", "weight": 0}, "weight must be a positive number"),
        ({"url": "https://x.example.com", "weight": -1}, "weight must be a positive number"),
        ({"url": "https://x.example.com", "weight": float("nan")}, "weight must be a positive number"),
        ({"url": "https://x.example.com", "weight": True}, "weight must be a positive number"),
        ({"url": "https://x.example.com", "weight": 1e308}, "weight must be a positive number up to 1e+09"),
        ({"url": "https://x.example.com", "weight": float("inf")}, "weight must be a positive number"),
        ({"url": "https://x.example.com", "priority": 1.5}, "priority must be an integer"),
        ({"url": "https://x.example.com", "api_key": ""}, "api_key must be a non-empty string"),
        ({"url": "https://x.example.com", "api_key": "k", "azure_ad_token_provider": lambda: "t"}, "not both"),
        ({"url": "https://x.example.com", "azure_ad_token_provider": "token"}, "must be a callable"),
        ({"url": "https://x.example.com", "deployments": {"gpt-4o": ""}}, "non-empty strings"),
        ({"url": "https://x.example.com", "deployments": ["gpt-4o"]}, "deployments must map"),
        ({"url": "https://x.example.com", "name": ""}, "name must be a non-empty string"),
    ],
)
def test_invalid_backend_raises_a_configuration_error_saying_what_to_fix(kwargs: dict, fragment: str) -> None:
    url = kwargs.pop("url")
    with pytest.raises(ConfigurationError) as caught:
        Backend(url, **kwargs)
    assert fragment in str(caught.value), f"message should mention {fragment!r}: {caught.value}"
    assert isinstance(caught.value, ValueError), "configuration errors are ValueErrors too"


def test_error_names_the_backend() -> None:
    with pytest.raises(ConfigurationError, match=r"Backend 'paygo':"):
        Backend("https://x.example.com", name="paygo", weight=0)


def test_secrets_never_appear_in_repr_or_errors() -> None:
    backend = Backend("https://x.example.com", api_key="s3cret-key")
    assert "s3cret-key" not in repr(backend)
    assert "credential=api_key" in repr(backend)
    with pytest.raises(ConfigurationError) as caught:
        Backend("https://x.example.com", api_key="s3cret-key", azure_ad_token_provider=lambda: "tok")
    assert "s3cret-key" not in str(caught.value)


def test_backend_is_frozen() -> None:
    backend = Backend("https://x.example.com")
    with pytest.raises(AttributeError):
        backend.priority = 5  # type: ignore[misc]


def test_deployments_mapping_is_copied_and_read_only() -> None:
    mapping = {"gpt-4o": "gpt-4o-global"}
    backend = Backend("https://x.example.com", deployments=mapping)
    mapping["gpt-4o"] = "changed"
    assert backend.deployment_for("gpt-4o") == "gpt-4o-global"
    assert backend.deployment_for("other") == "other"
    assert backend.deployment_for(None) is None
    with pytest.raises(TypeError):
        backend.deployments["x"] = "y"  # type: ignore[index]


def test_async_token_provider_is_recognised() -> None:
    async def token() -> str:
        return "t"

    class Provider:
        async def __call__(self) -> str:
            return "t"

    assert Backend("https://x.example.com", azure_ad_token_provider=token).has_async_token_provider
    assert Backend("https://x.example.com", azure_ad_token_provider=Provider()).has_async_token_provider
    assert not Backend("https://x.example.com", azure_ad_token_provider=lambda: "t").has_async_token_provider


def test_empty_backend_list_is_rejected() -> None:
    with pytest.raises(ConfigurationError, match="empty"):
        validate_backends([])


def test_non_backend_entries_are_rejected_with_their_index() -> None:
    with pytest.raises(ConfigurationError, match=r"backends\[1\]"):
        validate_backends([Backend("https://a.example.com"), "https://b.example.com"])


def test_duplicate_urls_after_normalisation_are_rejected_naming_both() -> None:
    with pytest.raises(ConfigurationError, match=r"duplicates backend 'a.example.com'"):
        validate_backends([Backend("https://a.example.com"), Backend("HTTPS://A.example.com:443/", name="again")])


def test_duplicate_names_are_rejected() -> None:
    with pytest.raises(ConfigurationError, match="name is used twice"):
        validate_backends([Backend("https://a.example.com", name="x"), Backend("https://b.example.com", name="x")])


def test_backends_from_json_reads_backend_arguments() -> None:
    text = json.dumps(
        [
            {"url": "https://ptu.example.com", "priority": 1, "api_key": "k"},
            {"url": "https://paygo.example.com", "priority": 2, "weight": 2, "deployments": {"a": "b"}, "name": "p"},
        ]
    )
    ptu, paygo = backends_from_json(text)
    assert (ptu.priority, ptu.api_key) == (1, "k")
    assert (paygo.name, paygo.weight, dict(paygo.deployments)) == ("p", 2, {"a": "b"})


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("not json", "not valid JSON"),
        ("{}", "non-empty list of backends"),
        ("[]", "non-empty list of backends"),
        ('[{"priority": 1}]', 'at least a "url"'),
        ('[{"url": "https://x.example.com", "colour": "red"}]', "unknown field(s) colour"),
        ('[{"url": "https://x.example.com", "azure_ad_token_provider": "x"}]', "unknown field(s)"),
        ('[{"url": "https://x.example.com", "weight": 0}]', "backends[0]: Backend 'x.example.com': weight must be"),
    ],
)
def test_backends_from_json_errors_name_the_entry_and_field(text: str, fragment: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        backends_from_json(text)
    assert fragment in str(caught.value)


def test_backends_from_env_explains_the_variable_when_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_LB_BACKENDS", raising=False)
    with pytest.raises(ConfigurationError, match="OPENAI_LB_BACKENDS"):
        backends_from_env()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"default_cooldown": 0},
        {"max_cooldown": -1},
        {"breaker_base": float("inf")},
        {"default_cooldown": 500, "max_cooldown": 300},
        {"breaker_base": 200, "breaker_max": 120},
        {"failover_statuses": frozenset({429})},
        {"failover_statuses": frozenset({200})},
        {"headers_timeout": 0},
        {"headers_timeout": float("nan")},
        {"headers_timeout": "5"},
    ],
)
def test_invalid_policy_is_rejected(kwargs: dict) -> None:
    with pytest.raises(ConfigurationError, match="Policy"):
        Policy(**kwargs)


@pytest.mark.parametrize("key", ["SeCrEt\n", " SeCrEt", "SeC\rrEt", "ключ"])
def test_api_keys_a_header_cannot_carry_are_rejected_without_echoing_them(key: str) -> None:
    with pytest.raises(ConfigurationError, match="trailing newline") as caught:
        Backend("https://x.example.com", api_key=key)
    assert key.strip() not in str(caught.value)


def test_url_errors_never_echo_userinfo() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Backend("https://user:S3CRET@x.example.com:99999")
    assert "S3CRET" not in str(caught.value)


def test_the_openai_path_is_refused_whatever_its_case() -> None:
    with pytest.raises(ConfigurationError, match="without the trailing '/openai'"):
        Backend("https://x.openai.azure.com/OpenAI/")


def test_international_host_names_travel_in_their_ascii_form() -> None:
    backend = Backend("https://bücher.example.com")
    assert backend.netloc == "xn--bcher-kva.example.com"
    assert backend.name == "xn--bcher-kva.example.com"


def test_names_must_be_printable_ascii_for_the_response_header() -> None:
    with pytest.raises(ConfigurationError, match="printable ASCII"):
        Backend("https://x.example.com", name="späti")


@pytest.mark.parametrize("name", ["", " padded", "line\nbreak", "\u2603", 7])
def test_a_spillover_deployment_must_be_a_name_a_header_can_carry(name: object) -> None:
    with pytest.raises(ConfigurationError, match="spillover_deployment"):
        Backend("https://ptu.example.com", spillover_deployment=name)  # type: ignore[arg-type]


def test_the_spillover_deployment_shows_in_the_repr() -> None:
    backend = Backend("https://ptu.example.com", spillover_deployment="gpt-4o-standard")
    assert "spillover_deployment='gpt-4o-standard'" in repr(backend)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"affinity": 1}, "affinity"),
        ({"affinity": "yes"}, "affinity"),
        ({"affinity": None}, "affinity"),
        ({"context_failover": 0}, "context_failover"),
        ({"context_failover": "false"}, "context_failover"),
        ({"affinity_capacity": 0}, "affinity_capacity"),
        ({"affinity_capacity": -5}, "affinity_capacity"),
        ({"affinity_capacity": 1.5}, "affinity_capacity"),
        ({"affinity_capacity": True}, "affinity_capacity"),
        ({"affinity_capacity": "100"}, "affinity_capacity"),
        ({"affinity_ttl": 0}, "affinity_ttl"),
        ({"affinity_ttl": -1}, "affinity_ttl"),
        ({"affinity_ttl": float("inf")}, "affinity_ttl"),
        ({"affinity_ttl": float("nan")}, "affinity_ttl"),
        ({"affinity_ttl": True}, "affinity_ttl"),
        ({"affinity_ttl": "60"}, "affinity_ttl"),
    ],
    ids=repr,
)
def test_invalid_affinity_settings_are_rejected_naming_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ConfigurationError, match=rf"^Policy\.{field} must"):
        Policy(**kwargs)


def test_affinity_settings_take_their_smallest_values() -> None:
    policy = Policy(affinity=False, affinity_capacity=1, affinity_ttl=1, context_failover=False)
    assert (policy.affinity, policy.affinity_capacity, policy.affinity_ttl, policy.context_failover) == (
        False,
        1,
        1,
        False,
    )
