"""Blocking agent client. Imports only the protocol, errors, the peer check and ``_socket``."""

from __future__ import annotations

# _socket, not socket: socket imports enum and selectors, a quarter of the
# whole client's import time, for nothing the blocking client uses.
import _socket
import os

from .. import settings
from ..errors import (
    AgentProtocolError,
    CredentialStorageError,
    CredentialStorageUnavailableError,
)
from ..paths import socket_path
from ..protocol import AnyOp, ProtocolError
from ..protocol.client_conn import ClientConnection
from . import operations
from .peer import check_listener, check_socket_directory

# No typing, no pathlib: this module's import time is part of every
# `modelforge-agent get`.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from os import PathLike
    from typing import Any

    from ..protocol.client_conn import Outcome
    from .operations import Operation

DEFAULT_TIMEOUT = settings.DEFAULT_CLIENT_TIMEOUT
_RECV_SIZE = 65_536


class AgentNotRunningError(CredentialStorageUnavailableError):
    """No agent answers on the socket path (absent, or a stale socket file).

    Start one: ``eval "$(modelforge-agent start)"``, or let
    ``CredentialManager()`` start it on first use.
    """


def not_running_message(path: str, why: str) -> str:
    return (
        f"no credential agent is running at {path} ({why}); start one with "
        '`eval "$(modelforge-agent start)"` or unset MODEL_FORGE_AGENT_SOCK '
        "if it points to an old agent"
    )


class AgentClient:
    """One connection to the agent. Not thread-safe: use one per thread.

    ``timeout`` bounds connecting and each reply, so a wedged peer gives an
    error instead of a hang. Nothing is sent before the socket's directory and
    its listener's uid pass :mod:`.peer`'s checks (else ``UntrustedAgentError``).
    """

    def __init__(
        self, path: str | PathLike[str] | None = None, *, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        self.path = os.fspath(path) if path is not None else socket_path()
        self.timeout = timeout
        self._sock: _socket.socket | None = None
        self._conn = ClientConnection()

    def __repr__(self) -> str:
        return f"AgentClient({self.path!r})"

    def __enter__(self) -> AgentClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def connected(self) -> bool:
        """False after an I/O failure closed the connection (a call reconnects)."""
        return self._sock is not None

    def connect(self) -> None:
        if self._sock is not None:
            return
        check_socket_directory(self.path)
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except FileNotFoundError:
            sock.close()
            raise AgentNotRunningError(not_running_message(self.path, "no socket")) from None
        except ConnectionRefusedError:
            sock.close()
            raise AgentNotRunningError(
                not_running_message(self.path, "stale socket, nobody listening")
            ) from None
        except TimeoutError:
            sock.close()
            raise CredentialStorageUnavailableError(
                f"the agent at {self.path} did not accept a connection within "
                f"{self.timeout:g} s; restart it (`modelforge-agent stop`, then start)"
            ) from None
        except OSError as err:
            sock.close()
            raise CredentialStorageUnavailableError(
                f"cannot connect to the agent at {self.path}: {err.strerror or err}; "
                "check MODEL_FORGE_AGENT_SOCK and the directory's permissions"
            ) from None
        try:
            check_listener(sock, self.path)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._conn = ClientConnection()

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def __del__(self) -> None:
        # Owners that have no close hook (a keyring backend, a thread's connection in
        # AgentStorage, dropped when the thread ends) must not leak the socket.
        sock = getattr(self, "_sock", None)  # absent when __init__ failed
        if sock is not None:
            sock.close()

    def call(self, op: AnyOp, **fields: Any) -> dict[str, object]:
        """Send one request and return its checked result fields."""
        self.connect()
        assert self._sock is not None
        waited = operations.reply_timeout(op, self.timeout)
        try:
            _, frame = self._conn.send(op, **fields)
            self._sock.sendall(frame)
            outcome = self._reply(waited)
        except ProtocolError as err:
            self.close()
            raise AgentProtocolError(
                f"the agent at {self.path} sent a reply this client cannot read "
                f"({err.message}); restart it with `modelforge-agent stop` so the "
                "installed version starts"
            ) from None
        except TimeoutError:
            self.close()
            raise CredentialStorageUnavailableError(
                operations.timeout_message(self.path, op, waited)
            ) from None
        except CredentialStorageError:
            self.close()
            raise
        except OSError as err:
            self.close()
            raise CredentialStorageUnavailableError(
                f"lost the connection to the agent at {self.path} "
                f"({err.strerror or type(err).__name__}); retry, or check the agent's log"
            ) from None
        return operations.result_of(outcome)

    def _reply(self, waited: float) -> Outcome:
        """The outcome of the one request waiting (one at a time: no pipelining),
        within ``waited`` seconds of each read."""
        assert self._sock is not None
        if waited != self.timeout:
            self._sock.settimeout(waited)
        try:
            return self._read_outcome()
        finally:
            if waited != self.timeout and self._sock is not None:
                self._sock.settimeout(self.timeout)

    def _read_outcome(self) -> Outcome:
        assert self._sock is not None
        while True:
            chunk = self._sock.recv(_RECV_SIZE)
            if not chunk:
                raise CredentialStorageUnavailableError(
                    f"the agent at {self.path} closed the connection; it may have been "
                    "stopped or refused this user (see its log)"
                )
            settled = self._conn.receive_data(chunk)
            broken = self._conn.broken
            if settled:
                if broken is not None:
                    self.close()  # its own reply came, but the stream is off: reconnect next time
                return settled[0][1]
            if broken is not None:
                raise broken

    # -- operations (their requests and results: .operations) -------------------

    def run(self, operation: Operation) -> Any:
        return operation.decode(self.call(operation.op, **operation.fields))

    def hello(self) -> dict[str, object]:
        result: dict[str, object] = self.run(operations.hello())
        return result

    def store(self, provider: str, key: str, value: str) -> None:
        self.run(operations.store(provider, key, value))

    def retrieve(self, provider: str, key: str) -> str | None:
        value: str | None = self.run(operations.retrieve(provider, key))
        return value

    def delete(self, provider: str, key: str) -> bool:
        return bool(self.run(operations.delete(provider, key)))

    def exists(self, provider: str, key: str) -> bool:
        return bool(self.run(operations.exists(provider, key)))

    def list_keys(self, provider: str | None = None) -> list[tuple[str, str]]:
        names: list[tuple[str, str]] = self.run(operations.list_keys(provider))
        return names

    def status(self) -> dict[str, object]:
        result: dict[str, object] = self.run(operations.status())
        return result

    def lock(self) -> None:
        self.run(operations.lock())

    def unlock(self, passphrase: str) -> None:
        self.run(operations.unlock(passphrase))

    def list_sourced(self, provider: str | None = None) -> list[tuple[str, ...]]:
        rows: list[tuple[str, ...]] = self.run(operations.list_sourced(provider))
        return rows

    def locate(self, provider: str, key: str) -> dict[str, object]:
        found: dict[str, object] = self.run(operations.locate(provider, key))
        return found

    def team_store(self, team: str, provider: str, key: str, value: str) -> dict[str, object]:
        written: dict[str, object] = self.run(operations.team_store(team, provider, key, value))
        return written
