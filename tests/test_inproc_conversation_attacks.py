"""The agent's connection rules under attack, in-process: a real AgentServer on
a real Unix socket, a FakeClock, real backends (test_inproc_agent's helpers).

Each case sends what a hostile or careless client would: frames behind a
request on the worker, a fatal frame or end of stream meanwhile, a lock
from another connection, a peer that never reads, a full connection table.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from modelforge_credentials import EncryptedFileStorage, EnvVarStorage, KdfParams
from modelforge_credentials.daemon.audit import AuditLog
from modelforge_credentials.daemon.dispatch import UnhandledOperation, dispatch
from modelforge_credentials.daemon.state import Agent, AgentConfig
from modelforge_credentials.protocol import (
    BAD_REQUEST,
    INVALID,
    LOCKED,
    Op,
    Request,
    TeamOp,
    encode_request,
)
from modelforge_credentials.protocol.ops import Operation
from test_inproc_agent import (
    PASSPHRASE,
    SECRET,
    TIMEOUT,
    WRONG,
    RawConnection,
    Served,
    failure,
    frame,
    serve,
)
from test_inproc_limits import GatedEnv, GatedFile, protected_store
from testkit import FakeClock, RecordingSleep

ENV = {"MODEL_FORGE_OPENAI_API_KEY": "sk-env-attack"}


async def settle(turns: int = 20) -> None:
    """A few loop turns, for bytes already sent to reach the agent (never a duration)."""
    for _ in range(turns):
        await asyncio.sleep(0)


@contextlib.asynccontextmanager
async def opened(
    path: str, count: int, gated: GatedEnv | GatedFile | None = None
) -> AsyncIterator[tuple[RawConnection, ...]]:
    """``count`` raw connections to ``path``, closed on the way out; the
    ``gated`` backend's gate is opened first, so no worker call stays stuck."""
    conns = tuple([await RawConnection.open(path) for _ in range(count)])
    try:
        yield conns
    finally:
        if gated is not None:
            gated.gate.open.set()
        for conn in conns:
            await conn.close()


async def protected(tmp_path: Path, fast_kdf: KdfParams) -> EncryptedFileStorage:
    directory = tmp_path / "protected"
    protected_store(directory, fast_kdf)
    return EncryptedFileStorage(directory, kdf=fast_kdf)


# -- replies in order while a request is on the worker -------------------------------


async def test_a_fatal_frame_behind_a_backend_request_is_answered_after_it(
    sock_dir: str, tmp_path: Path, fast_kdf: KdfParams
) -> None:
    """Guards the order: a bad frame read with an unlock still in its delay
    is answered (fatal, id nil) only after the unlock's own reply."""
    backend = await protected(tmp_path, fast_kdf)
    async with serve(backend, sock_dir=sock_dir) as served, opened(served.path, 1) as (conn,):
        conn.send(
            encode_request(1, Op.UNLOCK, passphrase=WRONG)
            + encode_request(2, Op.HELLO)
            + frame(b"\xc1")
        )
        assert failure(await conn.reply()) == (1, "bad_passphrase")
        assert (await conn.reply())["id"] == 2
        assert failure(await conn.reply()) == (None, BAD_REQUEST)
        assert await conn.rest_until_closed() == b""


async def test_end_of_stream_during_a_backend_request_still_answers_every_frame(
    sock_dir: str, tmp_path: Path, fast_kdf: KdfParams
) -> None:
    """Guards half-close: frames behind a request on the worker, then SHUT_WR,
    get their replies in order; the trailing half frame gets none."""
    backend = await protected(tmp_path, fast_kdf)
    async with serve(backend, sock_dir=sock_dir) as served, opened(served.path, 1) as (conn,):
        conn.send(
            encode_request(1, Op.UNLOCK, passphrase=WRONG)
            + encode_request(2, Op.STATUS)
            + encode_request(3, Op.HELLO)[:5]
        )
        conn.writer.write_eof()
        assert failure(await conn.reply()) == (1, "bad_passphrase")
        assert (await conn.reply())["id"] == 2
        assert await conn.rest_until_closed() == b""


