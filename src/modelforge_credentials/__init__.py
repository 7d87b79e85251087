"""Secure storage for model-forge's LLM provider credentials.

The public API is importable from here. Names are loaded on first use
(PEP 562), so ``import modelforge_credentials.client`` stays as light as the
thin client needs: no keyring, no cryptography, no asyncio.
"""

from __future__ import annotations

# typing is left out on purpose: importing it costs the thin client more
# than all of its own modules together.
TYPE_CHECKING = False

__version__ = "0.2.0"

_EXPORTS = {
    "CredentialStorage": ".storage",
    "KeyringStorage": ".backends.system_keyring",
    "EnvVarStorage": ".backends.env",
    "EncryptedFileStorage": ".backends.encrypted_file",
    "KdfParams": ".backends.fileformat",
    "AutoStorage": ".backends.auto",
    "AgentStorage": ".backends.agent",
    "CredentialManager": ".manager",
    "AuthStrategy": ".auth",
    "CredentialMigrator": ".migrate",
    "CredentialStorageError": ".errors",
    "CredentialNotFoundError": ".errors",
    "CredentialStorageUnavailableError": ".errors",
    "CredentialValidationError": ".errors",
    "CredentialLockedError": ".errors",
    "CredentialBadPassphraseError": ".errors",
    "CredentialCorruptedError": ".errors",
    "CredentialFormatError": ".errors",
    "CredentialReadOnlyError": ".errors",
    "CredentialTooLargeError": ".errors",
    "AgentProtocolError": ".errors",
}

__all__ = [
    "AgentProtocolError",
    "AgentStorage",
    "AuthStrategy",
    "AutoStorage",
    "CredentialBadPassphraseError",
    "CredentialCorruptedError",
    "CredentialFormatError",
    "CredentialLockedError",
    "CredentialManager",
    "CredentialMigrator",
    "CredentialNotFoundError",
    "CredentialReadOnlyError",
    "CredentialStorage",
    "CredentialStorageError",
    "CredentialStorageUnavailableError",
    "CredentialTooLargeError",
    "CredentialValidationError",
    "EncryptedFileStorage",
    "EnvVarStorage",
    "KdfParams",
    "KeyringStorage",
    "__version__",
]


def __getattr__(name: str) -> object:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    # importlib here, not at the top: it is not loaded at interpreter start,
    # and the .pth hook of the model-forge integration imports this package.
    import importlib

    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__


if TYPE_CHECKING:
    from .auth import AuthStrategy
    from .backends.agent import AgentStorage
    from .backends.auto import AutoStorage
    from .backends.encrypted_file import EncryptedFileStorage
    from .backends.env import EnvVarStorage
    from .backends.fileformat import KdfParams
    from .backends.system_keyring import KeyringStorage
    from .errors import (
        AgentProtocolError,
        CredentialBadPassphraseError,
        CredentialCorruptedError,
        CredentialFormatError,
        CredentialLockedError,
        CredentialNotFoundError,
        CredentialReadOnlyError,
        CredentialStorageError,
        CredentialStorageUnavailableError,
        CredentialTooLargeError,
        CredentialValidationError,
    )
    from .manager import CredentialManager
    from .migrate import CredentialMigrator
    from .storage import CredentialStorage
