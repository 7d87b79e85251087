"""The encrypted file's keys and backup generation, seen by an attacker.

What lock must forget (in every object that holds a key), what a change of
protection must leave behind (also when its clean-up fails), what a restore
must never lose, which paths the key file may not be, what two writers see
of each other, and that no message or repr shows key material.
"""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelforge_credentials import (
    CredentialBadPassphraseError,
    CredentialCorruptedError,
    CredentialLockedError,
    CredentialStorageError,
    CredentialStorageUnavailableError,
    CredentialValidationError,
    EncryptedFileStorage,
    KdfParams,
)
from modelforge_credentials import files as file_primitives
from modelforge_credentials.backends import fileformat

PASSPHRASE = "review-Passphrase-one-5150"
NEW_PASSPHRASE = "review-Passphrase-two-8086"
WRONG = "review-wrong-guess-6502"
VALUE = "sk-review-SECRETVALUE-1"
OTHER_VALUE = "sk-review-SECRETVALUE-2"
TEXTS = (PASSPHRASE, NEW_PASSPHRASE, WRONG, VALUE, OTHER_VALUE)

#: Words that tell the reader of a message what to do next.
NEXT_STEP = ("run ", "restore", "retry", "remove", "move", "give", "unlock", "set ", "check")


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "cfg"


def opened(directory: Path, kdf: KdfParams, passphrase: str | None = None) -> EncryptedFileStorage:
    return EncryptedFileStorage(directory, passphrase=passphrase, kdf=kdf)


def key_material(store: EncryptedFileStorage, passphrase: str) -> list[bytes]:
    """The passphrase, its KEK and the data key of the store's current file."""
    envelope = fileformat.parse(store.path.read_bytes()).envelope
    kek = envelope.kdf.derive(passphrase.encode(), envelope.salt)
    return [passphrase.encode(), kek, envelope.unwrap(kek)]


def reachable(root: object) -> Iterator[object]:
    """Every object reachable from ``root`` through attributes and containers."""
    seen: set[int] = set()
    todo = [root]
    while todo:
        item = todo.pop()
        if id(item) in seen or isinstance(item, (type, type(threading.Lock()))):
            continue
        seen.add(id(item))
        yield item
        if isinstance(item, dict):
            todo.extend(item.keys())
            todo.extend(item.values())
        elif isinstance(item, (list, tuple, set, frozenset)):
            todo.extend(item)
        elif not isinstance(item, (str, bytes, int, float, bool, Path, type(None))):
            todo.extend(getattr(item, "__dict__", {}).values())
            for slot in getattr(type(item), "__slots__", ()):
                if hasattr(item, slot):
                    todo.append(getattr(item, slot))


def held_bytes(store: EncryptedFileStorage) -> set[bytes]:
    return {item for item in reachable(store) if isinstance(item, bytes)}


def assert_clean(err: BaseException, *secrets: bytes | str) -> None:
    """No secret in the message or repr of ``err`` or its chain; a next step is named."""
    texts = [t if isinstance(t, str) else t.hex() for t in (*TEXTS, *secrets)]
    current: BaseException | None = err
    while current is not None:
        for shown in (str(current), repr(current)):
            for secret in texts:
                assert secret not in shown, f"{type(current).__name__} shows a secret"
        current = current.__cause__ or current.__context__
    assert any(word in str(err) for word in NEXT_STEP), f"no next step in: {err}"


# -- lock forgets everything, everywhere ------------------------------------------------


def test_lock_forgets_passphrase_kek_and_data_key_in_every_object(
    directory: Path, fast_kdf: KdfParams
) -> None:
    """lock() leaves no passphrase, KEK or data key reachable from the store."""
    store = opened(directory, fast_kdf, PASSPHRASE)
    store.store("openai", "api_key", VALUE)
    store.store("openai", "api_key", OTHER_VALUE)  # a backup generation too
    store.inspect_backup()
    secrets = key_material(store, PASSPHRASE)
    assert set(secrets) <= held_bytes(store)  # the walk does find them while unlocked
    store.lock()
    assert not set(secrets) & held_bytes(store)
    assert not {VALUE, OTHER_VALUE} & {i for i in reachable(store) if isinstance(i, str)}
    assert store.locked
    with pytest.raises(CredentialLockedError):
        store.retrieve("openai", "api_key")
    with pytest.raises(CredentialLockedError):
        store.inspect_backup()  # the backup needs the passphrase again too


