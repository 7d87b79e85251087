"""Choosing a backend without writing anything anywhere.

Order: the system keyring, then the encrypted file, then environment
variables. ``MODEL_FORGE_BACKEND=keyring|encrypted-file|env`` forces one.
Nothing is stored to probe: the keyring is judged by ``keyring``'s own
backend selection (its fail, null and empty-chain backends mean "no
keyring"), the encrypted file by whether its directory is writable.
There is no plain-text fallback: when nothing is usable the error says what
to install or set.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import settings
from ..errors import CredentialStorageUnavailableError
from ..storage import CredentialStorage
from .encrypted_file import EncryptedFileStorage, default_config_dir
from .env import EnvVarStorage

BACKEND_VARIABLE = settings.BACKEND


@dataclass(frozen=True)
class Selection:
    storage: CredentialStorage
    reason: str


def _ours(kr: object) -> bool:
    return type(kr).__module__.startswith("modelforge_credentials.")


def system_keyring() -> Any:
    """The keyring backend a :class:`KeyringStorage` should use.

    keyring's own choice, except when that is this package's agent-backed
    plugin, or a chain that contains it: storing through it would loop back
    into the agent, so the best other viable backend stands in.
    """
    import keyring
    from keyring.backend import by_priority, get_all_keyring
    from keyring.backends import chainer, fail

    kr = keyring.get_keyring()
    chained = kr.backends if isinstance(kr, chainer.ChainerBackend) else []
    if not _ours(kr) and not any(_ours(b) for b in chained):
        return kr
    others = [
        b for b in get_all_keyring() if not _ours(b) and not isinstance(b, chainer.ChainerBackend)
    ]
    return max(others, key=by_priority, default=fail.Keyring())  # type: ignore[no-untyped-call]


def keyring_usable() -> tuple[bool, str]:
    """Whether ``keyring`` found a real backend, and why (no item is touched)."""
    try:
        from keyring.backends import chainer, fail, null
    except Exception as err:  # pragma: no cover - keyring is a dependency
        return False, f"the keyring package cannot be imported ({type(err).__name__})"
    try:
        kr = system_keyring()
    except Exception as err:
        return False, f"keyring failed to initialise ({type(err).__name__})"
    kind = f"{type(kr).__module__}.{type(kr).__qualname__}"
    if isinstance(kr, fail.Keyring | null.Keyring):
        return False, f"keyring has no usable backend ({kind})"
    if isinstance(kr, chainer.ChainerBackend):
        if not kr.backends:
            return False, "keyring's backend chain is empty (no Secret Service or Keychain)"
        names = ", ".join(type(b).__module__.rsplit(".", 1)[-1] for b in kr.backends)
        return True, f"keyring backend chain ({names})"
    return True, f"keyring backend {kind}"


def file_usable(config_dir: Path) -> tuple[bool, str]:
    probe = config_dir
    while not probe.exists():
        if probe.parent == probe:
            return False, f"no existing parent of {config_dir}"
        probe = probe.parent
    if not probe.is_dir():
        return False, f"{probe} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return False, f"{probe} is not writable"
    return True, f"encrypted file in {config_dir}"


def select_backend(
    *,
    config_dir: Path | str | None = None,
    passphrase: str | None = None,
    environ: Mapping[str, str] | None = None,
    prompt: bool = True,
) -> Selection:
    """Pick the backend to use, with the reason, or raise saying what to do.

    ``prompt=False`` (the agent) makes a keyring backend refuse a locked
    collection instead of raising an unlock prompt.
    """
    env = os.environ if environ is None else environ
    directory = Path(config_dir) if config_dir is not None else default_config_dir()
    choice = settings.backend(env)
    if choice is not None:
        return _forced(choice, directory, passphrase, env, prompt)

    tried = []
    ok, why = keyring_usable()
    if ok:
        from .system_keyring import KeyringStorage

        return Selection(KeyringStorage(system_keyring(), prompt=prompt), f"auto: {why}")
    tried.append(f"keyring: {why}")
    ok, why = file_usable(directory)
    if ok:
        storage = EncryptedFileStorage(directory, passphrase=passphrase)
        return Selection(storage, f"auto: no system keyring ({tried[0]}); {why}")
    tried.append(f"encrypted file: {why}")
    env_storage = EnvVarStorage(env)
    if env_storage.has_credentials():
        return Selection(env_storage, "auto: only environment variables are available")
    tried.append("env: no MODEL_FORGE_* or MODELFORGE_* variables set")
    raise CredentialStorageUnavailableError(
        "no credential backend is usable ("
        + "; ".join(tried)
        + "). Install and start a keyring (e.g. gnome-keyring), or set "
        "MODEL_FORGE_CONFIG_DIR to a writable directory, or export "
        "MODELFORGE_<PROVIDER>_API_KEY"
    )


def _forced(
    choice: str, directory: Path, passphrase: str | None, env: Mapping[str, str], prompt: bool
) -> Selection:
    reason = f"forced by {BACKEND_VARIABLE}={choice}"
    if choice == "keyring":
        ok, why = keyring_usable()
        if not ok:
            raise CredentialStorageUnavailableError(
                f"{BACKEND_VARIABLE}=keyring, but {why}: install and start a keyring "
                "(e.g. gnome-keyring) or choose another backend"
            )
        from .system_keyring import KeyringStorage

        return Selection(KeyringStorage(system_keyring(), prompt=prompt), reason)
    if choice == "encrypted-file":
        return Selection(EncryptedFileStorage(directory, passphrase=passphrase), reason)
    return Selection(EnvVarStorage(env), reason)


class AutoStorage:
    """The best available backend, chosen once at construction.

    ``backend`` is the chosen storage and ``reason`` says why it was chosen.
    """

    def __init__(
        self,
        config_dir: Path | str | None = None,
        *,
        passphrase: str | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        selection = select_backend(config_dir=config_dir, passphrase=passphrase, environ=environ)
        self.backend: CredentialStorage = selection.storage
        self.reason = selection.reason

    def __repr__(self) -> str:
        return f"AutoStorage({self.backend!r})"

    @property
    def name(self) -> str:
        return str(getattr(self.backend, "name", type(self.backend).__name__))

    def store(self, provider: str, key: str, value: str) -> None:
        self.backend.store(provider, key, value)

    def retrieve(self, provider: str, key: str) -> str | None:
        return self.backend.retrieve(provider, key)

    def delete(self, provider: str, key: str) -> bool:
        return self.backend.delete(provider, key)

    def exists(self, provider: str, key: str) -> bool:
        return self.backend.exists(provider, key)

    def list_keys(self, provider: str | None = None) -> list[tuple[str, str]]:
        return self.backend.list_keys(provider)

    def describe(self) -> dict[str, Any]:
        describe = getattr(self.backend, "describe", None)
        info: dict[str, Any] = dict(describe()) if callable(describe) else {"backend": self.name}
        info["reason"] = self.reason
        return info
