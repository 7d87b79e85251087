"""Team settings: ``teams.json`` (0600) in the config directory, in the order added.

No secret lives here: the login token and the cache key are in the local
credential store (sealed), the cached secrets in :mod:`.sealed` files.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from ..errors import CredentialStorageUnavailableError, CredentialValidationError

TEAMS_FILE = "teams.json"
DEFAULT_MOUNT = "secret"
DEFAULT_REFRESH = 60.0
DEFAULT_MAX_STALE = 24 * 3600.0
#: Shortest refresh interval: each refresh costs the server one request per provider.
MIN_REFRESH = 1.0
METHODS = ("token", "userpass", "approle")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_PATH_PART = re.compile(r"[A-Za-z0-9._~:@+-]+")


@dataclass(frozen=True)
class TeamConfig:
    """One team: where its secrets are and how fresh they must be."""

    name: str
    url: str
    mount: str = DEFAULT_MOUNT
    prefix: str = ""
    refresh: float = DEFAULT_REFRESH
    max_stale: float = DEFAULT_MAX_STALE
    ca_cert: str | None = None
    method: str = "token"
    login_name: str | None = None  # userpass username / approle role-id (not secret)

    @property
    def path_prefix(self) -> str:
        return self.prefix or self.name

    def kv_path(self, provider: str) -> str:
        """Where provider's secret lives, as ``bao kv`` writes it."""
        return f"{self.mount}/{self.path_prefix}/{provider}"


def teams_path(config_dir: Path) -> Path:
    return config_dir / TEAMS_FILE


def check_team(team: TeamConfig) -> TeamConfig:
    """Refuse settings the agent could not use; messages say which and why."""
    if not _NAME.fullmatch(team.name):
        raise CredentialValidationError(
            f"team name {team.name!r} must be 1 to 64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    parts = urlsplit(team.url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise CredentialValidationError(
            f"--url {team.url!r} is not an http(s) URL; use e.g. https://bao.example.com:8200"
        )
    for what, value in (("--mount", team.mount), ("--prefix", team.path_prefix)):
        if not all(_PATH_PART.fullmatch(p) for p in value.split("/")):
            raise CredentialValidationError(
                f"{what} {value!r} must be path segments of letters, digits and ._~:@+- "
                "separated by single '/'"
            )
    if team.refresh < MIN_REFRESH:
        raise CredentialValidationError(f"--refresh must be at least {MIN_REFRESH:g} seconds")
    if team.max_stale < team.refresh:
        raise CredentialValidationError("--max-stale must be at least the --refresh interval")
    if team.method not in METHODS:
        raise CredentialValidationError(f"login method must be one of {', '.join(METHODS)}")
    if team.ca_cert is not None and not os.path.isfile(team.ca_cert):
        raise CredentialValidationError(
            f"--ca-cert {team.ca_cert} is not a readable file; give the PEM file of the "
            "server's certificate authority"
        )
    return team


def read_teams(config_dir: Path) -> list[TeamConfig]:
    """The configured teams in the order added; none when the file is absent."""
    path = teams_path(config_dir)
    try:
        with open(path, encoding="utf-8") as handle:
            info = os.fstat(handle.fileno())
            if info.st_mode & 0o077 or info.st_uid != os.getuid():
                raise CredentialStorageUnavailableError(
                    f"{path} must belong to you and be private (mode 600); run "
                    f"`chmod 600 {path}` and check who wrote it"
                )
            data = json.load(handle)
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as err:
        raise CredentialStorageUnavailableError(
            f"cannot read the team settings {path} ({type(err).__name__}); fix or remove "
            "the file and add the teams again with `modelforge-agent team add`"
        ) from None
    try:
        fields = TeamConfig.__dataclass_fields__
        return [
            check_team(TeamConfig(**{k: v for k, v in item.items() if k in fields}))
            for item in data["teams"]
        ]
    except (KeyError, TypeError, AttributeError, CredentialValidationError) as err:
        raise CredentialStorageUnavailableError(
            f"the team settings {path} are not valid ({err}); fix the file or remove it "
            "and add the teams again with `modelforge-agent team add`"
        ) from None


def write_teams(config_dir: Path, teams: list[TeamConfig]) -> Path:
    from ..files import make_private_dir, write_atomic

    make_private_dir(config_dir)
    path = teams_path(config_dir)
    body = json.dumps({"teams": [asdict(t) for t in teams]}, indent=2) + "\n"
    write_atomic(path, body.encode(), mode=0o600)
    return path


def find_team(teams: list[TeamConfig], name: str) -> TeamConfig:
    for team in teams:
        if team.name == name:
            return team
    known = ", ".join(t.name for t in teams) or "none"
    raise CredentialValidationError(
        f"no team {name!r} (configured: {known}); add it with "
        f"`modelforge-agent team add {name} --url URL`"
    )
