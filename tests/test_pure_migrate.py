"""CredentialMigrator against model-forge's real config shape (``auth_data``).

The target store is a real EncryptedFileStorage in ``tmp_path``. Faults are
injected by small real CredentialStorage classes that wrap it.
"""

from __future__ import annotations

import copy
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from modelforge_credentials import (
    CredentialMigrator,
    CredentialStorage,
    CredentialStorageError,
    CredentialStorageUnavailableError,
    CredentialValidationError,
    EncryptedFileStorage,
    KdfParams,
)
from modelforge_credentials.migrate import BACKUP_SUFFIX, MigrationError
from modelforge_example import copilot_auth, realistic_config
from refs_testkit import PassThroughStorage

OPENAI_KEY = "sk-proj-migrate-4f1c9e2a7b"
ACCESS_TOKEN = "ghu_migrateAccess9d8c7b6a"
REFRESH_TOKEN = "ghr_migrateRefresh1a2b3c4d"
ANTHROPIC_KEY = "sk-ant-migrate-design-55aa"
GOOGLE_KEY = "AIza-migrate-both-sections-77"
GOOGLE_TOKEN = "ya29.migrate-both-sections-88"

#: Every secret string that must never leak into a message or repr.
SECRETS = (OPENAI_KEY, ACCESS_TOKEN, REFRESH_TOKEN, ANTHROPIC_KEY, GOOGLE_KEY, GOOGLE_TOKEN)

#: The realistic example of model-forge-today.md, with secrets made unique.
EXAMPLE: dict[str, Any] = realistic_config(OPENAI_KEY, copilot_auth(ACCESS_TOKEN, REFRESH_TOKEN))


def model_forge_bytes(config: dict[str, Any]) -> bytes:
    """What model-forge writes: ``json.dump(config, f, indent=4)``."""
    return json.dumps(config, indent=4).encode("utf-8")


