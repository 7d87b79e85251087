"""``modelforge-agent migrate`` against a real agent, and its migrator under faults.

The configs are model-forge's real shape (``auth_data``), one global
(``$HOME/.config/model-forge/config.json``) and one local
(``./.model-forge/config.json``, the CLI run with that cwd). The agent is a
real process on an encrypted file in a temporary directory. Faults are
injected by a small CredentialStorage wrapper around the agent's client
storage, by a backup path under a regular file, and by an immutable config
directory (``chattr +i``: as root, modes alone stop nothing).

The real model-forge (PyPI ``model-forge-llm``) is exercised only with
``MODEL_FORGE_TEST_REAL_MODELFORGE=1`` (tests/model_forge_venv.py).
"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import keyring
import pytest

from agent_harness import CLI, AgentWorkspace
from model_forge_venv import VenvError, base_dir, model_forge_venv, require_real_model_forge
from modelforge_credentials import CredentialStorageError, CredentialValidationError
from modelforge_credentials.backends.agent import AgentStorage
from modelforge_credentials.migrate import BACKUP_SUFFIX, CredentialMigrator, MigrationError
from modelforge_example import copilot_auth, realistic_config
from refs_testkit import TIMEOUT, PassThroughStorage

OPENAI_KEY = "sk-proj-migcli-openai-0c4f7d2e9b"
ACCESS_TOKEN = "ghu_migcliAccessToken5e6f7a8b"
REFRESH_TOKEN = "ghr_migcliRefreshToken1c2d3e4f"
ANTHROPIC_KEY = "sk-ant-migcli-local-8a9b0c1d"
OTHER_OPENAI_KEY = "sk-proj-migcli-someone-else-77"
SECRETS = (OPENAI_KEY, ACCESS_TOKEN, REFRESH_TOKEN, ANTHROPIC_KEY, OTHER_OPENAI_KEY)

COPILOT_AUTH = copilot_auth(ACCESS_TOKEN, REFRESH_TOKEN)

#: model-forge-today.md's realistic example, secrets made unique.
GLOBAL: dict[str, Any] = realistic_config(OPENAI_KEY, COPILOT_AUTH)

#: A project's own config (used by model-forge *instead of* the global one).
LOCAL: dict[str, Any] = {
    "providers": {
        "openai": copy.deepcopy(GLOBAL["providers"]["openai"]),
        "anthropic": {
            "llm_type": "anthropic",
            "base_url": "https://api.anthropic.com",
            "auth_strategy": "api_key",
            "models": {"claude-3-5-sonnet": {}},
            "auth_data": {"api_key": ANTHROPIC_KEY},
        },
    },
    "current_model": {"provider": "anthropic", "model": "claude-3-5-sonnet"},
}

EXPECTED_ITEMS = {
    ("openai", "api_key"): OPENAI_KEY,
    ("github_copilot", "access_token"): ACCESS_TOKEN,
    ("github_copilot", "token_type"): "bearer",
    ("github_copilot", "scope"): "read:user",
    ("github_copilot", "expires_in"): "28800",
    ("github_copilot", "refresh_token"): REFRESH_TOKEN,
    ("github_copilot", "expires_at"): "2025-07-28T20:00:00+00:00",
    ("github_copilot", "_auth_data_json_keys"): '["expires_in"]',
}
#: Stores a migration of GLOBAL makes (one per key, plus the JSON-typed key list).
GLOBAL_STORES = len(EXPECTED_ITEMS)


def model_forge_bytes(config: dict[str, Any]) -> bytes:
    """As model-forge writes it: json.dump(indent=4)."""
    return json.dumps(config, indent=4).encode()


def without_auth_data(config: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(config)
    for provider in result["providers"].values():
        provider.pop("auth_data", None)
    return result


@pytest.fixture
def agent() -> Iterator[AgentWorkspace]:
    ws = AgentWorkspace(dict(os.environ))
    try:
        ws.serve("--idle-timeout", "0")
        yield ws
    finally:
        ws.close()


@pytest.fixture
def storage(agent: AgentWorkspace) -> Iterator[AgentStorage]:
    store = AgentStorage(agent.socket, autostart=False, timeout=TIMEOUT)
    yield store
    store.close()


@pytest.fixture
def configs(isolated_environment: Path, tmp_path: Path) -> tuple[Path, Path, Path]:
    """(global config, local config, project dir), both configs written."""
    global_path = isolated_environment / ".config" / "model-forge" / "config.json"
    global_path.parent.mkdir(parents=True)
    global_path.write_bytes(model_forge_bytes(GLOBAL))
    project = tmp_path / "project"
    local_path = project / ".model-forge" / "config.json"
    local_path.parent.mkdir(parents=True)
    local_path.write_bytes(model_forge_bytes(LOCAL))
    return global_path, local_path, project


@pytest.fixture
def migrated_configs(
    agent: AgentWorkspace, configs: tuple[Path, Path, Path]
) -> tuple[Path, Path, Path]:
    """``configs`` after one successful ``migrate`` run in the project."""
    assert migrate(agent, configs[2]).returncode == 0
    return configs


def migrate(
    ws: AgentWorkspace, cwd: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "migrate", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=ws.env if env is None else env,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
    )


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text, "a secret value was printed"


def migrate_ok(ws: AgentWorkspace, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``migrate`` with ``args``, which must succeed and print no secret."""
    result = migrate(ws, cwd, *args)
    assert result.returncode == 0, result.stderr
    assert_no_secret(result.stdout, result.stderr)
    return result


