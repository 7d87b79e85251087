"""The agent in-process: a real AgentServer on a real Unix socket, real backends.

Time is a FakeClock and the anti-guessing delay a fake sleep that records the
delay and advances the clock, so TTL, idle and unlock-delay cases never wait.
The only real timer is the server's read deadline, and those tests await the
server closing the connection (an event), not a duration.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack  # type: ignore[import-untyped]
import pytest

import test_proc_backends
from modelforge_credentials import EncryptedFileStorage, EnvVarStorage, KdfParams, __version__
from modelforge_credentials.backends.agent import AgentStorage
from modelforge_credentials.client.aio import AsyncAgentClient
from modelforge_credentials.client.sync import AgentNotRunningError
from modelforge_credentials.daemon.dispatch import answer, dispatch
from modelforge_credentials.daemon.loop import loop_factory
from modelforge_credentials.daemon.server import AgentServer
from modelforge_credentials.daemon.state import Agent, AgentConfig
from modelforge_credentials.errors import (
    CredentialBadPassphraseError,
    CredentialLockedError,
    CredentialReadOnlyError,
    CredentialStorageError,
    CredentialStorageUnavailableError,
    CredentialTooLargeError,
    CredentialValidationError,
)
from modelforge_credentials.protocol import (
    BAD_REQUEST,
    LOCKED,
    TOO_LARGE,
    UNKNOWN_OP,
    UNSUPPORTED_VERSION,
    FrameDecoder,
    Op,
    encode_request,
    parse_request,
    request_message,
)
from testkit import FakeClock, RecordingSleep, frame, map_frame

SECRET = "sk-inproc-4b1d9e7c2a"
SECRET2 = "sk-inproc-other-88a0f3"
PASSPHRASE = "correct horse battery staple"
WRONG = "wrong-guess-5e21"
#: Bound for every network wait: a hang fails the test instead of stalling it.
TIMEOUT = 10.0


# -- time ----------------------------------------------------------------------


class StuckSleep:
    """A delay that never ends: parks the connection that triggered it."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self._never = asyncio.Event()

    async def __call__(self, delay: float) -> None:
        self.entered.set()
        await self._never.wait()


# -- serving -------------------------------------------------------------------


def listening_socket(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen()
    return sock


@dataclass
class Served:
    agent: Agent
    server: AgentServer
    path: str
    clock: FakeClock
    sleep: Callable[[float], Awaitable[None]]

    @property
    def delays(self) -> list[float]:
        assert isinstance(self.sleep, RecordingSleep)
        return self.sleep.delays


@contextlib.asynccontextmanager
async def serve(
    backend: object,
    config: AgentConfig | None = None,
    *,
    sock_dir: str,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    **server_options: object,
) -> AsyncIterator[Served]:
    clock = FakeClock()
    sleep = sleep or RecordingSleep(clock)
    path = os.path.join(sock_dir, "agent.sock")
    sock = listening_socket(path)
    agent = Agent(backend, config or AgentConfig(), clock=clock, sleep=sleep)  # type: ignore[arg-type]
    server: AgentServer | None = None
    try:
        await agent.start()
        server = AgentServer(agent, **server_options)  # type: ignore[arg-type]
        await server.start(sock)
        yield Served(agent, server, path, clock, sleep)
    finally:
        if server is not None:
            await server.close()
        else:
            agent.close()
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


@contextlib.asynccontextmanager
async def serve_client(
    backend: object, config: AgentConfig | None = None, **options: Any
) -> AsyncIterator[tuple[Served, AsyncAgentClient]]:
    """:func:`serve`, with an asyncio client connected to it."""
    async with serve(backend, config, **options) as served, AsyncAgentClient(served.path) as client:
        yield served, client


class RawConnection:
    """Bytes in, decoded reply maps out: for byte-level cases."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.decoder = FrameDecoder()

    @classmethod
    async def open(cls, path: str) -> RawConnection:
        reader, writer = await asyncio.open_unix_connection(path)
        return cls(reader, writer)

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    def request(self, request_id: int, op: Op | str, **fields: object) -> None:
        self.send(encode_request(request_id, op, **fields))

    async def reply(self) -> dict[str, object]:
        while (message := self.decoder.next_message()) is None:
            try:
                chunk = await asyncio.wait_for(self.reader.read(65_536), TIMEOUT)
            except ConnectionError as err:
                raise AssertionError(f"the agent dropped the connection ({err!r})") from None
            if not chunk:
                raise AssertionError("the agent closed the connection instead of replying")
            self.decoder.feed(chunk)
        return message

    async def call(self, request_id: int, op: Op | str, **fields: object) -> dict[str, object]:
        self.request(request_id, op, **fields)
        return await self.reply()

    async def rest_until_closed(self) -> bytes:
        """Bytes left until the agent closes the connection (times out if it never does)."""
        return await asyncio.wait_for(self.reader.read(), TIMEOUT)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def failure(reply: dict[str, object]) -> tuple[object, str]:
    assert reply["ok"] is False, reply
    error = reply["error"]
    assert isinstance(error, dict)
    return reply["id"], error["code"]


async def wait_until(predicate: Callable[[], object]) -> None:
    """Yield to the loop until ``predicate`` holds (callers bound it with wait_for)."""
    while not predicate():
        await asyncio.sleep(0)


# -- fixtures ------------------------------------------------------------------


@pytest.fixture
def protected_dir(tmp_path: Path, fast_kdf: KdfParams) -> Path:
    """A passphrase-protected store holding openai/api_key = SECRET."""
    directory = tmp_path / "protected"
    EncryptedFileStorage(directory, passphrase=PASSPHRASE, kdf=fast_kdf).store(
        "openai", "api_key", SECRET
    )
    return directory


@pytest.fixture
def agent_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every record of the agent's logger, even if something turned propagation off."""
    logger = logging.getLogger("modelforge_credentials.agent")
    caplog.set_level(logging.DEBUG, logger="modelforge_credentials.agent")
    attached = not logger.propagate
    if attached:
        logger.addHandler(caplog.handler)
    yield caplog
    if attached:
        logger.removeHandler(caplog.handler)


# -- every operation -----------------------------------------------------------


async def test_every_operation_through_the_async_client(
    sock_dir: str, keyfile_store: EncryptedFileStorage, fast_kdf: KdfParams
) -> None:
    async with serve_client(keyfile_store, sock_dir=sock_dir) as (served, client):
        hello = await client.hello()
        assert hello["protocol"] == 1
        assert hello["agent"] == __version__
        assert hello["backend"] == "encrypted-file"
        assert hello["locked"] is False

        await client.store("openai", "api_key", SECRET)
        await client.store("anthropic", "api_key", SECRET2)
        assert await client.retrieve("openai", "api_key") == SECRET
        assert await client.retrieve("openai", "missing") is None
        assert await client.exists("openai", "api_key") is True
        assert await client.exists("openai", "missing") is False

        items = await client.list_keys()
        assert items == [("anthropic", "api_key"), ("openai", "api_key")]
        assert SECRET not in repr(items) and SECRET2 not in repr(items)
        assert await client.list_keys("openai") == [("openai", "api_key")]
        assert await client.list_keys("nobody") == []

        served.clock.advance(37.5)
        status = await client.status()
        assert status["locked"] is False
        assert status["backend"] == "encrypted-file"
        assert status["protection"] == "keyfile"
        assert status["cached"] == 2
        assert status["idle_timeout"] == AgentConfig().idle_timeout
        assert status["pid"] == os.getpid()
        assert status["uptime"] == pytest.approx(37.5)

        assert await client.delete("anthropic", "api_key") is True
        assert await client.delete("anthropic", "api_key") is False
        assert await client.retrieve("anthropic", "api_key") is None

        # A key-file store has no passphrase: lock only drops the cache.
        await client.lock()
        status = await client.status()
        assert status["cached"] == 0
        assert status["locked"] is False
        assert await client.retrieve("openai", "api_key") == SECRET
        # ...and unlock says there is no passphrase, and how to set one.
        with pytest.raises(CredentialValidationError, match="no passphrase.*passwd"):
            await client.unlock("not needed")
        assert (await client.hello())["locked"] is False

    reread = EncryptedFileStorage(keyfile_store.config_dir, kdf=fast_kdf)
    assert reread.list_keys() == [("openai", "api_key")]
    assert reread.retrieve("openai", "api_key") == SECRET


# -- AgentStorage passes the shared backend contract ----------------------------


class AgentThread:
    """An agent served by its own event loop on a background thread (for sync
    clients), the loop ``serve`` would choose (MODEL_FORGE_EVENT_LOOP)."""

    def __init__(self, backend: object, path: str) -> None:
        self.backend = backend
        self.path = path
        self.loop = loop_factory()()
        self.server: AgentServer | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="agent-loop", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._start())
        except BaseException as err:  # handed to the test thread
            self._error = err
        self._ready.set()
        if self._error is None:
            self.loop.run_forever()
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.close()

    async def _start(self) -> None:
        sock = listening_socket(self.path)
        agent = Agent(self.backend, AgentConfig())  # type: ignore[arg-type]
        await agent.start()
        self.server = AgentServer(agent)
        await self.server.start(sock)

    def start(self) -> None:
        self._thread.start()
        assert self._ready.wait(TIMEOUT), "the agent thread did not start"
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        if self.server is not None:
            asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(TIMEOUT)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive(), "the agent thread did not stop"


