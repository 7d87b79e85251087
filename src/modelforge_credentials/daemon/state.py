"""The agent's state: backend, cache, lock, timers, and the one dispatch of ops.

Every operation is answered in :meth:`Agent.fast` when it needs no blocking
work (hello, status, lock, cache hits, refusals while locked) and otherwise in
:meth:`Agent.slow`, which runs the backend on one worker thread: backend
calls are serialized, and the event loop never blocks on D-Bus, disk or the
KDF. Time comes from an injected clock (and sleep), so timers are tested
without waiting.

The cache is touched only on the event loop's thread: the worker returns what
it read, and the loop keeps it only if no lock came in between (``epoch``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

from .. import __version__
from ..backends.encrypted_file import EncryptedFileStorage
from ..backends.env import EnvVarStorage
from ..errors import (
    CredentialBadPassphraseError,
    CredentialLockedError,
    CredentialStorageError,
    CredentialStorageUnavailableError,
    CredentialValidationError,
)
from ..protocol import (
    BAD_PASSPHRASE,
    ERROR_CODES,
    INTERNAL,
    INVALID,
    LOCKED,
    OPS_ALLOWED_WHILE_LOCKED,
    PROTOCOL_VERSION,
    READ_ONLY,
    Op,
    Request,
    TeamOp,
    error_reply,
    ok_reply,
)
from ..storage import CredentialStorage
from ..team import agent_ops as team_ops
from ..team import is_reserved
from ..team.hub import MISS as TEAM_MISS
from ..team.hub import TeamHub
from ..validation import validate_name, validate_pair, validate_value

log = logging.getLogger("modelforge_credentials.agent")

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]
Reply = dict[str, object]
Pair = tuple[str, str]
Credentials = dict[str, dict[str, str]]
T = TypeVar("T")

DEFAULT_IDLE_TIMEOUT = 15 * 60.0
DEFAULT_KEYRING_TTL = 10.0


@dataclass
class AgentConfig:
    idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT  # None or 0: never
    max_unlock: float | None = None  # absolute limit after an unlock
    cache_ttl: float | None = None  # None: per backend (keyring 10 s, file: on change)
    unlock_delay_base: float = 0.5
    unlock_delay_cap: float = 10.0
    backend_timeout: float | None = 30.0  # per backend call; unlock's KDF included
    file_check_interval: float = 0.1  # how stale another process's file change may be
    started_by: str = "manual"
    reason: str = ""
    socket: str = ""
    audit_log: str | None = None
    team_dir: str | None = None  # where teams.json and the sealed team caches live


MISS = object()  # Cache.lookup: not known, ask the backend


class Cache:
    """Decrypted values by ``(provider, key)``; ``None`` records an absence.

    ``complete`` means the whole store was loaded, so a miss is an absence.
    Entries expire after ``ttl`` seconds when one is set. Only validated
    names ever become entries.
    """

    def __init__(self, ttl: float | None, clock: Clock) -> None:
        self.ttl = ttl
        self._clock = clock
        self._entries: dict[Pair, tuple[str | None, float]] = {}
        self._values = 0  # entries holding a value: `status` reports it in O(1)
        self.complete = False

    def lookup(self, pair: Pair, now: float) -> object:
        """The value (``str``), an absence (``None``), or :data:`MISS`."""
        entry = self._entries.get(pair)
        if entry is None:
            return None if self.complete else MISS
        value, stored_at = entry
        if self.ttl is not None and now - stored_at >= self.ttl:
            self._drop(pair)
            return MISS
        return value

    def put(self, pair: Pair, value: str | None) -> None:
        self._drop(pair)
        if value is None and self.complete:
            return
        self._entries[pair] = (value, self._clock())
        if value is not None:
            self._values += 1

    def _drop(self, pair: Pair) -> None:
        old = self._entries.pop(pair, None)
        if old is not None and old[0] is not None:
            self._values -= 1

    def fill(self, credentials: dict[str, dict[str, str]]) -> None:
        now = self._clock()
        entries: dict[Pair, tuple[str | None, float]] = {
            (provider, key): (value, now)
            for provider, keys in credentials.items()
            for key, value in keys.items()
        }
        self._entries = entries
        self._values = len(entries)
        self.complete = True

    def names(self, provider: str | None) -> list[Pair]:
        return sorted(
            pair
            for pair, (value, _) in self._entries.items()
            if value is not None and (provider is None or pair[0] == provider)
        )

    def clear(self) -> None:
        self._entries = {}
        self._values = 0
        self.complete = False

    def __len__(self) -> int:
        return self._values


class Agent:
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
        self.last_activity = self.started_at
        self.unlocked_at: float | None = None
        self.locked = False
        # Bumped by every lock. A backend call that started in an older epoch
        # was overtaken by a lock: its result is never cached (see _overtaken).
        self.epoch = 0
        self._calls_in_flight = 0
        self.protection = str(self._describe().get("protection", "unknown"))
        self.failed_unlocks = 0
        self._file_checked_at = float("-inf")
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backend")
        self._unlock_lock = asyncio.Lock()
        # Team secrets (team/hub.py): None without a config directory to find them in.
        self.teams: TeamHub | None = None
        if self.config.team_dir:
            from pathlib import Path

            self.teams = TeamHub(
                Path(self.config.team_dir), backend, self._run, clock=clock, wall=wall, sleep=sleep
            )

    @property
    def backend_name(self) -> str:
        return self.backend.name

    async def start(self) -> None:
        """Learn whether the store needs a passphrase; load the cache if not."""
        if self.file is not None:
            self.locked, self.protection = await self._run(_lock_state, self.file)
            if not self.locked and await self._reload(self.epoch):
                self.unlocked_at = self.clock()
        await self._load_teams()

    async def _load_teams(self) -> None:
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
        self.executor.shutdown(wait=False, cancel_futures=True)

    # -- timers ---------------------------------------------------------------

    def check_timers(self, now: float | None = None) -> None:
        """Lock (or drop the cache) when the idle or absolute limit has passed."""
        if now is None:
            now = self.clock()
        idle = self.config.idle_timeout
        if idle and now - self.last_activity >= idle and (self.unlocked_at or len(self.cache)):
            log.info("idle for %.0f s: locking", now - self.last_activity)
            self._lock()
        limit = self.config.max_unlock
        if limit and self.unlocked_at is not None and now - self.unlocked_at >= limit:
            log.info("unlocked for %.0f s (the maximum): locking", now - self.unlocked_at)
            self._lock()

    def next_deadline(self) -> float | None:
        """Clock time of the next timer check that could change anything."""
        deadlines = []
        if self.config.idle_timeout and (self.unlocked_at is not None or len(self.cache)):
            deadlines.append(self.last_activity + self.config.idle_timeout)
        if self.config.max_unlock and self.unlocked_at is not None:
            deadlines.append(self.unlocked_at + self.config.max_unlock)
        return min(deadlines) if deadlines else None

    def _lock(self) -> None:
        self.epoch += 1
        self.cache.clear()
        if self.teams is not None:
            self.teams.drop()
        self.unlocked_at = None
        if self.file is not None:
            self.file.lock()
            if self._calls_in_flight:
                # A call running on the worker may derive or decrypt again
                # after the line above: forget it once it is done (the worker
                # runs its jobs in order).
                with contextlib.suppress(RuntimeError):  # shut down: nothing runs
                    self.executor.submit(self.file.lock)
            self.locked = self.protection == "passphrase"

    # -- dispatch -------------------------------------------------------------

    def cached(self, provider: str, key: str) -> object:
        """The cached answer for ``(provider, key)``: a value, ``None`` for a
        known absence, or :data:`MISS` when the general path must decide
        (locked, stale, not cached, or a name that needs validating).

        The hot path: a hit is answered without validating again (only
        valid names are cached) and without the generic dispatch.
        """
        now = self.clock()
        self.check_timers(now)
        if self.locked or not self._cache_fresh(now):
            return MISS
        found = self.cache.lookup((provider, key), now)
        if found is None and self.teams is not None and self.teams.configured:
            # Local first, then the teams in order: an absent local name asks them.
            found = self.teams.lookup((provider, key))
            if found is TEAM_MISS:
                return MISS
        if found is None and not (_plain_name(provider) and _plain_name(key)):
            return MISS  # an absence is only final for a valid name
        if found is not MISS:
            self.last_activity = now
        return found

    def fast(self, req: Request) -> Reply | None:
        """The reply when it needs no blocking work, else ``None`` (use slow)."""
        op = req.op
        if op is Op.RETRIEVE or op is Op.EXISTS:
            found = self.cached(req.provider or "", req.key or "")
            if found is not MISS:
                if op is Op.RETRIEVE:
                    return {"id": req.id, "ok": True, "value": found}
                return {"id": req.id, "ok": True, "exists": found is not None}
        now = self.clock()
        self.check_timers(now)
        if op is Op.HELLO:
            return ok_reply(
                req.id,
                protocol=PROTOCOL_VERSION,
                agent=__version__,
                backend=self.backend_name,
                locked=self.locked,
            )
        if op is Op.STATUS:
            return ok_reply(req.id, **self.status())
        if op is TeamOp.TEAM_STATUS:
            # Allowed while locked, as status: names and times only, never a secret.
            return ok_reply(req.id, teams=self.teams.status() if self.teams else [])
        if op is Op.LOCK:
            self._lock()
            return ok_reply(req.id)
        if self.locked and op not in OPS_ALLOWED_WHILE_LOCKED:
            return error_reply(req.id, LOCKED, "the agent is locked: run `modelforge-agent unlock`")
        if op is Op.UNLOCK:
            return None
        try:
            self._validate(req)
        except CredentialStorageError as err:
            return _failure(req.id, err)
        self.last_activity = now
        if op in (Op.STORE, Op.DELETE) and self.read_only:
            return error_reply(
                req.id,
                READ_ONLY,
                "the environment-variable backend is read-only inside the agent (a "
                "write would only change the agent's own environment); set "
                "MODEL_FORGE_BACKEND=encrypted-file or keyring and restart the agent",
            )
        if op is Op.LIST and self.cache.complete and self._cache_fresh(now):
            if self.teams is None or self.teams.loaded or not self.teams.configured:
                return team_ops.list_reply(
                    self.teams, req.id, self.cache.names(req.provider), req.provider
                )
        return None

    async def slow(self, req: Request) -> Reply:
        """Answer ``req`` with backend work on the worker thread."""
        op = req.op
        epoch = self.epoch
        try:
            if op is Op.UNLOCK:
                return await self._unlock(req, epoch)
            if self.locked:
                return error_reply(
                    req.id, LOCKED, "the agent is locked: run `modelforge-agent unlock`"
                )
            if self.teams is not None and self.teams.configured and not self.teams.loaded:
                await self._load_teams()
            if self.file is not None and not self.cache.complete:
                if await self._reload(epoch):
                    quick = self.fast(req)
                    if quick is not None:
                        return quick
                elif (overtaken := self._overtaken(req, epoch)) is not None:
                    return overtaken
            if isinstance(op, TeamOp):
                return await team_ops.handle(self, req)
            provider, key = req.provider or "", req.key or ""
            if op in (Op.STORE, Op.DELETE):
                # A write merges what other processes wrote to the file and
                # then records our own stamp: reload, or their changes would
                # hide behind it.
                stale = self.file is not None and await self._run(
                    self.file.changed_since_last_access
                )
                if op is Op.STORE:
                    assert req.value is not None
                    await self._run(self.backend.store, provider, key, req.value)
                    written: str | None = req.value
                    reply = ok_reply(req.id)
                else:
                    deleted = await self._run(self.backend.delete, provider, key)
                    written = None
                    reply = ok_reply(req.id, deleted=bool(deleted))
                # Answered as done even if a lock came meanwhile: it is durable.
                if epoch == self.epoch:
                    self.cache.put((provider, key), written)
                    if stale:
                        await self._reload(epoch)
                return reply
            if op in (Op.RETRIEVE, Op.EXISTS):
                value = await self._run(self.backend.retrieve, provider, key)
                if (overtaken := self._overtaken(req, epoch)) is not None:
                    return overtaken
                if epoch == self.epoch:
                    self.cache.put((provider, key), value)
                if value is None and self.teams is not None:
                    value = self.teams.answer((provider, key))[0]  # raises when too stale
                if op is Op.RETRIEVE:
                    return ok_reply(req.id, value=value)
                return ok_reply(req.id, exists=value is not None)
            if op is Op.LIST:
                names = await self._run(self.backend.list_keys, req.provider)
                if (overtaken := self._overtaken(req, epoch)) is not None:
                    return overtaken
                return team_ops.list_reply(self.teams, req.id, names, req.provider)
        except (CredentialLockedError, CredentialBadPassphraseError) as err:
            if self.file is None:
                return _failure(req.id, err)
            if (overtaken := self._overtaken(req, epoch)) is not None:
                return overtaken  # the agent's own lock got to the file first
            # Only unlock takes a passphrase: here the file was re-protected
            # behind the agent's back (e.g. `passwd` from another process).
            self._lock()
            self.locked = True
            self.protection = "passphrase"
            return error_reply(
                req.id,
                LOCKED,
                f"{self.file.path} needs its passphrase (it changed or was set since "
                "the agent unlocked it): run `modelforge-agent unlock`",
            )
        except CredentialStorageError as err:
            log.warning("%s failed: %s", op.value, err)
            return _failure(req.id, err)
        except Exception as err:
            log.error("%s failed unexpectedly: %s", op.value, type(err).__name__)
            return error_reply(
                req.id, INTERNAL, f"internal error ({type(err).__name__}); see the agent's log"
            )
        return error_reply(req.id, INTERNAL, f"operation {op.value!r} has no handler")

    async def handle(self, req: Request) -> Reply:
        reply = self.fast(req)
        return reply if reply is not None else await self.slow(req)

    # -- pieces ------------------------------------------------------------------

    def _validate(self, req: Request) -> Pair | None:
        if req.op is Op.LIST:
            if req.provider is not None:
                validate_name("provider", req.provider)
                team_ops.check_not_reserved(req.provider)
            return None
        if req.op in (Op.STORE, Op.RETRIEVE, Op.DELETE, Op.EXISTS):
            pair = validate_pair(req.provider, req.key)
            team_ops.check_not_reserved(pair[0])
            if req.op is Op.STORE:
                validate_value(req.value)
            return pair
        return None

    def _overtaken(self, req: Request, epoch: int) -> Reply | None:
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

    def _cache_fresh(self, now: float) -> bool:
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

    async def _reload(self, epoch: int) -> bool:
        """Load the whole file into the cache; False if a lock came meanwhile."""
        assert self.file is not None
        credentials, protection = await self._run(_read_file, self.file)
        return self._keep(credentials, protection, epoch)

    def _keep(self, credentials: Credentials, protection: str, epoch: int) -> bool:
        if epoch != self.epoch:
            return False
        # Team tokens and cache keys stay in the store: never in the client cache.
        self.cache.fill({p: keys for p, keys in credentials.items() if not is_reserved(p)})
        self.protection = protection
        return True

    async def _unlock(self, req: Request, epoch: int) -> Reply:
        assert req.passphrase is not None
        async with self._unlock_lock:
            if self.file is None:
                return ok_reply(req.id)
            try:
                credentials, protection = await self._run(
                    _unlock_and_read, self.file, req.passphrase
                )
            except CredentialBadPassphraseError as err:
                self.failed_unlocks += 1
                delay = min(
                    self.config.unlock_delay_cap,
                    self.config.unlock_delay_base * 2 ** (self.failed_unlocks - 1),
                )
                log.warning("failed unlock #%d; next answer in %.1f s", self.failed_unlocks, delay)
                # Slow down guessing; other clients are still served meanwhile.
                await self.sleep(delay)
                return error_reply(req.id, BAD_PASSPHRASE, str(err))
            if not self._keep(credentials, protection, epoch):
                # A lock was acknowledged since this unlock arrived (maybe
                # while it waited for an earlier one): the lock wins, so the
                # key this unlock derived goes too.
                self.file.lock()
                return self._overtaken(req, epoch) or ok_reply(req.id)
            self.failed_unlocks = 0
            self.locked = False
            self.unlocked_at = self.last_activity = self.clock()
            log.info("unlocked")
            await self._load_teams()
            return ok_reply(req.id)

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        self._calls_in_flight += 1
        try:
            return await self._run_on_worker(fn, *args)
        finally:
            self._calls_in_flight -= 1

    async def _run_on_worker(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self.executor, fn, *args)
        timeout = self.config.backend_timeout
        if not timeout:
            return await future
        try:
            return await asyncio.wait_for(future, timeout)
        except TimeoutError:
            # The worker is stuck (a keyring waiting on a prompt, a hung
            # mount): abandon it so later requests are not queued behind it.
            log.error("the backend did not answer within %.0f s; abandoning its thread", timeout)
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="backend")
            raise CredentialStorageUnavailableError(
                f"the {self.backend_name} backend did not answer within {timeout:.0f} s "
                "(a keyring may be waiting on an unlock prompt); unlock it and retry, "
                "or check the agent's log"
            ) from None

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
            "failed_unlocks": self.failed_unlocks,
        }
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


def _unlock_and_read(file: EncryptedFileStorage, passphrase: str) -> tuple[Credentials, str]:
    file.unlock(passphrase)
    return _read_file(file)


def _failure(request_id: int, err: CredentialStorageError) -> Reply:
    if isinstance(err, CredentialValidationError):
        # A value over its limit is one the storage layer rejects (locally a
        # CredentialTooLargeError): `invalid` on the wire, as any other
        # rejected input. `too_large` is for frames (docs/PROTOCOL.md 5).
        code = INVALID
    else:
        code = err.code if err.code in ERROR_CODES else INTERNAL
    return error_reply(request_id, code, str(err))
