"""Backends from TOML and JSON files and from $OPENAI_LB_BACKENDS: secrets by variable name, clear errors."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from openai_lb import ConfigurationError, load_backends
from openai_lb._loading import backends_from_env, backends_from_json

TOML = """
[[backends]]
url = "https://ptu-eastus.openai.azure.com"
priority = 1
name = "ptu"
api_key_env = "TEST_PTU_KEY"

[[backends]]
url = "https://paygo-eastus.openai.azure.com"
priority = 2
weight = 2
deployments = { "gpt-4o" = "gpt-4o-global" }
"""


@pytest.fixture
def ptu_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TEST_PTU_KEY", "key-from-the-environment")
    return "key-from-the-environment"


def test_toml_file_gives_backends_with_keys_read_from_the_environment(tmp_path: Path, ptu_key: str) -> None:
    path = tmp_path / "backends.toml"
    path.write_text(TOML)
    ptu, paygo = load_backends(path)
    assert (ptu.name, ptu.priority, ptu.api_key) == ("ptu", 1, ptu_key)
    assert (paygo.priority, paygo.weight, paygo.api_key) == (2, 2, None)
    assert paygo.deployment_for("gpt-4o") == "gpt-4o-global"


def test_json_file_may_be_a_list_or_hold_a_backends_list(tmp_path: Path, ptu_key: str) -> None:
    entry = {"url": "https://ptu.example.com", "api_key_env": "TEST_PTU_KEY"}
    for document in ([entry], {"backends": [entry]}):
        path = tmp_path / "backends.json"
        path.write_text(json.dumps(document))
        (backend,) = load_backends(str(path))
        assert backend.api_key == ptu_key


@pytest.mark.parametrize(
    ("name", "text", "fragment"),
    [
        (
            "b.toml",
            "[[backends]]\nurl = 'https://x.example.com'\napi_key_env = 'TEST_UNSET_KEY'",
            "backends[0].api_key_env: the environment variable TEST_UNSET_KEY is not set",
        ),
        (
            "b.toml",
            "[[backends]]\nurl = 'https://x.example.com'\napi_key = 'k'\napi_key_env = 'TEST_PTU_KEY'",
            "backends[0]: give api_key_env or api_key, not both",
        ),
        (
            "b.toml",
            "[[backends]]\nurl = 'https://a.example.com'\n[[backends]]\nurl = 'https://b.example.com'\nweight = 0",
            "backends[1]: Backend 'b.example.com': weight must be a positive number",
        ),
        (
            "b.toml",
            "[[backends]]\nurl = 'https://x.example.com'\ncolour = 'red'",
            "backends[0]: unknown field(s) colour",
        ),
        ("b.toml", "[[backends]]\npriority = 1", 'backends[0] must be a table/object with at least a "url"'),
        ("b.toml", "backends = 3", "non-empty list of backends"),
        ("b.toml", "[[backends]\nurl=", "is not valid TOML"),
        ("b.json", "{", "is not valid JSON"),
        ("b.yaml", "- url: x", "must end in .toml or .json"),
    ],
)
def test_file_errors_name_the_file_entry_and_field(
    tmp_path: Path, ptu_key: str, name: str, text: str, fragment: str
) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigurationError) as caught:
        load_backends(path)
    assert fragment in str(caught.value)
    assert str(path) in str(caught.value), "the message names the file"
    assert ptu_key not in str(caught.value)


def test_a_missing_file_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="Cannot read the backends file"):
        load_backends(tmp_path / "nope.toml")


def test_environment_variable_may_hold_json_or_a_file_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ptu_key: str
) -> None:
    monkeypatch.setenv("OPENAI_LB_BACKENDS", '[{"url": "https://json.example.com"}]')
    assert [b.name for b in backends_from_env()] == ["json.example.com"]
    path = tmp_path / "backends.toml"
    path.write_text(TOML)
    monkeypatch.setenv("OPENAI_LB_BACKENDS", str(path))
    assert [b.name for b in backends_from_env()] == ["ptu", "paygo-eastus.openai.azure.com"]


DEPTH = 100_000
TOO_DEEP = "is nested too deeply"
DEEP_DOCUMENTS = {
    "JSON arrays": ("b.json", "[" * DEPTH),
    "JSON objects": ("b.json", '{"a": ' * DEPTH),
    "TOML inline arrays": ("b.toml", "[[backends]]\nurl = 'https://a.example.com'\nname = " + "[" * DEPTH),
    "TOML inline tables": ("b.toml", "[[backends]]\nurl = 'https://a.example.com'\ndeployments = " + "{a = " * DEPTH),
    "TOML arrays, closed": ("b.toml", "backends = " + "[" * DEPTH + "]" * DEPTH),
}


@pytest.mark.parametrize(("name", "text"), DEEP_DOCUMENTS.values(), ids=DEEP_DOCUMENTS)
def test_a_deeply_nested_file_is_a_configuration_error_naming_it(tmp_path: Path, name: str, text: str) -> None:
    path = tmp_path / name
    path.write_text(text)

    with pytest.raises(ConfigurationError) as caught:
        load_backends(path)

    assert f"{path} {TOO_DEEP}" in str(caught.value), f"not an error naming the file: {caught.value}"


def test_a_deeply_nested_json_string_is_a_configuration_error_naming_its_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(ConfigurationError, match=rf"^inline {TOO_DEEP}"):
        backends_from_json("[" * DEPTH, source="inline")
    monkeypatch.setenv("OPENAI_LB_BACKENDS", "[" * DEPTH)
    with pytest.raises(ConfigurationError, match=rf"^\$OPENAI_LB_BACKENDS {TOO_DEEP}"):
        backends_from_env()
    path = tmp_path / "deep.toml"
    path.write_text("backends = " + "[" * DEPTH)
    monkeypatch.setenv("OPENAI_LB_BACKENDS", str(path))
    with pytest.raises(ConfigurationError, match=re.escape(f"{path} {TOO_DEEP}")):
        backends_from_env()


def test_a_backend_may_name_its_spillover_deployment() -> None:
    [backend] = backends_from_json('[{"url": "https://ptu.example.com", "spillover_deployment": "gpt-4o-standard"}]')
    assert backend.spillover_deployment == "gpt-4o-standard"
    with pytest.raises(ConfigurationError, match=r"backends\[0\].*spillover_deployment"):
        backends_from_json('[{"url": "https://ptu.example.com", "spillover_deployment": 5}]')
