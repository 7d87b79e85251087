"""One team inside the agent: its cached secrets, token, freshness and health.

Touched only on the agent's event-loop thread. Times: ``mono`` is the
agent's injected monotonic clock (refresh schedule, token TTL), ``wall`` its
injected wall clock (the last successful refresh, which survives restarts
in the sealed cache, and decides max-stale).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .config import TeamConfig

if TYPE_CHECKING:
    from .source import Secret, TeamSource


@dataclass
class RefreshResult:
    """What a refresh learnt on the team thread, applied on the loop."""

    secrets: dict[str, Secret]
    ttl: float | None
    renewable: bool
    renewed: bool
    fetched: int  # providers whose data was read (changed versions only)


@dataclass
class TeamRuntime:
    config: TeamConfig
    token: str | None = field(default=None, repr=False)
    cache_key: str | None = field(default=None, repr=False)
    secrets: dict[str, Secret] = field(default_factory=dict, repr=False)
    last_success: float | None = None  # wall clock
    last_attempt: float | None = None  # wall clock
    state: str = "not loaded"
    error: str | None = None
    token_ttl: float | None = None
    ttl_checked_at: float | None = None  # mono
    renewable: bool = False
    renewals: int = 0
    refreshes: int = 0
    fetched: int = 0
    next_due: float = 0.0  # mono
    lock: asyncio.Lock = field(default_factory=asyncio.Lock, repr=False)
    _source: TeamSource | None = field(default=None, repr=False)

    def __repr__(self) -> str:  # never the token, the key or a value
        return f"TeamRuntime({self.config.name!r}, state={self.state!r})"

    @property
    def name(self) -> str:
        return self.config.name

    def source(self) -> TeamSource:
        """The hvac-speaking side, imported only now (hvac is an optional extra)."""
        if self._source is None:
            from .source import TeamSource

            self._source = TeamSource(self.config)
        return self._source

    def serving(self, wall: float) -> bool:
        """Whether the cached copy may still be served (max-stale)."""
        return self.last_success is not None and wall - self.last_success <= self.config.max_stale

    def drop(self) -> None:
        """Forget every secret held in memory (lock)."""
        self.token = None
        self.cache_key = None
        self.secrets = {}
        self.state = "not loaded"

    def succeeded(self, result: RefreshResult, wall: float, mono: float) -> None:
        self.secrets = result.secrets
        self.last_success = self.last_attempt = wall
        self.state, self.error = "ok", None
        self.token_ttl, self.ttl_checked_at = result.ttl, mono
        self.renewable = result.renewable
        self.renewals += int(result.renewed)
        self.refreshes += 1
        self.fetched += result.fetched

    def failed(self, state: str, message: str, wall: float) -> None:
        self.last_attempt = wall
        self.state, self.error = state, message

    def snapshot(self) -> dict[str, Any]:
        """The sealed cache's content (values included: it is encrypted)."""
        return {
            "url": self.config.url,
            "mount": self.config.mount,
            "prefix": self.config.path_prefix,
            "last_success": self.last_success,
            "secrets": {
                p: {"version": s.version, "fields": s.fields} for p, s in self.secrets.items()
            },
        }

    def restore(self, snapshot: dict[str, Any]) -> bool:
        """Take a sealed snapshot written for these same settings; False if not."""
        from .source import Secret, fields_checked

        same = (snapshot.get("url"), snapshot.get("mount"), snapshot.get("prefix")) == (
            self.config.url,
            self.config.mount,
            self.config.path_prefix,
        )
        last = snapshot.get("last_success")
        if not same or not isinstance(last, int | float):
            return False
        secrets = {}
        for provider, item in (snapshot.get("secrets") or {}).items():
            secrets[provider] = Secret(
                int(item["version"]), fields_checked(provider, item["fields"])
            )
        self.secrets, self.last_success = secrets, float(last)
        return True

    def status(self, wall: float, mono: float) -> dict[str, Any]:
        """What ``team status`` and doctor show: names and times, never a secret."""
        c = self.config
        ttl = self.token_ttl
        if ttl is not None and self.ttl_checked_at is not None:
            ttl = max(0.0, ttl - (mono - self.ttl_checked_at))
        age = None if self.last_success is None else max(0.0, wall - self.last_success)
        return {
            "name": c.name,
            "url": c.url,
            "path": f"{c.mount}/{c.path_prefix}",
            "tls": c.url.startswith("https:"),
            "ca_cert": c.ca_cert,
            "method": c.method,
            "login_name": c.login_name,
            "state": self.state,
            "error": self.error,
            "needs_login": self.state == "needs_login",
            "logged_in": self.token is not None,
            "serving": self.serving(wall),
            "providers": len(self.secrets),
            "last_refresh": self.last_success,
            "last_refresh_age": age,
            "last_attempt": self.last_attempt,
            "refresh": c.refresh,
            "max_stale": c.max_stale,
            "token_ttl": ttl,
            "token_renewable": self.renewable,
            "renewals": self.renewals,
            "refreshes": self.refreshes,
            "fetched": self.fetched,
        }
