"""Credential access for model-forge's authentication strategies."""

from __future__ import annotations

from .manager import CredentialManager


class AuthStrategy:
    """Base for a provider's auth strategy: its secrets live in a
    :class:`CredentialManager` under the provider's name, not in the config."""

    def __init__(
        self, provider_name: str, credential_manager: CredentialManager | None = None
    ) -> None:
        self.provider_name = provider_name
        self.credential_manager = credential_manager or CredentialManager()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.provider_name!r})"

    def store_credential(self, key: str, value: str) -> None:
        self.credential_manager.store(self.provider_name, key, value)

    def get_credential(self, key: str) -> str | None:
        return self.credential_manager.retrieve(self.provider_name, key)

    def delete_credential(self, key: str) -> bool:
        return self.credential_manager.delete(self.provider_name, key)
