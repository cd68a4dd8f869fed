"""Backends from configuration: a TOML or JSON file, a JSON string, or ``$OPENAI_LB_BACKENDS``.

Secrets stay out of files: an entry names the environment variable that holds its key
(``api_key_env = "PTU_KEY"``). Every error names the source, the entry and the field.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ._config import Backend
from ._errors import ConfigurationError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = ["ENV_VAR", "backends_from_env", "backends_from_json", "load_backends"]

ENV_VAR = "OPENAI_LB_BACKENDS"
_FIELDS = frozenset(
    {"url", "priority", "weight", "api_key", "api_key_env", "deployments", "name", "spillover_deployment"}
)
_EXAMPLE_TOML = '[[backends]]\nurl = "https://ptu.openai.azure.com"\npriority = 1\napi_key_env = "PTU_KEY"'


def _entry(source: str, index: int, entry: object) -> Backend:
    where = f"{source}: backends[{index}]"
    if not isinstance(entry, Mapping) or "url" not in entry:
        raise ConfigurationError(f'{where} must be a table/object with at least a "url".')
    unknown = sorted(set(entry) - _FIELDS)
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown field(s) {', '.join(map(str, unknown))}; allowed: {', '.join(sorted(_FIELDS))}."
        )
    kwargs = {key: value for key, value in entry.items() if key not in ("url", "api_key_env")}
    variable = entry.get("api_key_env")
    if variable is not None:
        if "api_key" in entry:
            raise ConfigurationError(f"{where}: give api_key_env or api_key, not both (prefer api_key_env).")
        if not isinstance(variable, str) or not variable:
            raise ConfigurationError(f"{where}.api_key_env must name an environment variable, got {variable!r}.")
        key = os.environ.get(variable)
        if not key:
            raise ConfigurationError(
                f"{where}.api_key_env: the environment variable {variable} is not set; export it, or remove "
                f"api_key_env to use the client's credential for this backend."
            )
        kwargs["api_key"] = key
    try:
        return Backend(entry["url"], **kwargs)
    except ConfigurationError as error:
        raise ConfigurationError(f"{where}: {error}") from None
    except TypeError as error:  # a field of the wrong type for the constructor itself
        raise ConfigurationError(f"{where}: {error}") from None


def _entries(source: str, document: Any) -> list[Backend]:
    entries = document.get("backends") if isinstance(document, Mapping) else document
    if not isinstance(entries, list) or not entries:
        raise ConfigurationError(
            f"{source} must hold a non-empty list of backends (a JSON list, or a 'backends' list), e.g. in TOML:\n"
            f"{_EXAMPLE_TOML}"
        )
    return [_entry(source, index, entry) for index, entry in enumerate(entries)]


@contextlib.contextmanager
def _not_too_deep(source: str) -> Iterator[None]:
    """The parsers raise RecursionError on arrays or tables nested about a thousand deep: an error naming
    the source instead."""
    try:
        yield
    except RecursionError:
        raise ConfigurationError(
            f"{source} is nested too deeply (arrays or tables inside one another); a backends list holds flat "
            f"entries, each with at most a deployments table."
        ) from None


def backends_from_json(text: str, *, source: str = "JSON") -> list[Backend]:
    """Backends from JSON: a list of objects whose keys are ``Backend``'s argument names (or ``api_key_env``)."""
    with _not_too_deep(source):
        try:
            document = json.loads(text)
        except ValueError as exc:
            raise ConfigurationError(f"{source} is not valid JSON: {exc}.") from None
    return _entries(source, document)


def load_backends(path: str | os.PathLike[str]) -> list[Backend]:
    """Backends from a ``.toml`` or ``.json`` file.

    ```toml
    [[backends]]
    url = "https://ptu-eastus.openai.azure.com"
    priority = 1
    api_key_env = "PTU_KEY"          # the key itself stays in the environment

    [[backends]]
    url = "https://paygo-eastus.openai.azure.com"
    priority = 2
    deployments = { "gpt-4o" = "gpt-4o-global" }
    ```
    """
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"Cannot read the backends file {str(file)!r}: {exc.strerror}.") from None
    suffix = file.suffix.lower()
    if suffix == ".json":
        return backends_from_json(text, source=str(file))
    if suffix == ".toml":
        with _not_too_deep(str(file)):
            try:
                document = tomllib.loads(text)
            except tomllib.TOMLDecodeError as exc:
                raise ConfigurationError(f"{file} is not valid TOML: {exc}.") from None
        return _entries(str(file), document)
    raise ConfigurationError(f"{file}: a backends file must end in .toml or .json.")


def backends_from_env() -> list[Backend]:
    """Backends from ``$OPENAI_LB_BACKENDS``: a JSON list, or the path of a TOML or JSON file."""
    text = os.environ.get(ENV_VAR, "").strip()
    if not text:
        raise ConfigurationError(
            f"No backends given and ${ENV_VAR} is not set: pass backends=[Backend(...)] or set "
            f'{ENV_VAR} to a JSON list such as \'[{{"url": "https://ptu.openai.azure.com", "priority": 1}}]\' '
            f"or to the path of a .toml or .json file."
        )
    if text.startswith(("[", "{")):
        return backends_from_json(text, source=f"${ENV_VAR}")
    return load_backends(text)
