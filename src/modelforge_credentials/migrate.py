"""Moving secrets out of a model-forge config file into a credential store.

Secrets are read from ``providers.<p>.auth_data`` (what model-forge writes)
and ``providers.<p>.credentials`` (the older design's name), and stored in
the layout of :mod:`.auth_data` (one credential per key, JSON types kept),
so :meth:`CredentialMigrator.restore_auth_data` gives the original types
back.

Order of work, so that one authoritative copy exists at every instant:

1. the original file is copied to ``<config>.pre-migration.bak`` (0600);
2. every secret is stored, then read back and compared;
3. only then the config is rewritten atomically without ``auth_data`` and
   ``credentials``; everything else stays equal as JSON.

A crash before step 3 leaves the config as it was (re-running is safe and
stores the same values again); after it, the store holds the secrets. The
backup stays until :meth:`~CredentialMigrator.confirm`; until then
:meth:`~CredentialMigrator.rollback` restores the original file and removes
the migrated copies from the store.

After step 3 a small marker, ``<config>.migrated`` (a date, no secrets),
records that the file was left without secrets. Secrets found in a config
that has the marker were written there by model-forge since (a new login
or a refreshed token), so they are newer than the store's: a re-run moves
them without ``overwrite``. Without the marker a different stored value may
be the newer one, and the migration refuses.

Reading and rewriting the config file itself (its sections, its look, hard
links, the marker) is :mod:`.model_forge_config`'s; this module holds the
plan, the conflicts and the order of work.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from .auth_data import JSON_KEYS_KEY, encode_auth_data, read_auth_data
from .files import open_regular, write_atomic
from .migration_errors import (
    MigrationConflictError,
    MigrationError,
    NothingToRollBackError,
    UnsafeConfigError,
)
from .model_forge_config import (
    MARKER_SUFFIX,
    SECRET_SECTIONS,
    config_secrets,
    dump_like,
    load_config,
    marker_path,
    migration_date,
    model_forge_configs,
    read_config,
    refuse_hard_links,
    without_secrets,
    write_marker,
    written_meanwhile,
)
from .storage import CredentialStorage

__all__ = [
    "BACKUP_SUFFIX",
    "MARKER_SUFFIX",
    "MAX_ATTEMPTS",
    "SECRET_SECTIONS",
    "CredentialMigrator",
    "LegacyKeyringImporter",
    "MigrationConflictError",
    "MigrationError",
    "NothingToRollBackError",
    "UnsafeConfigError",
    "check_migrations",
    "load_config",
    "migration_date",
    "model_forge_configs",
    "secret_names",
]

BACKUP_SUFFIX = ".pre-migration.bak"
#: Start-overs when model-forge writes the config during a migration.
MAX_ATTEMPTS = 5


class CredentialMigrator:
    """Migrate one model-forge config file's secrets into ``new_storage``."""

    def __init__(
        self,
        old_config_path: Path | str,
        new_storage: CredentialStorage,
        *,
        backup_path: Path | str | None = None,
    ) -> None:
        self.old_config_path = Path(old_config_path)
        # Writes go to the symlink's target: replacing the link itself would
        # leave the secrets behind in the file it points to.
        self._target = Path(os.path.realpath(self.old_config_path))
        self.new_storage = new_storage
        self.backup_path = (
            Path(backup_path)
            if backup_path is not None
            else self.old_config_path.with_name(self.old_config_path.name + BACKUP_SUFFIX)
        )
        self.marker_path = marker_path(self.old_config_path)

    def __repr__(self) -> str:
        return f"CredentialMigrator({str(self.old_config_path)!r})"

    def can_migrate(self) -> bool:
        """True when the config file exists and still holds secrets."""
        if not self.old_config_path.exists() or self.old_config_path.stat().st_size == 0:
            return False
        raw = read_config(self.old_config_path)
        return raw is not None and bool(config_secrets(self._load(raw)))

    def plan(self) -> dict[str, list[str]]:
        """Provider -> names of the keys a migration would move. No values."""
        return secret_names(self.old_config_path)

    def migrated_at(self) -> str | None:
        """When this config was last left without secrets (ISO 8601), if ever."""
        return migration_date(self.old_config_path)

    def conflicts(self) -> list[str]:
        """``provider/key`` names whose stored value differs from the config's."""
        raw = read_config(self.old_config_path)
        return [] if raw is None else _conflicts(self.new_storage, config_secrets(self._load(raw)))

    def refused_conflicts(
        self, overwrite: bool = False, found: dict[str, dict[str, Any]] | None = None
    ) -> list[str]:
        """The conflicts a migration would refuse: none with ``overwrite`` or
        when the config's values are known to be newer (:meth:`migrated_at`)."""
        if overwrite or self.migrated_at() is not None:
            return []
        if found is None:
            return self.conflicts()
        return _conflicts(self.new_storage, found)

    def migrate_credentials(self, dry_run: bool = False, overwrite: bool = False) -> dict[str, int]:
        """Migrate; returns provider -> number of credentials moved.

        With ``dry_run`` nothing is written anywhere and the counts say what
        would move. A config without secrets (e.g. already migrated) gives
        ``{}``. A store that already holds a *different* value for one of
        the names stops the migration before anything is written (the newer
        secret may be the one in the store), unless ``overwrite``, or unless
        the config was migrated before: then model-forge wrote the config's
        value since, and it is the newer one.

        model-forge rewrites its config without a lock. So the file is
        compared with what was read just before it is replaced, and the
        replaced file is checked afterwards for a write that went into it
        (a writer that opened it before the rename): either way the
        migration starts over from the newer content, so no secret written
        meanwhile is lost. A config with other hard links is refused: the
        other names would keep the plain-text secrets.
        """
        if not self.old_config_path.exists():
            return {}
        recovered: bytes | None = None
        expected: bytes | None = None
        for _ in range(MAX_ATTEMPTS):
            with open_regular(self._target) as handle:
                on_disk = handle.read()
                read = os.fstat(handle.fileno())
                refuse_hard_links(self.old_config_path, read.st_nlink)
                raw = recovered if recovered is not None else on_disk
                if expected is not None and on_disk != expected:
                    raw = on_disk  # a newer write replaced our output: start from it
                config = self._load(raw)
                found = config_secrets(config)
                counts = {provider: len(keys) for provider, keys in found.items()}
                if dry_run or not found:
                    return counts
                self._back_up_and_store(raw, found, overwrite)
                if read_config(self._target) != on_disk:
                    recovered, expected = None, None
                    continue  # changed while we stored: migrate the newer content
                output = dump_like(without_secrets(config), raw)
                write_atomic(self._target, output, mode=stat.S_IMODE(read.st_mode))
                late = written_meanwhile(handle, read)
                if late is not None:
                    # Written into the file we just replaced: migrated next.
                    recovered, expected = late, output
                    continue
            write_marker(self.marker_path)
            return counts
        raise MigrationError(
            f"{self.old_config_path} kept changing while it was migrated ({MAX_ATTEMPTS} "
            "attempts); every secret read from it is in the store and in the backup "
            f"{self.backup_path}. Close model-forge and re-run the migration"
        )

    def _back_up_and_store(
        self, raw: bytes, found: dict[str, dict[str, Any]], overwrite: bool
    ) -> None:
        """Steps 1 and 2: refuse conflicts, back ``raw`` up, store and verify ``found``."""
        _refuse(self.refused_conflicts(overwrite, found))
        write_atomic(self.backup_path, raw, mode=0o600)
        kept = f"the config {self.old_config_path} was not changed"
        for provider, keys in found.items():
            _store_verified(self.new_storage, provider, keys, kept)

    def rollback(self) -> dict[str, int]:
        """Put the original config back and remove the migrated copies.

        A stored value is removed only if it still equals the migrated one,
        so a secret changed since the migration is kept. Returns provider ->
        number of credentials put back into the config.
        """
        if not self.backup_path.exists():
            raise NothingToRollBackError(
                f"no migration backup at {self.backup_path}: nothing to roll back "
                "(it is removed once a migration is confirmed)"
            )
        raw = self.backup_path.read_bytes()
        found = config_secrets(self._load(raw))
        mode = self._target.stat().st_mode & 0o777 if self._target.exists() else 0o600
        write_atomic(self._target, raw, mode=mode)
        for provider, keys in found.items():
            encoded = encode_auth_data(keys)
            for key, value in encoded.items():
                if self.new_storage.retrieve(provider, key) == value:
                    self.new_storage.delete(provider, key)
        self.backup_path.unlink()
        self.marker_path.unlink(missing_ok=True)  # the config holds secrets again, on purpose
        return {provider: len(keys) for provider, keys in found.items()}

    def confirm(self) -> bool:
        """Delete the backup (which holds the secrets in plain text)."""
        try:
            self.backup_path.unlink()
        except FileNotFoundError:
            return False
        return True

    def restore_auth_data(self, provider: str) -> dict[str, Any]:
        """A provider's migrated ``auth_data`` with its original JSON types."""
        return read_auth_data(self.new_storage, provider)

    def _load(self, raw: bytes) -> dict[str, Any]:
        return load_config(self.old_config_path, raw)


