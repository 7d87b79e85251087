"""The front door: one object that stores and fetches credentials."""

from __future__ import annotations

from typing import Any

from . import settings
from .errors import CredentialNotFoundError
from .storage import CredentialStorage

AGENT_VARIABLE = settings.AGENT


def default_storage() -> CredentialStorage:
    """The agent, unless ``MODEL_FORGE_AGENT=off`` asks for in-process storage."""
    if not settings.flag(AGENT_VARIABLE, default=True):
        from .backends.auto import AutoStorage

        return AutoStorage()
    from .backends.agent import AgentStorage

    return AgentStorage()


class CredentialManager:
    """Centralised credential access over a pluggable :class:`CredentialStorage`.

    With no ``storage`` it talks to the credential agent (started on first
    use); ``MODEL_FORGE_AGENT=off`` selects an in-process
    :class:`~modelforge_credentials.AutoStorage` instead.
    """

    def __init__(self, storage: CredentialStorage | None = None) -> None:
        self.storage: CredentialStorage = storage if storage is not None else default_storage()

    def __repr__(self) -> str:
        return f"CredentialManager({self.storage!r})"

    def store(self, provider: str, key: str, value: str) -> None:
        self.storage.store(provider, key, value)

    def retrieve(self, provider: str, key: str) -> str | None:
        return self.storage.retrieve(provider, key)

    def get_required(self, provider: str, key: str) -> str:
        """The value, or :class:`CredentialNotFoundError` saying how to add it."""
        value = self.storage.retrieve(provider, key)
        if value is None:
            raise CredentialNotFoundError(
                f"no credential {key!r} for provider {provider!r}; store it with "
                f"`modelforge-agent set {provider} {key}`"
            )
        return value

    def delete(self, provider: str, key: str) -> bool:
        return self.storage.delete(provider, key)

    def exists(self, provider: str, key: str) -> bool:
        return self.storage.exists(provider, key)

    def list_keys(self, provider: str | None = None) -> list[tuple[str, str]]:
        return self.storage.list_keys(provider)

    def describe(self) -> dict[str, Any]:
        return dict(self.storage.describe())
