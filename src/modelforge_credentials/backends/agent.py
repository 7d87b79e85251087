"""``CredentialStorage`` through the credential agent (client side)."""

from __future__ import annotations

import os
import threading
from typing import Any

from ..client.sync import DEFAULT_TIMEOUT, AgentClient, AgentNotRunningError
from ..errors import CredentialStorageUnavailableError
from ..paths import socket_path
from ..validation import validate_name, validate_pair, validate_value


class AgentStorage:
    """Stores and fetches through the agent on ``path`` (default socket).

    With ``autostart`` (the default) a missing agent is started on first use,
    detached, and its protocol version is checked before any request. One
    connection per thread, reused across calls. A socket that is not provably
    the user's agent raises ``UntrustedAgentError`` before anything is sent,
    and is never taken for "not running": no agent is started beside it.
    """

    name = "agent"

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        autostart: bool = True,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        self.path = os.fspath(path) if path is not None else socket_path()
        self.autostart = autostart
        self.timeout = timeout
        self._local = threading.local()
        self._warned = False

    def __repr__(self) -> str:
        return f"AgentStorage({self.path!r})"

    def _client(self) -> AgentClient:
        client: AgentClient | None = getattr(self._local, "client", None)
        if client is not None:
            return client
        client = AgentClient(self.path, timeout=self.timeout)
        try:
            hello = client.hello()
        except AgentNotRunningError:
            if not self.autostart:
                raise
            from ..client.autostart import spawn_agent

            spawn_agent(self.path)
            client = AgentClient(self.path, timeout=self.timeout)
            hello = client.hello()
        self._warn_other_backend(hello.get("backend"))
        self._local.client = client
        return client

    def _warn_other_backend(self, running: object) -> None:
        """Say so (once) when MODEL_FORGE_BACKEND asks for another backend than
        the running agent's: the agent chose its backend when it started."""
        from .. import settings

        wanted = settings.backend()
        if self._warned or not wanted or not running or wanted == running:
            return
        self._warned = True
        import warnings

        warnings.warn(
            f"{settings.BACKEND} asks for the {wanted} backend, but the agent at {self.path} "
            f"uses {running}; to switch, run `modelforge-agent stop` and start it again with "
            f"{settings.BACKEND} set",
            RuntimeWarning,
            stacklevel=4,
        )

    def _call(self, method: str, *args: Any) -> Any:
        client = self._client()
        try:
            return getattr(client, method)(*args)
        except CredentialStorageUnavailableError:
            if client.connected:
                raise
            # The connection broke (agent restarted or idle-exited): every
            # operation is idempotent, so reconnect once and retry.
            self._local.client = None
            return getattr(self._client(), method)(*args)

    # Input is checked here too, so a bad call raises the same
    # CredentialValidationError as with any other backend, not a protocol error.

    def store(self, provider: str, key: str, value: str) -> None:
        validate_pair(provider, key)
        validate_value(value)
        self._call("store", provider, key, value)

    def retrieve(self, provider: str, key: str) -> str | None:
        validate_pair(provider, key)
        result: str | None = self._call("retrieve", provider, key)
        return result

    def delete(self, provider: str, key: str) -> bool:
        validate_pair(provider, key)
        return bool(self._call("delete", provider, key))

    def exists(self, provider: str, key: str) -> bool:
        validate_pair(provider, key)
        return bool(self._call("exists", provider, key))

    def list_keys(self, provider: str | None = None) -> list[tuple[str, str]]:
        if provider is not None:
            validate_name("provider", provider)
        result: list[tuple[str, str]] = self._call("list_keys", provider)
        return result

    def describe(self) -> dict[str, Any]:
        status = self._client().status()
        return {**status, "backend": self.name, "agent_backend": status.get("backend")}

    def close(self) -> None:
        client = getattr(self._local, "client", None)
        if client is not None:
            client.close()
            self._local.client = None
