"""EncryptedFileStorage on real files: damage, passphrases, modes, limits.

Every failure path checks three things: the right exception class, the file
left byte-for-byte as it was, and no secret (stored value or passphrase) in
the message, the repr or any chained exception.
"""

from __future__ import annotations

import hashlib
import os
import stat
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
import pytest

from modelforge_credentials import (
    CredentialBadPassphraseError,
    CredentialCorruptedError,
    CredentialFormatError,
    CredentialLockedError,
    CredentialStorageError,
    CredentialStorageUnavailableError,
    CredentialTooLargeError,
    CredentialValidationError,
    EncryptedFileStorage,
    KdfParams,
)
from modelforge_credentials.backends import fileformat
from modelforge_credentials.files import exclusive_lock, write_new_private

PASSPHRASE = "correct-horse-Battery-staple-41"
OTHER_PASSPHRASE = "another-Passphrase-for-rotation-77"
WRONG_PASSPHRASE = "Tr0ub4dor-and-3-wrong-guess"
SECRETS = {
    "openai": {"api_key": "sk-test-SECRETVALUE-openai-9f8e7d"},
    "anthropic": {"api_key": "sk-ant-SECRETVALUE-claude-1a2b3c"},
}
ALL_SECRET_TEXT = [v for keys in SECRETS.values() for v in keys.values()] + [
    PASSPHRASE,
    OTHER_PASSPHRASE,
    WRONG_PASSPHRASE,
]

PREFIX = struct.Struct(">8sHI")
DIGEST_SIZE = 32


# -- helpers -------------------------------------------------------------------


def assert_no_secret(err: BaseException, *extra: str) -> None:
    """Neither the message, the repr nor any chained exception leaks a secret."""
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        for text in (str(current), repr(current)):
            for secret in (*ALL_SECRET_TEXT, *extra):
                assert secret not in text, f"secret leaked in {type(current).__name__}"
        current = current.__cause__ or current.__context__


def split_file(blob: bytes) -> tuple[int, dict[str, Any], bytes]:
    """(version, header map, body) of a well-formed file."""
    _, version, header_len = PREFIX.unpack_from(blob)
    header = msgpack.unpackb(blob[PREFIX.size : PREFIX.size + header_len], raw=False)
    return version, header, blob[PREFIX.size + header_len + DIGEST_SIZE :]


def build_file(header: dict[str, Any], body: bytes, version: int = 1) -> bytes:
    """A file with ``header`` and a correct SHA-256 digest over it."""
    packed = msgpack.packb(header, use_bin_type=True)
    head = PREFIX.pack(fileformat.MAGIC, version, len(packed)) + packed
    return head + hashlib.sha256(head).digest() + body


def rewrite_header(path: Path, change: Callable[[dict[str, Any]], None]) -> bytes:
    version, header, body = split_file(path.read_bytes())
    change(header)
    blob = build_file(header, body, version)
    path.write_bytes(blob)
    return blob


def stored_with_header(
    make_storage: Callable[..., EncryptedFileStorage], field: str, value: object
) -> tuple[EncryptedFileStorage, bytes]:
    """A passphrase store holding one secret, its header's ``field`` then set
    to ``value`` (digest recomputed); the store and the file's new bytes."""
    storage = make_storage(PASSPHRASE)
    storage.store("openai", "api_key", SECRETS["openai"]["api_key"])

    def change(header: dict[str, Any]) -> None:
        header[field] = value

    return storage, rewrite_header(storage.path, change)


def temp_files(directory: Path) -> list[Path]:
    return sorted(directory.glob(".credentials.enc*.tmp"))


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def snapshot(directory: Path) -> dict[str, bytes]:
    """Name -> bytes of every regular file, to prove nothing was written."""
    return {
        p.name: p.read_bytes()
        for p in sorted(directory.iterdir())
        if p.is_file() and not p.name.endswith(".lock")
    }


@pytest.fixture
def config_dir(tmp_path: Path) -> Path:
    return tmp_path / "config"


@pytest.fixture
def make_storage(config_dir: Path, fast_kdf: KdfParams) -> Callable[..., EncryptedFileStorage]:
    def make(passphrase: str | None = None, directory: Path | None = None) -> EncryptedFileStorage:
        return EncryptedFileStorage(directory or config_dir, passphrase=passphrase, kdf=fast_kdf)

    return make