def secret_names(config: Path) -> dict[str, list[str]]:
    """Provider -> names of the secrets ``config`` holds. No values."""
    raw = read_config(config)
    if raw is None:
        return {}
    found = config_secrets(load_config(config, raw))
    return {provider: sorted(keys) for provider, keys in found.items()}


def check_migrations(migrators: list[CredentialMigrator], *, overwrite: bool = False) -> None:
    """Refuse, before any of them changes anything, migrations that disagree.

    Two configs (model-forge's global and local file) holding different
    values for one name cannot both land in one store; nor can a config
    whose value differs from the store's (unless ``overwrite``).
    """
    merged: dict[str, dict[str, Any]] = {}
    origin: dict[tuple[str, str], Path] = {}
    for migrator in migrators:
        raw = read_config(migrator.old_config_path)
        if raw is None:
            continue
        found = config_secrets(migrator._load(raw))
        for provider, keys in found.items():
            for key, value in keys.items():
                known = merged.setdefault(provider, {})
                if key in known and known[key] != value:
                    raise MigrationConflictError(
                        f"{origin[(provider, key)]} and {migrator.old_config_path} hold "
                        f"different values for {provider}/{key}; nothing was changed. Make "
                        "them agree (or migrate one file with --config) and re-run"
                    )
                known[key] = value
                origin.setdefault((provider, key), migrator.old_config_path)
    _refuse(sorted({name for m in migrators for name in m.refused_conflicts(overwrite)}))


