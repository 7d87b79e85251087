"""One contract every backend passes (the design's TestStorageBackends, and more).

Backends: encrypted file (key file and passphrase), environment variables,
the real Secret Service through keyring. The agent joins this list through
``tests/test_inproc_agent.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from modelforge_credentials import (
    CredentialStorage,
    CredentialValidationError,
    EncryptedFileStorage,
    EnvVarStorage,
    KeyringStorage,
)

SECRET = "sk-contract-7f3a9c"

Factory = Callable[[], CredentialStorage]


@pytest.fixture(params=["encrypted-file-keyfile", "encrypted-file-passphrase", "env", "keyring"])
def storage_factory(request: pytest.FixtureRequest, tmp_path: Path, fast_kdf) -> Iterator[Factory]:
    kind = request.param
    if kind == "encrypted-file-keyfile":
        yield lambda: EncryptedFileStorage(tmp_path / "cfg", kdf=fast_kdf)
    elif kind == "encrypted-file-passphrase":
        yield lambda: EncryptedFileStorage(
            tmp_path / "cfg", passphrase="correct horse", kdf=fast_kdf
        )
    elif kind == "env":
        environ: dict[str, str] = {}
        yield lambda: EnvVarStorage(environ)
    else:
        request.getfixturevalue("secret_service")
        created = KeyringStorage()
        yield lambda: created
        for provider, key in created.list_keys():
            created.delete(provider, key)


@pytest.fixture
def test_storage(storage_factory: Factory) -> CredentialStorage:
    return storage_factory()


class TestStorageBackends:
    def test_is_a_credential_storage(self, test_storage: CredentialStorage) -> None:
        assert isinstance(test_storage, CredentialStorage)

    def test_store_retrieve_cycle(self, test_storage: CredentialStorage) -> None:
        test_storage.store("test_provider", "test_key", "secret_value")
        assert test_storage.retrieve("test_provider", "test_key") == "secret_value"

    def test_delete_credential(self, test_storage: CredentialStorage) -> None:
        test_storage.store("test_provider", "test_key", "secret_value")
        assert test_storage.delete("test_provider", "test_key") is True
        assert test_storage.retrieve("test_provider", "test_key") is None
        assert test_storage.exists("test_provider", "test_key") is False

    def test_nonexistent_credential(self, test_storage: CredentialStorage) -> None:
        assert test_storage.retrieve("nonexistent", "key") is None
        assert test_storage.exists("nonexistent", "key") is False

    def test_delete_absent_is_not_an_error(self, test_storage: CredentialStorage) -> None:
        assert test_storage.delete("nonexistent", "key") is False

    def test_overwrite_replaces(self, test_storage: CredentialStorage) -> None:
        test_storage.store("openai", "api_key", "first")
        test_storage.store("openai", "api_key", SECRET)
        assert test_storage.retrieve("openai", "api_key") == SECRET

    def test_exists(self, test_storage: CredentialStorage) -> None:
        test_storage.store("openai", "api_key", SECRET)
        assert test_storage.exists("openai", "api_key")
        assert not test_storage.exists("openai", "other")

    def test_keys_are_independent(self, test_storage: CredentialStorage) -> None:
        test_storage.store("openai", "api_key", "one")
        test_storage.store("anthropic", "api_key", "two")
        test_storage.store("openai", "refresh_token", "three")
        assert test_storage.retrieve("openai", "api_key") == "one"
        assert test_storage.retrieve("anthropic", "api_key") == "two"
        assert test_storage.retrieve("openai", "refresh_token") == "three"

    def test_list_keys_names_never_values(self, test_storage: CredentialStorage) -> None:
        test_storage.store("openai", "api_key", SECRET)
        test_storage.store("github_copilot", "access_token", SECRET + "x")
        assert test_storage.list_keys() == [
            ("github_copilot", "access_token"),
            ("openai", "api_key"),
        ]
        assert test_storage.list_keys("openai") == [("openai", "api_key")]
        assert SECRET not in repr(test_storage.list_keys())

    def test_persists_across_instances(self, storage_factory: Factory) -> None:
        storage_factory().store("openai", "api_key", SECRET)
        assert storage_factory().retrieve("openai", "api_key") == SECRET

    def test_unicode_and_large_value(self, test_storage: CredentialStorage) -> None:
        value = "клю🔑" * 4000
        test_storage.store("prov", "unicode", value)
        assert test_storage.retrieve("prov", "unicode") == value

    @pytest.mark.parametrize(
        ("provider", "key"),
        [("", "k"), ("p", ""), ("p\0", "k"), ("p", "k\n"), ("x" * 256, "k"), (None, "k")],
    )
    def test_invalid_names_rejected(self, test_storage: CredentialStorage, provider, key) -> None:
        with pytest.raises(CredentialValidationError) as info:
            test_storage.store(provider, key, SECRET)
        assert SECRET not in str(info.value)

    def test_too_large_value_rejected(self, test_storage: CredentialStorage) -> None:
        with pytest.raises(CredentialValidationError) as info:
            test_storage.store("p", "k", SECRET + "a" * 65_536)
        assert SECRET not in str(info.value)
        assert test_storage.retrieve("p", "k") is None

    def test_repr_holds_no_value(self, test_storage: CredentialStorage) -> None:
        test_storage.store("openai", "api_key", SECRET)
        assert SECRET not in repr(test_storage)
