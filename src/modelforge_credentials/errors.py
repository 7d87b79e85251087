"""The one exception tree of model-forge-credentials.

Every error raised by the storage layer, the agent client and the CLI is a
:class:`CredentialStorageError`. Each class carries ``code``, the wire
protocol's error code for it; clients turn failure replies back into these
classes through :data:`ERRORS_BY_CODE`.

Messages name providers, keys, paths and commands; they never contain a
secret value or a passphrase.
"""

from __future__ import annotations


class CredentialStorageError(Exception):
    """Root of every error of this package.

    Raised directly for failures that have no more precise class (``internal``
    on the wire). Catch this class to handle any storage failure.
    """

    code = "internal"


class CredentialNotFoundError(CredentialStorageError):
    """A credential that the caller required does not exist.

    ``retrieve`` returns ``None`` for an absent credential; this is raised by
    the calls that demand one (``CredentialManager.get_required``, the CLI's
    ``get``). Store it first, e.g. ``modelforge-agent set PROVIDER KEY``.
    """

    code = "not_found"  # never sent by the agent: an absent value is nil


class CredentialStorageUnavailableError(CredentialStorageError):
    """The storage backend cannot be used right now.

    Raised when no backend is usable, when the keyring or the agent cannot be
    reached, or when the file system refuses a read or write (full disk,
    read-only home). The message says what to install, start or set.
    """

    code = "unavailable"


class CredentialCorruptedError(CredentialStorageUnavailableError):
    """The encrypted file is truncated, altered or not a credentials file.

    The file is left untouched and no store will overwrite it. Restore the
    previous generation from the ``.bak`` file beside it, or move the file
    away to start over. On the wire it is an ``unavailable`` failure.
    """


class CredentialFormatError(CredentialCorruptedError):
    """The encrypted file was written by an unknown (newer) format version.

    Upgrade model-forge-credentials; the file is left untouched.
    """


class CredentialValidationError(CredentialStorageError, ValueError):
    """A provider, key or value does not meet the documented limits.

    Provider and key: non-empty strings of at most 255 characters without
    control characters. Value: a string of at most 65,536 bytes in UTF-8.
    Nothing was stored; fix the input and retry.
    """

    code = "invalid"


class CredentialTooLargeError(CredentialValidationError):
    """A request or value exceeds a size limit; nothing was stored."""

    code = "too_large"


class CredentialLockedError(CredentialStorageError):
    """The store is protected by a passphrase that has not been given.

    Unlock it: ``modelforge-agent unlock``, or pass ``passphrase=`` to
    :class:`EncryptedFileStorage`.
    """

    code = "locked"


class CredentialBadPassphraseError(CredentialStorageError):
    """The passphrase (or key file) does not open the encrypted store.

    Distinct from corruption: the file is intact and was not changed. Retry
    with the right passphrase.
    """

    code = "bad_passphrase"


class CredentialReadOnlyError(CredentialStorageError):
    """The backend cannot persist writes (the environment-variable backend
    inside the agent). Select a keyring or encrypted-file backend to store,
    e.g. ``MODEL_FORGE_BACKEND=encrypted-file``."""

    code = "read_only"


class AgentProtocolError(CredentialStorageError):
    """The agent and the client do not understand each other.

    Raised for malformed replies, a protocol version mismatch, or a
    ``bad_request``/``unknown_op``/``unsupported_version`` reply. Usually the
    client and the agent come from different releases: restart the agent
    (``modelforge-agent stop``) so the installed version starts.
    """

    code = "bad_request"


#: Wire error code -> the exception a client raises for it.
ERRORS_BY_CODE: dict[str, type[CredentialStorageError]] = {
    "bad_request": AgentProtocolError,
    "unsupported_version": AgentProtocolError,
    "unknown_op": AgentProtocolError,
    "invalid": CredentialValidationError,
    "locked": CredentialLockedError,
    "bad_passphrase": CredentialBadPassphraseError,
    "read_only": CredentialReadOnlyError,
    "unavailable": CredentialStorageUnavailableError,
    "too_large": CredentialTooLargeError,
    "internal": CredentialStorageError,
}


def error_for_code(code: str, message: str) -> CredentialStorageError:
    """The exception a client raises for a failure reply with ``code``."""
    return ERRORS_BY_CODE.get(code, CredentialStorageError)(message)


class UntrustedAgentError(CredentialStorageUnavailableError):
    """The socket is not provably this user's own agent; nothing was sent to it.

    Raised before the first byte when the process listening on the socket runs
    as another uid (neither yours nor root), or when the socket's directory is
    a symlink, belongs to another uid, or can be written by group or others (so
    another user could have put a socket there first); and by ``stop`` when the
    pid the agent reported is not a process of yours holding that socket.
    Choose a private socket path: unset MODEL_FORGE_AGENT_SOCK for the default
    ($XDG_RUNTIME_DIR/model-forge/agent.sock), or point it to a socket in a 0700
    directory of your own. Raised by clients only: the agent never sends it.
    """
