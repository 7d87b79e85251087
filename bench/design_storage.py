"""The design document's EncryptedFileStorage, as a baseline to measure against.

A re-implementation of the behaviour the design document
(shared/design/seed-security-credentials-refactor.md, "Encrypted File
Backend") specifies: a Fernet key in ``.encryption_key``, one Fernet-encrypted
JSON object ``{"provider.key": value}`` in ``credentials.enc``; every call
re-reads the key file and the whole data file and decrypts it. Writes are
not durable (no fsync, no atomic replace), as in the document.
"""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.fernet import Fernet


class DesignEncryptedFileStorage:
    def __init__(self, config_dir: Path) -> None:
        self.config_dir = Path(config_dir)
        self.key_file = self.config_dir / ".encryption_key"
        self.credentials_file = self.config_dir / "credentials.enc"
        if not self.key_file.exists():
            self.config_dir.mkdir(parents=True, exist_ok=True)
            self.key_file.write_bytes(Fernet.generate_key())
            self.key_file.chmod(0o600)

    def _cipher(self) -> Fernet:
        return Fernet(self.key_file.read_bytes())

    def _load(self) -> dict[str, str]:
        if not self.credentials_file.exists():
            return {}
        token = self.credentials_file.read_bytes()
        loaded: dict[str, str] = json.loads(self._cipher().decrypt(token))
        return loaded

    def _save(self, credentials: dict[str, str]) -> None:
        token = self._cipher().encrypt(json.dumps(credentials).encode())
        self.credentials_file.write_bytes(token)
        self.credentials_file.chmod(0o600)

    def store(self, provider: str, key: str, value: str) -> None:
        credentials = self._load()
        credentials[f"{provider}.{key}"] = value
        self._save(credentials)

    def retrieve(self, provider: str, key: str) -> str | None:
        return self._load().get(f"{provider}.{key}")

    def store_all(self, items: dict[str, dict[str, str]]) -> None:
        """Populate many credentials with one write (the bench's set-up only)."""
        credentials = self._load()
        for provider, keys in items.items():
            for key, value in keys.items():
                credentials[f"{provider}.{key}"] = value
        self._save(credentials)
