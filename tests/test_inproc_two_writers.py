"""One encrypted file, two writers: an agent and a direct writer, or two agents.

The README promises that the agent serves a value at most 0.1 s stale when
another process writes the file. The agents here run in-process on real
sockets with fake clocks: "0.1 s later" is a clock advance, never a sleep.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelforge_credentials import EncryptedFileStorage, KdfParams
from modelforge_credentials.daemon.state import AgentConfig
from modelforge_credentials.protocol import Op
from test_inproc_agent import RawConnection, serve

STALE_BOUND = AgentConfig().file_check_interval


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "cfg"


@pytest.fixture
def sock_dirs() -> Iterator[tuple[str, str]]:
    made = (
        tempfile.mkdtemp(prefix="mfw-", dir="/tmp"),
        tempfile.mkdtemp(prefix="mfw-", dir="/tmp"),
    )
    yield made
    for path in made:
        shutil.rmtree(path, ignore_errors=True)


def opened(directory: Path, kdf: KdfParams) -> EncryptedFileStorage:
    return EncryptedFileStorage(directory, kdf=kdf)


# -- the storage layer -----------------------------------------------------------------


def test_reading_the_protection_does_not_hide_another_writers_change(
    directory: Path, fast_kdf: KdfParams
) -> None:
    ours, theirs = opened(directory, fast_kdf), opened(directory, fast_kdf)
    ours.store("openai", "api_key", "old")
    assert ours.load() == {"openai": {"api_key": "old"}}
    theirs.store("openai", "api_key", "new")
    assert ours.protection == "keyfile"
    assert ours.locked is False
    assert ours.changed_since_last_access() is True
    assert ours.retrieve("openai", "api_key") == "new"
    assert ours.changed_since_last_access() is False


def test_a_write_that_merged_another_writers_change_reports_it_once(
    directory: Path, fast_kdf: KdfParams
) -> None:
    ours, theirs = opened(directory, fast_kdf), opened(directory, fast_kdf)
    ours.store("a", "k", "1")
    theirs.store("b", "k", "2")
    ours.store("c", "k", "3")  # merges b/k under the lock, then writes
    assert ours.changed_since_last_access() is True
    assert ours.changed_since_last_access() is False
    assert ours.load() == {"a": {"k": "1"}, "b": {"k": "2"}, "c": {"k": "3"}}


# -- agents ----------------------------------------------------------------------------


async def get(conn: RawConnection, provider: str, key: str) -> object:
    reply = await conn.call(1, Op.RETRIEVE, provider=provider, key=key)
    assert reply["ok"] is True, reply
    return reply.get("value")


async def test_the_agent_serves_a_direct_writers_value_within_the_bound(
    directory: Path, fast_kdf: KdfParams, sock_dirs: tuple[str, str]
) -> None:
    opened(directory, fast_kdf).store("seed", "k", "v")
    direct = opened(directory, fast_kdf)
    async with serve(opened(directory, fast_kdf), sock_dir=sock_dirs[0]) as served:
        conn = await RawConnection.open(served.path)
        try:
            assert await get(conn, "openai", "api_key") is None
            direct.store("openai", "api_key", "sk-direct-1")
            # status reads the file's protection: that must not hide the change
            assert (await conn.call(2, Op.STATUS))["ok"] is True
            served.clock.advance(STALE_BOUND)
            assert await get(conn, "openai", "api_key") == "sk-direct-1"
            # and a store of the agent's own in between does not hide the next one
            direct.store("anthropic", "api_key", "sk-direct-2")
            stored = await conn.call(3, Op.STORE, provider="mine", key="k", value="x")
            assert stored["ok"] is True
            served.clock.advance(STALE_BOUND)
            assert await get(conn, "anthropic", "api_key") == "sk-direct-2"
        finally:
            await conn.close()


async def test_two_agents_on_one_file_lose_no_store_and_see_each_other(
    directory: Path, fast_kdf: KdfParams, sock_dirs: tuple[str, str]
) -> None:
    opened(directory, fast_kdf).store("seed", "k", "v")
    async with (
        serve(opened(directory, fast_kdf), sock_dir=sock_dirs[0]) as first,
        serve(opened(directory, fast_kdf), sock_dir=sock_dirs[1]) as second,
    ):
        a, b = await RawConnection.open(first.path), await RawConnection.open(second.path)
        try:
            for conn in (a, b):
                assert await get(conn, "seed", "k") == "v"  # both caches complete
            expected = {}
            for i in range(60):
                conn, name = (a, "first") if i % 2 == 0 else (b, "second")
                value = f"{name}-{i}"
                reply = await conn.call(10 + i, Op.STORE, provider=name, key=f"k{i}", value=value)
                assert reply["ok"] is True, reply
                expected[(name, f"k{i}")] = value
            first.clock.advance(STALE_BOUND)
            second.clock.advance(STALE_BOUND)
            for conn in (a, b):
                for (provider, key), value in expected.items():
                    assert await get(conn, provider, key) == value, (provider, key)
            assert opened(directory, fast_kdf).load() == {
                "seed": {"k": "v"},
                "first": {k: v for (p, k), v in expected.items() if p == "first"},
                "second": {k: v for (p, k), v in expected.items() if p == "second"},
            }
        finally:
            await a.close()
            await b.close()


class Interleaved(EncryptedFileStorage):
    """The agent's own file object, with another writer's write landing at the two
    instants a real race puts it: right after the agent loaded the file (before it
    reads the protection), and right before a store of the agent's takes the lock."""

    def __init__(self, directory: Path, kdf: KdfParams) -> None:
        super().__init__(directory, kdf=kdf)
        self.after_load: list[tuple[str, str, str]] = []
        self.before_store: list[tuple[str, str, str]] = []
        self.other = EncryptedFileStorage(directory, kdf=kdf)

    def load(self) -> dict[str, dict[str, str]]:
        loaded = super().load()
        while self.after_load:
            self.other.store(*self.after_load.pop())
        return loaded

    def store(self, provider: str, key: str, value: str) -> None:
        while self.before_store:
            self.other.store(*self.before_store.pop())
        super().store(provider, key, value)


async def test_writes_racing_the_agents_load_and_store_are_served_within_the_bound(
    directory: Path, fast_kdf: KdfParams, sock_dirs: tuple[str, str]
) -> None:
    backend = Interleaved(directory, fast_kdf)
    backend.other.store("seed", "k", "v")
    backend.after_load.append(("raced", "load", "sk-after-load"))
    async with serve(backend, sock_dir=sock_dirs[0]) as served:
        conn = await RawConnection.open(served.path)
        try:
            await get(conn, "seed", "k")
            backend.before_store.append(("raced", "store", "sk-before-store"))
            reply = await conn.call(2, Op.STORE, provider="mine", key="k", value="x")
            assert reply["ok"] is True
            served.clock.advance(STALE_BOUND)
            assert await get(conn, "raced", "load") == "sk-after-load"
            assert await get(conn, "raced", "store") == "sk-before-store"
        finally:
            await conn.close()
