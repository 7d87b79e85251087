"""Input limits shared by every backend, the agent and the CLI.

Checked once at each public entry point, before any I/O, so a bad call never
touches stored data. Messages name the field and the limit, never the value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from .errors import CredentialTooLargeError, CredentialValidationError

MAX_NAME_LENGTH = 255
MAX_VALUE_BYTES = 65_536


# C0 controls, DEL and C1 controls: NUL breaks C APIs (D-Bus, env vars), the
# others hide in terminals and logs. A regex scans in C: this runs on every
# agent request.
_has_control = re.compile("[\x00-\x1f\x7f-\x9f]").search


def validate_name(field: str, name: object) -> str:
    """Check a provider or key name; return it unchanged."""
    if not isinstance(name, str):
        raise CredentialValidationError(f"{field} must be a string, not {type(name).__name__}")
    if not name:
        raise CredentialValidationError(f"{field} must not be empty")
    if len(name) > MAX_NAME_LENGTH:
        raise CredentialValidationError(
            f"{field} is {len(name)} characters long; the limit is {MAX_NAME_LENGTH}"
        )
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise CredentialValidationError(
            f"{field} is not valid Unicode (it contains a lone surrogate)"
        ) from None
    if _has_control(name):
        raise CredentialValidationError(
            f"{field} {name.encode('unicode_escape').decode('ascii')!r} contains a "
            "NUL or control character; use printable characters only"
        )
    return name


def validate_value(value: object) -> str:
    """Check a secret value; return it unchanged. The value is never echoed."""
    if not isinstance(value, str):
        raise CredentialValidationError(f"value must be a string, not {type(value).__name__}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise CredentialValidationError(
            "value is not valid Unicode (it contains a lone surrogate)"
        ) from None
    if size > MAX_VALUE_BYTES:
        raise CredentialTooLargeError(
            f"value is {size} bytes in UTF-8; the limit is {MAX_VALUE_BYTES}"
        )
    return value


def validate_pair(provider: object, key: object) -> tuple[str, str]:
    return validate_name("provider", provider), validate_name("key", key)


def select_names(names: Iterable[tuple[str, str]], provider: str | None) -> list[tuple[str, str]]:
    """``list_keys``'s answer: sorted names, of one (validated) provider if given."""
    if provider is not None:
        validate_name("provider", provider)
    return sorted(pair for pair in names if provider is None or pair[0] == provider)
