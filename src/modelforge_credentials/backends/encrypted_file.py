"""Credentials in one encrypted file, protected by a passphrase or a key file.

Files in ``config_dir`` (created 0700)::

    credentials.enc       the store (format: :mod:`.fileformat`), 0600
    credentials.enc.bak   the previous good generation, 0600
    credentials.enc.lock  flock-ed around every read-modify-write
    credentials.key       32 random bytes, 0600 (key-file protection only)

Only a missing file means "no credentials". Anything unreadable raises, and
no write happens while the file cannot be read, so a wrong passphrase or a
damaged file never turns into an empty store that the next ``store`` saves.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import (
    CredentialBadPassphraseError,
    CredentialCorruptedError,
    CredentialLockedError,
    CredentialStorageUnavailableError,
    CredentialValidationError,
)
from ..files import (
    exclusive_lock,
    fsync_dir,
    make_private_dir,
    open_regular,
    remove_stale_temps,
    temp_path_for,
    write_atomic,
    write_new_private,
)
from ..validation import select_names, validate_pair, validate_value
from . import fileformat
from .fileformat import KEYFILE, PASSPHRASE, Credentials, Envelope, KdfParams

CREDENTIALS_FILE = "credentials.enc"
KEY_FILE = "credentials.key"


def default_config_dir() -> Path:
    """``$MODEL_FORGE_CONFIG_DIR``, else model-forge's own config directory."""
    override = os.environ.get("MODEL_FORGE_CONFIG_DIR")
    if override:
        return Path(override)
    if sys.platform == "darwin":
        # model-forge keeps ~/.config/model-forge on macOS too.
        return Path.home() / ".config" / "model-forge"
    import platformdirs

    return platformdirs.user_config_path("model-forge", appauthor=False)


