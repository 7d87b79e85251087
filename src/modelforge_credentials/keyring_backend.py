"""A ``keyring`` backend that keeps passwords in the credential agent.

Select it explicitly::

    PYTHON_KEYRING_BACKEND=modelforge_credentials.keyring_backend.AgentKeyring

or in keyringrc.cfg (``[backend] default-keyring=...``), or prefer it in
keyring's automatic choice with ``MODEL_FORGE_KEYRING_PREFERRED=1``.
Otherwise it declares itself not viable, so installing this package never
takes over keyring for anyone who did not ask.

Mapping: keyring's ``(service, username)`` becomes the agent's
``(provider, key)`` as ``("keyring:" + service, "user:" + username)``, with
``%`` and control characters percent-encoded (``%25``, ``%0A``, ...) so that
any service and username, empty ones included, map to valid names and back.
Values are stored as they are (empty passwords included).
"""

from __future__ import annotations

import configparser
import os
from typing import TYPE_CHECKING

from keyring import credentials, errors
from keyring.backend import KeyringBackend
from keyring.compat import properties

from . import settings
from .errors import (
    CredentialLockedError,
    CredentialStorageError,
    CredentialValidationError,
)

if TYPE_CHECKING:
    from .backends.agent import AgentStorage

PREFERRED_VARIABLE = settings.KEYRING_PREFERRED
PROVIDER_PREFIX = "keyring:"
KEY_PREFIX = "user:"
_ESCAPED = {"%"} | {chr(c) for c in range(0x20)} | {chr(c) for c in range(0x7F, 0xA0)}
_HEX_DIGITS = frozenset("0123456789abcdefABCDEF")


def _encode(text: str) -> str:
    return "".join(f"%{ord(ch):02X}" if ch in _ESCAPED else ch for ch in text)


def _decode(text: str) -> str:
    """The inverse of :func:`_encode`; ValueError for a ``%`` not followed by two hex digits."""
    out = []
    i = 0
    while i < len(text):
        if text[i] == "%":
            digits = text[i + 1 : i + 3]
            # Checked here, not by int(): it also takes signs, spaces and underscores.
            if len(digits) != 2 or not all(d in _HEX_DIGITS for d in digits):
                raise ValueError("a % not followed by two hex digits")
            out.append(chr(int(digits, 16)))
            i += 3
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def to_pair(service: str, username: str) -> tuple[str, str]:
    return PROVIDER_PREFIX + _encode(service), KEY_PREFIX + _encode(username)


def from_key(key: str, provider: str = "PROVIDER") -> str:
    """The username of an agent key; a key this plugin cannot have written is a KeyringError."""
    try:
        return _decode(key.removeprefix(KEY_PREFIX))
    except ValueError:
        import shlex

        command = f"modelforge-agent delete {shlex.quote(provider)} {shlex.quote(key)}"
        raise errors.KeyringError(
            f"the agent holds the name {key!r} under {provider!r}, which this keyring cannot "
            "read as a username: every % in it must start a %XX escape with two hex digits; "
            f"remove or rename it (`{command}`)"
        ) from None


def _qualname() -> str:
    return f"{__name__}.{AgentKeyring.__name__}"


def _chosen_explicitly() -> bool:
    if os.environ.get("PYTHON_KEYRING_BACKEND") == _qualname():
        return True
    try:
        from keyring.core import _config_path

        parser = configparser.RawConfigParser()
        parser.read(_config_path(), encoding="utf-8")  # type: ignore[no-untyped-call]
        return parser.get("backend", "default-keyring", fallback="").strip() == _qualname()
    except Exception:
        return False


class AgentKeyring(KeyringBackend):
    """keyring backend backed by the model-forge credential agent."""

    @properties.classproperty
    def priority(cls) -> float:
        # settings.flag raises on a value outside on/off: then not viable either.
        if settings.flag(PREFERRED_VARIABLE):
            return 20
        if _chosen_explicitly():
            return 1
        raise RuntimeError(
            "the model-forge agent keyring is used only when chosen: set "
            f"PYTHON_KEYRING_BACKEND={_qualname()} or {PREFERRED_VARIABLE}=1"
        )

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self._storage: AgentStorage | None = None

    def _store(self) -> AgentStorage:
        if self._storage is None:
            from .backends.agent import AgentStorage

            self._storage = AgentStorage()
        return self._storage

    def close(self) -> None:
        """Close this thread's connection to the agent now; the next call reconnects.

        Optional: keyring never calls it, and a connection also closes when its
        thread ends or the backend is dropped.
        """
        if self._storage is not None:
            self._storage.close()

    def get_password(self, service: str, username: str) -> str | None:
        try:
            value: str | None = self._store().retrieve(*to_pair(service, username))
            return value
        except CredentialStorageError as err:
            raise _translate(err) from None

    def set_password(self, service: str, username: str, password: str) -> None:
        try:
            self._store().store(*to_pair(service, username), password)
        except CredentialValidationError as err:
            raise errors.PasswordSetError(str(err)) from None
        except CredentialStorageError as err:
            raise _translate(err) from None

    def delete_password(self, service: str, username: str) -> None:
        try:
            deleted = self._store().delete(*to_pair(service, username))
        except CredentialStorageError as err:
            raise errors.PasswordDeleteError(str(err)) from None
        if not deleted:
            raise errors.PasswordDeleteError("Password not found")

    def get_credential(self, service: str, username: str | None) -> credentials.Credential | None:
        if username is not None:
            password = self.get_password(service, username)
            return (
                credentials.SimpleCredential(username, password) if password is not None else None
            )
        provider, _ = to_pair(service, "")
        try:
            names = self._store().list_keys(provider)
        except CredentialStorageError as err:
            raise _translate(err) from None
        for _, key in names:
            user = from_key(key, provider)
            password = self.get_password(service, user)
            if password is not None:
                return credentials.SimpleCredential(user, password)
        return None


def _translate(err: CredentialStorageError) -> errors.KeyringError:
    if isinstance(err, CredentialLockedError):
        return errors.KeyringLocked(str(err))
    return errors.KeyringError(str(err))