def test_lock_after_unlock_forgets_what_unlock_derived(
    directory: Path, fast_kdf: KdfParams
) -> None:
    """A passphrase given to unlock() (not the constructor) is forgotten by lock()."""
    opened(directory, fast_kdf, PASSPHRASE).store("openai", "api_key", VALUE)
    store = opened(directory, fast_kdf)
    store.unlock(PASSPHRASE)
    assert store.retrieve("openai", "api_key") == VALUE
    secrets = key_material(store, PASSPHRASE)
    store.lock()
    assert not set(secrets) & held_bytes(store)
    with pytest.raises(CredentialLockedError):
        store.store("openai", "api_key", OTHER_VALUE)


def test_a_wrong_unlock_keeps_nothing(directory: Path, fast_kdf: KdfParams) -> None:
    """A refused unlock leaves no passphrase or KEK behind and the store locked."""
    opened(directory, fast_kdf, PASSPHRASE).store("openai", "api_key", VALUE)
    store = opened(directory, fast_kdf)
    with pytest.raises(CredentialBadPassphraseError) as caught:
        store.unlock(WRONG)
    assert_clean(caught.value)
    envelope = fileformat.parse(store.path.read_bytes()).envelope
    wrong_kek = envelope.kdf.derive(WRONG.encode(), envelope.salt)
    assert not {WRONG.encode(), wrong_kek} & held_bytes(store)
    assert store.locked


def test_no_object_reachable_from_the_store_shows_key_material_in_its_repr(
    directory: Path, fast_kdf: KdfParams
) -> None:
    """repr() of the store and of every object it holds hides keys and values."""
    store = opened(directory, fast_kdf, PASSPHRASE)
    store.store("openai", "api_key", VALUE)
    secrets = key_material(store, PASSPHRASE)
    plain = (bytes, str, int, float, bool, dict, list, type(None))
    objects = [i for i in reachable(store) if not isinstance(i, plain)]
    assert objects  # the store itself, its keys, its backup, its cached state...
    leaking = sorted(
        type(item).__name__
        for item in objects
        if VALUE in repr(item)
        or any(repr(s) in repr(item) or s.hex() in repr(item) for s in secrets)
    )
    assert leaking == []


# -- changing protection ------------------------------------------------------------------


@pytest.fixture
def half_changed(directory: Path, fast_kdf: KdfParams) -> tuple[EncryptedFileStorage, str]:
    """A passphrase change that wrote the file under NEW, then could not
    remove the old backup (unlink(2) of a directory: EISDIR); its message."""
    store = opened(directory, fast_kdf, PASSPHRASE)
    store.store("openai", "api_key", VALUE)
    store.backup_path.mkdir()
    with pytest.raises(CredentialStorageUnavailableError) as caught:
        store.set_passphrase(NEW_PASSPHRASE)
    assert_clean(caught.value)
    assert opened(directory, fast_kdf, NEW_PASSPHRASE).load() == {"openai": {"api_key": VALUE}}
    store.backup_path.rmdir()
    return store, str(caught.value)


def test_a_passphrase_change_whose_clean_up_fails_says_the_new_one_is_in_place(
    half_changed: tuple[EncryptedFileStorage, str],
) -> None:
    """The user must learn the file is already under the new passphrase."""
    message = half_changed[1]
    assert "in place" in message or "was changed" in message or "now protected" in message


def test_a_passphrase_change_whose_clean_up_fails_leaves_the_object_on_the_new_one(
    directory: Path, fast_kdf: KdfParams, half_changed: tuple[EncryptedFileStorage, str]
) -> None:
    """The object follows NEW once the file is under it, even if clean-up failed."""
    store = half_changed[0]
    # Another process re-keys under the same NEW passphrase (a new salt).
    opened(directory, fast_kdf).set_passphrase(NEW_PASSPHRASE, current=NEW_PASSPHRASE)
    assert store.retrieve("openai", "api_key") == VALUE


def test_going_back_to_a_key_file_never_reuses_a_key_file_a_crash_left(
    directory: Path, fast_kdf: KdfParams
) -> None:
    """passphrase -> key file makes a fresh key, not the retired one a crash left."""
    store = opened(directory, fast_kdf)
    store.store("openai", "api_key", VALUE)
    retired = store.key_path.read_bytes()
    store.set_passphrase(PASSPHRASE)
    store.key_path.write_bytes(retired)  # the crash came before its removal
    store.set_passphrase(None, current=PASSPHRASE)
    assert store.key_path.read_bytes() != retired
    assert opened(directory, fast_kdf).load() == {"openai": {"api_key": VALUE}}