@pytest.fixture(params=["encrypted-file-keyfile", "encrypted-file-passphrase"])
def storage_factory(
    request: pytest.FixtureRequest, tmp_path: Path, fast_kdf: KdfParams, sock_dir: str
) -> Iterator[Callable[[], AgentStorage]]:
    passphrase = "correct horse" if request.param == "encrypted-file-passphrase" else None
    backend = EncryptedFileStorage(tmp_path / "cfg", passphrase=passphrase, kdf=fast_kdf)
    agent = AgentThread(backend, os.path.join(sock_dir, "agent.sock"))
    agent.start()
    created: list[AgentStorage] = []

    def factory() -> AgentStorage:
        storage = AgentStorage(agent.path, autostart=False)
        created.append(storage)
        return storage

    try:
        yield factory
    finally:
        for storage in created:
            storage.close()
        agent.stop()


@pytest.fixture
def test_storage(storage_factory: Callable[[], AgentStorage]) -> AgentStorage:
    return storage_factory()


class TestAgentStorageContract(test_proc_backends.TestStorageBackends):
    """The contract every backend passes, through AgentStorage -> agent -> file.

    BUG shown by test_invalid_names_rejected[...-None-k]: AgentStorage does not
    validate before sending, so a None provider comes back as the agent's
    bad_request (AgentProtocolError) instead of CredentialValidationError.
    """

    def test_describe_names_the_agent_and_its_backend(self, test_storage: AgentStorage) -> None:
        """BUG: describe() spreads the agent's status last, so its 'backend'
        ("encrypted-file") overwrites "agent"."""
        info = test_storage.describe()
        assert info["backend"] == "agent"
        assert info["agent_backend"] == "encrypted-file"


def test_agent_storage_without_an_agent_says_so(sock_dir: str) -> None:
    storage = AgentStorage(os.path.join(sock_dir, "absent.sock"), autostart=False)
    with pytest.raises(AgentNotRunningError):
        storage.retrieve("openai", "api_key")


# -- error translation ------------------------------------------------------------


@pytest.mark.parametrize(
    ("provider", "key"),
    [("", "k"), ("p", ""), ("p\n", "k"), ("p", "k\0"), ("x" * 256, "k"), ("p", "\x9b")],
)
async def test_invalid_names_become_validation_errors(
    sock_dir: str, keyfile_store: EncryptedFileStorage, provider: str, key: str
) -> None:
    async with serve_client(keyfile_store, sock_dir=sock_dir) as (served, client):
        with pytest.raises(CredentialValidationError) as info:
            await client.store(provider, key, SECRET)
        assert SECRET not in str(info.value)
        with pytest.raises(CredentialValidationError):
            await client.retrieve(provider, key)
        assert await client.list_keys() == []


