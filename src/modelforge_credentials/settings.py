"""Every ``MODEL_FORGE_*`` setting: its name, its meaning, and its one parser.

The environment-variable backend reads credentials under the same prefix;
the names below are settings, never credentials. Light on purpose (the thin
client imports it): plain strings and functions, no typing, no dataclasses.
"""

from __future__ import annotations

import os

from .errors import CredentialValidationError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

SOCKET = "MODEL_FORGE_AGENT_SOCK"
AGENT = "MODEL_FORGE_AGENT"
BACKEND = "MODEL_FORGE_BACKEND"
CONFIG_DIR = "MODEL_FORGE_CONFIG_DIR"
AUDIT_LOG = "MODEL_FORGE_AUDIT_LOG"
KEYRING_PREFERRED = "MODEL_FORGE_KEYRING_PREFERRED"

#: name -> what it does (README's "Environment" list says the same).
DOCUMENTED = {
    SOCKET: "the agent's socket (default: $XDG_RUNTIME_DIR/model-forge/agent.sock)",
    AGENT: "off: keep everything in-process instead of using the agent",
    BACKEND: "force a backend: keyring, encrypted-file or env",
    CONFIG_DIR: "the encrypted file's directory (default: ~/.config/model-forge)",
    AUDIT_LOG: "serve's access log: on (default path), off, or a file path",
    KEYRING_PREFERRED: "on: keyring selects the agent's plugin by priority",
}

#: The project's own development variables (tests, benchmarks, CI): settings too.
DEVELOPMENT = frozenset(
    {
        "MODEL_FORGE_REQUIRE_SECRET_SERVICE",
        "MODEL_FORGE_TEST_REAL_MODELFORGE",
        "MODEL_FORGE_REAL_MODELFORGE_VENV",
        "MODEL_FORGE_TEST_MODULES_OUT",
        "MODEL_FORGE_VENV",
        "MODEL_FORGE_BENCH_REEXEC",
        "MODEL_FORGE_RELIABILITY_REPORT",
    }
)

NAMES = frozenset(DOCUMENTED) | DEVELOPMENT

#: MODEL_FORGE_BACKEND's accepted spellings -> the backend's name.
BACKEND_CHOICES = {
    "keyring": "keyring",
    "encrypted-file": "encrypted-file",
    "encrypted_file": "encrypted-file",
    "file": "encrypted-file",
    "env": "env",
    "env_var": "env",
    "environment": "env",
}

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


class SettingError(CredentialValidationError):
    """A setting has a value outside its vocabulary; the message names both."""


def flag(name: str, environ: Mapping[str, str] | None = None, default: bool = False) -> bool:
    """``name`` as a boolean: 1/true/yes/on or 0/false/no/off (any case);
    unset gives ``default``. Anything else raises :class:`SettingError`."""
    env = os.environ if environ is None else environ
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise SettingError(f"{name}={raw!r} is not on or off; use 1/true/yes/on or 0/false/no/off")


def flag_or_path(name: str, environ: Mapping[str, str] | None = None) -> bool | str:
    """A setting that is on, off, or a path: ``True``/``False``, or the path."""
    env = os.environ if environ is None else environ
    raw = env.get(name)
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    return str(raw)


def text(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """A free-text setting, ``None`` when unset or empty."""
    env = os.environ if environ is None else environ
    raw = env.get(name)
    return raw or None


def backend(environ: Mapping[str, str] | None = None) -> str | None:
    """The backend ``MODEL_FORGE_BACKEND`` forces, or ``None`` when unset."""
    env = os.environ if environ is None else environ
    raw = env.get(BACKEND, "").strip().lower()
    if not raw:
        return None
    choice = BACKEND_CHOICES.get(raw)
    if choice is None:
        raise SettingError(
            f"{BACKEND}={raw!r} is not a backend; use keyring, encrypted-file or env"
        )
    return choice
