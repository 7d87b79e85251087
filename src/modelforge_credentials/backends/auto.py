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
from collections.abc import Callable, Mapping
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


@dataclass(frozen=True)
class BackendSpec:
    """One backend as selection, doctor and status see it.

    ``usable`` says whether it can run here and why, without writing
    anything; ``build`` makes it. Auto-selection takes the usable one with
    the highest ``priority``; ``MODEL_FORGE_BACKEND`` forces one by
    ``name``, and then ``usable`` must hold only if ``checked_when_forced``.
    """

    name: str
    label: str  # for reasons: "no system keyring (why)"
    priority: int
    usable: Callable[[Path, Mapping[str, str]], tuple[bool, str]]
    build: Callable[[Path, str | None, Mapping[str, str], bool], CredentialStorage]
    checked_when_forced: bool
    #: What to do when it is not usable (for the "nothing is usable" error).
    remedy: str


def _build_keyring(
    directory: Path, passphrase: str | None, env: Mapping[str, str], prompt: bool
) -> CredentialStorage:
    from .system_keyring import KeyringStorage

    return KeyringStorage(system_keyring(), prompt=prompt)


def _env_usable(directory: Path, env: Mapping[str, str]) -> tuple[bool, str]:
    if EnvVarStorage(env).has_credentials():
        return True, "only environment variables are available"
    return False, "no MODEL_FORGE_* or MODELFORGE_* variables set"


#: Every backend, the one table selection, doctor and status read.
REGISTRY: tuple[BackendSpec, ...] = (
    BackendSpec(
        "keyring",
        "system keyring",
        300,
        lambda directory, env: keyring_usable(),
        _build_keyring,
        checked_when_forced=True,
        remedy="install and start a keyring (e.g. gnome-keyring)",
    ),
    BackendSpec(
        "encrypted-file",
        "usable encrypted-file directory",
        200,
        lambda directory, env: file_usable(directory),
        lambda directory, passphrase, env, prompt: EncryptedFileStorage(
            directory, passphrase=passphrase
        ),
        checked_when_forced=False,
        remedy="set MODEL_FORGE_CONFIG_DIR to a writable directory",
    ),
    BackendSpec(
        "env",
        "environment credentials",
        100,
        _env_usable,
        lambda directory, passphrase, env, prompt: EnvVarStorage(env),
        checked_when_forced=False,
        remedy="export MODELFORGE_<PROVIDER>_API_KEY",
    ),
)


def spec(name: str) -> BackendSpec:
    return next(s for s in REGISTRY if s.name == name)


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
        forced = spec(choice)
        if forced.checked_when_forced:
            ok, why = forced.usable(directory, env)
            if not ok:
                raise CredentialStorageUnavailableError(
                    f"{BACKEND_VARIABLE}={choice}, but {why}: {forced.remedy} or choose "
                    "another backend"
                )
        storage = forced.build(directory, passphrase, env, prompt)
        return Selection(storage, f"forced by {BACKEND_VARIABLE}={choice}")
    tried: list[tuple[BackendSpec, str]] = []
    for candidate in sorted(REGISTRY, key=lambda s: -s.priority):
        ok, why = candidate.usable(directory, env)
        if ok:
            passed = "".join(f"; no {s.label} ({reason})" for s, reason in tried)
            storage = candidate.build(directory, passphrase, env, prompt)
            return Selection(storage, f"auto: {why}{passed}")
        tried.append((candidate, why))
    raise CredentialStorageUnavailableError(
        "no credential backend is usable ("
        + "; ".join(f"{s.name}: {reason}" for s, reason in tried)
        + "). To fix it: "
        + ", or ".join(s.remedy for s in REGISTRY)
    )


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
        return self.backend.name

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
        return {**self.backend.describe(), "reason": self.reason}