async def test_a_lone_cached_retrieve_sent_while_a_request_waits_is_answered_after_it(
    sock_dir: str,
) -> None:
    """Guards the fast path: a whole cached retrieve frame arriving while an
    earlier request is on the worker must not overtake its reply."""
    backend = GatedEnv(dict(ENV))
    try:
        async with serve(backend, sock_dir=sock_dir) as served, opened(served.path, 1) as (conn,):
            assert (await conn.call(1, Op.RETRIEVE, provider="openai", key="api_key"))["ok"]
            backend.gate.close()
            conn.request(2, Op.RETRIEVE, provider="openai", key="other")  # a miss: the worker
            await backend.gate.wait_entered()
            conn.request(3, Op.RETRIEVE, provider="openai", key="api_key")  # cached
            await settle()
            backend.gate.open.set()
            assert await conn.reply() == {"id": 2, "ok": True, "value": None}
            assert await conn.reply() == {"id": 3, "ok": True, "value": "sk-env-attack"}
    finally:
        backend.gate.open.set()


# -- the lock wins ------------------------------------------------------------------------


async def test_an_unlock_handed_out_before_a_lock_does_not_unlock_after_it(
    tmp_path: Path, fast_kdf: KdfParams
) -> None:
    """DEFECT: dispatch() hands out the unlock's work, a lock is acknowledged,
    then the work runs and unlocks: _guarded reads agent.epoch when the task
    first runs, not when the request was taken, so the lock does not win."""
    clock = FakeClock()
    agent = Agent(
        await protected(tmp_path, fast_kdf), AgentConfig(), clock=clock, sleep=RecordingSleep(clock)
    )
    await agent.start()
    try:
        assert agent.locked
        work = dispatch(agent, Request(1, Op.UNLOCK, passphrase=PASSPHRASE))
        assert not isinstance(work, dict)
        assert dispatch(agent, Request(2, Op.LOCK)) == {"id": 2, "ok": True}
        reply = await work
        assert failure(reply) == (1, LOCKED)
        assert agent.locked is True
    finally:
        agent.close()


async def test_a_lock_read_in_the_same_turn_as_an_unlock_wins_over_it(
    sock_dir: str, tmp_path: Path, fast_kdf: KdfParams
) -> None:
    """DEFECT (the same, through the socket): one connection's unlock and
    another's lock reach the agent in one loop turn; the lock is acknowledged,
    and the unlock, read before it, still unlocks the agent afterwards."""
    async with serve(await protected(tmp_path, fast_kdf), sock_dir=sock_dir) as served:
        unlocker = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        locker = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            unlocker.connect(served.path)
            locker.connect(served.path)
            await asyncio.wait_for(_until_connections(served, 2), TIMEOUT)
            unlocker.sendall(encode_request(1, Op.UNLOCK, passphrase=PASSPHRASE))
            locker.sendall(encode_request(1, Op.LOCK))
            unlocker.setblocking(False)
            locker.setblocking(False)
            loop = asyncio.get_running_loop()
            await asyncio.wait_for(loop.sock_recv(locker, 4096), TIMEOUT)
            await asyncio.wait_for(loop.sock_recv(unlocker, 4096), TIMEOUT)
            assert served.agent.locked is True, "the acknowledged lock lost to an earlier unlock"
        finally:
            unlocker.close()
            locker.close()


async def _until_connections(served: Served, count: int) -> None:
    while len(served.server.connections) < count:
        await asyncio.sleep(0)


