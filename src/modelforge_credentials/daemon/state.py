"""The agent's state: the backend, the cache, the lock and its timers.

What each operation does with it is decided in one place, daemon/dispatch.py;
this module holds what those answers share. Time comes from an injected
clock (and sleep), so timers are tested without waiting.

The cache is touched only on the event loop's thread: the worker returns what
it read, and the loop keeps it only if no lock came in between (``epoch``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from .. import __version__, settings
from ..backends.encrypted_file import EncryptedFileStorage
from ..backends.env import EnvVarStorage
from ..errors import CredentialStorageError
from ..protocol import LOCKED, Request, error_reply
from ..storage import CredentialStorage
from ..team import is_reserved
from ..team.hub import MISS as TEAM_MISS
from ..team.hub import TeamHub
from ..validation import validate_name
from .cache import MISS, Cache
from .locking import LockTimers, UnlockBackoff
from .worker import BackendWorker

__all__ = ["Agent", "AgentConfig"]

log = logging.getLogger("modelforge_credentials.agent")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Reply = dict[str, object]
Credentials = dict[str, dict[str, str]]
T = TypeVar("T")

DEFAULT_KEYRING_TTL = 10.0
LOCKED_ADVICE = "the agent is locked: run `modelforge-agent unlock`"


@dataclass
class AgentConfig:
    idle_timeout: float | None = settings.DEFAULT_IDLE_TIMEOUT  # None or 0: never
    max_unlock: float | None = None  # absolute limit after an unlock
    cache_ttl: float | None = None  # None: per backend (keyring 10 s, file: on change)
    unlock_delay_base: float = 0.5
    unlock_delay_cap: float = settings.DEFAULT_UNLOCK_DELAY_CAP
    backend_timeout: float | None = 30.0  # per backend call; unlock's KDF included
    file_check_interval: float = 0.1  # how stale another process's file change may be
    started_by: str = "manual"
    reason: str = ""
    socket: str = ""
    audit_log: str | None = None
    team_dir: str | None = None  # where teams.json and the sealed team caches live
    event_loop: str = ""  # which event loop serves (daemon/loop.py), for status


class Agent:
    """The selected backend with its decrypted cache, lock and team secrets."""

    def __init__(
        self,
        backend: CredentialStorage,
        config: AgentConfig | None = None,
        *,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        wall: Clock = time.time,
    ) -> None:
        self.backend = backend
        self.config = config or AgentConfig()
        self.clock = clock
        self.sleep = sleep
        self.file = backend if isinstance(backend, EncryptedFileStorage) else None
        self.read_only = isinstance(backend, EnvVarStorage)
        ttl = self.config.cache_ttl
        if ttl is None and self.file is None and not self.read_only:
            ttl = DEFAULT_KEYRING_TTL
        self.cache = Cache(ttl, clock)
        self.started_at = clock()
        self.timers = LockTimers(self.config, self.started_at)
        self.backoff = UnlockBackoff(self.config)
        self.locked = False
        # Bumped by every lock. A backend call that started in an older epoch
        # was overtaken by a lock: its result is never cached (see overtaken).
        self.epoch = 0
        self.protection = str(self._describe().get("protection", "unknown"))
        self._file_checked_at = float("-inf")
        self.worker = BackendWorker(backend.name, lambda: self.config.backend_timeout)
        self.unlocking = asyncio.Lock()
        # Team secrets (team/hub.py): None without a config directory to find them in.
        self.teams: TeamHub | None = None
        if self.config.team_dir:
            from pathlib import Path

            self.teams = TeamHub(
                Path(self.config.team_dir), backend, self.run, clock=clock, wall=wall, sleep=sleep
            )

    @property
    def backend_name(self) -> str:
        return self.backend.name

    @property
    def executor(self) -> ThreadPoolExecutor:
        return self.worker.executor

    async def start(self) -> None:
        """Learn whether the store needs a passphrase; load the cache if not."""
        if self.file is not None:
            self.locked, self.protection = await self.run(_lock_state, self.file)
            if not self.locked and await self.reload(self.epoch):
                self.timers.unlocked_at = self.clock()
        await self.load_teams()

    async def load_teams(self) -> None:
        """Team tokens and sealed caches, once the local store can be read."""
        if self.teams is None or not self.teams.configured or self.locked:
            return
        try:
            if await self.teams.load():
                await self.teams.forget_orphans()
        except CredentialStorageError as err:
            log.warning("team secrets not loaded: %s", err)

    def close(self) -> None:
        if self.teams is not None:
            self.teams.stop()
        self.worker.close()

    # -- the lock ---------------------------------------------------------------

    def check_timers(self, now: float | None = None) -> None:
        """Lock (or drop the cache) when the idle or absolute limit has passed."""
        if now is None:
            now = self.clock()
        reason = self.timers.expired(now, holding=len(self.cache) > 0)
        if reason is not None:
            log.info("%s: locking", reason)
            self.lock()

    def next_deadline(self) -> float | None:
        """Clock time of the next timer check that could change anything."""
        return self.timers.next_deadline(holding=len(self.cache) > 0)

    def touch(self, now: float) -> None:
        """A request that reads or writes a secret: the idle timer starts over."""
        self.timers.last_activity = now

    def lock(self) -> None:
        """Drop every secret from memory; a passphrase-protected file needs
        its passphrase again."""
        self.epoch += 1
        self.cache.clear()
        if self.teams is not None:
            self.teams.drop()
        self.timers.unlocked_at = None
        if self.file is not None:
            self.file.lock()
            if self.worker.in_flight:
                # A call running on the worker may derive or decrypt again
                # after the line above: forget it once it is done.
                self.worker.after_current(self.file.lock)
            self.locked = self.protection == "passphrase"

    def unlocked(self) -> None:
        self.backoff.succeeded()
        self.locked = False
        self.timers.unlocked_at = self.timers.last_activity = self.clock()
        log.info("unlocked")

    def overtaken(self, req: Request, epoch: int) -> Reply | None:
        """``locked`` for a request whose backend call a lock overtook, else None.

        The lock was acknowledged before this answer, so it wins: nothing read
        before it is answered after it.
        """
        if epoch == self.epoch or not self.locked:
            return None
        return error_reply(
            req.id,
            LOCKED,
            f"the agent was locked while this {req.op.value} ran: run `modelforge-agent unlock`",
        )

    # -- the cache ----------------------------------------------------------------

    def cached(self, provider: str, key: str) -> object:
        """The cached answer for ``(provider, key)``: a value, ``None`` for a
        known absence, or :data:`MISS` when the general path must decide
        (locked, stale, not cached, or a name that needs validating).

        The hot path: a hit is answered without validating again (only
        valid names are cached) and without the generic dispatch.
        """
        now = self.clock()
        self.check_timers(now)
        if self.locked or not self.cache_fresh(now):
            return MISS
        found = self.cache.lookup((provider, key), now)
        if found is None and self.teams is not None and self.teams.configured:
            # Local first, then the teams in order: an absent local name asks them.
            found = self.teams.lookup((provider, key))
            if found is TEAM_MISS:
                return MISS
        if found is None and (
            is_reserved(provider) or not (_plain_name(provider) and _plain_name(key))
        ):
            return MISS  # an absence is only final for a valid, unreserved name
        if found is not MISS:
            self.timers.last_activity = now
        return found

    def cache_fresh(self, now: float) -> bool:
        """False when another process replaced the file (the cache is dropped).

        Checked with one stat at most every ``file_check_interval`` seconds:
        the stat would otherwise be a third of a cached retrieve's cost.
        """
        if self.file is None or not self.cache.complete:
            return True
        if now - self._file_checked_at < self.config.file_check_interval:
            return True
        self._file_checked_at = now
        if self.file.changed_since_last_access():
            self.cache.clear()
            return False
        return True

    async def reload(self, epoch: int) -> bool:
        """Load the whole file into the cache; False if a lock came meanwhile."""
        assert self.file is not None
        credentials, protection = await self.run(_read_file, self.file)
        return self.keep(credentials, protection, epoch)

    def keep(self, credentials: Credentials, protection: str, epoch: int) -> bool:
        """Fill the cache with what the worker read, unless a lock came since."""
        if epoch != self.epoch:
            return False
        # Team tokens and cache keys stay in the store: never in the client cache.
        self.cache.fill({p: keys for p, keys in credentials.items() if not is_reserved(p)})
        self.protection = protection
        return True

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the backend worker."""
        return await self.worker.run(fn, *args)

    # -- status -------------------------------------------------------------------

    def _describe(self) -> dict[str, Any]:
        try:
            return dict(self.backend.describe())
        except CredentialStorageError:
            return {}

    def status(self) -> dict[str, Any]:
        now = self.clock()
        idle = self.config.idle_timeout
        info: dict[str, Any] = {
            "locked": self.locked,
            "backend": self.backend_name,
            "protection": self.protection,
            "cached": len(self.cache),
            "idle_timeout": idle if idle else None,
            "max_unlock": self.config.max_unlock,
            "pid": os.getpid(),
            "uptime": max(0.0, now - self.started_at),
            "version": __version__,
            "started_by": self.config.started_by,
            "reason": self.config.reason,
            "socket": self.config.socket,
            "read_only": self.read_only,
            "failed_unlocks": self.backoff.failures,
        }
        if self.config.event_loop:
            info["event_loop"] = self.config.event_loop
        if self.file is not None:
            info["path"] = str(self.file.path)
        if self.cache.ttl is not None:
            info["cache_ttl"] = self.cache.ttl
        if self.config.audit_log:
            info["audit_log"] = self.config.audit_log
        if self.teams is not None and self.teams.configured:
            info["teams"] = {t.name: t.state for t in self.teams.teams.values()}
        return info


def _plain_name(name: str) -> bool:
    try:
        validate_name("name", name)
    except CredentialStorageError:
        return False
    return True


def _lock_state(file: EncryptedFileStorage) -> tuple[bool, str]:
    return file.locked, file.protection


def _read_file(file: EncryptedFileStorage) -> tuple[Credentials, str]:
    """On the worker: every credential and the file's protection."""
    return file.load(), file.protection


def unlock_and_read(file: EncryptedFileStorage, passphrase: str) -> tuple[Credentials, str]:
    """On the worker: unlock with ``passphrase``, then read everything."""
    file.unlock(passphrase)
    return _read_file(file)
