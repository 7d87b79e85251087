"""Clients of the credential agent.

:class:`AgentClient` is blocking and imports nothing heavy (no asyncio, no
cryptography, no keyring): its start-up time is part of every command that
asks for a secret. :class:`AsyncAgentClient` is the asyncio twin. Both speak
through :mod:`modelforge_credentials.protocol`.
"""

from .sync import AgentClient, AgentNotRunningError


def __getattr__(name: str) -> object:
    # The asyncio client is loaded on demand: the sync path must not pay for asyncio.
    if name == "AsyncAgentClient":
        from .aio import AsyncAgentClient

        return AsyncAgentClient
    raise AttributeError(name)


__all__ = ["AgentClient", "AgentNotRunningError", "AsyncAgentClient"]