def _passphrase_bytes(passphrase: str) -> bytes:
    if not isinstance(passphrase, str) or not passphrase:
        raise CredentialValidationError("the passphrase must be a non-empty string")
    return passphrase.encode("utf-8")


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
        self._kdf = kdf or KdfParams()
        self._passphrase = _passphrase_bytes(passphrase) if passphrase is not None else None
        # KEKs derived so far, by (protection, kdf, salt): re-reading a file
        # that another process rewrote must not cost another Argon2id run.
        self._keks: dict[tuple[str, KdfParams, bytes], bytes] = {}
        self._mutex = threading.Lock()
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
        data_key = self._data_key(parsed.envelope)
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
        return PASSPHRASE if self._passphrase is not None else KEYFILE

    @property
    def locked(self) -> bool:
        """True while the file needs a passphrase that has not been given."""
        read = self._read_parsed()
        if read is None or read[0].envelope.protection != PASSPHRASE:
            return False
        return read[0].envelope.kek_id not in self._keks and self._passphrase is None

    def unlock(self, passphrase: str) -> None:
        """Check ``passphrase`` against the file and keep it for this session.

        Raises :class:`CredentialBadPassphraseError` (nothing kept, nothing
        changed) when it does not open the file.
        """
        secret = _passphrase_bytes(passphrase)
        read = self._read_parsed()
        parsed = read[0] if read is not None else None
        if parsed is not None and parsed.envelope.protection == PASSPHRASE:
            kek = parsed.envelope.kdf.derive(secret, parsed.envelope.salt)
            parsed.envelope.unwrap(kek)
            with self._mutex:
                self._keks[parsed.envelope.kek_id] = kek
        self._passphrase = secret

    def lock(self) -> None:
        """Forget the passphrase, every derived key and every decrypted value."""
        with self._mutex:
            self._keks.clear()
        self._passphrase = None
        self._state = None

    def set_passphrase(self, new: str | None, current: str | None = None) -> None:
        """Re-wrap the data key under ``new`` (``None``: switch to a key file).

        ``current`` opens a passphrase-protected store that is not unlocked.
        The body is rewritten atomically; the previous generation stays in
        the backup file (under the old protection).
        """
        new_secret = _passphrase_bytes(new) if new is not None else None
        if current is not None:
            self.unlock(current)
        make_private_dir(self.config_dir)
        with exclusive_lock(self.lock_path):
            read = self._read_parsed()
            parsed = read[0] if read is not None else None
            if parsed is None:
                credentials: Credentials = {}
                data_key = os.urandom(fileformat.KEY_SIZE)
            else:
                data_key = self._data_key(parsed.envelope)
                credentials = parsed.decrypt(data_key)
            envelope = self._new_envelope(data_key, new_secret)
            self._write(envelope, data_key, credentials)
        self._passphrase = new_secret

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
        return fileformat.parse(blob), stamp

    def _data_key(self, envelope: Envelope) -> bytes:
        if envelope.protection == KEYFILE:
            # Read every time: a write under a remembered key after the key
            # file was deleted would produce a file nobody can open again.
            return envelope.unwrap(self._read_keyfile())
        with self._mutex:
            kek = self._keks.get(envelope.kek_id)
        if kek is None:
            kek = self._derive_kek(envelope)
        data_key = envelope.unwrap(kek)
        with self._mutex:
            self._keks[envelope.kek_id] = kek
        return data_key

    def _derive_kek(self, envelope: Envelope) -> bytes:
        if envelope.protection == KEYFILE:
            return self._read_keyfile()
        if self._passphrase is None:
            raise CredentialLockedError(
                f"{self.path} is protected by a passphrase: unlock it with "
                "`modelforge-agent unlock` (or pass passphrase=...)"
            )
        return envelope.kdf.derive(self._passphrase, envelope.salt)

    def _read_keyfile(self) -> bytes:
        try:
            key = self.key_path.read_bytes()
        except FileNotFoundError:
            raise CredentialBadPassphraseError(
                f"the key file {self.key_path} is missing; restore it from a backup "
                "(the credentials file cannot be opened without it)"
            ) from None
        except OSError as err:
            raise CredentialStorageUnavailableError(
                f"cannot read {self.key_path}: {err.strerror}; check its permissions"
            ) from err
        if len(key) != fileformat.KEY_SIZE:
            raise CredentialCorruptedError(
                f"the key file {self.key_path} has the wrong size; restore it from a backup"
            )
        return key

    def _new_envelope(self, data_key: bytes, passphrase: bytes | None) -> Envelope:
        salt = os.urandom(fileformat.SALT_SIZE)
        if passphrase is not None:
            kek = self._kdf.derive(passphrase, salt)
            envelope = Envelope.seal(PASSPHRASE, self._kdf, salt, kek, data_key)
        else:
            kek = self._ensure_keyfile()
            envelope = Envelope.seal(KEYFILE, KdfParams(name=KEYFILE), salt, kek, data_key)
        with self._mutex:
            self._keks[envelope.kek_id] = kek
        return envelope

    def _ensure_keyfile(self) -> bytes:
        """The key file's key, creating the file if needed (called under the lock).

        The key is written to a temp file and hard-linked into place, which
        fails if the name exists: a crash leaves no key file or a complete
        one, never a short one that would lock the store out for good.
        """
        if self.key_path.exists() and not self.path.exists():
            try:
                return self._read_keyfile()
            except CredentialCorruptedError:
                # Nothing is encrypted with a damaged key yet: replace it.
                self.key_path.unlink()
        temp = temp_path_for(self.key_path)
        try:
            write_new_private(temp, os.urandom(fileformat.KEY_SIZE))
            try:
                os.link(temp, self.key_path)
            except FileExistsError:
                pass
            else:
                fsync_dir(self.config_dir)
        except OSError as err:
            raise CredentialStorageUnavailableError(
                f"cannot create the key file {self.key_path}: {err.strerror}; "
                "check free space and the directory's permissions"
            ) from err
        finally:
            with contextlib.suppress(OSError):
                temp.unlink()
        return self._read_keyfile()

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Credentials]:
        """Read-modify-write under the file lock; writes only if the body succeeds."""
        make_private_dir(self.config_dir)
        with exclusive_lock(self.lock_path):
            remove_stale_temps(self.path)
            state = self._current(merging=True)
            if state is None:
                data_key = os.urandom(fileformat.KEY_SIZE)
                envelope = self._new_envelope(data_key, self._passphrase)
                credentials: Credentials = {}
            else:
                envelope, data_key = state.envelope, state.data_key
                if envelope.protection == KEYFILE:
                    # Never write under a remembered key the key file no
                    # longer opens: nobody could read the result.
                    envelope.unwrap(self._read_keyfile())
                # A copy: if the write fails, memory must still match the disk.
                credentials = {p: dict(keys) for p, keys in state.credentials.items()}
            yield credentials
            self._write(envelope, data_key, credentials)

    def _write(self, envelope: Envelope, data_key: bytes, credentials: Credentials) -> None:
        stamp = write_atomic(
            self.path, fileformat.encode(envelope, data_key, credentials), backup=self.backup_path
        )
        self._state = _State(stamp, envelope, data_key, credentials)


class _State(NamedTuple):
    stamp: tuple[int, int, int]
    envelope: Envelope
    data_key: bytes
    credentials: Credentials


def _stamp(info: os.stat_result) -> tuple[int, int, int]:
    return (info.st_ino, info.st_mtime_ns, info.st_size)
