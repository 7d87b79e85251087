"""The model-forge adapter and its start-up hook, without installing model-forge.

A small stand-in for model-forge 2.3's ``modelforge/auth.py`` (the three
functions over a JSON config file, as the real ones are written) lets these
run in the default suite; tests/test_proc_model_forge_real.py repeats the
important ones against the real model-forge-llm from PyPI.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

from agent_harness import CLI, TIMEOUT, AgentWorkspace
from modelforge_credentials import EncryptedFileStorage
from modelforge_credentials.auth_data import JSON_KEYS_KEY, read_auth_data
from modelforge_credentials.integrations import model_forge, model_forge_env

# model-forge 2.3's three functions, as its auth.py writes them, over CONFIG.
FAKE_AUTH = """
import json, os
CONFIG = os.environ["FAKE_MODELFORGE_CONFIG"]

def _load():
    try:
        with open(CONFIG) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}

def _save(data):
    with open(CONFIG, "w") as f:
        json.dump(data, f)

def get_auth_data(provider_name):
    return dict(_load().get("providers", {}).get(provider_name, {}).get("auth_data", {}))

def save_auth_data(provider_name, auth_data):
    data = _load()
    data.setdefault("providers", {}).setdefault(provider_name, {})["auth_data"] = auth_data
    _save(data)

def clear_auth_data(provider_name):
    data = _load()
    providers = data.get("providers", {})
    if provider_name in providers:
        providers[provider_name].pop("auth_data", None)
        _save(data)

class ApiKeyAuth:
    def __init__(self, provider_name):
        self.provider_name = provider_name
    def store_api_key(self, key):
        save_auth_data(self.provider_name, {"api_key": key})
    def get_credentials(self):
        return get_auth_data(self.provider_name) or None