async def test_too_large_value_is_refused_and_nothing_stored(
    sock_dir: str, keyfile_store: EncryptedFileStorage
) -> None:
    async with serve_client(keyfile_store, sock_dir=sock_dir) as (served, client):
        with pytest.raises((CredentialTooLargeError, CredentialValidationError)) as info:
            await client.store("openai", "api_key", SECRET + "a" * (65_537 - len(SECRET)))
        assert isinstance(info.value, CredentialValidationError)
        assert SECRET not in str(info.value)
        assert await client.retrieve("openai", "api_key") is None
        # the largest allowed value goes through
        await client.store("openai", "api_key", "b" * 65_536)
        assert await client.retrieve("openai", "api_key") == "b" * 65_536


async def test_locked_and_bad_passphrase_errors(
    sock_dir: str, protected_dir: Path, fast_kdf: KdfParams
) -> None:
    backend = EncryptedFileStorage(protected_dir, kdf=fast_kdf)
    async with serve_client(backend, sock_dir=sock_dir) as (served, client):
        with pytest.raises(CredentialLockedError):
            await client.retrieve("openai", "api_key")
        with pytest.raises(CredentialBadPassphraseError) as info:
            await client.unlock(WRONG)
        assert WRONG not in str(info.value)
        await client.unlock(PASSPHRASE)
        assert await client.retrieve("openai", "api_key") == SECRET


async def test_env_backend_is_read_only_but_readable(sock_dir: str) -> None:
    environ = {"MODEL_FORGE_OPENAI_API_KEY": SECRET}
    async with serve_client(EnvVarStorage(environ), sock_dir=sock_dir) as (served, client):
        assert (await client.hello())["backend"] == "env"
        assert await client.retrieve("openai", "api_key") == SECRET
        assert await client.exists("openai", "api_key") is True
        assert await client.list_keys() == [("openai", "api_key")]
        with pytest.raises(CredentialReadOnlyError) as info:
            await client.store("openai", "api_key", SECRET2)
        assert SECRET2 not in str(info.value)
        with pytest.raises(CredentialReadOnlyError):
            await client.delete("openai", "api_key")
        assert (await client.status())["read_only"] is True
        assert await client.retrieve("openai", "api_key") == SECRET
    assert environ == {"MODEL_FORGE_OPENAI_API_KEY": SECRET}


# -- byte level ---------------------------------------------------------------------

FATAL_INPUTS = {
    "length-0": (b"\x00\x00\x00\x00", BAD_REQUEST),
    # Four header bytes are enough: the agent must not wait for 4 GiB.
    "length-ffffffff": (b"\xff\xff\xff\xff", TOO_LARGE),
    "not-msgpack": (frame(b"\xc1\xc1\xc1"), BAD_REQUEST),
    "msgpack-list": (frame(msgpack.packb(["v", 1, "op", "hello"])), BAD_REQUEST),
}


@pytest.mark.parametrize(("data", "code"), FATAL_INPUTS.values(), ids=FATAL_INPUTS.keys())
async def test_fatal_frame_gets_one_reply_then_close(
    sock_dir: str, keyfile_store: EncryptedFileStorage, data: bytes, code: str
) -> None:
    async with serve(keyfile_store, sock_dir=sock_dir) as served:
        bystander = await RawConnection.open(served.path)
        bad = await RawConnection.open(served.path)
        try:
            stored = await bystander.call(1, Op.STORE, provider="p", key="k", value=SECRET)
            assert stored == {"id": 1, "ok": True}

            bad.send(data)
            assert failure(await bad.reply()) == (None, code)
            assert bad.decoder.pending_bytes == 0
            assert await bad.rest_until_closed() == b""

            # The other client, connected all along, is unaffected.
            reply = await bystander.call(2, Op.RETRIEVE, provider="p", key="k")
            assert reply == {"id": 2, "ok": True, "value": SECRET}
        finally:
            await bystander.close()
            await bad.close()


async def test_fatal_error_does_not_disturb_a_concurrent_pipeline(
    sock_dir: str, keyfile_store: EncryptedFileStorage
) -> None:
    async with serve_client(keyfile_store, sock_dir=sock_dir) as (served, client):
        await client.store("p", "k", SECRET)
        bad = await RawConnection.open(served.path)
        try:
            calls = asyncio.gather(*(client.retrieve("p", "k") for _ in range(20)))
            bad.send(frame(b"\xc1"))
            assert failure(await bad.reply()) == (None, BAD_REQUEST)
            assert await asyncio.wait_for(calls, TIMEOUT) == [SECRET] * 20
            assert await bad.rest_until_closed() == b""
        finally:
            await bad.close()


NON_FATAL = {
    "missing-op": ({"v": 1, "id": 7}, 7, BAD_REQUEST),
    "version-2": ({"v": 2, "id": 8, "op": "hello"}, 8, UNSUPPORTED_VERSION),
    "unknown-op": ({"v": 1, "id": 9, "op": "frobnicate"}, 9, UNKNOWN_OP),
    "field-type": (
        {"v": 1, "id": 10, "op": "retrieve", "provider": 3, "key": "k"},
        10,
        BAD_REQUEST,
    ),
}


@pytest.mark.parametrize(
    ("message", "request_id", "code"), NON_FATAL.values(), ids=NON_FATAL.keys()
)
async def test_bad_request_map_is_answered_and_the_connection_stays(
    sock_dir: str,
    keyfile_store: EncryptedFileStorage,
    message: dict[str, object],
    request_id: int,
    code: str,
) -> None:
    async with serve(keyfile_store, sock_dir=sock_dir) as served:
        conn = await RawConnection.open(served.path)
        try:
            conn.send(map_frame(message))
            assert failure(await conn.reply()) == (request_id, code)
            hello = await conn.call(11, Op.HELLO)
            assert hello["id"] == 11 and hello["ok"] is True and hello["protocol"] == 1
        finally:
            await conn.close()


# -- pipelining -----------------------------------------------------------------------