def without_secrets(config: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(config)
    for data in result.get("providers", {}).values():
        data.pop("auth_data", None)
        data.pop("credentials", None)
    return result


def keys_anywhere(node: Any) -> set[str]:
    if isinstance(node, dict):
        found = set(node)
        for value in node.values():
            found |= keys_anywhere(value)
        return found
    if isinstance(node, list):
        return set().union(*(keys_anywhere(v) for v in node)) if node else set()
    return set()


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


@pytest.fixture
def store(tmp_path: Path, fast_kdf: KdfParams) -> EncryptedFileStorage:
    return EncryptedFileStorage(tmp_path / "store", kdf=fast_kdf)


@pytest.fixture(params=["global", "local"])
def config_path(
    request: pytest.FixtureRequest, isolated_environment: Path, tmp_path: Path
) -> Iterator[Path]:
    """The example config as model-forge writes it, at one of its two homes."""
    if request.param == "global":
        path = isolated_environment / ".config" / "model-forge" / "config.json"
    else:
        path = tmp_path / "project" / ".model-forge" / "config.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(model_forge_bytes(EXAMPLE))
    path.chmod(0o644)
    yield path


def write_config(path: Path, config: dict[str, Any]) -> bytes:
    raw = model_forge_bytes(config)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(raw)
    path.chmod(0o644)
    return raw


def backup_of(path: Path) -> Path:
    return path.with_name(path.name + BACKUP_SUFFIX)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def migrated(config_path: Path, store: CredentialStorage) -> tuple[bytes, CredentialMigrator]:
    """The config's bytes before, and the migrator that has just migrated it."""
    original = config_path.read_bytes()
    migrator = CredentialMigrator(config_path, store)
    migrator.migrate_credentials()
    return original, migrator


class FailAfterStores(PassThroughStorage):
    """A real storage that dies after ``budget`` successful stores (a crash)."""

    def __init__(self, inner: EncryptedFileStorage, budget: int) -> None:
        super().__init__(inner)
        self.budget = budget

    def store(self, provider: str, key: str, value: str) -> None:
        if self.budget <= 0:
            raise CredentialStorageUnavailableError("injected crash between stores")
        self.budget -= 1
        self.inner.store(provider, key, value)


class ReadsBackWrong(FailAfterStores):
    """A real storage that garbles one credential on read-back."""

    def __init__(self, inner: EncryptedFileStorage, provider: str, key: str) -> None:
        super().__init__(inner, budget=10**6)
        self.bad = (provider, key)

    def retrieve(self, provider: str, key: str) -> str | None:
        value = self.inner.retrieve(provider, key)
        if (provider, key) == self.bad and value is not None:
            return value[:-1]
        return value


# -- the realistic example ---------------------------------------------------


def test_fault_injectors_are_credential_storages(store: EncryptedFileStorage) -> None:
    assert isinstance(FailAfterStores(store, 1), CredentialStorage)
    assert isinstance(ReadsBackWrong(store, "p", "k"), CredentialStorage)


def test_migrates_every_auth_data_value(config_path: Path, store: EncryptedFileStorage) -> None:
    migrator = CredentialMigrator(config_path, store)
    assert migrator.can_migrate()

    counts = migrator.migrate_credentials()

    assert counts == {"openai": 1, "github_copilot": 6}
    assert store.retrieve("openai", "api_key") == OPENAI_KEY
    for key, value in EXAMPLE["providers"]["github_copilot"]["auth_data"].items():
        if isinstance(value, str):
            assert store.retrieve("github_copilot", key) == value
    assert store.list_keys("ollama") == []
    assert migrator.restore_auth_data("openai") == {"api_key": OPENAI_KEY}
    restored = migrator.restore_auth_data("github_copilot")
    assert restored == EXAMPLE["providers"]["github_copilot"]["auth_data"]
    assert restored["expires_in"] == 28800
    assert type(restored["expires_in"]) is int


def test_rewritten_config_keeps_everything_but_secrets(
    config_path: Path, store: EncryptedFileStorage
) -> None:
    CredentialMigrator(config_path, store).migrate_credentials()

    raw = config_path.read_bytes()
    rewritten = json.loads(raw)
    assert "auth_data" not in keys_anywhere(rewritten)
    assert "credentials" not in keys_anywhere(rewritten)
    assert_no_secret(raw.decode("utf-8"))
    assert rewritten == without_secrets(EXAMPLE)
    # Spelled out, so a broken helper cannot hide a loss.
    assert rewritten["current_model"] == {"provider": "openai", "model": "gpt-4o"}
    assert rewritten["settings"] == {"show_telemetry": True}
    assert rewritten["providers"]["ollama"] == EXAMPLE["providers"]["ollama"]
    copilot = rewritten["providers"]["github_copilot"]
    assert copilot["auth_details"] == EXAMPLE["providers"]["github_copilot"]["auth_details"]
    assert copilot["models"] == {"claude-sonnet": {}}
    assert rewritten["providers"]["openai"]["base_url"] == "https://api.openai.com/v1"


def test_backup_is_private_and_holds_the_original(
    config_path: Path, store: EncryptedFileStorage
) -> None:
    original, migrator = migrated(config_path, store)
    backup = backup_of(config_path)
    assert migrator.backup_path == backup
    assert backup.read_bytes() == original
    assert mode_of(backup) == 0o600
    assert mode_of(config_path) == 0o644


@pytest.mark.parametrize("mode", [0o600, 0o640])
def test_config_mode_is_preserved(
    config_path: Path, store: EncryptedFileStorage, mode: int
) -> None:
    config_path.chmod(mode)
    CredentialMigrator(config_path, store).migrate_credentials()
    assert mode_of(config_path) == mode


def test_config_mode_is_preserved_whatever_the_umask(
    config_path: Path, store: EncryptedFileStorage
) -> None:
    # model-forge run under umask 002 writes 0664; the migration may run under
    # another umask (a systemd-started agent uses 022).
    config_path.chmod(0o664)
    previous = os.umask(0o022)
    try:
        CredentialMigrator(config_path, store).migrate_credentials()
    finally:
        os.umask(previous)
    assert mode_of(config_path) == 0o664


def test_symlinked_config_leaves_no_secret_behind(
    tmp_path: Path, store: EncryptedFileStorage
) -> None:
    # Dotfile managers symlink config.json into a repository.
    target = tmp_path / "dotfiles" / "model-forge.json"
    original = write_config(target, EXAMPLE)
    link = tmp_path / "home" / ".config" / "model-forge" / "config.json"
    link.parent.mkdir(parents=True)
    link.symlink_to(target)

    try:
        CredentialMigrator(link, store).migrate_credentials()
    except CredentialStorageError as err:
        # Refusing is acceptable, if it says so and changes nothing.
        assert target.read_bytes() == original
        assert_no_secret(str(err))
        return
    text = target.read_text("utf-8")
    leaked = sum(secret in text for secret in SECRETS)
    assert leaked == 0, "secrets remain in plain text in the symlink's target"
    assert link.is_symlink(), "the symlink was replaced by a plain file"


# -- the design's `credentials` section ----------------------------------------


def test_design_credentials_section_and_both_sections(
    tmp_path: Path, store: EncryptedFileStorage
) -> None:
    config = copy.deepcopy(EXAMPLE)
    config["providers"]["anthropic"] = {
        "llm_type": "anthropic",
        "models": {"claude-3-5-sonnet": {}},
        "credentials": {"api_key": ANTHROPIC_KEY},
    }
    config["providers"]["google"] = {
        "llm_type": "google",
        "credentials": {"api_key": GOOGLE_KEY},
        "auth_data": {"access_token": GOOGLE_TOKEN, "expires_in": 3600},
    }
    path = tmp_path / "config.json"
    write_config(path, config)
    migrator = CredentialMigrator(path, store)

    assert migrator.plan()["google"] == ["access_token", "api_key", "expires_in"]
    counts = migrator.migrate_credentials()

    assert counts == {"openai": 1, "github_copilot": 6, "anthropic": 1, "google": 3}
    assert store.retrieve("anthropic", "api_key") == ANTHROPIC_KEY
    assert migrator.restore_auth_data("google") == {
        "api_key": GOOGLE_KEY,
        "access_token": GOOGLE_TOKEN,
        "expires_in": 3600,
    }
    rewritten = json.loads(path.read_bytes())
    assert "credentials" not in keys_anywhere(rewritten)
    assert "auth_data" not in keys_anywhere(rewritten)
    assert rewritten == without_secrets(config)


# -- dry run, re-runs, crashes ---------------------------------------------------


def test_dry_run_writes_nothing(config_path: Path, store: EncryptedFileStorage) -> None:
    original = config_path.read_bytes()
    listing = sorted(p.name for p in config_path.parent.iterdir())

    counts = CredentialMigrator(config_path, store).migrate_credentials(dry_run=True)

    assert counts == {"openai": 1, "github_copilot": 6}
    assert config_path.read_bytes() == original
    assert sorted(p.name for p in config_path.parent.iterdir()) == listing
    assert not backup_of(config_path).exists()
    assert not store.config_dir.exists()
    assert store.list_keys() == []


def test_rerun_after_success_changes_nothing(
    config_path: Path, store: EncryptedFileStorage
) -> None:
    migrator = CredentialMigrator(config_path, store)
    migrator.migrate_credentials()
    config_after = config_path.read_bytes()
    backup_after = backup_of(config_path).read_bytes()
    store_after = store.path.read_bytes()

    assert migrator.migrate_credentials() == {}
    assert not migrator.can_migrate()
    assert config_path.read_bytes() == config_after
    assert backup_of(config_path).read_bytes() == backup_after
    assert store.path.read_bytes() == store_after


@pytest.mark.parametrize("budget", [0, 1, 3, 7])
def test_crash_between_storing_and_rewriting(
    config_path: Path, store: EncryptedFileStorage, budget: int
) -> None:
    original = config_path.read_bytes()
    crashing = FailAfterStores(store, budget)

    with pytest.raises(CredentialStorageUnavailableError, match="injected") as caught:
        CredentialMigrator(config_path, crashing).migrate_credentials()

    assert config_path.read_bytes() == original
    assert_no_secret(str(caught.value))
    counts = CredentialMigrator(config_path, store).migrate_credentials()
    assert counts == {"openai": 1, "github_copilot": 6}
    migrator = CredentialMigrator(config_path, store)
    assert migrator.restore_auth_data("openai") == EXAMPLE["providers"]["openai"]["auth_data"]
    assert (
        migrator.restore_auth_data("github_copilot")
        == EXAMPLE["providers"]["github_copilot"]["auth_data"]
    )
    assert backup_of(config_path).read_bytes() == original
    assert json.loads(config_path.read_bytes()) == without_secrets(EXAMPLE)


def test_read_back_mismatch_is_an_error_and_keeps_config(
    config_path: Path, store: EncryptedFileStorage
) -> None:
    original = config_path.read_bytes()
    garbling = ReadsBackWrong(store, "github_copilot", "refresh_token")
    migrator = CredentialMigrator(config_path, garbling)

    with pytest.raises(MigrationError) as caught:
        migrator.migrate_credentials()

    assert config_path.read_bytes() == original
    message = str(caught.value)
    assert "github_copilot/refresh_token" in message
    assert "re-run" in message
    assert_no_secret(message)
    assert_no_secret(repr(caught.value))
    assert REFRESH_TOKEN[:-1] not in message
    assert isinstance(caught.value, CredentialStorageError)


# -- rollback and confirm ------------------------------------------------------------


def test_rollback_restores_original_and_cleans_the_store(
    config_path: Path, store: EncryptedFileStorage
) -> None:
    original, migrator = migrated(config_path, store)
    assert migrator.rollback() == {"openai": 1, "github_copilot": 6}

    assert config_path.read_bytes() == original
    assert mode_of(config_path) == 0o644
    assert store.list_keys() == []
    assert not backup_of(config_path).exists()


def test_rollback_keeps_a_value_changed_after_migration(
    config_path: Path, store: EncryptedFileStorage
) -> None:
    migrator = CredentialMigrator(config_path, store)
    migrator.migrate_credentials()
    store.store("openai", "api_key", "sk-rotated-after-migration")

    migrator.rollback()

    assert store.list_keys() == [("openai", "api_key")]
    assert store.retrieve("openai", "api_key") == "sk-rotated-after-migration"


def test_rollback_without_backup_says_why(config_path: Path, store: EncryptedFileStorage) -> None:
    migrator = CredentialMigrator(config_path, store)
    migrator.migrate_credentials()
    assert migrator.confirm() is True
    assert not backup_of(config_path).exists()
    assert migrator.confirm() is False
    migrated = config_path.read_bytes()

    with pytest.raises(MigrationError) as caught:
        migrator.rollback()

    message = str(caught.value)
    assert str(backup_of(config_path)) in message
    assert "confirmed" in message
    assert_no_secret(message)
    assert config_path.read_bytes() == migrated
    assert store.retrieve("openai", "api_key") == OPENAI_KEY


def test_rollback_never_migrated(config_path: Path, store: EncryptedFileStorage) -> None:
    original = config_path.read_bytes()
    with pytest.raises(MigrationError, match="no migration backup"):
        CredentialMigrator(config_path, store).rollback()
    assert config_path.read_bytes() == original


# -- bad and missing configs, leaks --------------------------------------------------


def test_invalid_json_changes_nothing(tmp_path: Path, store: EncryptedFileStorage) -> None:
    path = tmp_path / "config.json"
    broken = model_forge_bytes(EXAMPLE)[:-3] + b",,}"
    path.write_bytes(broken)
    migrator = CredentialMigrator(path, store)

    for call in (migrator.migrate_credentials, migrator.plan, migrator.can_migrate):
        with pytest.raises(CredentialValidationError) as caught:
            call()
        assert str(path) in str(caught.value)
        assert_no_secret(str(caught.value))
        assert_no_secret(repr(caught.value))
        assert caught.value.__cause__ is None
        assert caught.value.__suppress_context__

    assert path.read_bytes() == broken
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_non_object_config_is_rejected(tmp_path: Path, store: EncryptedFileStorage) -> None:
    path = tmp_path / "config.json"
    path.write_bytes(json.dumps([OPENAI_KEY]).encode())
    with pytest.raises(CredentialValidationError) as caught:
        CredentialMigrator(path, store).migrate_credentials()
    assert_no_secret(str(caught.value))
    assert not backup_of(path).exists()


def test_missing_config_is_nothing_to_do(tmp_path: Path, store: EncryptedFileStorage) -> None:
    migrator = CredentialMigrator(tmp_path / "absent" / "config.json", store)
    assert migrator.migrate_credentials() == {}
    assert migrator.migrate_credentials(dry_run=True) == {}
    assert migrator.plan() == {}
    assert not migrator.can_migrate()
    assert not (tmp_path / "absent").exists()
    assert not store.config_dir.exists()


def test_config_without_secrets_is_left_alone(tmp_path: Path, store: EncryptedFileStorage) -> None:
    path = tmp_path / "config.json"
    raw = write_config(path, without_secrets(EXAMPLE))
    assert CredentialMigrator(path, store).migrate_credentials() == {}
    assert path.read_bytes() == raw
    assert not backup_of(path).exists()


def test_repr_and_plan_hold_no_secret(config_path: Path, store: EncryptedFileStorage) -> None:
    migrator = CredentialMigrator(config_path, store)
    assert_no_secret(repr(migrator))
    plan = migrator.plan()
    assert plan == {
        "openai": ["api_key"],
        "github_copilot": sorted(EXAMPLE["providers"]["github_copilot"]["auth_data"]),
    }
    assert_no_secret(json.dumps(plan))
    migrator.migrate_credentials()
    assert_no_secret(repr(migrator))
    assert_no_secret(repr(store))


# -- model-forge writing while migrate runs; hard links; not a regular file --------------

NEW_PROVIDER_KEY = "sk-ant-written-during-migration-42"


def model_forge_adds_a_provider(path: Path) -> None:
    """model-forge's save_auth_data: re-read the file, add, ``open("w")`` + json.dump."""
    config = json.loads(path.read_bytes())
    config["providers"]["anthropic"] = {
        "llm_type": "anthropic",
        "auth_strategy": "api_key",
        "auth_data": {"api_key": NEW_PROVIDER_KEY},
    }
    with open(path, "w") as handle:
        json.dump(config, handle, indent=4)


class WritesConfigOnFirstReadBack(FailAfterStores):
    """model-forge saving a new provider while the migration reads back its stores."""

    def __init__(self, inner: EncryptedFileStorage, config: Path) -> None:
        super().__init__(inner, budget=10**6)
        self.config = config
        self.done = False

    def retrieve(self, provider: str, key: str) -> str | None:
        if not self.done:
            self.done = True
            model_forge_adds_a_provider(self.config)
        return self.inner.retrieve(provider, key)


def assert_everything_arrived(path: Path, store: EncryptedFileStorage) -> None:
    assert store.retrieve("anthropic", "api_key") == NEW_PROVIDER_KEY
    assert store.retrieve("openai", "api_key") == OPENAI_KEY
    config = json.loads(path.read_bytes())
    assert "auth_data" not in json.dumps(config)
    assert config["providers"]["anthropic"]["llm_type"] == "anthropic"  # its config survives


def test_a_write_while_migrating_is_migrated_not_lost(
    config_path: Path, store: EncryptedFileStorage
) -> None:
    migrator = CredentialMigrator(config_path, WritesConfigOnFirstReadBack(store, config_path))
    migrator.migrate_credentials()
    assert_everything_arrived(config_path, store)


def test_a_write_into_the_replaced_file_is_migrated_not_lost(
    config_path: Path, store: EncryptedFileStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A writer that opened the config just before the rename writes into the old
    inode: the migration must notice and take that content too."""
    from modelforge_credentials import migrate

    real_write_atomic = migrate.write_atomic
    late: list[bool] = []

    def replace_then_write_old(path: Path, data: bytes, **kwargs: Any) -> Any:
        if path != config_path.resolve() or late:
            return real_write_atomic(path, data, **kwargs)
        late.append(True)
        old = open(path, "r+")  # model-forge's open("w"), before our rename
        stamp = real_write_atomic(path, data, **kwargs)
        content = json.loads(open(path.with_name(path.name + BACKUP_SUFFIX)).read())
        content["providers"]["anthropic"] = {
            "llm_type": "anthropic",
            "auth_strategy": "api_key",
            "auth_data": {"api_key": NEW_PROVIDER_KEY},
        }
        old.truncate(0)
        json.dump(content, old, indent=4)
        old.close()
        return stamp

    monkeypatch.setattr(migrate, "write_atomic", replace_then_write_old)
    CredentialMigrator(config_path, store).migrate_credentials()
    assert late == [True]
    assert_everything_arrived(config_path, store)


def test_a_config_that_never_stops_changing_is_refused_with_nothing_lost(
    config_path: Path, store: EncryptedFileStorage
) -> None:
    class AlwaysWriting(FailAfterStores):
        def retrieve(self, provider: str, key: str) -> str | None:
            raw = json.loads(config_path.read_bytes())
            raw.setdefault("settings", {})["tick"] = raw.get("settings", {}).get("tick", 0) + 1
            config_path.write_text(json.dumps(raw, indent=4))
            return self.inner.retrieve(provider, key)

    with pytest.raises(MigrationError, match="kept changing"):
        CredentialMigrator(config_path, AlwaysWriting(store, 10**6)).migrate_credentials()
    assert OPENAI_KEY in config_path.read_text()  # still in the config...
    assert store.retrieve("openai", "api_key") == OPENAI_KEY  # ...and in the store


def test_a_hard_linked_config_is_refused_before_anything_is_written(
    config_path: Path, store: EncryptedFileStorage, tmp_path: Path
) -> None:
    other = tmp_path / "other-name.json"
    os.link(config_path, other)
    before = config_path.read_bytes()
    with pytest.raises(CredentialValidationError) as caught:
        CredentialMigrator(config_path, store).migrate_credentials()
    message = str(caught.value)
    assert "2 hard links" in message and "-samefile" in message
    assert_no_secret(message)
    assert config_path.read_bytes() == before == other.read_bytes()
    assert store.list_keys() == [] and not backup_of(config_path).exists()


def test_a_fifo_at_the_config_path_is_refused_without_blocking(
    tmp_path: Path, store: EncryptedFileStorage
) -> None:
    fifo = tmp_path / "config.json"
    os.mkfifo(fifo)
    with pytest.raises(CredentialStorageError, match="not a regular file"):
        CredentialMigrator(fifo, store).migrate_credentials()
    with pytest.raises(CredentialStorageError, match="not a regular file"):
        CredentialMigrator(fifo, store).plan()