def items(storage: AgentStorage) -> dict[tuple[str, str], str | None]:
    return {(p, k): storage.retrieve(p, k) for p, k in storage.list_keys()}


def backup(path: Path) -> Path:
    return path.with_name(path.name + BACKUP_SUFFIX)


def assert_both_as_model_forge_wrote_them(global_path: Path, local_path: Path) -> None:
    """Both configs hold GLOBAL's and LOCAL's bytes again, and neither has a backup."""
    assert global_path.read_bytes() == model_forge_bytes(GLOBAL)
    assert local_path.read_bytes() == model_forge_bytes(LOCAL)
    assert not backup(global_path).exists() and not backup(local_path).exists()


def assert_nothing_migrated(global_path: Path, local_path: Path, storage: AgentStorage) -> None:
    """Both configs as model-forge wrote them, and nothing in the store."""
    assert_both_as_model_forge_wrote_them(global_path, local_path)
    assert storage.list_keys() == []


# -- the CLI ---------------------------------------------------------------------------------


def test_migrates_global_and_local_and_prints_names_only(
    agent: AgentWorkspace, storage: AgentStorage, configs: tuple[Path, Path, Path]
) -> None:
    global_path, local_path, project = configs
    result = migrate_ok(agent, project)
    out = result.stdout
    assert f"{global_path}: moved openai: api_key" in out
    assert (
        f"{global_path}: moved github_copilot: access_token, expires_at, expires_in, "
        "refresh_token, scope, token_type"
    ) in out
    assert f"{local_path}: moved anthropic: api_key" in out
    for path in (global_path, local_path):
        assert f"modelforge-agent migrate --rollback --config {path}" in out
        assert f"modelforge-agent migrate --confirm --config {path}" in out
        assert stat.S_IMODE(backup(path).stat().st_mode) == 0o600
    assert json.loads(global_path.read_bytes()) == without_auth_data(GLOBAL)
    assert json.loads(local_path.read_bytes()) == without_auth_data(LOCAL)
    assert items(storage) == {**EXPECTED_ITEMS, ("anthropic", "api_key"): ANTHROPIC_KEY}
    restored = CredentialMigrator(global_path, storage).restore_auth_data("github_copilot")
    assert restored == COPILOT_AUTH
    assert type(restored["expires_in"]) is int
    assert_no_secret(agent.agents[0].log_text())


def test_dry_run_changes_nothing(
    agent: AgentWorkspace, storage: AgentStorage, configs: tuple[Path, Path, Path]
) -> None:
    global_path, local_path, project = configs
    result = migrate_ok(agent, project, "--dry-run")
    assert f"{global_path}: would move openai: api_key" in result.stdout
    assert f"{local_path}: would move anthropic: api_key" in result.stdout
    assert "--rollback" not in result.stdout
    assert_nothing_migrated(global_path, local_path, storage)


def test_rollback_restores_both_files_byte_identical(
    agent: AgentWorkspace, storage: AgentStorage, migrated_configs: tuple[Path, Path, Path]
) -> None:
    global_path, local_path, project = migrated_configs
    migrate_ok(agent, project, "--rollback")
    assert_nothing_migrated(global_path, local_path, storage)


