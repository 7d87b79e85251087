"""Backend selection, the environment backend, input limits, errors, and the
front doors (CredentialManager, AuthStrategy) over real backends.

The Secret Service is a private gnome-keyring (``secret_service`` fixture);
everything else runs against ``tmp_path`` and an isolated HOME.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from types import MappingProxyType

import pytest

import modelforge_credentials as credentials_pkg
from modelforge_credentials import (
    AuthStrategy,
    AutoStorage,
    CredentialManager,
    CredentialNotFoundError,
    CredentialStorage,
    CredentialStorageError,
    CredentialStorageUnavailableError,
    CredentialTooLargeError,
    CredentialValidationError,
    EncryptedFileStorage,
    EnvVarStorage,
    KdfParams,
    KeyringStorage,
    errors,
)
from modelforge_credentials.backends.auto import select_backend
from modelforge_credentials.migrate import MigrationError
from testkit import PROTOCOL_ERROR_CODES

SECRET = "sk-selection-3e7d1f0b9a"


def secret_service_items() -> set[str]:
    import secretstorage

    connection = secretstorage.dbus_init()
    try:
        collection = secretstorage.get_default_collection(connection)
        return {item.item_path for item in collection.get_all_items()}
    finally:
        connection.close()


def tree(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*")) if path.exists() else []


@pytest.fixture
def keyring_storage(secret_service: dict[str, str]) -> Iterator[KeyringStorage]:
    storage = KeyringStorage()
    yield storage
    for provider, key in storage.list_keys():
        storage.delete(provider, key)


# -- automatic selection -----------------------------------------------------------


def test_fail_keyring_picks_the_encrypted_file(tmp_path: Path) -> None:
    config_dir = tmp_path / "cfg"
    auto = AutoStorage(config_dir)

    assert isinstance(auto.backend, EncryptedFileStorage)
    assert auto.backend.config_dir == config_dir
    assert "no system keyring" in auto.reason
    assert "fail" in auto.reason
    assert auto.describe()["reason"] == auto.reason
    assert not config_dir.exists()


def test_default_directory_is_model_forges_and_selection_creates_nothing(
    isolated_environment: Path,
) -> None:
    auto = AutoStorage()
    expected = isolated_environment / ".config" / "model-forge"
    assert isinstance(auto.backend, EncryptedFileStorage)
    assert auto.backend.config_dir == expected
    assert not expected.exists()


def test_selecting_the_file_writes_nothing_in_an_existing_dir(tmp_path: Path) -> None:
    config_dir = tmp_path / "cfg"
    config_dir.mkdir()
    (config_dir / "config.json").write_text("{}")

    auto = AutoStorage(config_dir)
    assert auto.exists("openai", "api_key") is False
    assert auto.list_keys() == []

    assert tree(config_dir) == ["config.json"]


def test_secret_service_is_picked_and_nothing_is_written(
    secret_service: dict[str, str], tmp_path: Path
) -> None:
    before = secret_service_items()

    auto = AutoStorage(tmp_path / "cfg")
    selection = select_backend(config_dir=tmp_path / "cfg")
    KeyringStorage()

    assert isinstance(auto.backend, KeyringStorage)
    assert isinstance(selection.storage, KeyringStorage)
    assert "keyring" in auto.reason
    assert secret_service_items() == before
    assert not (tmp_path / "cfg").exists()


# -- MODEL_FORGE_BACKEND ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("encrypted-file", EncryptedFileStorage),
        ("Encrypted_File", EncryptedFileStorage),
        ("env", EnvVarStorage),
        (" env ", EnvVarStorage),
    ],
)
def test_backend_variable_forces(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str, kind: type
) -> None:
    monkeypatch.setenv("MODEL_FORGE_BACKEND", value)
    auto = AutoStorage(tmp_path / "cfg")
    assert isinstance(auto.backend, kind)
    assert "MODEL_FORGE_BACKEND" in auto.reason
    assert not (tmp_path / "cfg").exists()


def test_backend_variable_forces_keyring(
    monkeypatch: pytest.MonkeyPatch, secret_service: dict[str, str], tmp_path: Path
) -> None:
    monkeypatch.setenv("MODEL_FORGE_BACKEND", "keyring")
    assert isinstance(AutoStorage(tmp_path).backend, KeyringStorage)
    # ... and forcing the file wins over a working keyring.
    monkeypatch.setenv("MODEL_FORGE_BACKEND", "encrypted-file")
    assert isinstance(AutoStorage(tmp_path).backend, EncryptedFileStorage)


def test_unknown_backend_names_the_choices(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MODEL_FORGE_BACKEND", "plaintext")
    with pytest.raises(CredentialValidationError) as caught:  # invalid input: exit 2
        AutoStorage(tmp_path)
    message = str(caught.value)
    for choice in ("keyring", "encrypted-file", "env"):
        assert choice in message
    assert "plaintext" in message


def test_forced_keyring_without_one_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MODEL_FORGE_BACKEND", "keyring")
    with pytest.raises(CredentialStorageUnavailableError) as caught:
        AutoStorage(tmp_path)
    message = str(caught.value)
    assert "install" in message
    assert "gnome-keyring" in message


def test_select_backend_reads_the_given_mapping(tmp_path: Path) -> None:
    # select_backend accepts any Mapping: a read-only one must still be the
    # environment the env backend reads, not os.environ.
    environ = MappingProxyType({"MODEL_FORGE_BACKEND": "env", "MODELFORGE_OPENAI_API_KEY": SECRET})
    selection = select_backend(config_dir=tmp_path, environ=environ)
    assert isinstance(selection.storage, EnvVarStorage)
    assert selection.storage.retrieve("openai", "api_key") == SECRET


# -- nothing usable -------------------------------------------------------------------


def assert_says_what_to_do(err: CredentialStorageUnavailableError) -> None:
    message = str(err)
    assert "Install" in message or "install" in message
    assert "MODEL_FORGE_CONFIG_DIR" in message
    assert "MODELFORGE_<PROVIDER>_API_KEY" in message


def test_nothing_usable_under_a_regular_file(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    with pytest.raises(CredentialStorageUnavailableError) as caught:
        AutoStorage(blocker / "model-forge", environ={})
    assert_says_what_to_do(caught.value)
    assert str(blocker) in str(caught.value)
    assert blocker.read_text() == ""


def test_nothing_usable_ignores_setting_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("MODEL_FORGE_CONFIG_DIR", str(blocker / "model-forge"))
    monkeypatch.setenv("MODEL_FORGE_AGENT", "off")
    with pytest.raises(CredentialStorageUnavailableError) as caught:
        CredentialManager()
    assert_says_what_to_do(caught.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to read-only directories")
def test_nothing_usable_in_a_read_only_dir(tmp_path: Path) -> None:
    config_dir = tmp_path / "ro"
    config_dir.mkdir()
    config_dir.chmod(0o500)
    try:
        with pytest.raises(CredentialStorageUnavailableError) as caught:
            AutoStorage(config_dir, environ={})
    finally:
        config_dir.chmod(0o700)
    assert_says_what_to_do(caught.value)


def test_only_environment_variables_left(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    environ = {"MODELFORGE_OPENAI_API_KEY": SECRET}
    auto = AutoStorage(blocker / "model-forge", environ=environ)
    assert isinstance(auto.backend, EnvVarStorage)
    assert auto.retrieve("openai", "api_key") == SECRET
    assert SECRET not in auto.reason
    assert SECRET not in repr(auto)


def test_there_is_no_plain_text_fallback() -> None:
    assert not hasattr(credentials_pkg, "PlainTextStorage")
    # Parsed, not imported: other modules may be mid-edit, and importing the
    # daemon is not this test's business.
    package_dir = Path(credentials_pkg.__file__).parent
    sources = sorted(package_dir.rglob("*.py"))
    assert len(sources) > 10
    for source in sources:
        module = ast.parse(source.read_text("utf-8"))
        classes = [n.name for n in ast.walk(module) if isinstance(n, ast.ClassDef)]
        assert not [n for n in classes if "plain" in n.lower()], source


# -- EnvVarStorage --------------------------------------------------------------------


def test_env_reads_both_prefixes_and_normalises_names() -> None:
    environ = {
        "MODELFORGE_OPENAI_API_KEY": "legacy-openai",
        "MODEL_FORGE_GITHUB_COPILOT_ACCESS_TOKEN": "new-copilot",
        "MODEL_FORGE_MY_PROV_TOKEN_V2": "dotted",
    }
    env = EnvVarStorage(environ)
    assert env.retrieve("openai", "api_key") == "legacy-openai"
    assert env.retrieve("OpenAI", "API_KEY") == "legacy-openai"
    assert env.retrieve("github-copilot", "access_token") == "new-copilot"
    assert env.retrieve("github_copilot", "access-token") == "new-copilot"
    assert env.retrieve("my.prov", "token.v2") == "dotted"
    assert env.exists("openai", "api_key")
    assert env.retrieve("anthropic", "api_key") is None
    assert not env.exists("anthropic", "api_key")


def test_env_new_prefix_wins() -> None:
    environ = {"MODELFORGE_OPENAI_API_KEY": "old", "MODEL_FORGE_OPENAI_API_KEY": "new"}
    assert EnvVarStorage(environ).retrieve("openai", "api_key") == "new"


def test_env_writes_touch_only_the_given_mapping() -> None:
    before = dict(os.environ)
    environ = {"MODELFORGE_OPENAI_API_KEY": "old"}
    env = EnvVarStorage(environ)

    env.store("openai", "api_key", SECRET)
    assert environ == {"MODEL_FORGE_OPENAI_API_KEY": SECRET}
    assert env.retrieve("openai", "api_key") == SECRET
    env.store("github-copilot", "access_token", "tok")
    assert environ["MODEL_FORGE_GITHUB_COPILOT_ACCESS_TOKEN"] == "tok"
    assert dict(os.environ) == before


def test_env_delete_removes_both() -> None:
    environ = {"MODELFORGE_OPENAI_API_KEY": "old", "MODEL_FORGE_OPENAI_API_KEY": "new", "X": "1"}
    env = EnvVarStorage(environ)
    assert env.delete("openai", "api_key") is True
    assert environ == {"X": "1"}
    assert env.delete("openai", "api_key") is False


def test_env_list_keys_recovers_names_and_skips_settings() -> None:
    environ = {
        "MODELFORGE_OPENAI_API_KEY": "a",
        "MODEL_FORGE_GITHUB_COPILOT_ACCESS_TOKEN": "b",
        "MODEL_FORGE_BACKEND": "env",
        "MODEL_FORGE_AGENT": "off",
        "MODEL_FORGE_AGENT_SOCK": "/run/x.sock",
        "MODEL_FORGE_CONFIG_DIR": "/tmp/x",
        "PATH": "/usr/bin",
        "MODEL_FORGE_": "empty suffix",
    }
    env = EnvVarStorage(environ)
    assert env.list_keys() == [("github_copilot", "access_token"), ("openai", "api_key")]
    assert env.list_keys("openai") == [("openai", "api_key")]
    assert env.list_keys("github-copilot") == [("github_copilot", "access_token")]
    assert env.has_credentials()
    settings_only = {k: v for k, v in environ.items() if "_KEY" not in k and "_TOKEN" not in k}
    assert EnvVarStorage(settings_only).list_keys() == []
    assert not EnvVarStorage(settings_only).has_credentials()


def test_env_defaults_to_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELFORGE_OPENAI_API_KEY", SECRET)
    assert EnvVarStorage().retrieve("openai", "api_key") == SECRET
    assert SECRET not in repr(EnvVarStorage())


# -- validation at every backend ----------------------------------------------------------

BAD_NAMES = [
    pytest.param("", id="empty"),
    pytest.param("p" * 256, id="256-chars"),
    pytest.param("open\0ai", id="nul"),
    pytest.param("open\x01ai", id="control"),
    pytest.param("open\nai", id="newline"),
    pytest.param("open\x7fai", id="del"),
    pytest.param("open\x85ai", id="c1"),
    pytest.param("open\ud800ai", id="surrogate"),
    pytest.param(None, id="none"),
    pytest.param(7, id="int"),
    pytest.param(b"openai", id="bytes"),
]

VALUE_LIMIT = 65_536


@pytest.fixture(params=["encrypted-file", "env", "keyring"])
def any_backend(
    request: pytest.FixtureRequest, tmp_path: Path, fast_kdf: KdfParams
) -> Iterator[tuple[CredentialStorage, Callable[[], object]]]:
    """A backend and a snapshot of everything it persists."""
    if request.param == "encrypted-file":
        storage = EncryptedFileStorage(tmp_path / "cfg", kdf=fast_kdf)
        yield storage, lambda: tree(tmp_path / "cfg")
    elif request.param == "env":
        environ: dict[str, str] = {}
        yield EnvVarStorage(environ), lambda: dict(environ)
    else:
        storage = request.getfixturevalue("keyring_storage")
        yield storage, secret_service_items


def assert_rejected(call: Callable[[], object], *, secret: str | None = None) -> None:
    with pytest.raises(CredentialValidationError) as caught:
        call()
    if secret is not None:
        assert secret not in str(caught.value)
        assert secret not in repr(caught.value)


@pytest.mark.parametrize("bad", BAD_NAMES)
def test_bad_names_are_rejected_before_io(
    any_backend: tuple[CredentialStorage, Callable[[], object]], bad: object
) -> None:
    storage, snapshot = any_backend
    before = snapshot()
    for provider, key in ((bad, "api_key"), ("openai", bad)):
        assert_rejected(lambda p=provider, k=key: storage.store(p, k, SECRET), secret=SECRET)
        assert_rejected(lambda p=provider, k=key: storage.retrieve(p, k))
        assert_rejected(lambda p=provider, k=key: storage.delete(p, k))
        assert_rejected(lambda p=provider, k=key: storage.exists(p, k))
    if bad is not None:  # list_keys(None) means every provider
        assert_rejected(lambda: storage.list_keys(bad))  # type: ignore[arg-type]
    assert snapshot() == before


def test_longest_names_are_accepted(
    any_backend: tuple[CredentialStorage, Callable[[], object]],
) -> None:
    storage, _ = any_backend
    provider, key = "p" * 255, "k" * 255
    storage.store(provider, key, SECRET)
    assert storage.retrieve(provider, key) == SECRET
    assert storage.delete(provider, key) is True


@pytest.mark.parametrize(
    "bad", [None, 12345, b"sk-bytes-secret", ["sk-list-secret"], "sk-\ud800-surrogate"]
)
def test_bad_values_are_rejected(
    any_backend: tuple[CredentialStorage, Callable[[], object]], bad: object
) -> None:
    storage, snapshot = any_backend
    before = snapshot()
    with pytest.raises(CredentialValidationError) as caught:
        storage.store("openai", "api_key", bad)  # type: ignore[arg-type]
    for text in (str(caught.value), repr(caught.value)):
        assert "secret" not in text
        assert "12345" not in text
    assert snapshot() == before


def test_value_limit_counts_utf8_bytes(
    any_backend: tuple[CredentialStorage, Callable[[], object]],
) -> None:
    storage, snapshot = any_backend
    at_limit = "é" * (VALUE_LIMIT // 2)
    assert len(at_limit.encode("utf-8")) == VALUE_LIMIT
    storage.store("bigprov", "blob", at_limit)
    assert storage.retrieve("bigprov", "blob") == at_limit

    before = snapshot()
    over = at_limit + "Z"  # 32,769 characters, 65,537 bytes
    with pytest.raises(CredentialTooLargeError) as caught:
        storage.store("bigprov", "blob", over)
    assert isinstance(caught.value, CredentialValidationError)
    assert "é" not in str(caught.value)
    assert "65537" in str(caught.value).replace(",", "")
    assert snapshot() == before
    assert storage.retrieve("bigprov", "blob") == at_limit


def test_env_refuses_nul_in_values() -> None:
    environ: dict[str, str] = {}
    with pytest.raises(CredentialValidationError) as caught:
        EnvVarStorage(environ).store("openai", "api_key", "sk-nul\0secret")
    assert "sk-nul" not in str(caught.value)
    assert environ == {}


# -- errors -----------------------------------------------------------------------


def test_every_exception_is_a_credential_storage_error() -> None:
    classes = [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, BaseException)
    ]
    assert len(classes) >= 10
    for cls in [*classes, MigrationError]:
        assert issubclass(cls, CredentialStorageError), cls
        assert cls.__doc__ and cls.__doc__.strip(), cls
    for name in credentials_pkg.__all__:
        try:
            obj = getattr(credentials_pkg, name)
        except ImportError:  # the agent backend is not written yet
            continue
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            assert issubclass(obj, CredentialStorageError), name


def test_errors_by_code_covers_the_protocol() -> None:
    from modelforge_credentials.protocol.errors import ERROR_CODES

    expected = PROTOCOL_ERROR_CODES
    assert expected == set(ERROR_CODES)
    assert expected <= set(errors.ERRORS_BY_CODE)
    for code, cls in errors.ERRORS_BY_CODE.items():
        err = errors.error_for_code(code, "msg")
        assert type(err) is cls
        assert isinstance(err, CredentialStorageError)
        if code not in {"unsupported_version", "unknown_op"}:
            assert cls.code == code
    assert type(errors.error_for_code("no-such-code", "m")) is CredentialStorageError


# -- CredentialManager, AuthStrategy, the protocol ------------------------------------------


def test_manager_delegates(tmp_path: Path, fast_kdf: KdfParams) -> None:
    storage = EncryptedFileStorage(tmp_path / "cfg", kdf=fast_kdf)
    manager = CredentialManager(storage)
    assert manager.storage is storage

    manager.store("openai", "api_key", SECRET)
    assert storage.retrieve("openai", "api_key") == SECRET
    assert manager.retrieve("openai", "api_key") == SECRET
    assert manager.get_required("openai", "api_key") == SECRET
    assert manager.exists("openai", "api_key")
    assert manager.list_keys() == [("openai", "api_key")]
    assert manager.list_keys("anthropic") == []
    assert manager.describe()["backend"] == "encrypted-file"
    assert SECRET not in repr(manager)
    assert manager.delete("openai", "api_key") is True
    assert manager.delete("openai", "api_key") is False
    assert manager.retrieve("openai", "api_key") is None


def test_get_required_says_how_to_add(tmp_path: Path) -> None:
    manager = CredentialManager(EnvVarStorage({}))
    with pytest.raises(CredentialNotFoundError) as caught:
        manager.get_required("openai", "api_key")
    assert "modelforge-agent set openai api_key" in str(caught.value)
    assert isinstance(caught.value, CredentialStorageError)


@pytest.mark.parametrize("off", ["off", "OFF", "0", "no", "false"])
def test_manager_without_agent_uses_auto_storage(
    monkeypatch: pytest.MonkeyPatch, isolated_environment: Path, off: str
) -> None:
    monkeypatch.setenv("MODEL_FORGE_AGENT", off)
    manager = CredentialManager()
    assert isinstance(manager.storage, AutoStorage)
    assert isinstance(manager.storage.backend, EncryptedFileStorage)
    assert manager.describe()["reason"] == manager.storage.reason
    manager.store("openai", "api_key", SECRET)
    assert manager.retrieve("openai", "api_key") == SECRET
    assert (isolated_environment / ".config" / "model-forge" / "credentials.enc").exists()


def test_auth_strategy_store_get_delete(tmp_path: Path, fast_kdf: KdfParams) -> None:
    storage = EncryptedFileStorage(tmp_path / "cfg", kdf=fast_kdf)
    strategy = AuthStrategy("github_copilot", CredentialManager(storage))
    strategy.store_credential("access_token", SECRET)
    assert strategy.get_credential("access_token") == SECRET
    assert storage.retrieve("github_copilot", "access_token") == SECRET
    assert SECRET not in repr(strategy)
    assert strategy.delete_credential("access_token") is True
    assert strategy.get_credential("access_token") is None


def test_auth_strategy_default_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_FORGE_AGENT", "off")
    strategy = AuthStrategy("openai")
    assert isinstance(strategy.credential_manager.storage, AutoStorage)
    strategy.store_credential("api_key", SECRET)
    assert AuthStrategy("openai").get_credential("api_key") == SECRET


def test_every_backend_is_a_credential_storage(tmp_path: Path) -> None:
    backends: list[object] = [
        EncryptedFileStorage(tmp_path),
        EnvVarStorage({}),
        KeyringStorage(),
        AutoStorage(tmp_path),
    ]
    try:
        agent_module = importlib.import_module("modelforge_credentials.backends.agent")
    except ImportError:
        pass
    else:
        backends.append(agent_module.AgentStorage())
    for backend in backends:
        assert isinstance(backend, CredentialStorage), type(backend).__name__
    assert not isinstance(object(), CredentialStorage)


# -- KeyringStorage on the real Secret Service ----------------------------------------------


def test_keyring_storage_round_trip(keyring_storage: KeyringStorage) -> None:
    storage = keyring_storage
    assert storage.retrieve("sel-openai", "api_key") is None
    storage.store("sel-openai", "api_key", SECRET)
    storage.store("sel-openai", "org_id", "org-1")
    storage.store("sel-copilot", "access_token", "ghu_sel")
    assert storage.retrieve("sel-openai", "api_key") == SECRET
    assert storage.exists("sel-openai", "api_key")
    assert storage.list_keys("sel-openai") == [("sel-openai", "api_key"), ("sel-openai", "org_id")]
    assert ("sel-copilot", "access_token") in storage.list_keys()
    storage.store("sel-openai", "api_key", "replaced")
    assert storage.retrieve("sel-openai", "api_key") == "replaced"
    assert storage.delete("sel-openai", "api_key") is True
    assert storage.delete("sel-openai", "api_key") is False
    assert not storage.exists("sel-openai", "api_key")
    assert storage.list_keys("sel-openai") == [("sel-openai", "org_id")]
    assert SECRET not in repr(storage)


@pytest.mark.skipif(shutil.which("secret-tool") is None, reason="secret-tool not installed")
def test_keyring_item_layout_seen_by_secret_tool(
    keyring_storage: KeyringStorage, secret_service: dict[str, str]
) -> None:
    keyring_storage.store("openai", "api_key", SECRET)
    env = {**os.environ, **secret_service}
    lookup = [
        "secret-tool",
        "lookup",
        "service",
        "model-forge.openai.api_key",
        "username",
        "credential",
    ]
    found = subprocess.run(lookup, env=env, capture_output=True, text=True, timeout=30)
    assert found.returncode == 0, found.stderr
    assert found.stdout.rstrip("\n") == SECRET

    keyring_storage.delete("openai", "api_key")
    gone = subprocess.run(lookup, env=env, capture_output=True, text=True, timeout=30)
    assert gone.stdout == ""
