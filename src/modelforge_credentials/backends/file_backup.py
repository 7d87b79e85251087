"""The backup generation of the encrypted file: look at it, put it back.

Every write of the store keeps the previous good file as
``credentials.enc.bak``. After damage, ``restore-backup --dry-run`` shows
what that generation holds (names only) and ``restore-backup`` puts it back,
keeping the damaged file beside as ``credentials.enc.damaged``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

from ..errors import CredentialCorruptedError, CredentialFormatError, CredentialNotFoundError
from ..files import open_regular, write_atomic
from . import fileformat
from .file_keys import FileKeys
from .fileformat import Credentials

DAMAGED_SUFFIX = ".damaged"


class BackupInfo(NamedTuple):
    """What the backup generation holds: names only, never values."""

    path: Path
    modified: float
    protection: str
    names: list[tuple[str, str]]


class BackupGeneration:
    """The generation at ``backup_path`` of the store at ``store_path``,
    opened with the store's own ``keys``."""

    def __init__(self, store_path: Path, backup_path: Path, keys: FileKeys) -> None:
        self.store_path = store_path
        self.path = backup_path
        self._keys = keys

    def inspect(self, passphrase: str | None = None) -> BackupInfo:
        """Its names, age and protection (see ``EncryptedFileStorage.inspect_backup``)."""
        credentials, protection, modified = self.open(passphrase)
        names = sorted((p, k) for p, keys in credentials.items() for k in keys)
        return BackupInfo(self.path, modified, protection, names)

    def restore(self, passphrase: str | None = None) -> Path | None:
        """Replace the store with this generation (call it under the file lock).

        It is opened first, so nothing changes if it cannot be. Returns where
        the replaced file was kept, or ``None`` when there was none.
        """
        self.open(passphrase)
        with open_regular(self.path) as handle:
            blob = handle.read()
        kept: Path | None = self.store_path.with_name(self.store_path.name + DAMAGED_SUFFIX)
        if not self.store_path.exists():
            kept = None
        # The current file is linked to `kept` and replaced in one atomic
        # write: a write that fails (a full disk) leaves it where it was.
        write_atomic(self.store_path, blob, backup=kept)
        return kept

    def open(self, passphrase: str | None) -> tuple[Credentials, str, float]:
        """Its credentials decrypted, its protection and its mtime."""
        try:
            with open_regular(self.path) as handle:
                blob = handle.read()
                modified = os.fstat(handle.fileno()).st_mtime
        except FileNotFoundError:
            raise CredentialNotFoundError(f"there is no backup generation at {self.path}") from None
        parsed = fileformat.parse(blob)
        envelope = parsed.envelope
        kek = self._keys.kek_for(envelope, passphrase, self.path)
        return parsed.decrypt(envelope.unwrap(kek)), envelope.protection, modified

    @contextlib.contextmanager
    def explain_damage(self) -> Iterator[None]:
        """A damaged store's error says what to do next: restore this generation."""
        try:
            yield
        except CredentialFormatError:
            raise  # a newer format: the message says to upgrade
        except CredentialCorruptedError as err:
            hint = self.restore_hint()
            raise CredentialCorruptedError(f"{self.store_path}: {err}; {hint}") from None

    def restore_hint(self) -> str:
        """What to do about a damaged store: restore this generation, or, with
        none, move the damaged file away."""
        try:
            age = _age(self.path.stat().st_mtime)
        except OSError:
            return (
                f"there is no backup generation ({self.path.name}): move the damaged "
                f"file away (mv {self.store_path} {self.store_path}{DAMAGED_SUFFIX}) and "
                "store your secrets again"
            )
        return (
            f"the previous generation ({self.path.name}, written {age}) may be intact: "
            "`modelforge-agent restore-backup --dry-run` shows what it holds, "
            "`modelforge-agent restore-backup` puts it back"
        )


def _age(mtime: float) -> str:
    import time

    seconds = max(0, int(time.time() - mtime))
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds >= size:
            count = seconds // size
            return f"{count} {unit}{'s' if count != 1 else ''} ago"
    return f"{seconds} seconds ago"