@pytest.mark.parametrize("op", [Op.LIST, Op.EXISTS])
async def test_a_lock_during_the_reload_of_a_list_or_exists_answers_locked(
    sock_dir: str, tmp_path: Path, fast_kdf: KdfParams, op: Operation
) -> None:
    """Guards the epoch rule for list and exists (the existing tests cover
    retrieve): what the worker read before the lock is neither cached nor answered."""
    directory = tmp_path / "protected"
    protected_store(directory, fast_kdf)
    backend = GatedFile(directory, fast_kdf, "load")
    async with (
        serve(backend, sock_dir=sock_dir) as served,
        opened(served.path, 2, backend) as (control, reader),
    ):
        assert (await control.call(1, Op.UNLOCK, passphrase=PASSPHRASE))["ok"]
        served.agent.cache.clear()  # the next read reloads the whole file
        backend.gate.close()
        fields = {"provider": "openai", "key": "api_key"} if op is Op.EXISTS else {}
        reader.request(1, op, **fields)
        await backend.gate.wait_entered()
        assert (await control.call(2, Op.LOCK))["ok"]
        backend.gate.open.set()
        assert failure(await reader.reply()) == (1, LOCKED)
        status = await control.call(3, Op.STATUS)
        assert (status["locked"], status["cached"]) == (True, 0)


# -- the fast path's conditions ----------------------------------------------------------


async def test_with_an_audit_log_every_cached_retrieve_is_recorded(
    sock_dir: str, keyfile_store: EncryptedFileStorage, tmp_path: Path
) -> None:
    """Guards the fast path's audit condition: a lone cached retrieve is
    recorded like any other; hello and status are not (the ops table)."""
    keyfile_store.store("openai", "api_key", SECRET)
    log_path = tmp_path / "audit" / "audit.log"
    async with (
        serve(keyfile_store, sock_dir=sock_dir, audit=AuditLog(log_path)) as served,
        opened(served.path, 1) as (conn,),
    ):
        for request_id in (1, 2):
            reply = await conn.call(request_id, Op.RETRIEVE, provider="openai", key="api_key")
            assert reply["value"] == SECRET
        assert (await conn.call(3, Op.HELLO))["ok"]
        assert (await conn.call(4, Op.STATUS))["ok"]
        assert (await conn.call(5, TeamOp.TEAM_STATUS))["ok"]
        assert (await conn.call(6, Op.LOCK))["ok"]
    entries = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [e["op"] for e in entries] == ["retrieve", "retrieve", "team_status", "lock"]
    assert SECRET not in log_path.read_text()


async def test_a_reserved_name_is_invalid_whether_or_not_the_file_is_cached(
    sock_dir: str, keyfile_store: EncryptedFileStorage, fast_kdf: KdfParams
) -> None:
    """DEFECT (older than the redesign): with the whole file cached, a retrieve
    of a name under the reserved team prefix answers nil through the cache
    (Agent.cached checks only that the name is plain); once the cache is
    dropped the same request answers invalid. The answer must not depend on
    the cache."""
    keyfile_store.store("openai", "api_key", SECRET)
    async with serve(keyfile_store, sock_dir=sock_dir) as served, opened(served.path, 1) as (conn,):
        fields = {"provider": "modelforge-team:acme", "key": "token"}
        served.agent.cache.clear()
        uncached = await conn.call(1, Op.RETRIEVE, **fields)
        assert failure(uncached) == (1, INVALID)
        assert (await conn.call(2, Op.LIST))["ok"]  # the whole file in the cache again
        assert served.agent.cache.complete
        cached = await conn.call(3, Op.RETRIEVE, **fields)
        assert cached["ok"] is False, cached
        assert failure(cached) == (3, INVALID)
        assert failure(await conn.call(4, Op.EXISTS, **fields)) == (4, INVALID)


# -- flow control: a peer that never reads -------------------------------------------------


