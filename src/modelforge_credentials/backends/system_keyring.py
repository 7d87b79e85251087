"""The system keyring (Secret Service, macOS Keychain, Windows) via ``keyring``.

Each credential is one keyring item: service ``model-forge.{provider}.{key}``,
username ``credential``. Keyrings cannot enumerate items portably, so the
names (never the values) are also kept in one index item, service
``model-forge``, username ``index``, a JSON list of ``[provider, key]``.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import keyring
import keyring.backend
import keyring.errors

from ..errors import (
    CredentialLockedError,
    CredentialStorageError,
    CredentialStorageUnavailableError,
)
from ..validation import select_names, validate_pair, validate_value

SERVICE_NAME = "model-forge"
USERNAME = "credential"
INDEX_USERNAME = "index"

T = TypeVar("T")


def service_name(provider: str, key: str) -> str:
    return f"{SERVICE_NAME}.{provider}.{key}"


class KeyringStorage:
    """Keyring backend. ``backend`` pins a keyring backend instance; by
    default the one ``keyring`` selects (``PYTHON_KEYRING_BACKEND``,
    keyringrc.cfg, or priority).

    With ``prompt=False`` a locked Secret Service collection raises
    :class:`CredentialLockedError` at once instead of asking the desktop to
    show an unlock prompt: keyring waits for a prompt's answer without any
    time limit, and a daemon must not hang on a window nobody may see.
    """

    name = "keyring"

    def __init__(
        self, backend: keyring.backend.KeyringBackend | None = None, *, prompt: bool = True
    ) -> None:
        self._backend = backend
        self.prompt = prompt
        self._index_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"KeyringStorage({self.keyring_name()!r})"

    @property
    def keyring(self) -> keyring.backend.KeyringBackend:
        return self._backend if self._backend is not None else keyring.get_keyring()

    def keyring_name(self) -> str:
        kr = self.keyring
        return f"{type(kr).__module__}.{type(kr).__qualname__}"

    def store(self, provider: str, key: str, value: str) -> None:
        provider, key = validate_pair(provider, key)
        validate_value(value)
        self._call(self.keyring.set_password, service_name(provider, key), USERNAME, value)
        self._update_index(add=(provider, key))

    def retrieve(self, provider: str, key: str) -> str | None:
        provider, key = validate_pair(provider, key)
        value = self._call(self.keyring.get_password, service_name(provider, key), USERNAME)
        return value if isinstance(value, str) else None

    def delete(self, provider: str, key: str) -> bool:
        provider, key = validate_pair(provider, key)
        try:
            self._call(self.keyring.delete_password, service_name(provider, key), USERNAME)
            existed = True
        except _Absent:
            existed = False
        self._update_index(remove=(provider, key))
        return existed

    def exists(self, provider: str, key: str) -> bool:
        return self.retrieve(provider, key) is not None

    def list_keys(self, provider: str | None = None) -> list[tuple[str, str]]:
        return select_names(self._read_index(), provider)

    def describe(self) -> dict[str, Any]:
        return {"backend": self.name, "keyring": self.keyring_name(), "protection": "keyring"}

    def _read_index(self) -> set[tuple[str, str]]:
        raw = self._call(self.keyring.get_password, SERVICE_NAME, INDEX_USERNAME)
        if not raw:
            return set()
        try:
            entries = json.loads(raw)
            return {(p, k) for p, k in entries if isinstance(p, str) and isinstance(k, str)}
        except (ValueError, TypeError):
            # A damaged index loses names for `list`, never a credential.
            return set()

    def _update_index(
        self, add: tuple[str, str] | None = None, remove: tuple[str, str] | None = None
    ) -> None:
        with self._index_lock:
            names = self._read_index()
            before = set(names)
            if add:
                names.add(add)
            if remove:
                names.discard(remove)
            if names != before:
                self._call(
                    self.keyring.set_password,
                    SERVICE_NAME,
                    INDEX_USERNAME,
                    json.dumps(sorted(names)),
                )

    def _refuse_if_locked(self) -> None:
        kr = self.keyring
        if type(kr).__module__ != "keyring.backends.SecretService":
            return
        import secretstorage

        connection = secretstorage.dbus_init()
        try:
            preferred = getattr(kr, "preferred_collection", None)
            collection = (
                secretstorage.Collection(connection, preferred)
                if preferred
                else secretstorage.get_default_collection(connection)
            )
            locked = collection.is_locked()
        finally:
            connection.close()
        if locked:
            raise keyring.errors.KeyringLocked("collection locked")

    def _call(self, fn: Callable[..., T], *args: str) -> T:
        """Translate keyring's exceptions into ours, at this one point."""
        try:
            if not self.prompt:
                self._refuse_if_locked()
            return fn(*args)
        except keyring.errors.PasswordDeleteError as err:
            raise _Absent() from err
        except keyring.errors.KeyringLocked as err:
            raise CredentialLockedError(
                "the system keyring is locked: unlock it (log in to the desktop "
                "session, or `gnome-keyring-daemon --unlock`) and retry"
            ) from err
        except keyring.errors.NoKeyringError as err:
            raise CredentialStorageUnavailableError(
                "no system keyring is available: install and start one (e.g. "
                "gnome-keyring), or use MODEL_FORGE_BACKEND=encrypted-file"
            ) from err
        except keyring.errors.KeyringError as err:
            raise CredentialStorageUnavailableError(
                f"the system keyring failed ({type(err).__name__}); check that its "
                "service is running, or use MODEL_FORGE_BACKEND=encrypted-file"
            ) from err
        except CredentialStorageError:
            raise
        except Exception as err:
            # Backends leak D-Bus and OS errors of their own; the type name
            # is enough to diagnose and can never contain a value.
            raise CredentialStorageUnavailableError(
                f"the system keyring failed ({type(err).__name__}); check that its "
                "service is running, or use MODEL_FORGE_BACKEND=encrypted-file"
            ) from err


class _Absent(Exception):
    """Internal: keyring said there was nothing to delete."""
