"""Limits the security review found broken, on an in-process agent.

A real AgentServer on a real Unix socket with real backends (the helpers of
test_inproc_agent.py); time is the agent's FakeClock, so nothing here
waits for a timer. A backend call "in flight" is one held at a gate (a
threading.Event) on the agent's worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import msgpack  # type: ignore[import-untyped]
import pytest

from modelforge_credentials import EncryptedFileStorage, EnvVarStorage, KdfParams
from modelforge_credentials.client.aio import AsyncAgentClient
from modelforge_credentials.daemon.server import WRITE_HIGH_WATER
from modelforge_credentials.daemon.state import AgentConfig
from modelforge_credentials.errors import CredentialLockedError
from modelforge_credentials.protocol import (
    BAD_REQUEST,
    HEADER_SIZE,
    INVALID,
    LOCKED,
    MAX_FRAME_SIZE,
    TOO_LARGE,
    Op,
    encode_request,
)
from modelforge_credentials.validation import MAX_VALUE_BYTES
from test_inproc_agent import (
    PASSPHRASE,
    SECRET,
    SECRET2,
    TIMEOUT,
    RawConnection,
    Served,
    failure,
    frame,
    map_frame,
    serve,
)


class Gate:
    """Holds backend calls on the worker thread while closed."""

    def __init__(self) -> None:
        self.open = threading.Event()
        self.open.set()
        self.entered = threading.Event()

    def close(self) -> None:
        self.entered.clear()
        self.open.clear()

    def pass_through(self) -> None:
        if not self.open.is_set():
            self.entered.set()
            self.open.wait(TIMEOUT)

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, TIMEOUT), "no call reached the gate"


class GatedFile(EncryptedFileStorage):
    """An encrypted file with a gate in one of its calls: ``load`` (after the file was
    read and decrypted: a lock arriving during a long decryption) or ``unlock`` (before
    the KDF: a lock arriving during the derivation)."""

    def __init__(self, directory: Path, fast_kdf: KdfParams, gated: str) -> None:
        super().__init__(directory, kdf=fast_kdf)
        self.gate = Gate()
        self.gated = gated

    def load(self) -> dict[str, dict[str, str]]:
        credentials = super().load()
        if self.gated == "load":
            self.gate.pass_through()
        return credentials

    def unlock(self, passphrase: str) -> None:
        if self.gated == "unlock":
            self.gate.pass_through()
        super().unlock(passphrase)


class GatedEnv(EnvVarStorage):
    """The environment backend (a backend without a whole-file load) with a gated retrieve."""

    def __init__(self, environ: dict[str, str]) -> None:
        super().__init__(environ)
        self.gate = Gate()

    def retrieve(self, provider: str, key: str) -> str | None:
        self.gate.pass_through()
        return super().retrieve(provider, key)


# -- 7. lock wins over every request in flight ------------------------------------------


async def lock_while_held(gate: Gate, control: AsyncAgentClient) -> None:
    """Once a call is held at ``gate``, lock the agent; then let the call go on."""
    await gate.wait_entered()
    await control.lock()
    gate.open.set()


@contextlib.asynccontextmanager
async def raw_connection(path: str) -> AsyncIterator[RawConnection]:
    """A raw connection to the agent at ``path``, closed after the block."""
    conn = await RawConnection.open(path)
    try:
        yield conn
    finally:
        await conn.close()


@contextlib.asynccontextmanager
async def connected_to(store: EncryptedFileStorage, sock_dir: str) -> AsyncIterator[RawConnection]:
    """``store`` served, and one raw connection to it, for the block."""
    async with serve(store, sock_dir=sock_dir) as served, raw_connection(served.path) as conn:
        yield conn


@contextlib.asynccontextmanager
async def gated_agent(
    backend: GatedFile | GatedEnv, sock_dir: str
) -> AsyncIterator[tuple[Served, AsyncAgentClient]]:
    """``backend`` served, with a control client; its gate is opened whatever happens,
    so no worker thread stays held after the test."""
    try:
        async with (
            serve(backend, sock_dir=sock_dir) as served,
            AsyncAgentClient(served.path) as control,
        ):
            yield served, control
    finally:
        backend.gate.open.set()


def protected_store(directory: Path, fast_kdf: KdfParams) -> None:
    EncryptedFileStorage(directory, passphrase=PASSPHRASE, kdf=fast_kdf).store(
        "openai", "api_key", SECRET
    )


async def test_lock_during_a_reload_in_flight_leaves_nothing_cached(
    sock_dir: str, tmp_path: Path, fast_kdf: KdfParams
) -> None:
    """A retrieve waits on the worker for the whole file (another writer changed it);
    a lock is acknowledged meanwhile; when the read finishes it must not refill the
    cache, and the retrieve must not answer the value."""
    directory = tmp_path / "protected"
    protected_store(directory, fast_kdf)
    backend = GatedFile(directory, fast_kdf, gated="load")
    async with gated_agent(backend, sock_dir) as (served, control):
        await control.unlock(PASSPHRASE)
        assert (await control.status())["cached"] == 1
        # Another writer: the agent drops its cache at its next check and reloads.
        EncryptedFileStorage(directory, passphrase=PASSPHRASE, kdf=fast_kdf).store(
            "openai", "other", SECRET2
        )
        served.clock.advance(1.0)
        backend.gate.close()
        async with raw_connection(served.path) as reader:
            reader.request(1, Op.RETRIEVE, provider="openai", key="api_key")
            await lock_while_held(backend.gate, control)
            assert failure(await reader.reply()) == (1, LOCKED)
        status = await control.status()
        assert (status["locked"], status["cached"]) == (True, 0)
        await control.unlock(PASSPHRASE)
        assert await control.retrieve("openai", "other") == SECRET2


async def test_lock_during_an_unlock_in_flight_wins(
    sock_dir: str, tmp_path: Path, fast_kdf: KdfParams
) -> None:
    """The unlock's read of the file is held; a lock is acknowledged meanwhile: the
    agent stays locked with nothing cached, and the unlock says so."""
    directory = tmp_path / "protected"
    protected_store(directory, fast_kdf)
    backend = GatedFile(directory, fast_kdf, gated="unlock")
    async with gated_agent(backend, sock_dir) as (served, control):
        assert (await control.status())["locked"] is True
        backend.gate.close()
        async with raw_connection(served.path) as unlocking:
            unlocking.request(1, Op.UNLOCK, passphrase=PASSPHRASE)
            await lock_while_held(backend.gate, control)
            assert failure(await unlocking.reply()) == (1, LOCKED)
        status = await control.status()
        assert (status["locked"], status["cached"]) == (True, 0)
        with pytest.raises(CredentialLockedError):
            await control.retrieve("openai", "api_key")
        # The file object forgot the key the late unlock derived, once the worker
        # has run everything queued so far.
        await asyncio.wrap_future(served.agent.executor.submit(lambda: None))
        assert backend.locked
        await control.unlock(PASSPHRASE)
        assert await control.retrieve("openai", "api_key") == SECRET


async def test_lock_wins_over_an_unlock_still_waiting_for_another(
    sock_dir: str, tmp_path: Path, fast_kdf: KdfParams
) -> None:
    """Two unlocks: the first held at the gate, the second waiting its turn. A lock is
    acknowledged: both answer locked, and the key neither may keep is gone."""
    directory = tmp_path / "protected"
    protected_store(directory, fast_kdf)
    backend = GatedFile(directory, fast_kdf, gated="unlock")
    async with gated_agent(backend, sock_dir) as (served, control):
        backend.gate.close()
        first = await RawConnection.open(served.path)
        second = await RawConnection.open(served.path)
        try:
            first.request(1, Op.UNLOCK, passphrase=PASSPHRASE)
            await backend.gate.wait_entered()
            second.request(2, Op.UNLOCK, passphrase=PASSPHRASE)
            assert (await control.status())["locked"] is True  # both requests were read
            await control.lock()
            backend.gate.open.set()
            assert failure(await first.reply()) == (1, LOCKED)
            assert failure(await second.reply()) == (2, LOCKED)
        finally:
            await first.close()
            await second.close()
        await asyncio.wrap_future(served.agent.executor.submit(lambda: None))
        assert backend.locked
        status = await control.status()
        assert (status["locked"], status["cached"]) == (True, 0)


async def test_lock_during_a_backend_retrieve_in_flight_caches_nothing(sock_dir: str) -> None:
    """The same for a backend read one name at a time (keyring, environment)."""
    backend = GatedEnv({"MODEL_FORGE_OPENAI_API_KEY": "sk-env-gated"})
    async with gated_agent(backend, sock_dir) as (served, control):
        backend.gate.close()
        async with raw_connection(served.path) as reader:
            reader.request(1, Op.RETRIEVE, provider="openai", key="api_key")
            await lock_while_held(backend.gate, control)
            # Nothing to lock in this backend: the answer is what a new request gets.
            assert await reader.reply() == {"id": 1, "ok": True, "value": "sk-env-gated"}
        assert (await control.status())["cached"] == 0


# -- 15. the cached-retrieve shortcut applies the general request checks --------------------


ODD_FIELDS: dict[str, dict[str, object]] = {
    "v true": {"v": True},
    "v 1.0": {"v": 1.0},
    "v false": {"v": False},
    "v nil": {"v": None},
    "v str": {"v": "1"},
    "id true": {"id": True},
    "id float": {"id": 3.0},
    "id negative": {"id": -1},
    "provider bin": {"provider": b"openai"},
    "key nil": {"key": None},
}


@pytest.mark.parametrize("odd", ODD_FIELDS.values(), ids=ODD_FIELDS.keys())
async def test_a_cached_name_gets_the_same_checks_as_an_uncached_one(
    sock_dir: str, keyfile_store: EncryptedFileStorage, odd: dict[str, object]
) -> None:
    keyfile_store.store("openai", "api_key", SECRET)
    async with connected_to(keyfile_store, sock_dir) as conn:
        answers = []
        for key in ("api_key", "not_stored"):
            conn.send(
                map_frame(
                    {"v": 1, "id": 7, "op": "retrieve", "provider": "openai", "key": key, **odd}
                )
            )
            reply = await conn.reply()
            assert reply["ok"] is False, f"{key}: {reply}"
            answers.append(failure(reply)[1])
        assert answers == [BAD_REQUEST, BAD_REQUEST]
        # The name is cached: a well-formed request for it still gets its value.
        reply = await conn.call(8, Op.RETRIEVE, provider="openai", key="api_key")
        assert reply == {"id": 8, "ok": True, "value": SECRET}


# -- 16. a value over the limit is invalid, a frame over the limit is too_large ---------------


async def test_a_value_over_the_limit_is_invalid_and_names_the_limit(
    sock_dir: str, keyfile_store: EncryptedFileStorage
) -> None:
    async with connected_to(keyfile_store, sock_dir) as conn:
        over = "v" * (MAX_VALUE_BYTES + 1)
        reply = await conn.call(1, Op.STORE, provider="openai", key="api_key", value=over)
        assert failure(reply) == (1, INVALID)
        error = reply["error"]
        assert isinstance(error, dict)
        assert str(MAX_VALUE_BYTES) in error["message"]
        assert "vvvvvvvv" not in error["message"]
        # Non-fatal: the connection goes on, and nothing was stored.
        reply = await conn.call(2, Op.RETRIEVE, provider="openai", key="api_key")
        assert reply == {"id": 2, "ok": True, "value": None}


async def test_a_frame_over_the_limit_is_still_too_large(
    sock_dir: str, keyfile_store: EncryptedFileStorage
) -> None:
    async with serve(keyfile_store, sock_dir=sock_dir) as served:
        for data in (
            # Declared over the limit: refused on the four header bytes.
            (MAX_FRAME_SIZE + 1).to_bytes(4, "big"),
            # A store whose value alone is past the frame limit; its head is enough
            # (the rest would only meet a closed socket).
            frame(
                msgpack.packb(
                    {
                        "v": 1,
                        "id": 3,
                        "op": "store",
                        "provider": "openai",
                        "key": "api_key",
                        "value": "v" * MAX_FRAME_SIZE,
                    }
                )
            )[:65_536],
        ):
            async with raw_connection(served.path) as conn:
                conn.send(data)
                assert failure(await conn.reply()) == (None, TOO_LARGE)
                assert await conn.rest_until_closed() == b""


# -- 11. replies buffered for a peer that does not read ------------------------------------


async def test_a_peer_that_does_not_read_holds_at_most_the_high_water_mark_and_a_reply(
    sock_dir: str, keyfile_store: EncryptedFileStorage
) -> None:
    """Twenty ``list`` requests whose replies are about 870 KiB each, not read: the
    agent stops answering once its unsent replies pass the high-water mark, and
    answers the rest, in order, once the peer reads."""
    names = {f"{i:05d}-" + "k" * 234: "v" for i in range(3600)}
    keyfile_store.store_many({"bulk": names})
    async with serve(keyfile_store, sock_dir=sock_dir) as served:
        async with raw_connection(served.path) as peer:
            for request_id in range(20):
                peer.request(request_id, Op.LIST)
            await asyncio.wait_for(_until_write_paused(served), TIMEOUT)
            (conn,) = served.server.connections
            assert conn.transport is not None
            unsent = conn.transport.get_write_buffer_size()
            assert unsent <= WRITE_HIGH_WATER + HEADER_SIZE + MAX_FRAME_SIZE, unsent
            assert conn.conn.pending_bytes  # requests read but not answered yet
            for request_id in range(20):
                reply = await peer.reply()
                items = reply["items"]
                assert reply["id"] == request_id and isinstance(items, list) and len(items) == 3600


async def _until_write_paused(served: Served) -> None:
    while not any(not c.conn.peer_reading for c in served.server.connections):
        await asyncio.sleep(0)


# -- 12. partial frames at the connection cap --------------------------------------------------


async def test_partial_frames_are_evicted_oldest_first_and_expire_by_the_clock(
    sock_dir: str, keyfile_store: EncryptedFileStorage
) -> None:
    """A full table of connections that each sent one byte does not lock a client
    out: the oldest is dropped for it. Once the read deadline has passed by the
    agent's clock, a new connection clears every overdue one."""
    async with serve(keyfile_store, AgentConfig(), sock_dir=sock_dir, max_connections=4) as served:
        partial: list[RawConnection] = []
        try:
            for _ in range(4):
                conn = await RawConnection.open(served.path)
                conn.send(encode_request(1, Op.HELLO)[:1])
                partial.append(conn)
                served.clock.advance(0.01)
            await asyncio.wait_for(_until_all_read(served, 4), TIMEOUT)
            async with AsyncAgentClient(served.path) as client:
                assert (await client.hello())["protocol"] == 1
                assert await partial[0].rest_until_closed() == b""
                assert len(served.server.connections) == 4
            # Three partial frames left and one working connection: the table is full.
            worker = await RawConnection.open(served.path)
            partial.append(worker)
            assert (await worker.call(1, Op.HELLO))["ok"] is True
            served.clock.advance(served.server.read_deadline)
            async with AsyncAgentClient(served.path) as client:
                assert (await client.hello())["protocol"] == 1
                for conn in partial[1:-1]:
                    assert await conn.rest_until_closed() == b""
                assert (await worker.call(2, Op.HELLO))["ok"] is True
                assert len(served.server.connections) == 2
        finally:
            for conn in partial:
                await conn.close()


async def _until_all_read(served: Served, count: int) -> None:
    """Until the server holds ``count`` one-byte partial frames (callers bound the wait)."""
    while sum(c.conn.pending_bytes == 1 for c in served.server.connections) < count:
        await asyncio.sleep(0)
