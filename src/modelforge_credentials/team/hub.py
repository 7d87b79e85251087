"""The agent's teams: lookup from memory, background refresh, login, CAS writes.

Lookups run on the event loop from plain dicts (:meth:`TeamHub.lookup` is
on the agent's hot path). Server calls run on the hub's own thread, never on
the backend's worker (a slow server must not delay local secrets) nor on
the loop (a client is never blocked by a refresh). Their results are kept
only if no lock came meanwhile (``generation``), so ``lock`` wins as it does
for local secrets. Tokens and cache keys are read from, and written to, the
local store through the agent's backend worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ..errors import (
    CredentialLockedError,
    CredentialStorageError,
    CredentialStorageUnavailableError,
    CredentialValidationError,
)
from . import CACHE_KEY, INSTALL_HINT, TOKEN_KEY, is_reserved, reserved_provider, sealed
from .config import TeamConfig, find_team, read_teams
from .runtime import RefreshResult, TeamRuntime

log = logging.getLogger("modelforge_credentials.agent")
T = TypeVar("T")
Pair = tuple[str, str]
MISS = object()  # lookup: the general path must decide (stale, or not loaded)
#: Renew a token once it has less than this share of its creation TTL left,
#: or less than three refresh intervals, whichever comes first.
RENEW_SHARE = 0.5


class TeamHub:
    def __init__(
        self,
        config_dir: Path,
        backend: Any,
        run_backend: Callable[..., Awaitable[Any]],
        *,
        clock: Callable[[], float],
        wall: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]],
    ) -> None:
        self.config_dir = config_dir
        self.backend = backend
        self._run_backend = run_backend
        self.clock, self.wall, self.sleep = clock, wall, sleep
        self.teams: dict[str, TeamRuntime] = {}
        self.index: dict[Pair, tuple[str, TeamRuntime]] = {}
        self.loaded = False
        self.generation = 0  # bumped by drop(): results from before it are discarded
        self.config_error: str | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._task: asyncio.Task[None] | None = None
        self.reload_config()

    @property
    def configured(self) -> bool:
        return bool(self.teams)

    # -- settings ----------------------------------------------------------------------

    def reload_config(self) -> list[str]:
        """Re-read teams.json; the names of teams removed since (their secrets go)."""
        try:
            configs = read_teams(self.config_dir)
            self.config_error = None
        except CredentialStorageError as err:
            log.error("team settings not loaded: %s", err)
            self.config_error = str(err)
            return []
        old = self.teams
        self.teams = {}
        for config in configs:
            kept = old.get(config.name)
            if kept is not None and kept.config == config:
                self.teams[config.name] = kept
            else:
                self.teams[config.name] = TeamRuntime(config)
                self.loaded = False  # a new or changed team: load its token and cache
        self._rebuild()
        return [name for name in old if name not in self.teams]

    # -- lookup (event loop, hot path) -------------------------------------------------

    def lookup(self, pair: Pair) -> object:
        """A team's value, ``None`` when no team has the name, or :data:`MISS`."""
        if not self.loaded:
            return MISS
        hit = self.index.get(pair)
        if hit is None:
            return None
        value, team = hit
        return value if team.serving(self.wall()) else MISS

    def answer(self, pair: Pair) -> tuple[str | None, TeamRuntime | None]:
        """The general path's answer: the value and its team, or raise why not."""
        hit = self.index.get(pair) if self.loaded else None
        if hit is None:
            return None, None
        value, team = hit
        if team.serving(self.wall()):
            return value, team
        raise CredentialStorageUnavailableError(self._stale_message(team, pair))

    def _stale_message(self, team: TeamRuntime, pair: Pair) -> str:
        age = self.wall() - (team.last_success or 0.0)
        why = team.error or "no refresh has succeeded since"
        return (
            f"{pair[0]}/{pair[1]} comes from team {team.name}, whose copy is {age:.0f} s old: "
            f"older than its --max-stale {team.config.max_stale:g} s, so it is not served. "
            f"Last refresh: {why}"
            + (
                ""
                if "team refresh" in why
                else f"; once the server answers, run `modelforge-agent team refresh {team.name}`"
            )
        )

    def names(self, provider: str | None) -> dict[Pair, str]:
        """Every team name (of ``provider``) -> its source, first team first."""
        return {
            pair: f"team:{team.name}"
            for pair, (_, team) in self.index.items()
            if provider is None or pair[0] == provider
        }

    def source_of(self, pair: Pair) -> dict[str, object] | None:
        hit = self.index.get(pair) if self.loaded else None
        if hit is None:
            return None
        team = hit[1]
        secret = team.secrets[pair[0]]
        return {
            "source": f"team:{team.name}",
            "path": team.config.kv_path(pair[0]),
            "version": secret.version,
        }

    def _rebuild(self) -> None:
        index: dict[Pair, tuple[str, TeamRuntime]] = {}
        for team in self.teams.values():
            for provider, secret in team.secrets.items():
                for key, value in secret.fields.items():
                    index.setdefault((provider, key), (value, team))
        self.index = index

    # -- lock and load -------------------------------------------------------------------

    def drop(self) -> None:
        """Forget every token, key and team secret in memory (the agent locked)."""
        self.generation += 1
        for team in self.teams.values():
            team.drop()
        self.index = {}
        self.loaded = False

    async def load(self) -> bool:
        """Tokens and cache keys from the local store, secrets from the sealed
        caches. False when a lock came meanwhile (or the store is locked)."""
        generation = self.generation
        found: dict[str, tuple[str | None, str | None, dict[str, Any] | None]] = {}
        try:
            for name in self.teams:
                provider = reserved_provider(name)
                token = await self._run_backend(self.backend.retrieve, provider, TOKEN_KEY)
                key = await self._run_backend(self.backend.retrieve, provider, CACHE_KEY)
                snapshot = None
                if key is not None:
                    path = sealed.cache_path(self.config_dir, name)
                    try:
                        snapshot = await self._net(sealed.unseal, path, name, key)
                    except CredentialStorageError as err:
                        log.warning("%s", err)
                found[name] = (token, key, snapshot)
        except CredentialLockedError:
            return False
        if generation != self.generation:
            return False
        for name, (token, key, snapshot) in found.items():
            team = self.teams.get(name)
            if team is None:
                continue
            team.token, team.cache_key = token, key
            if snapshot is not None and team.restore(snapshot):
                team.state = "cached"
            team.state = team.state if token else "needs_login"
            if not token:
                team.error = f"not logged in: run `modelforge-agent team login {name}`"
        self.loaded = True
        self._rebuild()
        self.start()
        return True

    async def forget(self, names: list[str]) -> None:
        """Delete removed teams' token, cache key and sealed cache."""
        for name in names:
            provider = reserved_provider(name)
            for key in (TOKEN_KEY, CACHE_KEY):
                try:
                    await self._run_backend(self.backend.delete, provider, key)
                except CredentialStorageError as err:
                    log.warning("team %s: could not delete its %s: %s", name, key, err)
            sealed.cache_path(self.config_dir, name).unlink(missing_ok=True)

    async def forget_orphans(self) -> None:
        """Reserved names of teams no longer configured (removed while no agent ran)."""
        names = await self._run_backend(self.backend.list_keys, None)
        gone = sorted(
            {p[len(reserved_provider("")) :] for p, _ in names if is_reserved(p)} - set(self.teams)
        )
        await self.forget(gone)

    # -- refresh -------------------------------------------------------------------------

    def start(self) -> None:
        """Run the background refresher (once loaded; again after a lock)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._refresher())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _refresher(self) -> None:
        while self.loaded:
            await self.refresh_due()
            due = min((t.next_due for t in self.teams.values()), default=None)
            await self.sleep(60.0 if due is None else max(0.05, due - self.clock()))

    async def refresh_due(self) -> None:
        """Refresh every team whose interval has passed (the refresher's one step)."""
        now = self.clock()
        for team in list(self.teams.values()):
            if team.next_due <= now:
                await self.refresh(team)

    async def refresh(self, team: TeamRuntime) -> None:
        """One refresh: token TTL (renewed when due), then changed versions only."""
        async with team.lock:
            team.next_due = self.clock() + team.config.refresh
            if team.token is None or not self.loaded:
                return
            generation = self.generation
            try:
                result = await self._net(_refresh, team.source(), team.token, dict(team.secrets))
            except ImportError:
                team.failed("error", f"hvac is not installed: {INSTALL_HINT}", self.wall())
                return
            except CredentialStorageError as err:
                state = getattr(err, "state", "error")
                team.failed(state, str(err), self.wall())
                log.warning("%s", err)
                if state == "needs_login" and generation == self.generation:
                    await self._withdraw(team)
                return
            if generation != self.generation:
                return
            team.succeeded(result, self.wall(), self.clock())
            self._rebuild()
            await self._persist(team)

    async def _withdraw(self, team: TeamRuntime) -> None:
        """The server refused the token (403: revoked, expired, a member who
        left): unlike an outage, that is a "no", so the copy stops being
        served at once, from memory and from the sealed cache."""
        team.secrets = {}
        team.last_success = None
        self._rebuild()
        path = sealed.cache_path(self.config_dir, team.name)
        await self._net(path.unlink, True)

    async def _persist(self, team: TeamRuntime) -> None:
        if team.cache_key is None:
            return
        path = sealed.cache_path(self.config_dir, team.name)
        try:
            await self._net(sealed.seal, path, team.name, team.cache_key, team.snapshot())
        except OSError as err:
            log.error("team %s: cannot write its sealed cache %s: %s", team.name, path, err)

    async def refresh_now(self, name: str | None) -> None:
        """``team refresh``: settings re-read, then the team(s) refreshed at once."""
        gone = self.reload_config()
        if gone:
            await self.forget(gone)
        if not self.loaded and not await self.load():
            return
        teams = [self.team(name)] if name else list(self.teams.values())
        for team in teams:
            await self.refresh(team)
        self.start()

    # -- login and writes ----------------------------------------------------------------

    def team(self, name: str) -> TeamRuntime:
        team = self.teams.get(name)
        if team is None:
            find_team([t.config for t in self.teams.values()], name)  # raises, with advice
            raise AssertionError(name)
        return team

    async def login(self, name: str, method: str, secret: str, login_name: str | None) -> None:
        team = self.team(name)
        if not self.loaded and not await self.load():
            raise CredentialLockedError("the agent is locked: run `modelforge-agent unlock`")
        try:
            token = await self._net(team.source().login, method, secret, login_name)
        except ImportError:
            raise CredentialStorageUnavailableError(
                f"hvac is not installed in the agent's environment: {INSTALL_HINT}"
            ) from None
        provider = reserved_provider(name)
        key = team.cache_key or sealed.new_key()
        await self._run_backend(self.backend.store, provider, TOKEN_KEY, token)
        if team.cache_key is None:
            await self._run_backend(self.backend.store, provider, CACHE_KEY, key)
        team.token, team.cache_key, team.error = token, key, None
        team.state = "logged in"
        log.info("team %s: logged in (%s)", name, method)
        await self.refresh(team)
        self.start()

    async def write(self, name: str, provider: str, key: str, value: str) -> dict[str, object]:
        """``set --team``: KV v2 check-and-set against the version last seen."""
        team = self.team(name)
        if not self.loaded and not await self.load():
            raise CredentialLockedError("the agent is locked: run `modelforge-agent unlock`")
        if team.token is None:
            raise CredentialValidationError(
                f"team {name} has no login token; run `modelforge-agent team login {name}`"
            )
        from .source import Secret

        old = team.secrets.get(provider)
        seen = old.version if old is not None else 0
        fields = {**(old.fields if old is not None else {}), key: value}
        generation = self.generation
        version = await self._net(team.source().write, team.token, provider, fields, seen)
        if generation == self.generation:
            team.secrets = {**team.secrets, provider: Secret(version, fields)}
            self._rebuild()
            await self._persist(team)
        return {"version": version, "path": team.config.kv_path(provider)}

    # -- plumbing ------------------------------------------------------------------------

    async def _net(self, fn: Callable[..., T], *args: Any) -> T:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="team")
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def status(self) -> list[dict[str, Any]]:
        wall, mono = self.wall(), self.clock()
        return [team.status(wall, mono) for team in self.teams.values()]

    def configs(self) -> list[TeamConfig]:
        return [team.config for team in self.teams.values()]


def _refresh(source: Any, token: str, known: dict[str, Any]) -> RefreshResult:
    """On the team thread: check (and renew) the token, then fetch what changed."""
    ttl, created, renewable = source.token_info(token)
    renewed = False
    refresh = source.config.refresh
    if ttl is not None and renewable and ttl < max(3 * refresh, RENEW_SHARE * created):
        ttl = source.renew(token)
        renewed = True
    secrets = source.fetch(token, known)
    fetched = sum(1 for p, s in secrets.items() if known.get(p) is not s)
    return RefreshResult(secrets, ttl, renewable, renewed, fetched)