def test_passphrase_to_key_file_leaves_one_private_key_and_no_old_generation(
    directory: Path, fast_kdf: KdfParams
) -> None:
    """The new key file is 0600, one link, no temp beside; the old backup is gone."""
    store = opened(directory, fast_kdf, PASSPHRASE)
    store.store("openai", "api_key", VALUE)
    store.store("openai", "api_key", OTHER_VALUE)
    old_data_key = key_material(store, PASSPHRASE)[2]
    store.set_passphrase(None)
    info = store.key_path.stat()
    assert (info.st_mode & 0o777, info.st_nlink) == (0o600, 1)
    assert sorted(p.name for p in directory.iterdir()) == [
        "credentials.enc",
        "credentials.enc.lock",
        "credentials.key",
    ]
    parsed = fileformat.parse(store.path.read_bytes())
    with pytest.raises(CredentialStorageError):
        parsed.decrypt(old_data_key)
    assert opened(directory, fast_kdf).retrieve("openai", "api_key") == OTHER_VALUE


def test_set_passphrase_reports_a_change_it_merged(directory: Path, fast_kdf: KdfParams) -> None:
    """A change another writer made before our set_passphrase is still reported once."""
    ours = opened(directory, fast_kdf, PASSPHRASE)
    ours.store("openai", "api_key", VALUE)
    opened(directory, fast_kdf, PASSPHRASE).store("anthropic", "api_key", OTHER_VALUE)
    ours.set_passphrase(NEW_PASSPHRASE)
    assert ours.changed_since_last_access()
    assert not ours.changed_since_last_access()


# -- the backup generation -------------------------------------------------------------


