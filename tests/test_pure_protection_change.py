"""The encrypted file's protection, its directory, and its damage: storage layer.

What a change of protection must leave behind (nothing the old protection
opens), when unlock must refuse, whose directory the store may live in, and
what a damaged file says and offers.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from modelforge_credentials import EncryptedFileStorage, KdfParams
from modelforge_credentials.backends import fileformat
from modelforge_credentials.backends.encrypted_file import NothingToUnlockError
from modelforge_credentials.errors import (
    CredentialBadPassphraseError,
    CredentialCorruptedError,
    CredentialLockedError,
    CredentialNotFoundError,
    CredentialStorageError,
    CredentialStorageUnavailableError,
)
from modelforge_credentials.files import UnsafeDirectoryError

PASSPHRASE = "protection-change-passphrase"
NOBODY = 65534


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "cfg"


def storage(directory: Path, kdf: KdfParams, passphrase: str | None = None) -> EncryptedFileStorage:
    return EncryptedFileStorage(directory, passphrase=passphrase, kdf=kdf)


@pytest.fixture
def stored(directory: Path, fast_kdf: KdfParams) -> EncryptedFileStorage:
    """A key-file store holding openai/api_key = sk-1."""
    store = storage(directory, fast_kdf)
    store.store("openai", "api_key", "sk-1")
    return store


@pytest.fixture
def two_generations(directory: Path, fast_kdf: KdfParams) -> EncryptedFileStorage:
    """A passphrase store written twice: a/k is 2, its backup holds 1."""
    store = storage(directory, fast_kdf, PASSPHRASE)
    store.store("a", "k", "1")
    store.store("a", "k", "2")
    return store


def data_key_of(blob: bytes, kek: bytes) -> bytes:
    return fileformat.parse(blob).envelope.unwrap(kek)


# -- unlock has nothing to adopt ------------------------------------------------------


def test_unlock_before_the_first_store_refuses_instead_of_adopting_a_typo(
    directory: Path, fast_kdf: KdfParams
) -> None:
    store = storage(directory, fast_kdf)
    with pytest.raises(NothingToUnlockError, match="passwd"):
        store.unlock("a typo nobody confirmed")
    store.store("openai", "api_key", "sk-1")
    assert store.protection == "keyfile"  # the typo protects nothing
    assert storage(directory, fast_kdf).load() == {"openai": {"api_key": "sk-1"}}


def test_unlock_of_a_key_file_store_says_there_is_no_passphrase(
    stored: EncryptedFileStorage,
) -> None:
    with pytest.raises(NothingToUnlockError, match="no passphrase.*passwd"):
        stored.unlock("anything")
    stored.store("openai", "api_key", "sk-2")
    assert stored.protection == "keyfile"


# -- changing protection ------------------------------------------------------------------


def test_a_passphrase_on_a_key_file_store_leaves_nothing_the_key_file_opens(
    directory: Path, fast_kdf: KdfParams, stored: EncryptedFileStorage
) -> None:
    store = stored
    store.store("openai", "api_key", "sk-2")  # now a key-file .bak exists
    old_key = store.key_path.read_bytes()
    old_data_key = data_key_of(store.path.read_bytes(), old_key)
    store.set_passphrase(PASSPHRASE)
    assert sorted(p.name for p in directory.iterdir()) == [
        "credentials.enc",
        "credentials.enc.lock",
    ]
    parsed = fileformat.parse(store.path.read_bytes())
    assert parsed.envelope.protection == "passphrase"
    with pytest.raises(CredentialStorageError):
        parsed.decrypt(old_data_key)  # the data key was rotated
    with pytest.raises(CredentialLockedError):
        storage(directory, fast_kdf).load()
    assert storage(directory, fast_kdf, PASSPHRASE).load() == {"openai": {"api_key": "sk-2"}}


def test_a_new_passphrase_leaves_no_generation_the_old_one_opens(
    directory: Path, fast_kdf: KdfParams, two_generations: EncryptedFileStorage
) -> None:
    store = two_generations
    store.set_passphrase("another passphrase", current=PASSPHRASE)
    assert not store.backup_path.exists()
    with pytest.raises(CredentialBadPassphraseError):
        storage(directory, fast_kdf, PASSPHRASE).load()
    store.store("a", "k", "3")  # the next generation's backup is under the new one
    backup = fileformat.parse(store.backup_path.read_bytes()).envelope
    kek = backup.kdf.derive(b"another passphrase", backup.salt)
    assert backup.unwrap(kek)


def test_a_key_file_left_by_a_crash_in_a_protection_change_goes_with_the_next_write(
    stored: EncryptedFileStorage,
) -> None:
    leftover = stored.key_path.read_bytes()
    stored.set_passphrase(PASSPHRASE)
    stored.key_path.write_bytes(leftover)  # as if the crash came before its removal
    stored.store("openai", "api_key", "sk-2")
    assert not stored.key_path.exists()


# -- the directory -------------------------------------------------------------------------


def test_a_directory_writable_by_others_is_refused_with_chmod_advice(
    directory: Path, fast_kdf: KdfParams
) -> None:
    storage(directory, fast_kdf).store("a", "k", "1")
    directory.chmod(0o770)
    with pytest.raises(UnsafeDirectoryError) as caught:
        storage(directory, fast_kdf).load()
    assert f"chmod 700 {directory}" in str(caught.value)
    with pytest.raises(UnsafeDirectoryError):
        storage(directory, fast_kdf).store("a", "k", "2")
    directory.chmod(0o700)
    assert storage(directory, fast_kdf).load() == {"a": {"k": "1"}}


def test_a_directory_of_another_uid_is_refused_without_advice_to_change_it(
    directory: Path, fast_kdf: KdfParams, tmp_path: Path
) -> None:
    """Another user made the directory and put a key-file store of theirs in it."""
    storage(directory, fast_kdf).store("openai", "api_key", "sk-the-attackers-key")
    for path in [directory, *directory.iterdir()]:
        os.chown(path, NOBODY, NOBODY)
    with pytest.raises(UnsafeDirectoryError) as caught:
        storage(directory, fast_kdf).retrieve("openai", "api_key")
    message = str(caught.value)
    assert f"uid {NOBODY}" in message and "MODEL_FORGE_CONFIG_DIR" in message
    assert "chmod" not in message and "chown" not in message and "rm " not in message
    assert "sk-the-attackers-key" not in message


# -- damage --------------------------------------------------------------------------------


def damage_body(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0xFF
    path.write_bytes(bytes(blob))


def test_a_damaged_file_says_what_to_do_and_its_backup_can_be_looked_at_and_restored(
    directory: Path, fast_kdf: KdfParams, stored: EncryptedFileStorage
) -> None:
    stored.store("anthropic", "api_key", "sk-2")
    damage_body(stored.path)
    damaged = stored.path.read_bytes()
    fresh = storage(directory, fast_kdf)
    with pytest.raises(CredentialCorruptedError) as caught:
        fresh.load()
    assert "restore-backup --dry-run" in str(caught.value)
    info = fresh.inspect_backup()
    assert info.names == [("openai", "api_key")]
    assert info.protection == "keyfile"
    kept = fresh.restore_backup()
    assert kept is not None and kept.read_bytes() == damaged
    assert storage(directory, fast_kdf).load() == {"openai": {"api_key": "sk-1"}}


def test_a_damaged_file_without_backup_says_to_move_it_away(
    directory: Path, fast_kdf: KdfParams, stored: EncryptedFileStorage
) -> None:
    damage_body(stored.path)
    with pytest.raises(CredentialCorruptedError, match="no backup generation.*mv "):
        storage(directory, fast_kdf).load()
    with pytest.raises(CredentialNotFoundError):
        storage(directory, fast_kdf).inspect_backup()


def test_a_passphrase_backup_needs_the_passphrase_and_nothing_changes_without_it(
    directory: Path, fast_kdf: KdfParams, two_generations: EncryptedFileStorage
) -> None:
    store = two_generations
    before = store.path.read_bytes()
    fresh = storage(directory, fast_kdf)
    with pytest.raises(CredentialLockedError):
        fresh.restore_backup()
    with pytest.raises(CredentialBadPassphraseError):
        fresh.restore_backup("wrong")
    assert store.path.read_bytes() == before
    assert fresh.inspect_backup(PASSPHRASE).names == [("a", "k")]


# -- not a regular file ---------------------------------------------------------------------


def test_a_backup_path_that_is_a_directory_is_named_in_the_error(
    directory: Path, stored: EncryptedFileStorage
) -> None:
    store = stored
    before = store.path.read_bytes()
    store.backup_path.mkdir()
    with pytest.raises(CredentialStorageUnavailableError) as caught:
        store.store("openai", "api_key", "sk-2")
    assert f"{store.backup_path} is a directory" in str(caught.value)
    assert store.path.read_bytes() == before
    assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")]
    shutil.rmtree(store.backup_path)


def test_a_fifo_at_the_credentials_path_is_refused_not_waited_on(
    directory: Path, fast_kdf: KdfParams
) -> None:
    directory.mkdir(mode=0o700)
    os.mkfifo(directory / "credentials.enc")
    with pytest.raises(CredentialStorageUnavailableError, match="not a regular file"):
        storage(directory, fast_kdf).load()
