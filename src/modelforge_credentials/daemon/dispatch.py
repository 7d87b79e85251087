"""What the agent answers to each operation: one match over the ops table.

:func:`dispatch` returns the reply when it needs no blocking work (hello,
status, lock, cache hits, refusals) and otherwise an awaitable that does the
backend work on the worker thread and then replies. The rules common to all
operations come from their row in protocol/ops.py: whether it is allowed
while locked, whether it writes the local store.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from .. import __version__
from ..errors import (
    CredentialBadPassphraseError,
    CredentialLockedError,
    CredentialStorageError,
    CredentialValidationError,
)
from ..protocol import (
    BAD_PASSPHRASE,
    ERROR_CODES,
    INTERNAL,
    INVALID,
    LOCKED,
    PROTOCOL_VERSION,
    READ_ONLY,
    Op,
    Request,
    TeamOp,
    error_reply,
    ok_reply,
)
from ..validation import validate_name, validate_pair, validate_value
from . import team_ops
from .cache import MISS
from .state import LOCKED_ADVICE, Agent, unlock_and_read

log = logging.getLogger("modelforge_credentials.agent")

Reply = dict[str, object]
Work = Callable[[Agent, Request, int], Awaitable[Reply]]

READ_ONLY_ADVICE = (
    "the environment-variable backend is read-only inside the agent (a "
    "write would only change the agent's own environment); set "
    "MODEL_FORGE_BACKEND=encrypted-file or keyring and restart the agent"
)


class UnhandledOperation(AssertionError):
    """An operation of the table that :func:`dispatch` has no case for."""


def dispatch(agent: Agent, req: Request) -> Reply | Coroutine[Any, Any, Reply]:
    """The reply to ``req``, or an awaitable that does its backend work first."""
    op = req.op
    if op is Op.RETRIEVE or op is Op.EXISTS:
        # The hot path: a cache hit is answered before any other rule runs
        # (the cache holds only validated names, and nothing while locked).
        found = agent.cached(req.provider or "", req.key or "")
        if found is not MISS:
            return _found(req, found)
    refusal = _refusal(agent, req)
    if refusal is not None:
        return refusal
    match op:
        case Op.HELLO:
            return ok_reply(
                req.id,
                protocol=PROTOCOL_VERSION,
                agent=__version__,
                backend=agent.backend_name,
                locked=agent.locked,
            )
        case Op.STATUS:
            return ok_reply(req.id, **agent.status())
        case TeamOp.TEAM_STATUS:
            return ok_reply(req.id, teams=agent.teams.status() if agent.teams else [])
        case Op.LOCK:
            agent.lock()
            return ok_reply(req.id)
        case Op.UNLOCK:
            return _guarded(agent, req, _unlock, check_lock=False)
        case Op.RETRIEVE | Op.EXISTS:
            return _guarded(agent, req, _read_one)
        case Op.LIST:
            return _cached_list(agent, req) or _guarded(agent, req, _list)
        case Op.STORE | Op.DELETE:
            return _guarded(agent, req, _write)
        case TeamOp.LOCATE:
            return _guarded(agent, req, _team(team_ops.locate))
        case TeamOp.TEAM_STORE:
            return _guarded(agent, req, _team(team_ops.store))
        case TeamOp.TEAM_LOGIN:
            return _guarded(agent, req, _team(team_ops.login))
        case TeamOp.TEAM_REFRESH:
            return _guarded(agent, req, _team(team_ops.refresh))
    raise UnhandledOperation(f"operation {op.value!r} has no case in dispatch")


async def answer(agent: Agent, req: Request) -> Reply:
    """The reply to ``req``, after its backend work if it needs any."""
    reply = dispatch(agent, req)
    return reply if isinstance(reply, dict) else await reply


def _found(req: Request, found: object) -> Reply:
    if req.op is Op.RETRIEVE:
        return {"id": req.id, "ok": True, "value": found}
    return {"id": req.id, "ok": True, "exists": found is not None}


def _refusal(agent: Agent, req: Request) -> Reply | None:
    """The rules of the table: locked, invalid names, a read-only backend."""
    now = agent.clock()
    agent.check_timers(now)
    op = req.op
    if op.while_locked:
        return None  # session operations: no secret, and not activity
    if agent.locked:
        return error_reply(req.id, LOCKED, LOCKED_ADVICE)
    try:
        _validate(req)
    except CredentialStorageError as err:
        return failure(req.id, err)
    agent.touch(now)
    if op.writes and agent.read_only:
        return error_reply(req.id, READ_ONLY, READ_ONLY_ADVICE)
    return None


def _validate(req: Request) -> None:
    """Names as the storage layer takes them, and no reserved provider."""
    fields = {name for name, _ in req.op.request}
    if "key" in fields:
        provider, _ = validate_pair(req.provider, req.key)
        team_ops.check_not_reserved(provider)
    elif "provider" in fields and req.provider is not None:
        validate_name("provider", req.provider)
        team_ops.check_not_reserved(req.provider)
    if "value" in fields:
        validate_value(req.value)


def _cached_list(agent: Agent, req: Request) -> Reply | None:
    teams = agent.teams
    if not (agent.cache.complete and agent.cache_fresh(agent.clock())):
        return None
    if teams is not None and teams.configured and not teams.loaded:
        return None
    return team_ops.list_reply(teams, req.id, agent.cache.names(req.provider), req.provider)


# -- backend work ------------------------------------------------------------------


def _guarded(
    agent: Agent, req: Request, work: Work, *, check_lock: bool = True
) -> Coroutine[Any, Any, Reply]:
    """``work``, with every failure turned into its reply: the one place
    where storage errors meet the wire.

    The epoch is read now, when the request is handed out, not when its task
    first runs: a lock acknowledged in between (another connection's, in the
    same loop turn) came after this request, so it wins over it.
    """
    return _guarded_work(agent, req, work, agent.epoch, check_lock)


async def _guarded_work(
    agent: Agent, req: Request, work: Work, epoch: int, check_lock: bool
) -> Reply:
    try:
        if check_lock:
            if agent.locked:
                return error_reply(req.id, LOCKED, LOCKED_ADVICE)
            await _loaded(agent, epoch)
            overtaken = agent.overtaken(req, epoch)
            if overtaken is not None:
                return overtaken
        return await work(agent, req, epoch)
    except (CredentialLockedError, CredentialBadPassphraseError) as err:
        return _relocked(agent, req, epoch, err)
    except CredentialStorageError as err:
        log.warning("%s failed: %s", req.op.value, err)
        return failure(req.id, err)
    except Exception as err:
        log.error("%s failed unexpectedly: %s", req.op.value, type(err).__name__)
        return error_reply(
            req.id, INTERNAL, f"internal error ({type(err).__name__}); see the agent's log"
        )


async def _loaded(agent: Agent, epoch: int) -> None:
    """Team secrets and the whole file in the cache, before a backend call."""
    if agent.teams is not None and agent.teams.configured and not agent.teams.loaded:
        await agent.load_teams()
    if agent.file is not None and not agent.cache.complete:
        await agent.reload(epoch)


def _relocked(agent: Agent, req: Request, epoch: int, err: CredentialStorageError) -> Reply:
    if agent.file is None:
        return failure(req.id, err)
    overtaken = agent.overtaken(req, epoch)
    if overtaken is not None:
        return overtaken  # the agent's own lock got to the file first
    # Only unlock takes a passphrase: here the file was re-protected
    # behind the agent's back (e.g. `passwd` from another process).
    agent.lock()
    agent.locked = True
    agent.protection = "passphrase"
    return error_reply(
        req.id,
        LOCKED,
        f"{agent.file.path} needs its passphrase (it changed or was set since "
        "the agent unlocked it): run `modelforge-agent unlock`",
    )


async def _read_one(agent: Agent, req: Request, epoch: int) -> Reply:
    provider, key = req.provider or "", req.key or ""
    if epoch == agent.epoch and agent.cache.complete:
        found = agent.cached(provider, key)
        if found is not MISS:
            return _found(req, found)
    value = await agent.run(agent.backend.retrieve, provider, key)
    overtaken = agent.overtaken(req, epoch)
    if overtaken is not None:
        return overtaken
    if epoch == agent.epoch:
        agent.cache.put((provider, key), value)
    if value is None and agent.teams is not None:
        value = agent.teams.answer((provider, key))[0]  # raises when too stale
    return _found(req, value)


async def _list(agent: Agent, req: Request, epoch: int) -> Reply:
    cached = _cached_list(agent, req) if epoch == agent.epoch else None
    if cached is not None:
        return cached
    names = await agent.run(agent.backend.list_keys, req.provider)
    overtaken = agent.overtaken(req, epoch)
    if overtaken is not None:
        return overtaken
    return team_ops.list_reply(agent.teams, req.id, names, req.provider)


async def _write(agent: Agent, req: Request, epoch: int) -> Reply:
    provider, key = req.provider or "", req.key or ""
    # A write merges what other processes wrote to the file and then records
    # our own stamp: reload, or their changes would hide behind it.
    file = agent.file
    stale = file is not None and await agent.run(file.changed_since_last_access)
    if req.op is Op.STORE:
        assert req.value is not None
        await agent.run(agent.backend.store, provider, key, req.value)
        written: str | None = req.value
        reply = ok_reply(req.id)
    else:
        deleted = await agent.run(agent.backend.delete, provider, key)
        written = None
        reply = ok_reply(req.id, deleted=bool(deleted))
    # Answered as done even if a lock came meanwhile: it is durable.
    if epoch == agent.epoch:
        agent.cache.put((provider, key), written)
        if stale:
            await agent.reload(epoch)
    return reply


def _team(handler: Callable[[Agent, Request], Awaitable[Reply]]) -> Work:
    async def work(agent: Agent, req: Request, epoch: int) -> Reply:
        return await handler(agent, req)

    return work


async def _unlock(agent: Agent, req: Request, epoch: int) -> Reply:
    assert req.passphrase is not None
    async with agent.unlocking:
        file = agent.file
        if file is None:
            return ok_reply(req.id)
        try:
            credentials, protection = await agent.run(unlock_and_read, file, req.passphrase)
        except CredentialBadPassphraseError as err:
            delay = agent.backoff.failed()
            log.warning("failed unlock #%d; next answer in %.1f s", agent.backoff.failures, delay)
            # Slow down guessing; other clients are still served meanwhile.
            await agent.sleep(delay)
            return error_reply(req.id, BAD_PASSPHRASE, str(err))
        if not agent.keep(credentials, protection, epoch):
            # A lock was acknowledged since this unlock arrived (maybe while
            # it waited for an earlier one): the lock wins, so the key this
            # unlock derived goes too.
            file.lock()
            return agent.overtaken(req, epoch) or ok_reply(req.id)
        agent.unlocked()
        await agent.load_teams()
        return ok_reply(req.id)


def failure(request_id: int, err: CredentialStorageError) -> Reply:
    """The failure reply for a storage error."""
    if isinstance(err, CredentialValidationError):
        # A value over its limit is one the storage layer rejects (locally a
        # CredentialTooLargeError): `invalid` on the wire, as any other
        # rejected input. `too_large` is for frames (docs/PROTOCOL.md 5).
        code = INVALID
    else:
        code = err.code if err.code in ERROR_CODES else INTERNAL
    return error_reply(request_id, code, str(err))