def test_a_restore_that_cannot_write_leaves_the_current_file_in_place(
    directory: Path, fast_kdf: KdfParams, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk during restore-backup must not leave the store missing (read as empty)."""
    store = opened(directory, fast_kdf)
    store.store("openai", "api_key", VALUE)
    store.store("anthropic", "api_key", OTHER_VALUE)
    before = store.path.read_bytes()

    def disk_full(path: Path, data: bytes, mode: int = 0o600) -> tuple[int, int, int]:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(file_primitives, "write_new_private", disk_full)
    with pytest.raises(CredentialStorageUnavailableError):
        store.restore_backup()
    monkeypatch.undo()
    assert store.path.exists()
    assert store.path.read_bytes() == before
    assert opened(directory, fast_kdf).load() != {}


def test_a_restore_by_another_object_is_seen_as_a_change(
    directory: Path, fast_kdf: KdfParams
) -> None:
    """After another object restores the backup, ours reports the change and reads it."""
    ours = opened(directory, fast_kdf, PASSPHRASE)
    ours.store("openai", "api_key", VALUE)
    ours.store("openai", "api_key", OTHER_VALUE)
    assert not ours.changed_since_last_access()
    kept = opened(directory, fast_kdf).restore_backup(PASSPHRASE)
    assert kept is not None and kept.exists()
    assert ours.changed_since_last_access()
    assert ours.retrieve("openai", "api_key") == VALUE


def test_a_locked_backup_message_names_the_step_and_no_secret(
    directory: Path, fast_kdf: KdfParams
) -> None:
    """inspect/restore of a passphrase backup without it: locked, nothing changed."""
    store = opened(directory, fast_kdf, PASSPHRASE)
    store.store("openai", "api_key", VALUE)
    store.store("openai", "api_key", OTHER_VALUE)
    before = store.path.read_bytes()
    fresh = opened(directory, fast_kdf)
    for attempt in (fresh.inspect_backup, fresh.restore_backup):
        with pytest.raises(CredentialLockedError) as caught:
            attempt()
        assert_clean(caught.value)
        with pytest.raises(CredentialBadPassphraseError) as caught_wrong:
            attempt(WRONG)
        assert_clean(caught_wrong.value)
    assert store.path.read_bytes() == before
    assert not store.path.with_name("credentials.enc.damaged").exists()


# -- the key file's path ----------------------------------------------------------------


def test_a_fifo_at_the_key_file_path_is_refused_not_waited_on(
    directory: Path, fast_kdf: KdfParams
) -> None:
    """Like the store and its backup, the key file must be a regular file."""
    store = opened(directory, fast_kdf)
    store.store("openai", "api_key", VALUE)
    store.key_path.unlink()
    os.mkfifo(store.key_path, 0o600)
    outcome: list[BaseException | str] = []

    def read() -> None:
        try:
            outcome.append(repr(opened(directory, fast_kdf).load()))
        except BaseException as err:  # noqa: BLE001 - handed to the test thread
            outcome.append(err)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout=5)
    hung = reader.is_alive()
    if hung:
        # Release the blocked open (a writer appears, then EOF).
        os.close(os.open(store.key_path, os.O_WRONLY | os.O_NONBLOCK))
        reader.join(timeout=5)
    assert not hung, "reading a FIFO at credentials.key blocked"
    assert isinstance(outcome[0], CredentialStorageUnavailableError)
    assert "not a regular file" in str(outcome[0])


def test_a_directory_at_the_key_file_path_says_to_move_it_away(
    directory: Path, fast_kdf: KdfParams
) -> None:
    """A directory at credentials.key is named as one, not as a permissions problem."""
    store = opened(directory, fast_kdf)
    store.store("openai", "api_key", VALUE)
    store.key_path.unlink()
    store.key_path.mkdir()
    before = store.path.read_bytes()
    with pytest.raises(CredentialStorageUnavailableError) as caught:
        opened(directory, fast_kdf).load()
    assert "not a regular file" in str(caught.value) or "move it away" in str(caught.value)
    assert_clean(caught.value)
    assert store.path.read_bytes() == before


def test_a_created_key_file_is_private_single_linked_and_leaves_no_temp(
    directory: Path, fast_kdf: KdfParams
) -> None:
    """The hard-link dance that creates credentials.key leaves one 0600 link, no temp."""
    store = opened(directory, fast_kdf)
    store.store("openai", "api_key", VALUE)
    info = store.key_path.stat()
    assert (info.st_mode & 0o777, info.st_nlink, info.st_size) == (0o600, 1, 32)
    assert not [p for p in directory.iterdir() if p.name.endswith(".tmp")]


def test_key_file_errors_show_no_key_and_say_what_to_do(
    directory: Path, fast_kdf: KdfParams
) -> None:
    """Missing, short and foreign key files: no key bytes shown, a next step named."""
    store = opened(directory, fast_kdf)
    store.store("openai", "api_key", VALUE)
    key = store.key_path.read_bytes()
    for damage, expected in (
        (key[:16], CredentialCorruptedError),
        (bytes(32), CredentialBadPassphraseError),
        (None, CredentialBadPassphraseError),
    ):
        store.key_path.unlink()
        if damage is not None:
            store.key_path.write_bytes(damage)
        with pytest.raises(expected) as caught:
            opened(directory, fast_kdf).retrieve("openai", "api_key")
        assert_clean(caught.value, key, *(d for d in (damage,) if d))
        with contextlib.suppress(FileNotFoundError):
            store.key_path.unlink()
        file_primitives.write_new_private(store.key_path, key)
    assert opened(directory, fast_kdf).retrieve("openai", "api_key") == VALUE


def test_a_passphrase_of_the_wrong_type_is_refused_without_showing_it(
    directory: Path, fast_kdf: KdfParams
) -> None:
    """bytes or empty passphrases are usage errors whose message does not echo them."""
    for bad in (PASSPHRASE.encode(), ""):
        with pytest.raises(CredentialValidationError) as caught:
            opened(directory, fast_kdf, bad)  # type: ignore[arg-type]
        assert PASSPHRASE not in str(caught.value) and PASSPHRASE not in repr(caught.value)


# -- two writers ----------------------------------------------------------------------------


def test_two_writers_merge_and_the_merge_is_reported_once(
    directory: Path, fast_kdf: KdfParams
) -> None:
    """store/store_many/delete by two objects keep each other's writes."""
    first = opened(directory, fast_kdf, PASSPHRASE)
    second = opened(directory, fast_kdf, PASSPHRASE)
    first.store("openai", "api_key", VALUE)
    second.store_many({"anthropic": {"api_key": OTHER_VALUE}, "mistral": {"api_key": "m"}})
    first.store("groq", "api_key", "g")
    assert first.changed_since_last_access()  # second's write, merged by ours
    assert not first.changed_since_last_access()
    assert second.delete("groq", "api_key")  # written after second's last read
    assert first.changed_since_last_access()
    assert opened(directory, fast_kdf, PASSPHRASE).load() == {
        "openai": {"api_key": VALUE},
        "anthropic": {"api_key": OTHER_VALUE},
        "mistral": {"api_key": "m"},
    }


def test_a_look_at_protection_or_locked_hides_no_change(
    directory: Path, fast_kdf: KdfParams
) -> None:
    """protection and locked read the header only and record nothing."""
    ours = opened(directory, fast_kdf, PASSPHRASE)
    ours.store("openai", "api_key", VALUE)
    opened(directory, fast_kdf, PASSPHRASE).store("openai", "api_key", OTHER_VALUE)
    assert ours.protection == "passphrase" and not ours.locked
    assert ours.changed_since_last_access()
    assert ours.retrieve("openai", "api_key") == OTHER_VALUE
    assert not ours.changed_since_last_access()
