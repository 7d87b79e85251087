"""The storage protocol every backend implements."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class CredentialStorage(Protocol):
    """A place that keeps secrets keyed by ``(provider, key)``.

    Implementations validate their input (:mod:`.validation`) and raise only
    :class:`~modelforge_credentials.errors.CredentialStorageError` subclasses.
    """

    @property
    def name(self) -> str:
        """The backend's name as MODEL_FORGE_BACKEND and status spell it."""
        ...

    def describe(self) -> dict[str, Any]:
        """``backend`` (the name), ``protection`` and anything a status display
        shows about it (a path, a warning). Never a secret."""
        ...

    def store(self, provider: str, key: str, value: str) -> None:
        """Store ``value``, replacing any previous one. Durable on return."""
        ...

    def retrieve(self, provider: str, key: str) -> str | None:
        """The stored value, or ``None`` when there is none."""
        ...

    def delete(self, provider: str, key: str) -> bool:
        """Remove the credential; ``True`` if it existed. Absent is not an error."""
        ...

    def exists(self, provider: str, key: str) -> bool:
        """Whether a value is stored."""
        ...

    def list_keys(self, provider: str | None = None) -> list[tuple[str, str]]:
        """Sorted ``(provider, key)`` names, optionally of one provider. Never values."""
        ...
