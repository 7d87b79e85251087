"""Credentials in one encrypted file, protected by a passphrase or a key file.

Files in ``config_dir`` (created 0700)::

    credentials.enc       the store (format: :mod:`.fileformat`), 0600
    credentials.enc.bak   the previous good generation, 0600
    credentials.enc.lock  flock-ed around every read-modify-write
    credentials.key       32 random bytes, 0600 (key-file protection only)

Only a missing file means "no credentials". Anything unreadable raises, and
no write happens while the file cannot be read, so a wrong passphrase or a
damaged file never turns into an empty store that the next ``store`` saves.
The keys that open the file live in :mod:`.file_keys`; the backup
generation's inspection and restore in :mod:`.file_backup`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from .. import settings
from ..errors import CredentialStorageUnavailableError
from ..files import (
    check_own_directory,
    exclusive_lock,
    make_private_dir,
    open_regular,
    remove_stale_temps,
    write_atomic,
)
from ..validation import select_names, validate_pair, validate_value
from . import fileformat
from .file_backup import BackupGeneration, BackupInfo
from .file_keys import FileKeys, passphrase_bytes
from .file_keys import NothingToUnlockError as NothingToUnlockError  # where callers import it
from .fileformat import KEYFILE, PASSPHRASE, Credentials, Envelope, KdfParams

CREDENTIALS_FILE = "credentials.enc"
KEY_FILE = "credentials.key"
CONFIG_DIR_VARIABLE = settings.CONFIG_DIR


def default_config_dir() -> Path:
    """``$MODEL_FORGE_CONFIG_DIR``, else model-forge's own config directory."""
    override = settings.text(CONFIG_DIR_VARIABLE)
    if override:
        return Path(override)
    if sys.platform == "darwin":
        # model-forge keeps ~/.config/model-forge on macOS too.
        return Path.home() / ".config" / "model-forge"
    import platformdirs

    return platformdirs.user_config_path("model-forge", appauthor=False)


