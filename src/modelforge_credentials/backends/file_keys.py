"""The keys that open one encrypted file: the passphrase, the KEKs, the key file.

A passphrase-protected file's key-encryption key (KEK) comes from Argon2id
over the passphrase; a key-file store's KEK is the 32 bytes of
``credentials.key`` beside it. :class:`FileKeys` holds what this process
was given and derived, so re-reading a file another process rewrote costs no
second Argon2id run, and forgets it all on :meth:`FileKeys.forget`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

from ..errors import (
    CredentialBadPassphraseError,
    CredentialCorruptedError,
    CredentialLockedError,
    CredentialStorageUnavailableError,
    CredentialValidationError,
)
from ..files import fsync_dir, open_regular, temp_path_for, write_new_private
from . import fileformat
from .fileformat import KEYFILE, PASSPHRASE, Envelope, KdfParams


class NothingToUnlockError(CredentialValidationError):
    """``unlock`` on a store without a passphrase: none exists yet, or it is
    protected by a key file. ``modelforge-agent passwd`` sets one (asking
    twice), so a typo can never become the only key."""


def passphrase_bytes(passphrase: str) -> bytes:
    """The passphrase as UTF-8; an empty or non-string one is a usage error."""
    if not isinstance(passphrase, str) or not passphrase:
        raise CredentialValidationError("the passphrase must be a non-empty string")
    return passphrase.encode("utf-8")


class FileKeys:
    """What opens the store at ``store_path``: a passphrase given to this
    process, the KEKs derived so far, and the key file at ``key_path``."""

    def __init__(
        self, store_path: Path, key_path: Path, kdf: KdfParams, passphrase: bytes | None
    ) -> None:
        self.store_path = store_path
        self.key_path = key_path
        self.kdf = kdf
        self.passphrase = passphrase
        # KEKs derived so far, by (protection, kdf, salt): re-reading a file
        # that another process rewrote must not cost another Argon2id run.
        self._keks: dict[tuple[str, KdfParams, bytes], bytes] = {}
        self._mutex = threading.Lock()

    def opens(self, envelope: Envelope) -> bool:
        """Whether a passphrase-protected ``envelope`` opens without asking."""
        return envelope.kek_id in self._keks or self.passphrase is not None

    def unlock(self, envelope: Envelope | None, secret: bytes) -> None:
        """Keep ``secret`` if it opens ``envelope``, the store's (``None``:
        there is no store yet); else the unwrap raises."""
        if envelope is None:
            # Adopting it would make an unconfirmed first passphrase (a typo)
            # the only key to everything stored next.
            raise NothingToUnlockError(
                f"there is no encrypted store at {self.store_path} yet, so nothing to unlock. "
                "To protect it with a passphrase, run `modelforge-agent passwd` (it asks "
                "twice); without one it is protected by a key file"
            )
        if envelope.protection != PASSPHRASE:
            raise NothingToUnlockError(
                f"{self.store_path} has no passphrase (key-file protection), so there is "
                "nothing to unlock. Set one with `modelforge-agent passwd`"
            )
        kek = envelope.kdf.derive(secret, envelope.salt)
        envelope.unwrap(kek)
        self._remember(envelope, kek)
        self.passphrase = secret

    def forget_keks(self) -> None:
        with self._mutex:
            self._keks.clear()

    def forget(self) -> None:
        """Drop the passphrase and every derived key."""
        self.forget_keks()
        self.passphrase = None

    def drop_old_protection(self, envelope: Envelope, backup: Path | None = None) -> None:
        """Remove what the old protection still opens: the ``backup``
        generation, and a key file beside a passphrase-protected store (also
        one a crash in a protection change left behind)."""
        stale = [backup] if backup is not None else []
        if envelope.protection == PASSPHRASE:
            stale.append(self.key_path)
        removed = False
        for path in stale:
            try:
                path.unlink()
                removed = True
            except FileNotFoundError:
                pass
            except OSError as err:
                raise CredentialStorageUnavailableError(
                    f"the new protection is in place, but {path}, which the old "
                    f"protection still opens, cannot be removed: {err.strerror}; remove it "
                    "by hand"
                ) from err
        if removed:
            fsync_dir(self.key_path.parent)

    def data_key(self, envelope: Envelope) -> bytes:
        """The data key ``envelope`` wraps, deriving its KEK if not known yet."""
        if envelope.protection == KEYFILE:
            # Read every time: a write under a remembered key after the key
            # file was deleted would produce a file nobody can open again.
            return envelope.unwrap(self.read_keyfile())
        with self._mutex:
            kek = self._keks.get(envelope.kek_id)
        if kek is None:
            kek = self._derive_kek(envelope)
        data_key = envelope.unwrap(kek)
        self._remember(envelope, kek)
        return data_key

    def kek_for(self, envelope: Envelope, passphrase: str | None, what: Path) -> bytes:
        """The KEK of another file (``what``: the backup), from ``passphrase``
        or the one this store was unlocked with; the key file for key-file
        protection. Remembers nothing."""
        if envelope.protection == KEYFILE:
            return self.read_keyfile()
        secret = passphrase_bytes(passphrase) if passphrase is not None else self.passphrase
        if secret is None:
            raise CredentialLockedError(
                f"{what} is protected by a passphrase: give it to open the backup"
            )
        return envelope.kdf.derive(secret, envelope.salt)

    def _derive_kek(self, envelope: Envelope) -> bytes:
        if self.passphrase is None:
            raise CredentialLockedError(
                f"{self.store_path} is protected by a passphrase: unlock it with "
                "`modelforge-agent unlock` (or pass passphrase=...)"
            )
        return envelope.kdf.derive(self.passphrase, envelope.salt)

    def _remember(self, envelope: Envelope, kek: bytes) -> None:
        with self._mutex:
            self._keks[envelope.kek_id] = kek

    def read_keyfile(self) -> bytes:
        """The key file's 32 bytes; a missing or short one says to restore it."""
        try:
            with open_regular(self.key_path) as handle:
                key = handle.read(fileformat.KEY_SIZE + 1)
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

    def new_envelope(self, data_key: bytes, passphrase: bytes | None) -> Envelope:
        """``data_key`` wrapped under ``passphrase``, else under the key file
        (created if needed: call it under the file lock)."""
        salt = os.urandom(fileformat.SALT_SIZE)
        if passphrase is not None:
            kek = self.kdf.derive(passphrase, salt)
            envelope = Envelope.seal(PASSPHRASE, self.kdf, salt, kek, data_key)
        else:
            kek = self._ensure_keyfile()
            envelope = Envelope.seal(KEYFILE, KdfParams(name=KEYFILE), salt, kek, data_key)
        self._remember(envelope, kek)
        return envelope

    def retire_keyfile(self) -> None:
        """Remove a key file that protects nothing (beside a passphrase store or
        no store: a crash left it), so that the next key file is a new key."""
        try:
            self.key_path.unlink()
        except FileNotFoundError:
            return
        except OSError as err:
            raise CredentialStorageUnavailableError(
                f"cannot remove the old key file {self.key_path}: {err.strerror}; "
                "remove it by hand, then retry"
            ) from err
        fsync_dir(self.key_path.parent)

    def _ensure_keyfile(self) -> bytes:
        """The key file's key, creating the file if needed (called under the lock).

        The key is written to a temp file and hard-linked into place, which
        fails if the name exists: a crash leaves no key file or a complete
        one, never a short one that would lock the store out for good.
        """
        if self.key_path.exists() and not self.store_path.exists():
            try:
                return self.read_keyfile()
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
                fsync_dir(self.key_path.parent)
        except OSError as err:
            raise CredentialStorageUnavailableError(
                f"cannot create the key file {self.key_path}: {err.strerror}; "
                "check free space and the directory's permissions"
            ) from err
        finally:
            with contextlib.suppress(OSError):
                temp.unlink()
        return self.read_keyfile()
