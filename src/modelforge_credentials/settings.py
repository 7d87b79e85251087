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
ASKPASS = "MODEL_FORGE_ASKPASS"
PINENTRY = "MODEL_FORGE_PINENTRY"
EVENT_LOOP = "MODEL_FORGE_EVENT_LOOP"

#: name -> what it does (README's "Environment" list says the same).
DOCUMENTED = {
    SOCKET: "the agent's socket (default: $XDG_RUNTIME_DIR/model-forge/agent.sock)",
    AGENT: "off: keep everything in-process instead of using the agent",
    BACKEND: "force a backend: keyring, encrypted-file or env",
    CONFIG_DIR: "the encrypted file's directory (default: ~/.config/model-forge)",
    AUDIT_LOG: "serve's access log: on (default path), off, or a file path",
    KEYRING_PREFERRED: "on: keyring selects the agent's plugin by priority",
    ASKPASS: "without a terminal: a program that prints the passphrase (ssh-askpass style), "
    "or off: standard input only",
    PINENTRY: "the pinentry to ask with (default: the first on PATH), or off",
    EVENT_LOOP: "serve's event loop: auto (uvloop when installed), asyncio or uvloop",
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
        "MODEL_FORGE_REQUIRE_PINENTRY",
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

EVENT_LOOP_CHOICES = ("auto", "asyncio", "uvloop")

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


class SettingError(CredentialValidationError):
    """A setting has a value outside its vocabulary; the message names both."""


def _on_off(raw: str) -> bool | None:
    """The one on/off vocabulary; ``None`` for anything else."""
    value = raw.strip().lower()
    return True if value in _TRUE else False if value in _FALSE else None


def flag(name: str, environ: Mapping[str, str] | None = None, default: bool = False) -> bool:
    """``name`` as a boolean: 1/true/yes/on or 0/false/no/off (any case);
    unset gives ``default``. Anything else raises :class:`SettingError`."""
    raw = (os.environ if environ is None else environ).get(name)
    if raw is None:
        return default
    value = _on_off(raw)
    if value is None:
        raise SettingError(f"{name}={raw!r} is not on or off; use 1/true/yes/on or 0/false/no/off")
    return value


def flag_or_path(name: str, environ: Mapping[str, str] | None = None) -> bool | str:
    """A setting that is on, off, or a path: ``True``/``False``, or the path."""
    raw = (os.environ if environ is None else environ).get(name)
    if raw is None:
        return False
    value = _on_off(raw)
    return raw if value is None else value


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


# -- serve's settings: command line > settings file > these defaults ---------------------

AGENT_SETTINGS = "MODEL_FORGE_AGENT_SETTINGS"
DOCUMENTED[AGENT_SETTINGS] = (
    "serve's settings file (TOML; default: agent.toml in the config directory); SIGHUP re-reads it"
)
NAMES = NAMES | {AGENT_SETTINGS}

#: How long a client waits for the agent (connecting, and each reply).
DEFAULT_CLIENT_TIMEOUT = 10.0
DEFAULT_IDLE_TIMEOUT = 900.0
DEFAULT_UNLOCK_DELAY_CAP = 10.0
DEFAULT_READ_DEADLINE = 10.0
DEFAULT_MAX_CONNECTIONS = 256

#: name -> default. ``None`` means "no limit"; for idle_timeout 0 means the same.
SERVE_DEFAULTS: dict[str, float | int | None] = {
    "idle_timeout": DEFAULT_IDLE_TIMEOUT,
    "max_unlock": None,
    "unlock_delay_cap": DEFAULT_UNLOCK_DELAY_CAP,
    "read_deadline": DEFAULT_READ_DEADLINE,
    "max_connections": DEFAULT_MAX_CONNECTIONS,
    "exit_when_idle": None,
}


def serve_settings_path(config_dir: str, environ: Mapping[str, str] | None = None) -> str:
    """``$MODEL_FORGE_AGENT_SETTINGS``, else ``agent.toml`` in the config directory."""
    return text(AGENT_SETTINGS, environ) or os.path.join(config_dir, "agent.toml")


def read_serve_settings(path: str) -> dict[str, float | int | None]:
    """The settings file's values (absent file: none). Unknown names, wrong
    types and negative numbers raise :class:`SettingError` naming them."""
    import tomllib

    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        return {}
    except (OSError, tomllib.TOMLDecodeError) as err:
        raise SettingError(f"cannot read the settings file {path}: {err}") from None
    unknown = sorted(set(data) - set(SERVE_DEFAULTS))
    if unknown:
        raise SettingError(
            f"{path}: unknown settings {', '.join(unknown)}; known: {', '.join(SERVE_DEFAULTS)}"
        )
    values: dict[str, float | int | None] = {}
    for name, value in data.items():
        whole = name == "max_connections"
        if isinstance(value, bool) or not isinstance(value, int if whole else (int, float)):
            kind = "a whole number" if whole else "a number of seconds"
            raise SettingError(f"{path}: {name} must be {kind}, not {value!r}")
        if value < (1 if whole else 0):
            raise SettingError(f"{path}: {name} must be at least {1 if whole else 0}")
        values[name] = int(value) if whole else float(value)
    return values


def serve_settings(
    explicit: dict[str, float | int | None], from_file: dict[str, float | int | None]
) -> dict[str, float | int | None]:
    """Every serve setting: given on the command line, else in the file, else default."""
    return {
        name: explicit[name] if explicit.get(name) is not None else from_file.get(name, default)
        for name, default in SERVE_DEFAULTS.items()
    }


def event_loop(environ: Mapping[str, str] | None = None) -> str:
    """``MODEL_FORGE_EVENT_LOOP`` (any case): auto, asyncio or uvloop; unset or
    empty gives auto. Anything else raises :class:`SettingError`."""
    raw = (os.environ if environ is None else environ).get(EVENT_LOOP, "")
    value = raw.strip().lower() or "auto"
    if value not in EVENT_LOOP_CHOICES:
        raise SettingError(
            f"{EVENT_LOOP}={raw!r} is not an event loop; use {', '.join(EVENT_LOOP_CHOICES)}"
        )
    return value