def test_confirm_removes_backups_and_a_rerun_has_nothing_to_do(
    agent: AgentWorkspace, storage: AgentStorage, migrated_configs: tuple[Path, Path, Path]
) -> None:
    global_path, local_path, project = migrated_configs
    migrated = global_path.read_bytes(), local_path.read_bytes()
    result = migrate(agent, project, "--confirm")
    assert result.returncode == 0, result.stderr
    assert "removed the plain-text backup" in result.stdout
    assert not backup(global_path).exists() and not backup(local_path).exists()
    rerun = migrate(agent, project)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{global_path}: no secrets to migrate" in rerun.stdout
    assert f"{local_path}: no secrets to migrate" in rerun.stdout
    assert (global_path.read_bytes(), local_path.read_bytes()) == migrated
    late = migrate(agent, project, "--rollback")
    assert late.returncode == 1  # not found: there is nothing to roll back
    assert "no migration backup" in late.stderr
    assert items(storage) == {**EXPECTED_ITEMS, ("anthropic", "api_key"): ANTHROPIC_KEY}


def test_a_different_stored_value_is_refused_unless_overwrite(
    agent: AgentWorkspace, storage: AgentStorage, configs: tuple[Path, Path, Path]
) -> None:
    global_path, local_path, project = configs
    storage.store("openai", "api_key", OTHER_OPENAI_KEY)
    dry = migrate(agent, project, "--dry-run")
    assert dry.returncode == 2  # the dry run meets the conflict the real run would
    assert "openai/api_key" in dry.stderr and "would move" in dry.stdout
    result = migrate(agent, project)
    assert result.returncode == 2  # invalid input, not "unavailable"
    assert "openai/api_key" in result.stderr and "--overwrite" in result.stderr
    assert_no_secret(result.stdout, result.stderr)
    assert_both_as_model_forge_wrote_them(global_path, local_path)
    assert items(storage) == {("openai", "api_key"): OTHER_OPENAI_KEY}
    result = migrate(agent, project, "--overwrite")
    assert result.returncode == 0, result.stderr
    assert storage.retrieve("openai", "api_key") == OPENAI_KEY


def test_global_and_local_disagreeing_are_refused_before_either_changes(
    agent: AgentWorkspace, storage: AgentStorage, configs: tuple[Path, Path, Path]
) -> None:
    """A project key that differs from the global one cannot share the agent's one
    ``openai/api_key``: migrate must say so before it changes either file, not after
    it has moved the global one."""
    global_path, local_path, project = configs
    local = copy.deepcopy(LOCAL)
    local["providers"]["openai"]["auth_data"]["api_key"] = OTHER_OPENAI_KEY
    local_path.write_bytes(model_forge_bytes(local))
    result = migrate(agent, project)
    assert result.returncode == 2
    assert "openai/api_key" in result.stderr
    assert_no_secret(result.stdout, result.stderr)
    # No secret is lost whatever happened: the local file still holds its own key.
    assert json.loads(local_path.read_bytes()) == local
    assert global_path.read_bytes() == model_forge_bytes(GLOBAL)
    assert storage.list_keys() == []


