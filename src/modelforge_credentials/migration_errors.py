"""What a migration of model-forge's secrets raises: one root, :class:`MigrationError`."""

from __future__ import annotations

from .errors import CredentialNotFoundError, CredentialStorageError, CredentialValidationError


class MigrationError(CredentialStorageError):
    """A migration step failed; the config file was left as it was.

    The message says which step and what to do (usually: fix the cause and
    re-run, which is safe).
    """


class MigrationConflictError(MigrationError, CredentialValidationError):
    """Two copies of one secret differ and nothing says which is newer.

    Raised before anything is written. The message names the credentials;
    keep the right copy (delete the other, or re-run with ``--overwrite`` to
    let the config win).
    """


class UnsafeConfigError(MigrationError, CredentialValidationError):
    """The config cannot be rewritten without leaving its secrets behind
    (it has other hard links). The message says how to make it safe."""


class NothingToRollBackError(MigrationError, CredentialNotFoundError):
    """No migration backup exists for this config (never migrated, or confirmed)."""
