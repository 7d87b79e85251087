"""asyncio agent client: pipelined calls from many tasks over one connection.

Requests are written in call order and replies come back in the same order,
so each call awaits the next future in a FIFO. When the connection drops, or
a reply answers no waiting call (the two ends no longer agree on the stream),
every pending call fails at once, the connection is closed and later calls
fail at once too, instead of waiting for the timeout. Nothing is sent before
the socket passes :mod:`.peer`'s checks.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

from ..errors import (
    AgentProtocolError,
    CredentialStorageError,
    CredentialStorageUnavailableError,
)
from ..paths import socket_path
from ..protocol import AnyOp, ProtocolError
from ..protocol.client_conn import ClientConnection, Outcome
from . import operations
from .operations import Operation
from .peer import check_listener, check_socket_directory
from .sync import DEFAULT_TIMEOUT, AgentNotRunningError, not_running_message


class AsyncAgentClient:
    def __init__(
        self, path: str | os.PathLike[str] | None = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.path = os.fspath(path) if path is not None else socket_path()
        self.timeout = timeout
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._conn = ClientConnection()
        self._waiting: dict[int, asyncio.Future[dict[str, object]]] = {}
        self._reader_task: asyncio.Task[None] | None = None
        self._failure: Exception | None = None

    def __repr__(self) -> str:
        return f"AsyncAgentClient({self.path!r})"

    async def __aenter__(self) -> AsyncAgentClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        if self._writer is not None:
            return
        check_socket_directory(self.path)
        # Connected by hand, so the listener is checked before a stream exists to write to.
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(
                asyncio.get_running_loop().sock_connect(sock, self.path), self.timeout
            )
            check_listener(sock, self.path)
            self._reader, self._writer = await asyncio.open_unix_connection(sock=sock)
        except FileNotFoundError:
            raise AgentNotRunningError(not_running_message(self.path, "no socket")) from None
        except ConnectionRefusedError:
            raise AgentNotRunningError(
                not_running_message(self.path, "stale socket, nobody listening")
            ) from None
        except (OSError, TimeoutError) as err:
            raise CredentialStorageUnavailableError(
                f"cannot connect to the agent at {self.path} ({type(err).__name__}); check "
                "MODEL_FORGE_AGENT_SOCK and `modelforge-agent status`"
            ) from None
        finally:
            if self._writer is None:
                sock.close()
        self._failure = None
        self._conn = ClientConnection()
        self._reader_task = asyncio.create_task(self._read_replies())

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass
        if self._reader_task is not None:
            self._reader_task.cancel()
            try:
                await self._reader_task
            except (asyncio.CancelledError, Exception):
                pass
        self._fail_pending(CredentialStorageUnavailableError("the client was closed"))
        self._reader = self._writer = None
        self._reader_task = None

    async def call(self, op: AnyOp, **fields: Any) -> dict[str, object]:
        await self.connect()
        assert self._writer is not None
        if self._failure is not None:
            raise self._failure
        request_id, frame = self._conn.send(op, **fields)
        future: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = future
        self._writer.write(frame)
        waited = operations.reply_timeout(op, self.timeout)
        try:
            return await asyncio.wait_for(asyncio.shield(future), waited)
        except TimeoutError:
            error = CredentialStorageUnavailableError(
                operations.timeout_message(self.path, op, waited)
            )
            # Later replies would be matched to the wrong calls: drop the line.
            self._fail_pending(error)
            await self.close()
            raise error from None

    async def _read_replies(self) -> None:
        assert self._reader is not None
        error: Exception
        try:
            while True:
                chunk = await self._reader.read(65_536)
                if not chunk:
                    error = CredentialStorageUnavailableError(
                        f"the agent at {self.path} closed the connection; it may have "
                        "been stopped (see its log)"
                    )
                    break
                for request_id, outcome in self._conn.receive_data(chunk):
                    self._settle(request_id, outcome)
                if self._conn.broken is not None:
                    raise self._conn.broken
        except ProtocolError as err:
            # A reply for nobody, out of turn, or unframable: every later reply
            # would settle the wrong call, so the connection is given up.
            error = AgentProtocolError(
                f"the agent at {self.path} sent a reply this client cannot read "
                f"({err.message}); the connection was closed: restart the agent "
                "(`modelforge-agent stop`)"
            )
        except OSError as err:
            error = CredentialStorageUnavailableError(
                f"lost the connection to the agent at {self.path} ({type(err).__name__})"
            )
        # Every way out fails all waiting calls and later ones: none waits for a timeout.
        self._failure = error
        self._fail_pending(error)
        if self._writer is not None:
            self._writer.close()

    def _settle(self, request_id: int, outcome: Outcome) -> None:
        future = self._waiting.pop(request_id, None)
        if future is None or future.done():
            return  # its caller gave up (timeout, cancel)
        try:
            future.set_result(operations.result_of(outcome))
        except CredentialStorageError as err:
            future.set_exception(err)

    def _fail_pending(self, error: Exception) -> None:
        self._conn.fail_all()
        waiting, self._waiting = self._waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(error)

    # -- operations (their requests and results: .operations) -------------------

    async def run(self, operation: Operation) -> Any:
        return operation.decode(await self.call(operation.op, **operation.fields))

    async def hello(self) -> dict[str, object]:
        result: dict[str, object] = await self.run(operations.hello())
        return result

    async def store(self, provider: str, key: str, value: str) -> None:
        await self.run(operations.store(provider, key, value))

    async def retrieve(self, provider: str, key: str) -> str | None:
        value: str | None = await self.run(operations.retrieve(provider, key))
        return value

    async def delete(self, provider: str, key: str) -> bool:
        return bool(await self.run(operations.delete(provider, key)))

    async def exists(self, provider: str, key: str) -> bool:
        return bool(await self.run(operations.exists(provider, key)))

    async def list_keys(self, provider: str | None = None) -> list[tuple[str, str]]:
        names: list[tuple[str, str]] = await self.run(operations.list_keys(provider))
        return names

    async def status(self) -> dict[str, object]:
        result: dict[str, object] = await self.run(operations.status())
        return result

    async def lock(self) -> None:
        await self.run(operations.lock())

    async def unlock(self, passphrase: str) -> None:
        await self.run(operations.unlock(passphrase))

    async def list_sourced(self, provider: str | None = None) -> list[tuple[str, ...]]:
        rows: list[tuple[str, ...]] = await self.run(operations.list_sourced(provider))
        return rows

    async def locate(self, provider: str, key: str) -> dict[str, object]:
        found: dict[str, object] = await self.run(operations.locate(provider, key))
        return found

    async def team_store(self, team: str, provider: str, key: str, value: str) -> dict[str, object]:
        written: dict[str, object] = await self.run(
            operations.team_store(team, provider, key, value)
        )
        return written