def mixed_requests(
    model: dict[tuple[str, str], str],
) -> Iterator[tuple[Op, dict[str, object], dict[str, object]]]:
    """(op, fields, expected result fields), keeping ``model`` in step."""
    yield Op.RETRIEVE, {"provider": "nobody", "key": "api_key"}, {"value": None}
    yield Op.RETRIEVE, {"provider": "other", "key": "api_key"}, {"value": "outside"}
    for i in itertools.count(1):
        pair = (f"p{i % 3}", f"k{i}")
        names = {"provider": pair[0], "key": pair[1]}
        value = f"value-{i}"
        yield Op.STORE, {**names, "value": value}, {}
        model[pair] = value
        yield Op.RETRIEVE, names, {"value": value}
        yield Op.EXISTS, names, {"exists": True}
        yield Op.RETRIEVE, {"provider": pair[0], "key": f"absent{i}"}, {"value": None}
        if i % 2 == 0:
            yield Op.DELETE, names, {"deleted": True}
            del model[pair]
            yield Op.EXISTS, names, {"exists": False}
        yield Op.LIST, {}, {"items": [list(p) for p in sorted(model)]}


async def test_fifty_pipelined_requests_in_one_write(
    sock_dir: str, tmp_path: Path, fast_kdf: KdfParams
) -> None:
    directory = tmp_path / "cfg"
    EncryptedFileStorage(directory, kdf=fast_kdf).store("seed", "api_key", "seed-value")
    async with serve(EncryptedFileStorage(directory, kdf=fast_kdf), sock_dir=sock_dir) as served:
        # Another writer changes the file after the agent loaded it: the first
        # retrieve (a miss) has to go to the backend, and the rest queue behind.
        EncryptedFileStorage(directory, kdf=fast_kdf).store("other", "api_key", "outside")
        model = {("seed", "api_key"): "seed-value", ("other", "api_key"): "outside"}
        plan = list(itertools.islice(mixed_requests(model), 50))
        assert {op for op, _, _ in plan} >= {Op.STORE, Op.RETRIEVE, Op.EXISTS, Op.LIST, Op.DELETE}

        conn = await RawConnection.open(served.path)
        try:
            conn.send(b"".join(encode_request(n, op, **f) for n, (op, f, _) in enumerate(plan, 1)))
            replies = [await conn.reply() for _ in plan]
        finally:
            await conn.close()

    assert [reply["id"] for reply in replies] == list(range(1, 51))
    for n, ((op, fields, expected), reply) in enumerate(zip(plan, replies, strict=True), 1):
        assert reply == {"id": n, "ok": True, **expected}, (op, fields)
    assert EncryptedFileStorage(directory, kdf=fast_kdf).load() == {
        provider: {k: v for (p, k), v in model.items() if p == provider}
        for provider in {p for p, _ in model}
    }


async def test_two_hundred_concurrent_calls_on_one_client(
    sock_dir: str, tmp_path: Path, fast_kdf: KdfParams
) -> None:
    directory = tmp_path / "cfg"
    writer = EncryptedFileStorage(directory, kdf=fast_kdf)
    writer.store_many({"p": {f"k{i}": f"value-{i}" for i in range(20)}})
    async with serve_client(EncryptedFileStorage(directory, kdf=fast_kdf), sock_dir=sock_dir) as (
        served,
        client,
    ):
        await client.hello()
        # Changed behind the agent's back: the first call needs the backend.
        writer.store("p", "k0", "value-0-new")
        expected = ["value-0-new"] + [f"value-{i}" for i in range(1, 20)]
        results = await asyncio.wait_for(
            asyncio.gather(*(client.retrieve("p", f"k{i % 20}") for i in range(200))), TIMEOUT
        )
        assert results == [expected[i % 20] for i in range(200)]

        # Writes (backend path) interleaved with reads from many tasks.
        async def store_then_read(i: int) -> str | None:
            await client.store("q", f"k{i}", f"q-{i}")
            return await client.retrieve("q", f"k{i}")

        results = await asyncio.wait_for(
            asyncio.gather(*(store_then_read(i) for i in range(50))), TIMEOUT
        )
        assert results == [f"q-{i}" for i in range(50)]


# -- lock and unlock -----------------------------------------------------------------

REFUSED_WHILE_LOCKED: list[tuple[Op, dict[str, object]]] = [
    (Op.STORE, {"provider": "openai", "key": "api_key", "value": SECRET2}),
    (Op.RETRIEVE, {"provider": "openai", "key": "api_key"}),
    (Op.DELETE, {"provider": "openai", "key": "api_key"}),
    (Op.EXISTS, {"provider": "openai", "key": "api_key"}),
    (Op.LIST, {}),
    (Op.LIST, {"provider": "openai"}),
]


async def test_passphrase_store_lock_and_unlock(
    sock_dir: str, protected_dir: Path, fast_kdf: KdfParams
) -> None:
    store_file = protected_dir / "credentials.enc"
    before = store_file.read_bytes()
    config = AgentConfig(unlock_delay_cap=4.0)
    backend = EncryptedFileStorage(protected_dir, kdf=fast_kdf)
    async with serve_client(backend, config, sock_dir=sock_dir) as (served, client):
        assert (await client.hello())["locked"] is True
        status = await client.status()
        assert status["locked"] is True
        assert status["protection"] == "passphrase"
        assert status["cached"] == 0

        for op, fields in REFUSED_WHILE_LOCKED:
            with pytest.raises(CredentialLockedError):
                await client.call(op, **fields)
            # Answered at once: the dispatcher refuses without the backend.
            reply = dispatch(served.agent, parse_request(request_message(1, op, **fields)))
            assert isinstance(reply, dict) and failure(reply) == (1, LOCKED)
        await client.lock()  # locking a locked agent succeeds

        for _ in range(6):
            with pytest.raises(CredentialBadPassphraseError):
                await client.unlock(WRONG)
        assert served.delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
        assert (await client.status())["locked"] is True
        assert store_file.read_bytes() == before

        await client.unlock(PASSPHRASE)
        status = await client.status()
        assert status["locked"] is False
        assert status["cached"] == 1
        assert await client.retrieve("openai", "api_key") == SECRET
        await client.store("openai", "second", SECRET2)

        await client.lock()
        status = await client.status()
        assert status["locked"] is True
        assert status["cached"] == 0
        with pytest.raises(CredentialLockedError):
            await client.retrieve("openai", "api_key")

        # A success resets the delay: the next failure waits the base delay.
        with pytest.raises(CredentialBadPassphraseError):
            await client.unlock(WRONG)
        assert served.delays[-1] == 0.5
        await client.unlock(PASSPHRASE)
        assert await client.retrieve("openai", "second") == SECRET2

    reread = EncryptedFileStorage(protected_dir, passphrase=PASSPHRASE, kdf=fast_kdf)
    assert reread.retrieve("openai", "second") == SECRET2
    assert reread.protection == "passphrase"