async def test_a_peer_that_never_reads_is_not_read_any_further(
    sock_dir: str, keyfile_store: EncryptedFileStorage
) -> None:
    """Guards the memory bound: once a cached reply (no worker) puts the peer
    over the write high-water mark, the agent stops reading it, so what it
    sends next stays in the kernel, not in the agent."""
    keyfile_store.store_many({"bulk": {f"{i:05d}-" + "k" * 234: "v" for i in range(3600)}})
    async with serve(keyfile_store, sock_dir=sock_dir) as served:
        peer = await RawConnection.open(served.path)
        try:
            peer.request(1, Op.LIST)
            await asyncio.wait_for(_until_write_paused(served), TIMEOUT)
            (conn,) = served.server.connections
            assert conn.transport is not None and not conn.transport.is_reading()
            peer.send(b"".join(encode_request(i, Op.HELLO) for i in range(2, 2000)))
            await settle(50)
            assert conn.conn.pending_bytes == 0, "the agent read a peer that does not read"
        finally:
            await peer.close()


async def _until_write_paused(served: Served) -> None:
    while not any(not c.conn.peer_reading for c in served.server.connections):
        await asyncio.sleep(0)


# -- eviction and the read deadline ---------------------------------------------------------


async def test_a_full_table_never_evicts_a_connection_with_a_request_on_the_worker(
    sock_dir: str,
) -> None:
    """Guards eviction: at the cap, the idle connection goes, the one whose
    request is on the worker stays and gets its reply; once every slot is
    working, the newcomer is closed without a reply."""
    backend = GatedEnv(dict(ENV))
    try:
        async with serve(backend, sock_dir=sock_dir, max_connections=2) as served:
            working = await RawConnection.open(served.path)
            idle = await RawConnection.open(served.path)
            extra: list[RawConnection] = []
            try:
                assert (await idle.call(1, Op.HELLO))["ok"]
                backend.gate.close()
                working.request(1, Op.RETRIEVE, provider="openai", key="api_key")
                await backend.gate.wait_entered()
                served.clock.advance(served.server.read_deadline * 10)
                extra.append(await RawConnection.open(served.path))
                assert await idle.rest_until_closed() == b""
                extra[0].request(1, Op.RETRIEVE, provider="openai", key="other")  # queued
                await asyncio.wait_for(_until_tasks(served, 2), TIMEOUT)
                extra.append(await RawConnection.open(served.path))
                assert await extra[1].rest_until_closed() == b""
                backend.gate.open.set()
                assert (await working.reply())["value"] == "sk-env-attack"
                assert (await extra[0].reply())["value"] is None
            finally:
                for conn in (working, idle, *extra):
                    await conn.close()
    finally:
        backend.gate.open.set()


async def _until_tasks(served: Served, count: int) -> None:
    while len(served.server.tasks) < count:
        await asyncio.sleep(0)


async def test_a_half_frame_behind_a_slow_request_is_not_cut_by_the_read_deadline(
    sock_dir: str,
) -> None:
    """Guards the deadline: the agent does not read while a request is on the
    worker, so the half frame behind it is not the peer's delay: no deadline
    runs for it (no timer is armed) until the agent reads again."""
    backend = GatedEnv(dict(ENV))
    async with (
        serve(backend, sock_dir=sock_dir, read_deadline=0.2) as served,
        opened(served.path, 1, backend) as (conn,),
    ):
        backend.gate.close()
        hello = encode_request(2, Op.HELLO)
        conn.send(encode_request(1, Op.RETRIEVE, provider="openai", key="x") + hello[:5])
        await backend.gate.wait_entered()
        [agent_side] = served.server.connections
        # The adapter arms its timer exactly when a frame is unfinished.
        assert agent_side.conn.unfinished_frame() is None
        assert agent_side.conn.due is None
        backend.gate.open.set()
        assert (await conn.reply())["id"] == 1
        conn.send(hello[5:])
        assert (await conn.reply())["id"] == 2


# -- the ops table's rules --------------------------------------------------------------------