class EncryptedFileStorage:
    """Encrypted-file backend (AES-256-GCM, Argon2id-wrapped data key).

    ``passphrase`` opens a passphrase-protected file, and protects a new one.
    Without it, a new store is protected by a random key file beside it:
    that only stops casual reading (whoever reads the directory has both),
    and :meth:`describe` says so. A passphrase-protected store without a
    passphrase raises :class:`CredentialLockedError` until :meth:`unlock`.
    """

    name = "encrypted-file"

    def __init__(
        self,
        config_dir: Path | str | None = None,
        *,
        passphrase: str | None = None,
        kdf: KdfParams | None = None,
    ) -> None:
        self.config_dir = Path(config_dir) if config_dir is not None else default_config_dir()
        self.path = self.config_dir / CREDENTIALS_FILE
        self.backup_path = self.config_dir / (CREDENTIALS_FILE + ".bak")
        self.lock_path = self.config_dir / (CREDENTIALS_FILE + ".lock")
        self.key_path = self.config_dir / KEY_FILE
        self._keys = FileKeys(
            self.path,
            self.key_path,
            kdf or KdfParams(),
            passphrase_bytes(passphrase) if passphrase is not None else None,
        )
        self._backup = BackupGeneration(self.path, self.backup_path, self._keys)
        # Set when a write merged what another process had written since our
        # last read: the file's stamp is then our own, so a reader of
        # changed_since_last_access() must be told once.
        self._merged_outside_change = False
        # The file as last read or written, decrypted, with its stamp: while
        # the file on disk is that same file, reads and read-modify-writes
        # skip the read, decryption and unpacking (most of a store's cost
        # with many credentials). Dropped by lock().
        self._state: _State | None = None

    def __repr__(self) -> str:
        return f"EncryptedFileStorage({str(self.config_dir)!r})"

    # -- the storage protocol -------------------------------------------------

    def store(self, provider: str, key: str, value: str) -> None:
        provider, key = validate_pair(provider, key)
        validate_value(value)
        with self._writing() as credentials:
            credentials.setdefault(provider, {})[key] = value

    def retrieve(self, provider: str, key: str) -> str | None:
        provider, key = validate_pair(provider, key)
        return self._credentials().get(provider, {}).get(key)

    def delete(self, provider: str, key: str) -> bool:
        provider, key = validate_pair(provider, key)
        if key not in self._credentials().get(provider, {}):
            return False
        with self._writing() as credentials:
            keys = credentials.get(provider, {})
            existed = keys.pop(key, None) is not None
            if not keys:
                credentials.pop(provider, None)
        return existed

    def exists(self, provider: str, key: str) -> bool:
        return self.retrieve(provider, key) is not None

    def list_keys(self, provider: str | None = None) -> list[tuple[str, str]]:
        return select_names(
            ((p, k) for p, keys in self._credentials().items() for k in keys), provider
        )

    # -- whole-store operations ------------------------------------------------

    def load(self) -> Credentials:
        """Every credential, decrypted: ``{provider: {key: value}}`` (a copy)."""
        return {provider: dict(keys) for provider, keys in self._credentials().items()}

    def _credentials(self) -> Credentials:
        state = self._current()
        return state.credentials if state is not None else {}

    def _current(self, *, merging: bool = False) -> _State | None:
        """The current file decrypted; from memory while the file is unchanged.

        ``merging``: called by a write under the file lock; if the file
        changed since we last saw it, remember to report it.
        """
        state = self._state
        if state is not None:
            try:
                if _stamp(os.stat(self.path)) == state.stamp:
                    return state
            except FileNotFoundError:
                pass
        read = self._read_parsed()
        if merging and state is not None:
            self._merged_outside_change = True
        if read is None:
            self._state = None
            return None
        parsed, stamp = read
        data_key = self._keys.data_key(parsed.envelope)
        with self._backup.explain_damage():
            credentials = parsed.decrypt(data_key)
        self._state = _State(stamp, parsed.envelope, data_key, credentials)
        return self._state

    def store_many(self, items: dict[str, dict[str, str]]) -> None:
        """Store several credentials in one durable write (all or nothing)."""
        for provider, keys in items.items():
            for key, value in keys.items():
                validate_pair(provider, key)
                validate_value(value)
        with self._writing() as credentials:
            for provider, keys in items.items():
                credentials.setdefault(provider, {}).update(keys)

    @property
    def protection(self) -> str:
        """``"passphrase"``, ``"keyfile"``, or what a first store would use.

        Reads the header only, and records nothing: a look at the file must
        not make a change by another process look already seen.
        """
        read = self._read_parsed()
        if read is not None:
            return read[0].envelope.protection
        return PASSPHRASE if self._keys.passphrase is not None else KEYFILE

    @property
    def locked(self) -> bool:
        """True while the file needs a passphrase that has not been given."""
        read = self._read_parsed()
        if read is None or read[0].envelope.protection != PASSPHRASE:
            return False
        return not self._keys.opens(read[0].envelope)

    def unlock(self, passphrase: str) -> None:
        """Check ``passphrase`` against the file and keep it for this session.

        Raises :class:`CredentialBadPassphraseError` (nothing kept, nothing
        changed) when it does not open the file, and
        :class:`NothingToUnlockError` when there is no file yet or it has no
        passphrase (:meth:`set_passphrase` sets one).
        """
        secret = passphrase_bytes(passphrase)
        read = self._read_parsed()
        self._keys.unlock(read[0].envelope if read is not None else None, secret)

    def lock(self) -> None:
        """Forget the passphrase, every derived key and every decrypted value."""
        self._keys.forget()
        self._state = None

    def set_passphrase(self, new: str | None, current: str | None = None) -> None:
        """Protect the store with ``new`` (``None``: a key file instead).

        ``current`` opens a passphrase-protected store that is not unlocked.
        The data key is rotated and the body rewritten atomically; then the
        backup generation (under the old protection and key) and, for a
        passphrase, the key file are removed: nothing stays readable under
        the old protection. On a store that does not exist yet this creates
        an empty one with the new protection.
        """
        new_secret = passphrase_bytes(new) if new is not None else None
        if current is not None and self.protection == PASSPHRASE:
            self.unlock(current)
        make_private_dir(self.config_dir)
        self._check_directory()
        with exclusive_lock(self.lock_path):
            state = self._current(merging=True)
            credentials: Credentials = dict(state.credentials) if state is not None else {}
            if new_secret is None and (state is None or state.envelope.protection != KEYFILE):
                # A key file beside a passphrase store protects nothing (a crash
                # left it): the new one must be a new key, not the retired one.
                self._keys.retire_keyfile()
            data_key = os.urandom(fileformat.KEY_SIZE)
            self._keys.forget_keks()
            envelope = self._keys.new_envelope(data_key, new_secret)
            self._write(envelope, data_key, credentials, keep_backup=False)
            # The file is under the new protection from here on, whatever follows.
            self._keys.passphrase = new_secret
            self._keys.drop_old_protection(envelope, self.backup_path)

    def inspect_backup(self, passphrase: str | None = None) -> BackupInfo:
        """Open the backup generation: its names, age and protection.

        ``passphrase`` opens a passphrase-protected backup (else the one this
        object was unlocked with). Raises :class:`CredentialNotFoundError`
        when there is no backup, and the usual errors when it cannot be
        opened (wrong passphrase, damaged too).
        """
        return self._backup.inspect(passphrase)

    def restore_backup(self, passphrase: str | None = None) -> Path | None:
        """Put the backup generation back as the store, under the file lock.

        The backup is opened first (nothing changes if it cannot be); the
        current file, damaged or not, is kept beside as
        ``credentials.enc.damaged`` (replacing an older one). Returns where
        it was kept, or ``None`` when there was no current file.
        """
        make_private_dir(self.config_dir)
        self._check_directory()
        with exclusive_lock(self.lock_path):
            kept = self._backup.restore(passphrase)
            self._state = None
        return kept

    def describe(self) -> dict[str, Any]:
        """Backend, path and protection, for status displays. No secrets."""
        protection = self.protection
        info: dict[str, Any] = {
            "backend": self.name,
            "path": str(self.path),
            "protection": protection,
        }
        if protection == KEYFILE:
            info["warning"] = (
                "key-file protection: the key lies beside the file, so this only "
                "stops casual reading; set a passphrase with `modelforge-agent passwd`"
            )
        return info

    # -- internals ---------------------------------------------------------------

    def changed_since_last_access(self) -> bool:
        """Whether another process changed the file since this object last read
        it: replaced it since, or wrote to it before a write of ours merged
        that change (reported once).

        One ``stat``: cheap enough for a cache to ask on every hit.
        """
        if self._merged_outside_change:
            self._merged_outside_change = False
            return True
        known = self._state.stamp if self._state is not None else None
        try:
            info = os.stat(self.path)
        except FileNotFoundError:
            return known is not None
        return _stamp(info) != known

    def _read_parsed(self) -> tuple[fileformat.ParsedFile, tuple[int, int, int]] | None:
        """The file parsed (not decrypted) and its stamp; ``None`` if absent."""
        self._check_directory()
        try:
            with open_regular(self.path) as handle:
                blob = handle.read()
                stamp = _stamp(os.fstat(handle.fileno()))
        except FileNotFoundError:
            return None
        except OSError as err:
            raise CredentialStorageUnavailableError(
                f"cannot read {self.path}: {err.strerror}; check its permissions"
            ) from err
        with self._backup.explain_damage():
            return fileformat.parse(blob), stamp

    def _check_directory(self) -> None:
        check_own_directory(self.config_dir, CONFIG_DIR_VARIABLE)

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Credentials]:
        """Read-modify-write under the file lock; writes only if the body succeeds."""
        make_private_dir(self.config_dir)
        self._check_directory()
        with exclusive_lock(self.lock_path):
            remove_stale_temps(self.path)
            state = self._current(merging=True)
            if state is None:
                data_key = os.urandom(fileformat.KEY_SIZE)
                envelope = self._keys.new_envelope(data_key, self._keys.passphrase)
                credentials: Credentials = {}
            else:
                envelope, data_key = state.envelope, state.data_key
                if envelope.protection == KEYFILE:
                    # Never write under a remembered key the key file no
                    # longer opens: nobody could read the result.
                    envelope.unwrap(self._keys.read_keyfile())
                # A copy: if the write fails, memory must still match the disk.
                credentials = {p: dict(keys) for p, keys in state.credentials.items()}
            yield credentials
            self._write(envelope, data_key, credentials)
            if envelope.protection == PASSPHRASE and self.key_path.exists():
                self._keys.drop_old_protection(envelope)

    def _write(
        self,
        envelope: Envelope,
        data_key: bytes,
        credentials: Credentials,
        *,
        keep_backup: bool = True,
    ) -> None:
        stamp = write_atomic(
            self.path,
            fileformat.encode(envelope, data_key, credentials),
            backup=self.backup_path if keep_backup else None,
        )
        self._state = _State(stamp, envelope, data_key, credentials)


class _State(NamedTuple):
    stamp: tuple[int, int, int]
    envelope: Envelope
    data_key: bytes
    credentials: Credentials

    def __repr__(self) -> str:
        # Never the data key or a value: the stamp, the protection, the count.
        count = sum(len(keys) for keys in self.credentials.values())
        return f"_State(stamp={self.stamp}, {self.envelope.protection}, {count} credentials)"


def _stamp(info: os.stat_result) -> tuple[int, int, int]:
    return (info.st_ino, info.st_mtime_ns, info.st_size)
