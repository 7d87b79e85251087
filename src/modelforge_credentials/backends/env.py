"""Credentials from environment variables.

Reads ``MODEL_FORGE_{PROVIDER}_{KEY}`` and, for existing model-forge setups,
``MODELFORGE_{PROVIDER}_{KEY}`` (provider and key upper-cased, ``-`` and
``.`` turned into ``_``); the first wins.

Writes change only the current process's environment (``os.environ``) and
its future children: nothing persists, and no other program sees them.
Inside the agent this backend is read-only for that reason.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from typing import Any

from ..errors import CredentialReadOnlyError, CredentialValidationError
from ..settings import NAMES as SETTINGS
from ..validation import validate_name, validate_pair, validate_value

PREFIXES = ("MODEL_FORGE_", "MODELFORGE_")


def _part(name: str) -> str:
    return name.upper().replace("-", "_").replace(".", "_")


def variable_names(provider: str, key: str) -> tuple[str, ...]:
    suffix = f"{_part(provider)}_{_part(key)}"
    return tuple(prefix + suffix for prefix in PREFIXES)


class EnvVarStorage:
    """Environment-variable backend. ``environ`` defaults to ``os.environ``;
    a read-only mapping makes the backend read-only."""

    name = "env"

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ: Mapping[str, str] = environ if environ is not None else os.environ

    def _writable(self) -> MutableMapping[str, str]:
        if not isinstance(self._environ, MutableMapping):
            raise CredentialReadOnlyError(
                "this environment mapping is read-only; use a keyring or encrypted-file "
                "backend to store credentials"
            )
        return self._environ

    def __repr__(self) -> str:
        return "EnvVarStorage()"

    def store(self, provider: str, key: str, value: str) -> None:
        provider, key = validate_pair(provider, key)
        validate_value(value)
        if "\0" in value:
            raise CredentialValidationError("an environment variable cannot hold a NUL character")
        environ = self._writable()
        primary, legacy = variable_names(provider, key)
        environ[primary] = value
        environ.pop(legacy, None)

    def retrieve(self, provider: str, key: str) -> str | None:
        provider, key = validate_pair(provider, key)
        for name in variable_names(provider, key):
            value = self._environ.get(name)
            if value is not None:
                return value
        return None

    def delete(self, provider: str, key: str) -> bool:
        provider, key = validate_pair(provider, key)
        environ = self._writable()
        found = False
        for name in variable_names(provider, key):
            found = environ.pop(name, None) is not None or found
        return found

    def exists(self, provider: str, key: str) -> bool:
        return self.retrieve(provider, key) is not None

    def list_keys(self, provider: str | None = None) -> list[tuple[str, str]]:
        """Names as far as they can be recovered from variable names.

        The mapping is lossy (``-``, ``.`` and case collapse to ``_`` and
        upper case), and a variable ``A_B_C`` could be provider ``a`` with key
        ``b_c`` or provider ``a_b`` with key ``c``: provider names are taken
        as the part before the last ``_KEY`` word for the well-known key
        names, otherwise before the first ``_``. Names come back lower-case.
        """
        if provider is not None:
            validate_name("provider", provider)
        found: set[tuple[str, str]] = set()
        for var in self._environ:
            if var in SETTINGS:
                continue
            for prefix in PREFIXES:
                if var.startswith(prefix) and len(var) > len(prefix):
                    pair = _split(var[len(prefix) :])
                    if pair and (provider is None or _part(provider) == pair[0].upper()):
                        found.add(pair)
                    break
        return sorted(found)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "protection": "environment", "persistent": False}

    def has_credentials(self) -> bool:
        return bool(self.list_keys())


_KNOWN_KEYS = ("API_KEY", "ACCESS_TOKEN", "REFRESH_TOKEN", "TOKEN_TYPE", "EXPIRES_AT")


def _split(rest: str) -> tuple[str, str] | None:
    for known in _KNOWN_KEYS:
        if rest.endswith("_" + known) and len(rest) > len(known) + 1:
            return rest[: -len(known) - 1].lower(), known.lower()
    head, sep, tail = rest.partition("_")
    if not sep or not head or not tail:
        return None
    return head.lower(), tail.lower()