def _conflicts(storage: CredentialStorage, found: dict[str, dict[str, Any]]) -> list[str]:
    return [
        f"{provider}/{key}"
        for provider, keys in found.items()
        for key, value in encode_auth_data(keys).items()
        if key != JSON_KEYS_KEY and storage.retrieve(provider, key) not in (None, value)
    ]


def _refuse(conflicts: list[str]) -> None:
    if conflicts:
        raise MigrationConflictError(
            "the credential store already holds different values for "
            + ", ".join(conflicts)
            + "; nothing was changed. Keep the right ones: delete the stale store entries "
            "(`modelforge-agent delete PROVIDER KEY`) or re-run with --overwrite to let "
            "the config's values win"
        )


def _store_verified(
    storage: CredentialStorage, provider: str, keys: dict[str, Any], kept: str
) -> None:
    """Store a provider's values, then read each back: the old copy may go
    only once the new one is known to be there."""
    encoded = encode_auth_data(keys)
    for key, value in encoded.items():
        storage.store(provider, key, value)
    for key, value in encoded.items():
        if storage.retrieve(provider, key) != value:
            raise MigrationError(
                f"credential {provider}/{key} did not read back as stored; {kept}. Check "
                "the backend (`modelforge-agent status`) and re-run the migration"
            )


class LegacyKeyringImporter:
    """Imports model-forge's older keyring layout into ``new_storage``.

    That layout kept, per provider, the API key under service ``<provider>``
    and username ``<provider>_user``, and a device-flow token response as a
    JSON string under username ``token_info``. Each value is stored, read
    back and compared, and only then deleted from the old place, so exactly
    one authoritative copy exists at every step.
    """

    def __init__(self, legacy: Any, new_storage: CredentialStorage) -> None:
        self.legacy = legacy
        self.new_storage = new_storage

    def found(self, providers: list[str]) -> dict[str, dict[str, Any]]:
        result: dict[str, dict[str, Any]] = {}
        for provider in providers:
            values: dict[str, Any] = {}
            api_key = self.legacy.get_password(provider, f"{provider}_user")
            if api_key is not None:
                values["api_key"] = api_key
            token_info = self.legacy.get_password(provider, "token_info")
            if token_info is not None:
                try:
                    token = json.loads(token_info)
                except ValueError:
                    token = None
                if not isinstance(token, dict):
                    raise MigrationError(
                        f"the keyring's token_info for {provider!r} is not a JSON object; "
                        "nothing was imported for it. Log in again with model-forge"
                    )
                values.update(token)
            if values:
                result[provider] = values
        return result

    def import_credentials(self, providers: list[str], dry_run: bool = False) -> dict[str, int]:
        found = self.found(providers)
        counts = {provider: len(values) for provider, values in found.items()}
        if dry_run:
            return counts
        for provider, values in found.items():
            _store_verified(self.new_storage, provider, values, "the old keyring items were kept")
            from keyring.errors import PasswordDeleteError

            for username in (f"{provider}_user", "token_info"):
                try:
                    self.legacy.delete_password(provider, username)
                except PasswordDeleteError:
                    pass  # absent: a provider has one of the two, rarely both
        return counts