"""

TOKEN = {
    "access_token": "ghu_token_value_0001",
    "token_type": "bearer",
    "scope": "read:user",
    "expires_in": 28800,
    "refresh_token": "ghr_refresh_value_0001",
    "expires_at": "2026-12-01T20:00:00+00:00",
}


def fake_model_forge(root: Path, auth_source: str = FAKE_AUTH) -> Path:
    package = root / "modelforge"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "auth.py").write_text(auth_source)
    return root


def load_fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[types.ModuleType, Path]:
    config = tmp_path / "config.json"
    monkeypatch.setenv("FAKE_MODELFORGE_CONFIG", str(config))
    module = types.ModuleType("modelforge.auth")
    exec(compile(FAKE_AUTH, "fake-auth.py", "exec"), module.__dict__)
    return module, config


@pytest.fixture
def store(tmp_path: Path, fast_kdf: object) -> EncryptedFileStorage:
    return EncryptedFileStorage(tmp_path / "store", kdf=fast_kdf)  # type: ignore[arg-type]


# -- the adapter, in-process ------------------------------------------------------------


def installed_with_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: EncryptedFileStorage
) -> tuple[types.ModuleType, Path]:
    """The fake model-forge with the adapter installed and TOKEN saved through it;
    the module and its config file."""
    module, config = load_fake(tmp_path, monkeypatch)
    model_forge.install(module, storage=store)
    module.save_auth_data("github_copilot", dict(TOKEN))
    return module, config


def test_saved_auth_data_reads_back_with_its_json_types_and_never_reaches_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: EncryptedFileStorage
) -> None:
    module, config = installed_with_token(tmp_path, monkeypatch, store)
    assert not config.exists()
    got = module.get_auth_data("github_copilot")
    assert got == TOKEN
    assert type(got["expires_in"]) is int
    assert json.loads(store.retrieve("github_copilot", JSON_KEYS_KEY) or "[]") == ["expires_in"]


def test_a_save_replaces_the_whole_dict_as_model_forge_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: EncryptedFileStorage
) -> None:
    module, _ = installed_with_token(tmp_path, monkeypatch, store)
    refreshed = {"access_token": "ghu_token_value_0002", "token_type": "bearer"}
    module.save_auth_data("github_copilot", refreshed)
    assert module.get_auth_data("github_copilot") == refreshed
    assert store.list_keys("github_copilot") == [
        ("github_copilot", "access_token"),
        ("github_copilot", "token_type"),
    ]


def test_an_unmigrated_config_is_read_then_moved_by_the_next_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: EncryptedFileStorage
) -> None:
    module, config = load_fake(tmp_path, monkeypatch)
    old = {"providers": {"openai": {"auth_data": {"api_key": "sk-old"}, "base_url": "u"}}}
    config.write_text(json.dumps(old))
    model_forge.install(module, storage=store)
    assert module.get_auth_data("openai") == {"api_key": "sk-old"}
    module.ApiKeyAuth("openai").store_api_key("sk-new")
    assert store.retrieve("openai", "api_key") == "sk-new"
    assert json.loads(config.read_text()) == {"providers": {"openai": {"base_url": "u"}}}
    assert module.get_auth_data("openai") == {"api_key": "sk-new"}


def test_clear_removes_the_store_entries_and_any_plain_text_copy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: EncryptedFileStorage
) -> None:
    module, config = load_fake(tmp_path, monkeypatch)
    config.write_text(json.dumps({"providers": {"openai": {"auth_data": {"api_key": "x"}}}}))
    store.store("openai", "api_key", "sk-stored")
    model_forge.install(module, storage=store)
    module.clear_auth_data("openai")
    assert store.list_keys("openai") == []
    assert "auth_data" not in config.read_text()
    assert module.get_auth_data("openai") == {}


def test_install_is_idempotent_and_uninstall_restores_model_forges_functions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: EncryptedFileStorage
) -> None:
    module, config = load_fake(tmp_path, monkeypatch)
    originals = {name: getattr(module, name) for name in model_forge.FUNCTIONS}
    first = model_forge.install(module, storage=store)
    assert model_forge.install(module, storage=store) is first
    assert first.originals == originals
    assert model_forge.uninstall(module) is True
    assert {name: getattr(module, name) for name in model_forge.FUNCTIONS} == originals
    assert model_forge.uninstall(module) is False
    module.save_auth_data("openai", {"api_key": "plain"})
    assert "plain" in config.read_text()  # model-forge's own behaviour is back


@pytest.mark.parametrize(
    "source, problem",
    [
        (FAKE_AUTH.replace("def save_auth_data", "def save_auth"), "no function save_auth_data"),
        (
            FAKE_AUTH.replace(
                "def get_auth_data(provider_name):", "def get_auth_data(provider_name, scope):"
            ),
            "get_auth_data(provider_name, scope)",
        ),
    ],
)
def test_a_model_forge_without_the_seam_is_refused_and_left_unchanged(
    source: str, problem: str, store: EncryptedFileStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = types.ModuleType("modelforge.auth")
    monkeypatch.setenv("FAKE_MODELFORGE_CONFIG", "/nonexistent")
    exec(compile(source, "fake-auth.py", "exec"), module.__dict__)
    before = dict(vars(module))
    with pytest.raises(model_forge.ModelForgeIncompatibleError) as caught:
        model_forge.install(module, storage=store)
    assert problem in str(caught.value)
    assert "integrate model-forge --remove" in str(caught.value)
    assert dict(vars(module)) == before


# -- the .pth hook, in a fresh interpreter ------------------------------------------------


def run_python(code: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=TIMEOUT,
    )


def hook_site(tmp_path: Path, auth_source: str = FAKE_AUTH) -> Path:
    site_dir = fake_model_forge(tmp_path / "site", auth_source)
    (site_dir / model_forge_env.PTH_NAME).write_text(model_forge_env.PTH_LINE)
    return site_dir


def test_the_hook_imports_nothing_until_model_forge_imports_its_auth_module(
    tmp_path: Path,
) -> None:
    site_dir = hook_site(tmp_path)
    result = run_python(
        f"""
        import site, sys
        before = set(sys.modules)
        site.addsitedir({str(site_dir)!r})
        site.addsitedir({str(site_dir)!r})  # some interpreters process a dir twice
        hooks = [f for f in sys.meta_path if getattr(f, "__name__", "") ==
                 "ModelForgeCredentialsHook"]
        print(len(hooks), sorted(set(sys.modules) - before))
        """,
        dict(os.environ),
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "1 []"


def test_the_hook_routes_a_fresh_model_forge_through_the_real_agent(tmp_path: Path) -> None:
    site_dir = hook_site(tmp_path)
    config = tmp_path / "config.json"
    ws = AgentWorkspace({**os.environ, "FAKE_MODELFORGE_CONFIG": str(config)})
    try:
        ws.serve("--idle-timeout", "0")
        result = run_python(
            f"""
            import json, site, sys
            site.addsitedir({str(site_dir)!r})
            from modelforge import auth
            auth.save_auth_data("github_copilot", {json.dumps(TOKEN)})
            auth.ApiKeyAuth("openai").store_api_key("sk-through-the-hook")
            got = auth.get_auth_data("github_copilot")
            print(json.dumps([type(got["expires_in"]).__name__, auth.get_auth_data("openai")]))
            print(type(auth.get_auth_data.__self__).__name__)
            """,
            ws.env,
            tmp_path,
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [
            '["int", {"api_key": "sk-through-the-hook"}]',
            "ModelForgeAdapter",
        ]
        assert not config.exists()
        got = ws.cli("get", "openai", "api_key")
        assert got.stdout == "sk-through-the-hook\n", got.stderr
        stored = EncryptedFileStorage(ws.config)
        assert read_auth_data(stored, "github_copilot") == TOKEN
    finally:
        ws.close()


def test_the_hook_stops_a_model_forge_without_the_seam_with_what_to_do(tmp_path: Path) -> None:
    site_dir = hook_site(tmp_path, FAKE_AUTH.replace("def clear_auth_data", "def forget"))
    result = run_python(
        f"""
        import site
        site.addsitedir({str(site_dir)!r})
        import modelforge.auth
        """,
        {**os.environ, "FAKE_MODELFORGE_CONFIG": str(tmp_path / "c.json")},
        tmp_path,
    )
    assert result.returncode == 1
    assert "ModelForgeIncompatibleError" in result.stderr
    assert "no function clear_auth_data()" in result.stderr
    assert "modelforge-agent integrate model-forge --remove" in result.stderr


# -- integrate: finding the environment, writing and removing the hook -------------------


def fake_environment(tmp_path: Path, auth_source: str = FAKE_AUTH) -> tuple[Path, Path]:
    """A venv that sees the fake model-forge and this package (through PYTHONPATH)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    fake_model_forge_at = Path(purelib)
    package = fake_model_forge_at / "modelforge"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "auth.py").write_text(auth_source)
    script = venv / "bin" / "modelforge"
    script.write_text(f"#!{python}\nimport modelforge.auth\n")
    script.chmod(0o755)
    return venv, Path(purelib)


