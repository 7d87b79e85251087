"""The asyncio client and a reply nobody asked for (security review, item 19).

Replies come back in request order, each with its request's id, so a reply
with an id no call waits for means the two ends no longer agree on the
stream: every pending call fails at once with AgentProtocolError, the
connection is closed, and later calls fail at once too, instead of each
waiting for the whole timeout. The server here is a small real asyncio
server on a real socket that misbehaves on purpose.
"""

from __future__ import annotations

import asyncio
import shutil
import struct
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import msgpack  # type: ignore[import-untyped]
import pytest

from modelforge_credentials.client.aio import AsyncAgentClient
from modelforge_credentials.errors import AgentProtocolError
from testkit import map_frame

#: Far beyond any bound below: a call that waits for it is a hang, not an answer.
CLIENT_TIMEOUT = 120.0
#: How long a call may take to fail once the server has misbehaved.
FAST = 5.0

HELLO_FIELDS = {"protocol": 1, "agent": "test", "backend": "encrypted-file", "locked": False}


async def read_request(reader: asyncio.StreamReader) -> dict[str, object]:
    (size,) = struct.unpack(">I", await reader.readexactly(4))
    request: dict[str, object] = msgpack.unpackb(await reader.readexactly(size))
    return request


Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class MisbehavingServer:
    """Runs ``behaviour`` for each connection; records whether the client hung up."""

    def __init__(self, path: Path, behaviour: Behaviour) -> None:
        self.path = path
        self.behaviour = behaviour
        self.client_closed = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> MisbehavingServer:
        self.server = await asyncio.start_unix_server(self._serve, str(self.path))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self.behaviour(reader, writer)
            # Whatever the client sends next, it must end with its hanging up.
            while await reader.read(65_536):
                pass
            self.client_closed.set()
        finally:
            writer.close()


@pytest.fixture
async def socket_path() -> AsyncIterator[Path]:
    directory = Path(tempfile.mkdtemp(prefix="mft-", dir="/tmp"))
    yield directory / "agent.sock"
    shutil.rmtree(directory, ignore_errors=True)


async def test_a_reply_before_any_request_fails_the_next_call_at_once(socket_path: Path) -> None:
    async def greet_unasked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(map_frame({"id": 7, "ok": True, **HELLO_FIELDS}))
        await writer.drain()

    async with (
        MisbehavingServer(socket_path, greet_unasked) as server,
        AsyncAgentClient(socket_path, timeout=CLIENT_TIMEOUT) as client,
    ):
        # The connection is closed by the client once it has read the stray reply.
        await asyncio.wait_for(server.client_closed.wait(), FAST)
        with pytest.raises(AgentProtocolError, match="nobody asked for"):
            await asyncio.wait_for(client.hello(), FAST)
        with pytest.raises(AgentProtocolError):
            await asyncio.wait_for(client.status(), FAST)


async def test_a_second_reply_to_one_request_fails_the_next_call_at_once(
    socket_path: Path,
) -> None:
    async def answer_twice(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await read_request(reader)
        reply = map_frame({"id": request["id"], "ok": True, **HELLO_FIELDS})
        writer.write(reply + reply)  # one write: both arrive before the client goes on
        await writer.drain()

    async with (
        MisbehavingServer(socket_path, answer_twice) as server,
        AsyncAgentClient(socket_path, timeout=CLIENT_TIMEOUT) as client,
    ):
        assert (await asyncio.wait_for(client.hello(), FAST))["protocol"] == 1
        with pytest.raises(AgentProtocolError, match="nobody asked for"):
            await asyncio.wait_for(client.status(), FAST)
        await asyncio.wait_for(server.client_closed.wait(), FAST)


async def test_a_reply_with_an_unknown_id_fails_every_pending_call(socket_path: Path) -> None:
    async def answer_someone_else(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        for _ in range(3):
            await read_request(reader)
        writer.write(map_frame({"id": 99, "ok": True, **HELLO_FIELDS}))
        await writer.drain()

    async with (
        MisbehavingServer(socket_path, answer_someone_else) as server,
        AsyncAgentClient(socket_path, timeout=CLIENT_TIMEOUT) as client,
    ):
        calls = [client.hello(), client.status(), client.exists("openai", "api_key")]
        results = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), FAST)
        assert [type(r) for r in results] == [AgentProtocolError] * 3, results
        assert "99" in str(results[0])
        await asyncio.wait_for(server.client_closed.wait(), FAST)
        with pytest.raises(AgentProtocolError):
            await asyncio.wait_for(client.hello(), FAST)


async def test_a_well_behaved_server_still_gets_pipelined_calls(socket_path: Path) -> None:
    async def answer_each(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in range(3):
            request = await read_request(reader)
            writer.write(map_frame({"id": request["id"], "ok": True, **HELLO_FIELDS}))
        await writer.drain()

    async with (
        MisbehavingServer(socket_path, answer_each),
        AsyncAgentClient(socket_path, timeout=CLIENT_TIMEOUT) as client,
    ):
        replies = await asyncio.wait_for(
            asyncio.gather(client.hello(), client.hello(), client.hello()), FAST
        )
        assert [r["agent"] for r in replies] == ["test"] * 3