async def test_file_reprotected_elsewhere_relocks_the_agent(
    sock_dir: str, protected_dir: Path, fast_kdf: KdfParams
) -> None:
    backend = EncryptedFileStorage(protected_dir, kdf=fast_kdf)
    async with serve_client(backend, sock_dir=sock_dir) as (served, client):
        await client.unlock(PASSPHRASE)
        assert await client.retrieve("openai", "api_key") == SECRET
        other = EncryptedFileStorage(protected_dir, passphrase=PASSPHRASE, kdf=fast_kdf)
        other.set_passphrase("a new passphrase")
        served.clock.advance(1)  # past file_check_interval, the documented staleness
        with pytest.raises(CredentialLockedError):
            await client.retrieve("openai", "api_key")
        assert (await client.status())["locked"] is True
        with pytest.raises(CredentialBadPassphraseError):
            await client.unlock(PASSPHRASE)
        await client.unlock("a new passphrase")
        assert await client.retrieve("openai", "api_key") == SECRET


async def test_status_is_answered_while_an_unlock_derives(sock_dir: str, tmp_path: Path) -> None:
    directory = tmp_path / "slow-kdf"
    # Default KdfParams(): Argon2id, 64 MiB, three passes.
    EncryptedFileStorage(directory, passphrase=PASSPHRASE).store("openai", "api_key", SECRET)
    async with (
        serve(EncryptedFileStorage(directory), sock_dir=sock_dir) as served,
        AsyncAgentClient(served.path) as unlocker,
        AsyncAgentClient(served.path) as watcher,
    ):
        await watcher.hello()
        unlock = asyncio.create_task(unlocker.unlock(PASSPHRASE))
        # The agent has taken the unlock request once its backend task exists.
        await asyncio.wait_for(wait_until(lambda: served.server.tasks), TIMEOUT)
        status = asyncio.create_task(watcher.status())
        refused = asyncio.create_task(watcher.retrieve("openai", "api_key"))
        done, _ = await asyncio.wait(
            {unlock, status}, timeout=TIMEOUT, return_when=asyncio.FIRST_COMPLETED
        )
        assert done == {status}, "status waited for the unlock's key derivation"
        assert status.result()["locked"] is True
        with pytest.raises(CredentialLockedError):
            await refused
        await asyncio.wait_for(unlock, TIMEOUT)
        assert await watcher.retrieve("openai", "api_key") == SECRET


# -- timers ------------------------------------------------------------------------------


async def test_idle_timeout_locks_and_status_is_not_activity(
    sock_dir: str, protected_dir: Path, fast_kdf: KdfParams
) -> None:
    backend = EncryptedFileStorage(protected_dir, kdf=fast_kdf)
    async with serve_client(backend, AgentConfig(idle_timeout=60), sock_dir=sock_dir) as (
        served,
        client,
    ):
        await client.unlock(PASSPHRASE)
        for _ in range(3):
            served.clock.advance(19)
            assert (await client.status())["locked"] is False
            assert (await client.hello())["locked"] is False
        served.clock.advance(3)  # 60 s after the unlock: status and hello did not postpone it
        status = await client.status()
        assert status["locked"] is True
        assert status["cached"] == 0
        with pytest.raises(CredentialLockedError):
            await client.retrieve("openai", "api_key")

        await client.unlock(PASSPHRASE)
        served.clock.advance(40)
        assert await client.retrieve("openai", "api_key") == SECRET  # activity
        served.clock.advance(40)  # 80 s after the unlock, 40 s after the retrieve
        assert (await client.status())["locked"] is False
        served.clock.advance(20)  # 60 s after the retrieve
        assert (await client.status())["locked"] is True

        # The timer check on its own (what the server's timer calls).
        await client.unlock(PASSPHRASE)
        served.clock.advance(59)
        served.agent.check_timers()
        assert served.agent.locked is False
        served.clock.advance(1)
        served.agent.check_timers()
        assert served.agent.locked is True


@pytest.mark.parametrize("idle_timeout", [None, 0])
async def test_no_idle_timeout_never_locks(
    sock_dir: str, protected_dir: Path, fast_kdf: KdfParams, idle_timeout: float | None
) -> None:
    backend = EncryptedFileStorage(protected_dir, kdf=fast_kdf)
    config = AgentConfig(idle_timeout=idle_timeout)
    async with serve_client(backend, config, sock_dir=sock_dir) as (served, client):
        await client.unlock(PASSPHRASE)
        served.clock.advance(10**7)
        served.agent.check_timers()
        status = await client.status()
        assert status["locked"] is False
        assert status["idle_timeout"] is None
        assert served.agent.next_deadline() is None
        assert await client.retrieve("openai", "api_key") == SECRET


async def test_max_unlock_locks_despite_activity(
    sock_dir: str, protected_dir: Path, fast_kdf: KdfParams
) -> None:
    backend = EncryptedFileStorage(protected_dir, kdf=fast_kdf)
    config = AgentConfig(idle_timeout=60, max_unlock=300)
    async with serve_client(backend, config, sock_dir=sock_dir) as (served, client):
        await client.unlock(PASSPHRASE)
        for _ in range(5):
            served.clock.advance(50)
            assert await client.retrieve("openai", "api_key") == SECRET
        served.clock.advance(49)  # 299 s unlocked, never idle
        assert await client.retrieve("openai", "api_key") == SECRET
        served.clock.advance(1)
        with pytest.raises(CredentialLockedError):
            await client.retrieve("openai", "api_key")
        status = await client.status()
        assert status["locked"] is True
        assert status["cached"] == 0


# -- caches ---------------------------------------------------------------------------