def integrate(
    *args: str, path: Path, pythonpath: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``integrate model-forge`` with ``path`` as the only place for ``modelforge``."""
    env = {**os.environ, "PATH": f"{path}:/usr/bin:/bin"}
    if pythonpath is not None:
        env["PYTHONPATH"] = pythonpath
    return subprocess.run(
        [*CLI, "integrate", "model-forge", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT,
    )


def ours_on_path() -> str:
    import modelforge_credentials

    return str(Path(modelforge_credentials.__file__).parent.parent)


def test_integrate_finds_model_forge_from_its_executable_and_remove_leaves_nothing(
    tmp_path: Path,
) -> None:
    venv, purelib = fake_environment(tmp_path)
    before = sorted(p.name for p in purelib.iterdir())
    printed = integrate("--print", path=venv / "bin", pythonpath=ours_on_path())
    assert printed.returncode == 0, printed.stderr
    assert str(purelib / model_forge_env.PTH_NAME) in printed.stdout
    assert sorted(p.name for p in purelib.iterdir()) == before  # --print writes nothing
    done = integrate(path=venv / "bin", pythonpath=ours_on_path())
    assert done.returncode == 0, done.stderr
    assert (purelib / model_forge_env.PTH_NAME).read_text() == model_forge_env.PTH_LINE
    assert oct((purelib / model_forge_env.PTH_NAME).stat().st_mode & 0o777) == "0o644"
    again = integrate(path=venv / "bin", pythonpath=ours_on_path())
    assert "already integrated" in again.stdout
    removed = integrate("--remove", path=venv / "bin")
    assert removed.returncode == 0, removed.stderr
    assert sorted(p.name for p in purelib.iterdir()) == before


def test_integrate_refuses_a_model_forge_without_the_seam_and_writes_nothing(
    tmp_path: Path,
) -> None:
    venv, purelib = fake_environment(tmp_path, FAKE_AUTH.replace("def get_auth_data", "def g"))
    result = integrate("--python", str(venv / "bin" / "python"), path=tmp_path)
    assert result.returncode == 2
    assert "get_auth_data(provider_name)" in result.stderr
    assert "Nothing was changed" in result.stderr
    assert not (purelib / model_forge_env.PTH_NAME).exists()


def test_integrate_says_how_to_install_this_package_beside_model_forge(tmp_path: Path) -> None:
    venv, purelib = fake_environment(tmp_path)
    result = integrate("--python", str(venv / "bin" / "python"), path=tmp_path, pythonpath="")
    assert result.returncode == 1
    assert f"{venv / 'bin' / 'python'} -m pip install model-forge-credentials" in result.stderr
    assert not (purelib / model_forge_env.PTH_NAME).exists()


def test_integrate_without_model_forge_anywhere_says_what_to_pass(tmp_path: Path) -> None:
    result = integrate(path=tmp_path)
    assert result.returncode == 1
    assert "--python PATH" in result.stderr
