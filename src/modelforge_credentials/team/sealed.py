"""The team cache on disk: ``team-<NAME>.cache`` in the config directory.

Layout: ``MAGIC`` (8 bytes) | nonce (12) | AES-256-GCM ciphertext and tag of
the JSON snapshot. The key is 32 random bytes kept in the local credential
store (:data:`..team.CACHE_KEY` under the team's reserved provider), so the
file is exactly as readable as the local store: a passphrase-protected store
seals its team caches behind that passphrase too. The additional data is
``MAGIC + name``, so one team's file cannot be passed off as another's.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from pathlib import Path
from typing import Any

from ..errors import CredentialCorruptedError

MAGIC = b"MFTEAM1\n"
_NONCE = 12
KEY_BYTES = 32


def cache_path(config_dir: Path, team: str) -> Path:
    return config_dir / f"team-{team}.cache"


def new_key() -> str:
    """A fresh cache key, as the text the local store keeps."""
    return base64.b64encode(secrets.token_bytes(KEY_BYTES)).decode("ascii")


def _key_bytes(key: str) -> bytes:
    raw = base64.b64decode(key, validate=True)
    if len(raw) != KEY_BYTES:
        raise ValueError("cache key of the wrong size")
    return raw


def seal(path: Path, team: str, key: str, snapshot: dict[str, Any]) -> None:
    """Replace ``path`` atomically (0600) with ``snapshot`` sealed under ``key``."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from ..files import write_atomic

    nonce = os.urandom(_NONCE)
    body = json.dumps(snapshot, separators=(",", ":")).encode()
    sealed = AESGCM(_key_bytes(key)).encrypt(nonce, body, MAGIC + team.encode())
    write_atomic(path, MAGIC + nonce + sealed, mode=0o600)


def unseal(path: Path, team: str, key: str) -> dict[str, Any] | None:
    """The snapshot in ``path``; None when absent. Raises CredentialCorruptedError
    when it does not open under ``key`` (damaged, swapped, or another key)."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from ..files import open_regular

    try:
        with open_regular(path) as handle:
            data = handle.read()
    except FileNotFoundError:
        return None
    head = len(MAGIC)
    try:
        if data[:head] != MAGIC:
            raise ValueError("not a team cache")
        plain = AESGCM(_key_bytes(key)).decrypt(
            data[head : head + _NONCE], data[head + _NONCE :], MAGIC + team.encode()
        )
        snapshot = json.loads(plain)
        if not isinstance(snapshot, dict):
            raise ValueError("not a snapshot")
        return snapshot
    except (InvalidTag, ValueError) as err:
        raise CredentialCorruptedError(
            f"the team cache {path} cannot be opened ({type(err).__name__}); it is "
            "rebuilt at the next refresh: delete it and run `modelforge-agent team refresh`"
        ) from None