async def test_env_values_are_cached_until_the_ttl(sock_dir: str) -> None:
    environ = {"MODEL_FORGE_OPENAI_API_KEY": "first-value"}
    async with serve_client(
        EnvVarStorage(environ), AgentConfig(cache_ttl=5), sock_dir=sock_dir
    ) as (served, client):
        assert await client.retrieve("openai", "api_key") == "first-value"
        assert await client.retrieve("anthropic", "api_key") is None
        environ["MODEL_FORGE_OPENAI_API_KEY"] = "second-value"
        environ["MODEL_FORGE_ANTHROPIC_API_KEY"] = "appeared"

        served.clock.advance(4.5)
        assert await client.retrieve("openai", "api_key") == "first-value"
        assert await client.retrieve("anthropic", "api_key") is None
        assert await client.exists("anthropic", "api_key") is False

        served.clock.advance(0.5)  # the TTL has passed
        assert await client.retrieve("openai", "api_key") == "second-value"
        assert await client.retrieve("anthropic", "api_key") == "appeared"
        assert (await client.status())["cache_ttl"] == 5


async def test_file_changed_by_another_writer_is_seen(
    sock_dir: str, keyfile_store: EncryptedFileStorage, fast_kdf: KdfParams
) -> None:
    async with serve_client(keyfile_store, sock_dir=sock_dir) as (served, client):
        await client.store("openai", "api_key", SECRET)
        assert await client.retrieve("openai", "api_key") == SECRET
        other = EncryptedFileStorage(keyfile_store.config_dir, kdf=fast_kdf)
        other.store("openai", "api_key", SECRET2)
        other.store("anthropic", "api_key", "outside")
        served.clock.advance(1)  # past file_check_interval, the documented staleness
        assert await client.retrieve("openai", "api_key") == SECRET2
        assert await client.retrieve("anthropic", "api_key") == "outside"
        assert await client.list_keys() == [("anthropic", "api_key"), ("openai", "api_key")]
        other.delete("anthropic", "api_key")
        served.clock.advance(1)  # past file_check_interval
        assert await client.exists("anthropic", "api_key") is False


async def test_agent_write_does_not_hide_another_writers_change(
    sock_dir: str, keyfile_store: EncryptedFileStorage, fast_kdf: KdfParams
) -> None:
    """BUG: a store through the agent after another process changed the file
    leaves the agent's 'complete' cache stale for good."""
    async with serve_client(keyfile_store, sock_dir=sock_dir) as (served, client):
        await client.store("openai", "api_key", SECRET)
        other = EncryptedFileStorage(keyfile_store.config_dir, kdf=fast_kdf)
        other.store("openai", "api_key", SECRET2)
        other.store("anthropic", "api_key", "outside")
        await client.store("mistral", "api_key", "through-the-agent")
        on_disk = EncryptedFileStorage(keyfile_store.config_dir, kdf=fast_kdf)
        assert on_disk.retrieve("openai", "api_key") == SECRET2
        assert await client.retrieve("openai", "api_key") == SECRET2
        assert await client.retrieve("anthropic", "api_key") == "outside"


# -- the server's connection rules ------------------------------------------------------


async def test_peer_with_a_foreign_uid_is_dropped_without_reply(
    sock_dir: str, keyfile_store: EncryptedFileStorage, agent_log: pytest.LogCaptureFixture
) -> None:
    assert os.getuid() != 12345
    async with serve(keyfile_store, sock_dir=sock_dir, allowed_uids=frozenset({12345})) as served:
        conn = await RawConnection.open(served.path)
        try:
            assert await conn.rest_until_closed() == b""
        finally:
            await conn.close()
        async with AsyncAgentClient(served.path, timeout=60) as client:
            with pytest.raises(CredentialStorageUnavailableError):
                await asyncio.wait_for(client.hello(), TIMEOUT)
        assert not served.server.connections
    assert any("refused a connection" in r.getMessage() for r in agent_log.records)


async def test_connection_cap_drops_the_oldest_idle_connection(
    sock_dir: str, keyfile_store: EncryptedFileStorage
) -> None:
    async with serve(keyfile_store, sock_dir=sock_dir, max_connections=4) as served:
        idle = [await RawConnection.open(served.path) for _ in range(4)]
        try:
            for conn in idle:
                assert (await conn.call(1, Op.HELLO))["ok"] is True
            async with AsyncAgentClient(served.path) as client:
                await client.store("openai", "api_key", SECRET)
                assert await client.retrieve("openai", "api_key") == SECRET
                assert await idle[0].rest_until_closed() == b""
                for conn in idle[1:]:
                    assert (await conn.call(2, Op.HELLO))["ok"] is True
                assert len(served.server.connections) == 4
        finally:
            for conn in idle:
                await conn.close()