async def test_while_locked_only_session_operations_and_team_status_are_answered(
    sock_dir: str, tmp_path: Path, fast_kdf: KdfParams
) -> None:
    """Guards the while_locked column: team_status is answered while locked;
    every other team operation answers locked."""
    async with (
        serve(await protected(tmp_path, fast_kdf), sock_dir=sock_dir) as served,
        opened(served.path, 1) as (conn,),
    ):
        assert (await conn.call(1, TeamOp.TEAM_STATUS)) == {"id": 1, "ok": True, "teams": []}
        for request_id, op in enumerate(
            (TeamOp.LOCATE, TeamOp.TEAM_STORE, TeamOp.TEAM_LOGIN, TeamOp.TEAM_REFRESH), 2
        ):
            fields = {name: "x" for name, optional in op.request if not optional}
            assert failure(await conn.call(request_id, op, **fields)) == (request_id, LOCKED)


async def test_the_read_only_env_backend_refuses_writes_before_the_worker(sock_dir: str) -> None:
    """Guards the writes column: store and delete on the env backend answer
    read_only without a backend call (a gated backend would hang them)."""
    backend = GatedEnv(dict(ENV))
    backend.gate.close()
    try:
        async with serve(backend, sock_dir=sock_dir) as served:
            for op, fields in (
                (Op.STORE, {"provider": "openai", "key": "api_key", "value": SECRET}),
                (Op.DELETE, {"provider": "openai", "key": "api_key"}),
            ):
                reply = dispatch(served.agent, Request(1, op, **fields))
                assert isinstance(reply, dict) and failure(reply) == (1, "read_only")
    finally:
        backend.gate.open.set()


async def test_status_has_every_field_of_the_table_locked_or_not(
    sock_dir: str, tmp_path: Path, fast_kdf: KdfParams
) -> None:
    """Guards the status reply: every field the ops table lists, of its kind,
    while locked and after the unlock; and the activity timer unmoved by it."""
    async with (
        serve(await protected(tmp_path, fast_kdf), sock_dir=sock_dir) as served,
        opened(served.path, 1) as (conn,),
    ):
        for request_id in (1, 3):
            status = await conn.call(request_id, Op.STATUS)
            for name, kind in Op.STATUS.result:
                assert kind.check(status[name]), (name, status[name])
            assert status["locked"] is (request_id == 1)
            if request_id == 1:
                assert (await conn.call(2, Op.UNLOCK, passphrase=PASSPHRASE))["ok"]
        assert status["cached"] == 1 and status["failed_unlocks"] == 0


async def test_an_operation_without_a_case_raises_instead_of_answering(
    keyfile_store: EncryptedFileStorage,
) -> None:
    """Guards exhaustiveness: an operation of the table with no case in the
    match raises UnhandledOperation (the old dispatch answered `internal`),
    for a session operation and for one that passes the lock rule."""
    agent = Agent(keyfile_store, AgentConfig(), clock=FakeClock())
    await agent.start()
    try:
        for op in (Operation("frob", while_locked=True), Operation("frob2")):
            with pytest.raises(UnhandledOperation):
                dispatch(agent, Request(1, op))
    finally:
        agent.close()


async def test_env_values_read_through_the_fast_path_honour_the_lock(sock_dir: str) -> None:
    """Guards Agent.cached under a lock: the env backend has nothing to lock, so
    a lock drops the cache, and the next lone retrieve reads the backend again."""
    environ = dict(ENV)
    async with (
        serve(EnvVarStorage(environ), sock_dir=sock_dir) as served,
        opened(served.path, 1) as (conn,),
    ):
        assert (await conn.call(1, Op.RETRIEVE, provider="openai", key="api_key"))["ok"]
        environ["MODEL_FORGE_OPENAI_API_KEY"] = "sk-env-changed"
        assert (await conn.call(2, Op.LOCK))["ok"]
        reply = await conn.call(3, Op.RETRIEVE, provider="openai", key="api_key")
        assert reply == {"id": 3, "ok": True, "value": "sk-env-changed"}
