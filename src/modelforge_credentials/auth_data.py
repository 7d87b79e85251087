"""model-forge's per-provider ``auth_data`` dict, kept as one credential per key.

``{"api_key": "sk-..."}`` becomes ``(provider, "api_key")``. A value that is
not a JSON string (``expires_in: 28800``, ``null``, a list) is stored as its
JSON text and its key is listed in ``(provider, "_auth_data_json_keys")`` (a
JSON list of key names, no values), so reading gives the original types
back. The migration and the model-forge integration share this one layout,
so ``exec`` and ``get`` see the same names whichever of them wrote them.
"""

from __future__ import annotations

import json
from typing import Any

from .storage import CredentialStorage

JSON_KEYS_KEY = "_auth_data_json_keys"


def encode_auth_data(auth_data: dict[str, Any]) -> dict[str, str]:
    """key -> stored text, plus the JSON-keys entry when one is needed."""
    encoded: dict[str, str] = {}
    json_keys = []
    for key, value in auth_data.items():
        if isinstance(value, str):
            encoded[key] = value
        else:
            encoded[key] = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
            json_keys.append(key)
    if json_keys:
        encoded[JSON_KEYS_KEY] = json.dumps(sorted(json_keys))
    return encoded


def read_auth_data(storage: CredentialStorage, provider: str) -> dict[str, Any]:
    """A provider's ``auth_data`` with its original JSON types; ``{}`` if none."""
    keys = [key for _, key in storage.list_keys(provider)]
    if not keys:
        return {}
    raw_json_keys = storage.retrieve(provider, JSON_KEYS_KEY) if JSON_KEYS_KEY in keys else None
    json_keys = set(_json_key_list(raw_json_keys))
    result: dict[str, Any] = {}
    for key in keys:
        if key == JSON_KEYS_KEY:
            continue
        value = storage.retrieve(provider, key)
        if value is None:
            continue  # deleted between list and read
        if key in json_keys:
            try:
                result[key] = json.loads(value)
                continue
            except ValueError:
                pass  # stored as text by someone else since: give the text
        result[key] = value
    return result


def write_auth_data(storage: CredentialStorage, provider: str, auth_data: dict[str, Any]) -> None:
    """Make the provider's stored ``auth_data`` exactly ``auth_data``.

    model-forge replaces the whole dict on every save (a refreshed token may
    drop ``refresh_token_expires_in``), so keys it no longer has are deleted
    once the new ones are stored.
    """
    encoded = encode_auth_data(auth_data)
    previous = {key for _, key in storage.list_keys(provider)}
    # The JSON-keys entry first, so a reader never decodes a new JSON value
    # as text; stale entries last, so the provider is never seen empty.
    if JSON_KEYS_KEY in encoded:
        storage.store(provider, JSON_KEYS_KEY, encoded[JSON_KEYS_KEY])
    for key, value in encoded.items():
        if key != JSON_KEYS_KEY:
            storage.store(provider, key, value)
    for key in sorted(previous - encoded.keys()):
        storage.delete(provider, key)


def clear_auth_data(storage: CredentialStorage, provider: str) -> int:
    """Delete every stored credential of ``provider``; how many there were."""
    keys = [key for _, key in storage.list_keys(provider)]
    for key in keys:
        storage.delete(provider, key)
    return len(keys)


def _json_key_list(raw: str | None) -> list[str]:
    if not raw:
        return []
    try:
        parsed = json.loads(raw)
    except ValueError:
        return []
    return [key for key in parsed if isinstance(key, str)] if isinstance(parsed, list) else []