async def test_read_deadline_closes_a_half_sent_frame(
    sock_dir: str, keyfile_store: EncryptedFileStorage
) -> None:
    async with serve(keyfile_store, sock_dir=sock_dir, read_deadline=0.2) as served:
        quiet = await RawConnection.open(served.path)
        half = await RawConnection.open(served.path)
        try:
            assert (await quiet.call(1, Op.HELLO))["ok"] is True
            request = encode_request(1, Op.RETRIEVE, provider="openai", key="api_key")
            half.send(request[: len(request) // 2])
            assert await half.rest_until_closed() == b""
            # A connection between frames is not subject to the deadline.
            assert (await quiet.call(2, Op.HELLO))["ok"] is True
        finally:
            await quiet.close()
            await half.close()


async def test_read_deadline_spares_a_client_that_keeps_completing_frames(
    sock_dir: str, keyfile_store: EncryptedFileStorage, agent_log: pytest.LogCaptureFixture
) -> None:
    """BUG: the deadline is armed at the first partial frame and never re-armed
    while frames keep completing, so a steadily pipelining client is cut off."""
    async with serve(keyfile_store, sock_dir=sock_dir, read_deadline=0.3) as served:
        busy = await RawConnection.open(served.path)
        witness = await RawConnection.open(served.path)
        try:
            request_id = 1
            current = encode_request(request_id, Op.HELLO)
            # A complete hello plus the head of the next frame, answered: the
            # agent now holds busy's partial frame (its deadline is armed).
            busy.send(encode_request(0, Op.HELLO) + current[:5])
            assert (await busy.reply())["id"] == 0
            # The witness' half frame was received later, so its deadline
            # passes after busy's first one would.
            witness.send(encode_request(1, Op.HELLO)[:5])
            witness_closed = asyncio.create_task(witness.rest_until_closed())
            while not witness_closed.done():
                # Each write completes one frame and starts the next: no
                # partial frame waits longer than one round trip.
                following = encode_request(request_id + 1, Op.HELLO)
                busy.send(current[5:] + following[:5])
                assert (await busy.reply())["id"] == request_id
                request_id, current = request_id + 1, following
            assert await witness_closed == b""
            busy.send(current[5:])
            assert (await busy.reply())["id"] == request_id
        finally:
            await busy.close()
            await witness.close()
    cut = [r for r in agent_log.records if "left a frame unfinished" in r.getMessage()]
    assert len(cut) == 1  # the witness only


async def test_list_reply_over_the_frame_limit_is_answered_too_large(
    sock_dir: str, keyfile_store: EncryptedFileStorage
) -> None:
    """BUG: a reply that does not fit in a frame must be a too_large failure
    (PROTOCOL.md section 5); the server lets FrameTooLarge escape instead."""
    names = {f"{i:05d}" + "p" * 250: {"k" * 255: "v"} for i in range(2200)}
    keyfile_store.store_many(names)
    async with (
        serve(keyfile_store, sock_dir=sock_dir) as served,
        AsyncAgentClient(served.path, timeout=60) as client,
    ):
        provider = next(iter(names))
        assert await client.list_keys(provider) == [(provider, "k" * 255)]
        with pytest.raises(CredentialTooLargeError):
            await asyncio.wait_for(client.list_keys(), TIMEOUT)
        assert (await asyncio.wait_for(client.hello(), TIMEOUT))["protocol"] == 1


async def test_pending_calls_fail_when_the_server_closes(
    sock_dir: str, protected_dir: Path, fast_kdf: KdfParams
) -> None:
    stuck = StuckSleep()
    backend = EncryptedFileStorage(protected_dir, kdf=fast_kdf)
    async with serve(backend, sock_dir=sock_dir, sleep=stuck) as served:
        # A long client timeout: a hang must not pass as a prompt failure.
        client = AsyncAgentClient(served.path, timeout=60)
        await client.connect()
        try:
            # A wrong passphrase parks the connection in the anti-guessing
            # delay, so every call sent after it stays pending.
            calls = [asyncio.create_task(client.unlock(WRONG))]
            await asyncio.wait_for(stuck.entered.wait(), TIMEOUT)
            calls += [asyncio.create_task(client.status()) for _ in range(5)]
            calls += [asyncio.create_task(client.retrieve("openai", "api_key")) for _ in range(5)]
            await asyncio.sleep(0)  # let each task send its request
            assert not any(call.done() for call in calls)

            await served.server.close()
            results = await asyncio.wait_for(
                asyncio.gather(*calls, return_exceptions=True), TIMEOUT
            )
            assert all(isinstance(r, CredentialStorageUnavailableError) for r in results), results
            with pytest.raises(CredentialStorageUnavailableError):
                await asyncio.wait_for(client.hello(), TIMEOUT)
        finally:
            await client.close()


# -- secrets stay out of logs and messages -------------------------------------------------


async def test_no_secret_in_any_log_record_or_error_message(
    sock_dir: str, protected_dir: Path, fast_kdf: KdfParams, agent_log: pytest.LogCaptureFixture
) -> None:
    oversized = SECRET + "z" * 65_537
    secrets = [SECRET, SECRET2, PASSPHRASE, WRONG, WRONG + "-again", "z" * 64]
    messages: list[str] = []

    async def expect_error(call: Awaitable[object], kind: type[Exception]) -> None:
        with pytest.raises(kind) as info:
            await call
        messages.append(str(info.value))

    backend = EncryptedFileStorage(protected_dir, kdf=fast_kdf)
    async with serve_client(backend, AgentConfig(idle_timeout=60), sock_dir=sock_dir) as (
        served,
        client,
    ):
        await expect_error(client.retrieve("openai", "api_key"), CredentialLockedError)
        await expect_error(client.store("openai", "api_key", SECRET2), CredentialLockedError)
        await expect_error(client.unlock(WRONG), CredentialBadPassphraseError)
        await expect_error(client.unlock(WRONG + "-again"), CredentialBadPassphraseError)
        await client.unlock(PASSPHRASE)
        assert await client.retrieve("openai", "api_key") == SECRET
        await client.store("anthropic", "api_key", SECRET2)
        assert await client.retrieve("anthropic", "api_key") == SECRET2
        await expect_error(client.store("", "api_key", SECRET), CredentialValidationError)
        await expect_error(client.store("p", "k\n", SECRET2), CredentialValidationError)
        await expect_error(client.store("p", "k", oversized), CredentialValidationError)
        # Re-protected by another process: the agent relocks and says why.
        EncryptedFileStorage(protected_dir, passphrase=PASSPHRASE, kdf=fast_kdf).set_passphrase(
            WRONG
        )
        served.clock.advance(1)  # past file_check_interval
        await expect_error(client.retrieve("openai", "api_key"), CredentialLockedError)
        await client.unlock(WRONG)
        served.clock.advance(60)
        assert (await client.status())["locked"] is True  # idle lock, logged

    environ = {"MODEL_FORGE_OPENAI_API_KEY": SECRET}
    async with serve_client(EnvVarStorage(environ), sock_dir=sock_dir) as (served, client):
        assert await client.retrieve("openai", "api_key") == SECRET
        await expect_error(client.store("openai", "api_key", SECRET2), CredentialReadOnlyError)

    logged = [record.getMessage() for record in agent_log.records]
    assert any("failed unlock" in text for text in logged), logged
    assert any("idle" in text for text in logged), logged
    assert len(messages) == 9
    for text in logged + messages + [agent_log.text]:
        for secret in secrets:
            assert secret not in text


def test_errors_share_one_root() -> None:
    # Every exception the clients raise above is catchable as one class.
    for kind in (
        CredentialBadPassphraseError,
        CredentialLockedError,
        CredentialReadOnlyError,
        CredentialStorageUnavailableError,
        CredentialTooLargeError,
        CredentialValidationError,
    ):
        assert issubclass(kind, CredentialStorageError)


# -- a backend that stops answering ------------------------------------------------


class StallingEnv(EnvVarStorage):
    """Env backend whose ``stuck`` key blocks like a keyring waiting on a prompt."""

    def __init__(self, environ: dict[str, str]) -> None:
        super().__init__(environ)
        self.release = threading.Event()

    def retrieve(self, provider: str, key: str) -> str | None:
        if key == "stuck":
            self.release.wait(30)
        return super().retrieve(provider, key)


async def test_a_stalled_backend_call_is_abandoned_and_the_agent_keeps_serving(
    sock_dir: str,
) -> None:
    backend = StallingEnv({"MODEL_FORGE_OPENAI_API_KEY": "sk-env-stall"})
    config = AgentConfig(backend_timeout=0.05, cache_ttl=0.0)
    try:
        async with serve(backend, config, sock_dir=sock_dir) as served:
            async with AsyncAgentClient(served.path, timeout=10) as client:
                with pytest.raises(CredentialStorageUnavailableError, match="did not answer"):
                    await client.retrieve("openai", "stuck")
                # The stuck thread was abandoned: the next backend call runs.
                assert await client.retrieve("openai", "api_key") == "sk-env-stall"
                assert (await client.status())["backend"] == "env"
    finally:
        backend.release.set()


async def test_another_writers_change_waits_at_most_the_check_interval(
    sock_dir: str, keyfile_store: EncryptedFileStorage, fast_kdf: KdfParams
) -> None:
    """The agent stats the file at most every file_check_interval seconds."""
    config = AgentConfig(file_check_interval=0.5)
    async with serve_client(keyfile_store, config, sock_dir=sock_dir) as (served, client):
        await client.store("openai", "api_key", SECRET)
        assert await client.retrieve("openai", "api_key") == SECRET
        EncryptedFileStorage(keyfile_store.config_dir, kdf=fast_kdf).store(
            "openai", "api_key", SECRET2
        )
        served.clock.advance(0.4)
        assert await client.retrieve("openai", "api_key") == SECRET  # within the interval
        served.clock.advance(0.1)
        assert await client.retrieve("openai", "api_key") == SECRET2


async def test_a_pipelined_burst_is_interleaved_with_other_connections(
    sock_dir: str, keyfile_store: EncryptedFileStorage
) -> None:
    """A burst is answered a slice per loop turn, so another connection's
    request is answered long before the burst is done: ordering, not timing."""
    burst = 2000
    frames = b"".join(encode_request(i, Op.HELLO) for i in range(1, burst + 1))
    async with serve(keyfile_store, sock_dir=sock_dir) as served:
        flood = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        flood.connect(served.path)
        flood.setblocking(False)
        other = await RawConnection.open(served.path)
        try:
            flood.sendall(frames)
            for _ in range(3):
                await asyncio.sleep(0)  # let the server take the burst in first
            reply = await other.call(1, Op.HELLO)
            assert reply["ok"] is True
            received = b""
            with contextlib.suppress(BlockingIOError):
                while chunk := flood.recv(1 << 20):
                    received += chunk
            decoder = FrameDecoder()
            decoder.feed(received)
            answered = 0
            while decoder.next_message() is not None:
                answered += 1
            assert answered < burst // 2, f"{answered} of {burst} answered before the other client"
        finally:
            flood.close()
            await other.close()


async def test_lone_retrieve_frames_get_the_same_answers_as_the_general_path(
    sock_dir: str, keyfile_store: EncryptedFileStorage
) -> None:
    """A lone five-field retrieve frame takes the agent's shortcut; every
    other shape, and every doubtful field, must still get the full checks."""
    async with serve(keyfile_store, sock_dir=sock_dir) as served:
        conn = await RawConnection.open(served.path)
        try:
            await conn.call(1, Op.STORE, provider="openai", key="api_key", value=SECRET)
            ok = await conn.call(2, Op.RETRIEVE, provider="openai", key="api_key")
            assert ok == {"id": 2, "ok": True, "value": SECRET}
            absent = await conn.call(3, Op.RETRIEVE, provider="openai", key="other")
            assert absent == {"id": 3, "ok": True, "value": None}
            invalid = await conn.call(4, Op.RETRIEVE, provider="", key="k")
            assert failure(invalid) == (4, "invalid")
            control = await conn.call(5, Op.RETRIEVE, provider="openai", key="api\x00key")
            assert failure(control) == (5, "invalid")
            for request_id, fields in (
                (6, {"provider": 7, "key": "api_key"}),
                (7, {"provider": "openai", "key": b"api_key"}),
            ):
                conn.send(map_frame({"v": 1, "id": request_id, "op": "retrieve", **fields}))
                assert failure(await conn.reply()) == (request_id, "bad_request")
            conn.send(map_frame({"v": 2, "id": 8, "op": "retrieve", "provider": "o", "key": "k"}))
            assert failure(await conn.reply()) == (8, "unsupported_version")
            served.agent.lock()
            served.agent.locked = True
            locked = await conn.call(9, Op.RETRIEVE, provider="openai", key="api_key")
            assert failure(locked) == (9, "locked")
        finally:
            await conn.close()


async def test_dispatch_has_a_case_for_every_operation_of_the_table(
    sock_dir: str, keyfile_store: EncryptedFileStorage, tmp_path: Path
) -> None:
    """The ops table and the one match over it agree: every operation, core
    and team, reaches a case (UnhandledOperation is never raised), and the
    answer is a reply of the table's shape, never an exception."""
    from modelforge_credentials.daemon.dispatch import UnhandledOperation
    from modelforge_credentials.protocol import TeamOp, parse_reply

    config = AgentConfig(team_dir=str(tmp_path / "teams"))
    async with serve(keyfile_store, config, sock_dir=sock_dir) as served:
        for op in (*Op, *TeamOp):
            fields = {name: "x" for name, optional in op.request if not optional}
            if op is TeamOp.TEAM_LOGIN:
                fields["method"] = "token"
            req = parse_request(request_message(9, op, **fields))
            try:
                reply = await answer(served.agent, req)
            except UnhandledOperation:  # pragma: no cover - the failure this test is for
                pytest.fail(f"{op} has no case in dispatch")
            parsed = parse_reply(reply)
            assert parsed.id == 9, op
            if not parsed.ok:
                assert parsed.error_code != "internal", (op, parsed.error_message)