def test_secrets_model_forge_writes_after_a_migration_are_newer_and_move_without_overwrite(
    agent: AgentWorkspace, storage: AgentStorage, configs: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    global_path, _, _ = configs
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    assert migrate(agent, elsewhere, "--config", str(global_path)).returncode == 0
    # model-forge's own save_auth_data: re-read, set auth_data, json.dump(indent=4).
    relogged = json.loads(global_path.read_bytes())
    relogged["providers"]["openai"]["auth_data"] = {"api_key": OTHER_OPENAI_KEY}
    global_path.write_bytes(model_forge_bytes(relogged))

    doctor = subprocess.run(
        [*CLI, "doctor", "--json"], capture_output=True, text=True, env=agent.env, cwd=elsewhere
    )
    problems = json.loads(doctor.stdout)["problems"]
    assert any(str(global_path) in p["problem"] and "openai" in p["problem"] for p in problems)
    assert any("modelforge-agent migrate" in p["fix"] for p in problems)
    assert_no_secret(doctor.stdout, doctor.stderr)

    dry = migrate(agent, elsewhere, "--dry-run", "--config", str(global_path))
    assert dry.returncode == 0, dry.stderr
    assert storage.retrieve("openai", "api_key") == OPENAI_KEY
    result = migrate(agent, elsewhere, "--config", str(global_path))
    assert result.returncode == 0, result.stderr
    assert "holds secrets again" in result.stderr and "integrate model-forge" in result.stderr
    assert "openai/api_key: the config's value replaces the stored one" in result.stdout
    assert_no_secret(result.stdout, result.stderr)
    assert storage.retrieve("openai", "api_key") == OTHER_OPENAI_KEY
    assert json.loads(global_path.read_bytes()) == without_auth_data(GLOBAL)


def test_rollback_forgets_the_migration_so_later_conflicts_are_refused_again(
    agent: AgentWorkspace, storage: AgentStorage, configs: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    global_path, _, _ = configs
    args = ("--config", str(global_path))
    assert migrate(agent, tmp_path, *args).returncode == 0
    assert migrate(agent, tmp_path, "--rollback", *args).returncode == 0
    storage.store("openai", "api_key", OTHER_OPENAI_KEY)
    result = migrate(agent, tmp_path, *args)
    assert result.returncode == 2
    assert storage.retrieve("openai", "api_key") == OTHER_OPENAI_KEY


def test_deeply_nested_json_is_invalid_input_not_a_traceback(
    agent: AgentWorkspace, storage: AgentStorage, tmp_path: Path
) -> None:
    config = tmp_path / "config.json"
    config.write_text('{"providers": ' + "[" * 100_000 + "]" * 100_000 + "}")
    result = migrate(agent, tmp_path, "--config", str(config))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "nested too deeply" in result.stderr
    assert storage.list_keys() == []


def test_exec_after_migrate_gives_model_forge_its_key(
    agent: AgentWorkspace, migrated_configs: tuple[Path, Path, Path]
) -> None:
    _, _, project = migrated_configs
    check = (
        "import os; "
        f"print(os.environ['MODELFORGE_OPENAI_API_KEY'] == {OPENAI_KEY!r}, "
        f"os.environ['MODELFORGE_GITHUB_COPILOT_ACCESS_TOKEN'] == {ACCESS_TOKEN!r})"
    )
    result = subprocess.run(
        [*CLI, "exec", "--all", "--", sys.executable, "-c", check],
        capture_output=True,
        text=True,
        env=agent.env,
        timeout=TIMEOUT,
    )
    assert (result.returncode, result.stdout) == (0, "True True\n"), result.stderr


# -- the real model-forge (opt-in: downloads it) --------------------------------------------


@pytest.fixture(scope="module")
def real_modelforge(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``modelforge`` executable of model-forge-llm 2.3.0, alone in its venv."""
    require_real_model_forge()
    try:
        return model_forge_venv(base_dir(tmp_path_factory), "alone") / "bin" / "modelforge"
    except VenvError as err:
        pytest.fail(str(err))


@pytest.mark.slow
def test_real_model_forge_finds_the_migrated_key_under_exec(
    real_modelforge: Path, agent: AgentWorkspace, configs: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    global_path, local_path, _ = configs
    elsewhere = tmp_path / "elsewhere"  # no local config: model-forge reads the global one
    elsewhere.mkdir()
    result = migrate(agent, elsewhere, "--config", str(global_path))
    assert result.returncode == 0, result.stderr

    def auth_status(provider: str, *wrapper: str) -> str:
        done = subprocess.run(
            [*wrapper, str(real_modelforge), "auth", "status", "--provider", provider],
            cwd=elsewhere,
            capture_output=True,
            text=True,
            env=agent.env,
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout + done.stderr

    exec_prefix = (*CLI, "exec", "--all", "--")
    for provider in ("openai", "github_copilot"):
        before = auth_status(provider)
        assert "No valid credentials found" in before, before
        under_exec = auth_status(provider, *exec_prefix)
        assert "Valid credentials found" in under_exec, under_exec
        assert "No valid credentials found" not in under_exec, under_exec
        assert "from environment variable" in under_exec, under_exec
        assert_no_secret(before, under_exec)


# -- CredentialMigrator under faults -----------------------------------------------------------


class FaultyStorage(PassThroughStorage):
    """The agent's client storage, with one injected fault.

    ``fail_store``: the Nth store raises (a crash between stores).
    ``garble``: reading this (provider, key) back gives a different value.
    ``fail_read``: every read-back raises once the first store has happened.
    """

    def __init__(
        self,
        inner: AgentStorage,
        *,
        fail_store: int | None = None,
        garble: tuple[str, str] | None = None,
        fail_read: bool = False,
    ) -> None:
        super().__init__(inner)
        self.fail_store = fail_store
        self.garble = garble
        self.fail_read = fail_read
        self.stores = 0

    def store(self, provider: str, key: str, value: str) -> None:
        self.stores += 1
        if self.stores == self.fail_store:
            raise CredentialStorageError(f"injected failure on store {self.stores}")
        self.inner.store(provider, key, value)

    def retrieve(self, provider: str, key: str) -> str | None:
        if self.fail_read and self.stores:
            raise CredentialStorageError("injected failure on read-back")
        value = self.inner.retrieve(provider, key)
        if (provider, key) == self.garble and value is not None:
            return value + "-garbled"
        return value


def assert_one_authoritative_copy(config_path: Path, storage: AgentStorage) -> None:
    """Each secret is in the config, or else in the store (and then not in the config)."""
    config = json.loads(config_path.read_bytes())
    for provider, data in GLOBAL["providers"].items():
        for key, value in data.get("auth_data", {}).items():
            in_config = config["providers"][provider].get("auth_data", {}).get(key)
            if in_config is not None:
                assert in_config == value
            else:
                stored = storage.retrieve(provider, key)
                assert stored == (value if isinstance(value, str) else json.dumps(value))


def assert_completes_after(config_path: Path, storage: AgentStorage) -> None:
    counts = CredentialMigrator(config_path, storage).migrate_credentials()
    assert counts == {"openai": 1, "github_copilot": 6}
    assert json.loads(config_path.read_bytes()) == without_auth_data(GLOBAL)
    assert items(storage) == EXPECTED_ITEMS
    assert CredentialMigrator(config_path, storage).restore_auth_data("github_copilot") == (
        COPILOT_AUTH
    )


@pytest.fixture
def global_config(tmp_path: Path) -> Path:
    path = tmp_path / "model-forge" / "config.json"
    path.parent.mkdir()
    path.write_bytes(model_forge_bytes(GLOBAL))
    return path


@pytest.mark.parametrize("nth", range(1, GLOBAL_STORES + 1))
def test_failure_on_the_nth_store_loses_nothing_and_a_rerun_completes(
    storage: AgentStorage, global_config: Path, nth: int
) -> None:
    faulty = FaultyStorage(storage, fail_store=nth)
    with pytest.raises(CredentialStorageError) as caught:
        CredentialMigrator(global_config, faulty).migrate_credentials()
    assert_no_secret(str(caught.value))
    assert global_config.read_bytes() == model_forge_bytes(GLOBAL)
    assert_one_authoritative_copy(global_config, storage)
    assert len(storage.list_keys()) == nth - 1
    assert_completes_after(global_config, storage)


@pytest.mark.parametrize(
    "fault",
    [
        {"garble": ("openai", "api_key")},
        {"garble": ("github_copilot", "expires_in")},
        {"fail_read": True},
    ],
    ids=["garbled-key", "garbled-int", "read-error"],
)
def test_failure_on_read_back_keeps_the_config_and_a_rerun_completes(
    storage: AgentStorage, global_config: Path, fault: dict[str, Any]
) -> None:
    with pytest.raises(CredentialStorageError) as caught:
        CredentialMigrator(global_config, FaultyStorage(storage, **fault)).migrate_credentials()
    if "garble" in fault:
        assert isinstance(caught.value, MigrationError)
        assert "did not read back" in str(caught.value)
    assert_no_secret(str(caught.value))
    assert global_config.read_bytes() == model_forge_bytes(GLOBAL)
    assert_one_authoritative_copy(global_config, storage)
    assert_completes_after(global_config, storage)


def test_failure_writing_the_backup_stores_nothing_and_a_rerun_completes(
    storage: AgentStorage, global_config: Path, tmp_path: Path
) -> None:
    not_a_dir = tmp_path / "regular-file"
    not_a_dir.write_text("")
    migrator = CredentialMigrator(global_config, storage, backup_path=not_a_dir / "config.bak")
    with pytest.raises(CredentialStorageError) as caught:
        migrator.migrate_credentials()
    assert "config.bak" in str(caught.value)
    assert global_config.read_bytes() == model_forge_bytes(GLOBAL)
    assert storage.list_keys() == []
    assert_completes_after(global_config, storage)


@contextlib.contextmanager
def immutable(directory: Path) -> Iterator[None]:
    """``chattr +i``: nothing can be created in or renamed into it, not even by root."""
    if shutil.which("chattr") is None:
        pytest.skip("chattr (e2fsprogs) is not installed")
    done = subprocess.run(["chattr", "+i", str(directory)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"this filesystem has no immutable flag: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(directory)], check=True)


def test_failure_rewriting_the_config_keeps_it_and_a_rerun_completes(
    storage: AgentStorage, global_config: Path, tmp_path: Path
) -> None:
    backup_path = tmp_path / "backup" / "config.json.bak"
    backup_path.parent.mkdir()
    with immutable(global_config.parent):
        with pytest.raises(CredentialStorageError) as caught:
            CredentialMigrator(
                global_config, storage, backup_path=backup_path
            ).migrate_credentials()
        assert str(global_config) in str(caught.value)
        assert_no_secret(str(caught.value))
        assert global_config.read_bytes() == model_forge_bytes(GLOBAL)
        assert list(global_config.parent.iterdir()) == [global_config]  # no temp file left
    assert backup_path.read_bytes() == model_forge_bytes(GLOBAL)
    assert_one_authoritative_copy(global_config, storage)
    assert_completes_after(global_config, storage)


def test_a_config_that_is_not_json_changes_nothing(
    storage: AgentStorage, global_config: Path
) -> None:
    global_config.write_text('{"providers": {"openai": {"auth_data": {"api_key": "sk-x"')
    with pytest.raises(CredentialValidationError):
        CredentialMigrator(global_config, storage).migrate_credentials()
    assert storage.list_keys() == []
    assert not backup(global_config).exists()


# -- model-forge's older keyring layout ------------------------------------------------------

LEGACY_TOKEN = {
    "access_token": ACCESS_TOKEN,
    "token_type": "bearer",
    "scope": "read:user",
    "expires_in": 28800,
    "refresh_token": REFRESH_TOKEN,
}


@pytest.fixture
def legacy_items(secret_service: dict[str, str]) -> Iterator[None]:
    """The older layout, written with keyring's own SecretService backend."""
    keyring.set_password("openai", "openai_user", OPENAI_KEY)
    keyring.set_password("github_copilot", "token_info", json.dumps(LEGACY_TOKEN))
    yield
    for service, username in (("openai", "openai_user"), ("github_copilot", "token_info")):
        with contextlib.suppress(keyring.errors.PasswordDeleteError):
            keyring.delete_password(service, username)


def legacy_values() -> tuple[str | None, str | None]:
    return (
        keyring.get_password("openai", "openai_user"),
        keyring.get_password("github_copilot", "token_info"),
    )


def test_from_keyring_imports_the_older_layout_and_removes_it(
    legacy_items: None, tmp_path: Path
) -> None:
    ws = AgentWorkspace({**os.environ, "MODEL_FORGE_BACKEND": "encrypted-file"})
    try:
        ws.serve("--idle-timeout", "0")
        store = AgentStorage(ws.socket, autostart=False, timeout=TIMEOUT)
        providers = ("--provider", "openai", "--provider", "github_copilot")

        dry = migrate(ws, tmp_path, "--from-keyring", "--dry-run", *providers)
        assert dry.returncode == 0, dry.stderr
        assert "would import" in dry.stdout and "github_copilot (5)" in dry.stdout
        assert_no_secret(dry.stdout, dry.stderr)
        assert legacy_values() == (OPENAI_KEY, json.dumps(LEGACY_TOKEN))
        assert store.list_keys() == []

        result = migrate(ws, tmp_path, "--from-keyring", *providers)
        assert result.returncode == 0, result.stderr
        assert "imported from the old keyring layout: openai (1), github_copilot (5)" in (
            result.stdout
        )
        assert_no_secret(result.stdout, result.stderr)
        assert store.describe()["agent_backend"] == "encrypted-file"
        assert store.retrieve("openai", "api_key") == OPENAI_KEY
        assert store.retrieve("github_copilot", "access_token") == ACCESS_TOKEN
        assert store.retrieve("github_copilot", "refresh_token") == REFRESH_TOKEN
        restored = CredentialMigrator(tmp_path / "unused.json", store).restore_auth_data(
            "github_copilot"
        )
        assert restored == LEGACY_TOKEN and type(restored["expires_in"]) is int
        assert legacy_values() == (None, None)
        store.close()
    finally:
        ws.close()