@dataclass(frozen=True)
class Populated:
    storage: EncryptedFileStorage
    passphrase: str | None

    @property
    def path(self) -> Path:
        return self.storage.path


@pytest.fixture(params=["keyfile", "passphrase"])
def populated(
    request: pytest.FixtureRequest, make_storage: Callable[..., EncryptedFileStorage]
) -> Populated:
    """A store holding SECRETS under each protection, written twice (.bak exists)."""
    passphrase = PASSPHRASE if request.param == "passphrase" else None
    storage = make_storage(passphrase)
    storage.store("openai", "api_key", "first-generation-value")
    storage.store_many(SECRETS)
    assert storage.protection == request.param
    return Populated(storage, passphrase)


# -- damaged files -------------------------------------------------------------


def _flip(offset: Callable[[bytes], int]) -> Callable[[bytes], bytes]:
    def corrupt(blob: bytes) -> bytes:
        at = offset(blob)
        return blob[:at] + bytes([blob[at] ^ 0x40]) + blob[at + 1 :]

    return corrupt


def _header_end(blob: bytes) -> int:
    return PREFIX.size + PREFIX.unpack_from(blob)[2]


CORRUPTIONS: dict[str, Callable[[bytes], bytes]] = {
    "magic": _flip(lambda b: 1),
    "header-length": _flip(lambda b: 12),
    "header-first-byte": _flip(lambda b: PREFIX.size),
    "header-middle": _flip(lambda b: (PREFIX.size + _header_end(b)) // 2),
    "header-last-byte": _flip(lambda b: _header_end(b) - 1),
    "digest-first-byte": _flip(lambda b: _header_end(b)),
    "digest-last-byte": _flip(lambda b: _header_end(b) + DIGEST_SIZE - 1),
    "body-first-byte": _flip(lambda b: _header_end(b) + DIGEST_SIZE),
    "body-middle": _flip(lambda b: (_header_end(b) + DIGEST_SIZE + len(b)) // 2),
    "body-tag": _flip(lambda b: len(b) - 1),
    "truncated-0": lambda b: b"",
    "truncated-1": lambda b: b[:1],
    "truncated-10": lambda b: b[:10],
    "truncated-prefix": lambda b: b[: PREFIX.size],
    "truncated-in-header": lambda b: b[: _header_end(b) - 3],
    "truncated-in-digest": lambda b: b[: _header_end(b) + 5],
    "truncated-after-digest": lambda b: b[: _header_end(b) + DIGEST_SIZE],
    "truncated-body-15": lambda b: b[: _header_end(b) + DIGEST_SIZE + 15],
    "truncated-last-byte": lambda b: b[:-1],
    "trailing-garbage": lambda b: b + b"\x00garbage",
    "garbage": lambda b: bytes(range(256)) * 3,
    "zeros": lambda b: bytes(len(b)),
    "json-file": lambda b: b'{"openai": {"api_key": "plaintext"}}\n',
    "png-file": lambda b: b"\x89PNG\r\n\x1a\n" + bytes(64),
    "huge-header-length": lambda b: fileformat.MAGIC + struct.pack(">HI", 1, 2**20) + b[14:],
}


@pytest.mark.parametrize("damage", sorted(CORRUPTIONS))
def test_damaged_file_is_reported_and_never_overwritten(
    populated: Populated, make_storage: Callable[..., EncryptedFileStorage], damage: str
) -> None:
    original = populated.path.read_bytes()
    damaged = CORRUPTIONS[damage](original)
    assert damaged != original
    populated.path.write_bytes(damaged)
    before = snapshot(populated.storage.config_dir)
    # The instance that wrote the file (KEK cached) and a fresh one.
    for storage in (populated.storage, make_storage(populated.passphrase)):
        with pytest.raises(CredentialCorruptedError) as read_err:
            storage.retrieve("openai", "api_key")
        assert_no_secret(read_err.value)
        with pytest.raises(CredentialCorruptedError) as write_err:
            storage.store("openai", "api_key", "replacement-SECRETVALUE")
        assert_no_secret(write_err.value, "replacement-SECRETVALUE")
        with pytest.raises(CredentialCorruptedError):
            storage.store_many({"openai": {"other": "another-SECRETVALUE"}})
        with pytest.raises(CredentialCorruptedError):
            storage.delete("openai", "api_key")
        with pytest.raises(CredentialCorruptedError):
            storage.set_passphrase(OTHER_PASSPHRASE)
    assert snapshot(populated.storage.config_dir) == before
    assert temp_files(populated.storage.config_dir) == []


def test_unknown_version_is_a_format_error_and_file_untouched(populated: Populated) -> None:
    original = populated.path.read_bytes()
    blob = bytearray(original)
    struct.pack_into(">H", blob, 8, 2)
    header_end = _header_end(original)
    blob[header_end : header_end + DIGEST_SIZE] = hashlib.sha256(blob[:header_end]).digest()
    populated.path.write_bytes(bytes(blob))
    # Only the version differs (and the digest, recomputed to match it).
    changed = {i for i, (a, b) in enumerate(zip(original, blob, strict=True)) if a != b}
    assert 9 in changed
    assert changed - {8, 9} <= set(range(header_end, header_end + DIGEST_SIZE))
    before = snapshot(populated.storage.config_dir)
    with pytest.raises(CredentialFormatError, match="version 2") as err:
        populated.storage.retrieve("openai", "api_key")
    assert_no_secret(err.value)
    with pytest.raises(CredentialFormatError):
        populated.storage.store("openai", "api_key", "replacement-SECRETVALUE")
    assert snapshot(populated.storage.config_dir) == before


@pytest.mark.parametrize("protection", ["yubikey", "", None, 7])
def test_unknown_protection_is_a_format_error(
    make_storage: Callable[..., EncryptedFileStorage], protection: object
) -> None:
    storage, blob = stored_with_header(make_storage, "protection", protection)
    with pytest.raises(CredentialFormatError) as err:
        make_storage(PASSPHRASE).retrieve("openai", "api_key")
    assert_no_secret(err.value)
    with pytest.raises(CredentialFormatError):
        storage.store("openai", "api_key", "replacement-SECRETVALUE")
    assert storage.path.read_bytes() == blob


def test_protection_and_kdf_that_disagree_are_corruption(
    make_storage: Callable[..., EncryptedFileStorage],
) -> None:
    storage, _ = stored_with_header(make_storage, "protection", "keyfile")
    with pytest.raises(CredentialCorruptedError, match="disagree"):
        storage.retrieve("openai", "api_key")


# -- KDF parameters read from a file are capped -------------------------------------


KDF_ATTACKS: dict[str, object] = {
    "argon2-memory-16GiB": {"name": "argon2id", "memory_kib": 2**24, "iterations": 1, "lanes": 1},
    "argon2-iterations-1e6": {
        "name": "argon2id",
        "memory_kib": 64,
        "iterations": 10**6,
        "lanes": 1,
    },
    "argon2-lanes-1024": {"name": "argon2id", "memory_kib": 2**16, "iterations": 1, "lanes": 1024},
    "argon2-memory-below-lanes": {"name": "argon2id", "memory_kib": 8, "iterations": 1, "lanes": 4},
    "argon2-memory-bool": {"name": "argon2id", "memory_kib": True, "iterations": 1, "lanes": 1},
    "argon2-memory-negative": {"name": "argon2id", "memory_kib": -1, "iterations": 1, "lanes": 1},
    "argon2-memory-missing": {"name": "argon2id", "iterations": 1, "lanes": 1},
    "argon2-iterations-float": {
        "name": "argon2id",
        "memory_kib": 64,
        "iterations": 1.0,
        "lanes": 1,
    },
    "scrypt-n-2**30": {"name": "scrypt", "n": 2**30, "r": 8, "p": 1},
    "scrypt-n-not-power-of-two": {"name": "scrypt", "n": 3 * 2**10, "r": 8, "p": 1},
    "scrypt-r-huge": {"name": "scrypt", "n": 2**10, "r": 2**20, "p": 1},
    "scrypt-p-huge": {"name": "scrypt", "n": 2**10, "r": 8, "p": 2**20},
    "kdf-not-a-map": "argon2id",
    "kdf-without-name": {"memory_kib": 64},
}


@pytest.mark.parametrize("attack", sorted(KDF_ATTACKS))
def test_crafted_kdf_parameters_are_refused_before_deriving(
    make_storage: Callable[..., EncryptedFileStorage], attack: str
) -> None:
    storage, blob = stored_with_header(make_storage, "kdf", KDF_ATTACKS[attack])
    started = time.perf_counter()
    with pytest.raises(CredentialCorruptedError) as parse_err:
        fileformat.parse(blob)
    assert not isinstance(parse_err.value, CredentialFormatError)
    with pytest.raises(CredentialCorruptedError) as read_err:
        make_storage(PASSPHRASE).retrieve("openai", "api_key")
    with pytest.raises(CredentialCorruptedError):
        make_storage(PASSPHRASE).unlock(PASSPHRASE)
    elapsed = time.perf_counter() - started
    # Deriving any of these would take seconds to minutes (or gigabytes).
    assert elapsed < 1.0, f"took {elapsed:.2f}s: the parameters were used"
    assert_no_secret(read_err.value)
    assert storage.path.read_bytes() == blob


def test_unknown_kdf_name_is_a_format_error(
    make_storage: Callable[..., EncryptedFileStorage],
) -> None:
    stored_with_header(make_storage, "kdf", {"name": "bcrypt", "rounds": 12})
    with pytest.raises(CredentialFormatError, match="bcrypt"):
        make_storage(PASSPHRASE).retrieve("openai", "api_key")


def test_kdf_at_the_caps_is_accepted_by_the_parser(
    make_storage: Callable[..., EncryptedFileStorage],
) -> None:
    at_cap = {
        "name": "argon2id",
        "memory_kib": fileformat.MAX_ARGON2_MEMORY_KIB,
        "iterations": fileformat.MAX_ARGON2_ITERATIONS,
        "lanes": fileformat.MAX_ARGON2_LANES,
    }
    _, blob = stored_with_header(make_storage, "kdf", at_cap)
    assert fileformat.parse(blob).envelope.kdf.to_header() == at_cap


def test_default_kdf_is_argon2id_rfc9106(tmp_path: Path) -> None:
    default = KdfParams()
    assert (default.name, default.memory_kib, default.iterations, default.lanes) == (
        "argon2id",
        65_536,
        3,
        4,
    )
    storage = EncryptedFileStorage(tmp_path / "config", passphrase=PASSPHRASE)
    storage.store("openai", "api_key", SECRETS["openai"]["api_key"])
    _, header, _ = split_file(storage.path.read_bytes())
    assert header["kdf"] == {"name": "argon2id", "memory_kib": 65_536, "iterations": 3, "lanes": 4}
    assert storage.retrieve("openai", "api_key") == SECRETS["openai"]["api_key"]


# -- passphrases, key file, lock/unlock ------------------------------------------


def test_wrong_passphrase_is_not_corruption_and_changes_nothing(
    make_storage: Callable[..., EncryptedFileStorage],
) -> None:
    make_storage(PASSPHRASE).store_many(SECRETS)
    wrong = make_storage(WRONG_PASSPHRASE)
    before = snapshot(wrong.config_dir)
    for operation in (
        lambda: wrong.retrieve("openai", "api_key"),
        lambda: wrong.store("openai", "api_key", "replacement-SECRETVALUE"),
        lambda: wrong.list_keys(),
        lambda: wrong.set_passphrase(OTHER_PASSPHRASE),
        lambda: make_storage().unlock(WRONG_PASSPHRASE),
        lambda: make_storage().set_passphrase(None, current=WRONG_PASSPHRASE),
    ):
        with pytest.raises(CredentialBadPassphraseError) as err:
            operation()
        assert not isinstance(err.value, CredentialCorruptedError)
        assert "passphrase" in str(err.value)
        assert_no_secret(err.value, "replacement-SECRETVALUE")
    assert snapshot(wrong.config_dir) == before
    # The right passphrase still opens it, on the same instance and a new one.
    wrong.unlock(PASSPHRASE)
    assert wrong.retrieve("openai", "api_key") == SECRETS["openai"]["api_key"]
    assert make_storage(PASSPHRASE).load() == SECRETS


def test_passphrase_file_without_passphrase_is_locked_until_unlocked(
    make_storage: Callable[..., EncryptedFileStorage],
) -> None:
    make_storage(PASSPHRASE).store_many(SECRETS)
    storage = make_storage()
    before = snapshot(storage.config_dir)
    assert storage.protection == "passphrase"
    assert storage.locked
    with pytest.raises(CredentialLockedError) as err:
        storage.retrieve("openai", "api_key")
    assert "unlock" in str(err.value)
    with pytest.raises(CredentialLockedError):
        storage.store("openai", "api_key", "replacement-SECRETVALUE")
    assert snapshot(storage.config_dir) == before

    with pytest.raises(CredentialBadPassphraseError):
        storage.unlock(WRONG_PASSPHRASE)
    assert storage.locked

    storage.unlock(PASSPHRASE)
    assert not storage.locked
    assert storage.load() == SECRETS
    storage.store("mistral", "api_key", "mistral-SECRETVALUE")

    storage.lock()
    assert storage.locked
    with pytest.raises(CredentialLockedError):
        storage.retrieve("mistral", "api_key")
    storage.unlock(PASSPHRASE)
    assert storage.retrieve("mistral", "api_key") == "mistral-SECRETVALUE"


def test_missing_key_file_raises_and_nothing_is_overwritten(
    make_storage: Callable[..., EncryptedFileStorage],
) -> None:
    storage = make_storage()
    storage.store_many(SECRETS)
    key = storage.key_path.read_bytes()
    storage.key_path.unlink()
    before = snapshot(storage.config_dir)
    # A fresh instance: the writer above still holds the key in its KEK cache.
    for candidate in (make_storage(), make_storage()):
        with pytest.raises(CredentialStorageError) as err:
            candidate.retrieve("openai", "api_key")
        assert not isinstance(err.value, CredentialCorruptedError)
        assert str(storage.key_path) in str(err.value)
        with pytest.raises(CredentialStorageError):
            candidate.store("openai", "api_key", "replacement-SECRETVALUE")
    # No new key file was invented, so the old file is still openable.
    assert not storage.key_path.exists()
    assert snapshot(storage.config_dir) == before
    write_new_private(storage.key_path, key)
    assert make_storage().load() == SECRETS


def test_key_file_of_wrong_size_is_corruption(
    make_storage: Callable[..., EncryptedFileStorage],
) -> None:
    storage = make_storage()
    storage.store_many(SECRETS)
    storage.key_path.write_bytes(storage.key_path.read_bytes()[:16])
    before = snapshot(storage.config_dir)
    with pytest.raises(CredentialCorruptedError, match="wrong size"):
        make_storage().store("openai", "api_key", "replacement-SECRETVALUE")
    assert snapshot(storage.config_dir) == before


def test_other_key_file_is_a_bad_key_not_corruption(
    make_storage: Callable[..., EncryptedFileStorage],
) -> None:
    storage = make_storage()
    storage.store_many(SECRETS)
    storage.key_path.write_bytes(os.urandom(32))
    before = snapshot(storage.config_dir)
    with pytest.raises(CredentialBadPassphraseError, match="key file") as err:
        make_storage().retrieve("openai", "api_key")
    assert not isinstance(err.value, CredentialCorruptedError)
    assert snapshot(storage.config_dir) == before


# -- set_passphrase -----------------------------------------------------------------


def test_keyfile_to_passphrase(make_storage: Callable[..., EncryptedFileStorage]) -> None:
    storage = make_storage()
    storage.store_many(SECRETS)
    assert storage.protection == "keyfile"
    storage.set_passphrase(PASSPHRASE)
    assert storage.protection == "passphrase"
    assert make_storage().protection == "passphrase"
    assert storage.load() == SECRETS
    assert make_storage(PASSPHRASE).load() == SECRETS
    with pytest.raises(CredentialLockedError):
        make_storage().load()
    with pytest.raises(CredentialBadPassphraseError):
        make_storage(WRONG_PASSPHRASE).load()
    assert "warning" not in make_storage().describe()


def test_change_passphrase(make_storage: Callable[..., EncryptedFileStorage]) -> None:
    storage = make_storage(PASSPHRASE)
    storage.store_many(SECRETS)
    storage.set_passphrase(OTHER_PASSPHRASE)
    with pytest.raises(CredentialBadPassphraseError):
        make_storage(PASSPHRASE).load()
    assert make_storage(OTHER_PASSPHRASE).load() == SECRETS
    # The writer keeps working after the change, and its writes keep the new one.
    storage.store("mistral", "api_key", "mistral-SECRETVALUE")
    assert make_storage(OTHER_PASSPHRASE).retrieve("mistral", "api_key") == "mistral-SECRETVALUE"

    # A fresh, locked instance changes it with current=.
    fresh = make_storage()
    fresh.set_passphrase(PASSPHRASE, current=OTHER_PASSPHRASE)
    with pytest.raises(CredentialBadPassphraseError):
        make_storage(OTHER_PASSPHRASE).load()
    assert make_storage(PASSPHRASE).retrieve("openai", "api_key") == SECRETS["openai"]["api_key"]


def test_change_with_wrong_current_changes_nothing(
    make_storage: Callable[..., EncryptedFileStorage],
) -> None:
    make_storage(PASSPHRASE).store_many(SECRETS)
    before = snapshot(make_storage().config_dir)
    with pytest.raises(CredentialBadPassphraseError) as err:
        make_storage().set_passphrase(OTHER_PASSPHRASE, current=WRONG_PASSPHRASE)
    assert_no_secret(err.value)
    assert snapshot(make_storage().config_dir) == before
    assert make_storage(PASSPHRASE).load() == SECRETS


def test_passphrase_to_keyfile(make_storage: Callable[..., EncryptedFileStorage]) -> None:
    storage = make_storage(PASSPHRASE)
    storage.store_many(SECRETS)
    assert not storage.key_path.exists()
    storage.set_passphrase(None)
    assert storage.protection == "keyfile"
    assert mode_of(storage.key_path) == 0o600
    assert make_storage().load() == SECRETS
    assert not make_storage().locked
    # No generation stays readable under the old protection: the backup is gone.
    assert not storage.backup_path.exists()


def test_set_passphrase_on_a_new_store_creates_its_directory(
    make_storage: Callable[..., EncryptedFileStorage], tmp_path: Path
) -> None:
    """A first-run ``passwd`` must work like a first ``store`` does.

    Regression: set_passphrase used to take the lock before creating
    config_dir, raising CredentialStorageUnavailableError ("cannot open lock
    file") for a store whose directory did not exist yet.
    """
    directory = tmp_path / "new" / "config"
    storage = make_storage(directory=directory)
    storage.set_passphrase(PASSPHRASE)
    assert mode_of(directory) == 0o700
    assert make_storage(PASSPHRASE, directory=directory).protection == "passphrase"
    assert make_storage(PASSPHRASE, directory=directory).load() == {}


# -- describe / repr -------------------------------------------------------------


def test_describe_keyfile_warns_and_leaks_nothing(
    make_storage: Callable[..., EncryptedFileStorage],
) -> None:
    storage = make_storage()
    assert storage.describe()["protection"] == "keyfile"
    storage.store_many(SECRETS)
    info = storage.describe()
    assert info["backend"] == "encrypted-file"
    assert info["path"] == str(storage.path)
    assert info["protection"] == "keyfile"
    assert "casual" in info["warning"] and "passphrase" in info["warning"]
    for text in (repr(info), repr(storage), str(storage)):
        for secret in ALL_SECRET_TEXT:
            assert secret not in text
    assert storage.key_path.read_bytes().hex() not in repr(info)


def test_describe_and_repr_with_passphrase_leak_nothing(
    make_storage: Callable[..., EncryptedFileStorage],
) -> None:
    storage = make_storage(PASSPHRASE)
    assert storage.describe()["protection"] == "passphrase"
    storage.store_many(SECRETS)
    info = storage.describe()
    assert info["protection"] == "passphrase"
    assert "warning" not in info
    for text in (repr(info), repr(storage), str(storage)):
        for secret in ALL_SECRET_TEXT:
            assert secret not in text


# -- modes -----------------------------------------------------------------------


@pytest.fixture
def umask_zero() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.mark.usefixtures("umask_zero")
def test_files_and_directories_are_private_even_with_umask_zero(
    tmp_path: Path, make_storage: Callable[..., EncryptedFileStorage]
) -> None:
    directory = tmp_path / "a" / "b" / "config"
    storage = make_storage(directory=directory)
    storage.store("openai", "api_key", "one")
    storage.store("openai", "api_key", "two")
    for name in (
        "credentials.enc",
        "credentials.enc.bak",
        "credentials.enc.lock",
        "credentials.key",
    ):
        assert mode_of(directory / name) == 0o600, name
    for created in (tmp_path / "a", tmp_path / "a" / "b", directory):
        assert mode_of(created) == 0o700, created
    # set_passphrase rewrites the file: still 0600; the next store's backup too.
    storage.set_passphrase(PASSPHRASE)
    storage.store("openai", "api_key", "three")
    for name in ("credentials.enc", "credentials.enc.bak"):
        assert mode_of(directory / name) == 0o600, name


# -- backup ----------------------------------------------------------------------


@pytest.mark.parametrize("passphrase", [None, PASSPHRASE])
def test_backup_holds_the_previous_generation(
    make_storage: Callable[..., EncryptedFileStorage], tmp_path: Path, passphrase: str | None
) -> None:
    storage = make_storage(passphrase)
    storage.store("openai", "api_key", "generation-one")
    assert not storage.backup_path.exists()
    storage.store("openai", "api_key", "generation-two")
    storage.store("anthropic", "api_key", "generation-two-b")
    current = storage.path.read_bytes()

    elsewhere = tmp_path / "restore"
    elsewhere.mkdir(mode=0o700)
    (elsewhere / "credentials.enc").write_bytes(storage.backup_path.read_bytes())
    if passphrase is None:
        (elsewhere / "credentials.key").write_bytes(storage.key_path.read_bytes())
    assert make_storage(passphrase, directory=elsewhere).load() == {
        "openai": {"api_key": "generation-two"}
    }
    assert storage.path.read_bytes() == current
    assert storage.load() == {
        "openai": {"api_key": "generation-two"},
        "anthropic": {"api_key": "generation-two-b"},
    }


# -- limits and validation ---------------------------------------------------------


def test_value_of_64_kib_is_stored_one_byte_more_is_refused(
    make_storage: Callable[..., EncryptedFileStorage],
) -> None:
    storage = make_storage()
    biggest = "S" * 65_536
    storage.store("big", "ascii", biggest)
    multibyte = "é" * 32_768  # 65,536 bytes in UTF-8
    storage.store("big", "multibyte", multibyte)
    assert make_storage().retrieve("big", "ascii") == biggest
    assert make_storage().retrieve("big", "multibyte") == multibyte

    before = snapshot(storage.config_dir)
    for too_big in ("T" * 65_537, "é" * 32_768 + "T"):
        with pytest.raises(CredentialTooLargeError) as err:
            storage.store("big", "ascii", too_big)
        assert "65536" in str(err.value)
        assert "TTTTTTTT" not in str(err.value) and "éééé" not in str(err.value)
        with pytest.raises(CredentialTooLargeError):
            storage.store_many({"big": {"ascii": "ok", "other": too_big}})
    assert snapshot(storage.config_dir) == before


def test_too_large_value_on_a_new_store_writes_nothing(
    make_storage: Callable[..., EncryptedFileStorage], config_dir: Path
) -> None:
    with pytest.raises(CredentialTooLargeError):
        make_storage().store("big", "ascii", "T" * 65_537)
    assert not config_dir.exists()


BAD_NAMES: dict[str, object] = {
    "nul": "open\x00ai",
    "newline": "open\nai",
    "escape": "\x1b[31mred",
    "tab": "a\tb",
    "del": "a\x7f",
    "c1-control": "a\x85b",
    "empty": "",
    "256-chars": "n" * 256,
    "lone-surrogate": "a\ud800",
    "int": 42,
    "none": None,
    "bytes": b"openai",
}


@pytest.mark.parametrize("field", ["provider", "key"])
@pytest.mark.parametrize("bad", sorted(BAD_NAMES))
def test_bad_names_are_refused_before_any_write(
    make_storage: Callable[..., EncryptedFileStorage], config_dir: Path, field: str, bad: str
) -> None:
    name = BAD_NAMES[bad]
    args = (name, "api_key") if field == "provider" else ("openai", name)
    value = "validation-SECRETVALUE"

    fresh = make_storage()
    with pytest.raises(CredentialValidationError) as err:
        fresh.store(*args, value)  # type: ignore[arg-type]
    assert field in str(err.value)
    assert_no_secret(err.value, value)
    assert not config_dir.exists()

    fresh.store("openai", "api_key", SECRETS["openai"]["api_key"])
    before = snapshot(config_dir)
    with pytest.raises(CredentialValidationError):
        fresh.store(*args, value)  # type: ignore[arg-type]
    with pytest.raises(CredentialValidationError):
        fresh.store_many({args[0]: {args[1]: value}})  # type: ignore[dict-item]
    with pytest.raises(CredentialValidationError):
        fresh.retrieve(*args)  # type: ignore[arg-type]
    with pytest.raises(CredentialValidationError):
        fresh.delete(*args)  # type: ignore[arg-type]
    assert snapshot(config_dir) == before


def test_names_at_the_limit_are_accepted(make_storage: Callable[..., EncryptedFileStorage]) -> None:
    storage = make_storage()
    provider, key = "p" * 255, "k" * 255
    storage.store(provider, key, "limit-value")
    assert make_storage().retrieve(provider, key) == "limit-value"
    assert make_storage().list_keys(provider) == [(provider, key)]


# -- temp files and symlinks -------------------------------------------------------


def test_no_temp_file_remains_after_stores(
    make_storage: Callable[..., EncryptedFileStorage],
) -> None:
    storage = make_storage(PASSPHRASE)
    for index in range(5):
        storage.store("openai", f"key{index}", f"value{index}")
    storage.delete("openai", "key0")
    storage.set_passphrase(OTHER_PASSPHRASE)
    assert temp_files(storage.config_dir) == []
    # The backup went with the old passphrase (it opened that generation).
    assert sorted(p.name for p in storage.config_dir.iterdir()) == [
        "credentials.enc",
        "credentials.enc.lock",
    ]


def test_stale_temps_are_removed_by_the_next_store(
    make_storage: Callable[..., EncryptedFileStorage], tmp_path: Path
) -> None:
    storage = make_storage()
    storage.store("openai", "api_key", "one")
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"not yours")
    stale = [
        storage.config_dir / ".credentials.enc.0123456789ab.tmp",
        storage.config_dir / ".credentials.enc.bak.ba9876543210.tmp",
    ]
    for path in stale:
        path.write_bytes(b"half a write")
    planted_link = storage.config_dir / ".credentials.enc.feedfacecafe.tmp"
    planted_link.symlink_to(outside)
    unrelated = storage.config_dir / "notes.tmp"
    unrelated.write_bytes(b"keep me")

    storage.store("openai", "api_key", "two")
    assert temp_files(storage.config_dir) == []
    assert not planted_link.is_symlink()
    assert outside.read_bytes() == b"not yours"
    assert unrelated.read_bytes() == b"keep me"
    assert make_storage().retrieve("openai", "api_key") == "two"


def test_write_new_private_refuses_an_existing_symlink(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_bytes(b"original")
    link = tmp_path / ".credentials.enc.0123456789ab.tmp"
    link.symlink_to(target)
    with pytest.raises(FileExistsError):
        write_new_private(link, b"redirected")
    assert target.read_bytes() == b"original"

    dangling = tmp_path / "dangling"
    link2 = tmp_path / ".credentials.enc.aaaaaaaaaaaa.tmp"
    link2.symlink_to(dangling)
    with pytest.raises(FileExistsError):
        write_new_private(link2, b"redirected")
    assert not dangling.exists()


def test_write_new_private_creates_0600_even_with_umask_zero(
    tmp_path: Path, umask_zero: None
) -> None:
    path = tmp_path / "fresh"
    write_new_private(path, b"data")
    assert mode_of(path) == 0o600
    assert path.read_bytes() == b"data"


def test_lock_file_symlink_is_not_followed(
    make_storage: Callable[..., EncryptedFileStorage], tmp_path: Path
) -> None:
    storage = make_storage()
    storage.store("openai", "api_key", "one")
    storage.lock_path.unlink()
    target = tmp_path / "elsewhere.lock"
    storage.lock_path.symlink_to(target)
    before = storage.path.read_bytes()
    with pytest.raises(CredentialStorageUnavailableError):
        storage.store("openai", "api_key", "two")
    with pytest.raises(CredentialStorageUnavailableError):
        with exclusive_lock(storage.lock_path):
            pass
    assert not target.exists()
    assert storage.path.read_bytes() == before
