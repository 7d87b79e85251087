"""One owner of every MODEL_FORGE_* setting, one on/off vocabulary."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelforge_credentials import EnvVarStorage, settings
from modelforge_credentials.backends.auto import select_backend
from modelforge_credentials.cli_agent import audit_path
from modelforge_credentials.daemon.audit import default_audit_path


def test_the_projects_own_settings_are_never_listed_as_credentials() -> None:
    environ = {name: "1" for name in settings.NAMES}
    environ["MODEL_FORGE_OPENAI_API_KEY"] = "sk-env"
    assert EnvVarStorage(environ).list_keys() == [("openai", "api_key")]
    assert EnvVarStorage({name: "1" for name in settings.NAMES}).list_keys() == []


def test_a_setting_alone_does_not_make_selection_pick_the_env_backend(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("MODEL_FORGE_CONFIG_DIR", str(tmp_path / "cfg"))
    monkeypatch.setenv("MODEL_FORGE_AUDIT_LOG", "1")
    monkeypatch.setenv("MODEL_FORGE_KEYRING_PREFERRED", "1")
    assert select_backend().storage.name != "env"


@pytest.mark.parametrize("raw", ["1", "true", "YES", " on "])
def test_on(raw: str) -> None:
    assert settings.flag("X", {"X": raw}) is True
    assert settings.flag_or_path("X", {"X": raw}) is True


@pytest.mark.parametrize("raw", ["0", "false", "No", "off", ""])
def test_off(raw: str) -> None:
    assert settings.flag("X", {"X": raw}, default=True) is False
    assert settings.flag_or_path("X", {"X": raw}) is False


def test_unset_gives_the_default_and_nonsense_is_a_typed_error_naming_it() -> None:
    assert settings.flag("X", {}, default=True) is True
    with pytest.raises(settings.SettingError, match="X='perhaps'.*1/true/yes/on"):
        settings.flag("X", {"X": "perhaps"})


@pytest.mark.parametrize("raw", ["false", "0", "off", "no"])
def test_audit_log_off_means_no_log_not_a_file_named_off(
    raw: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODEL_FORGE_AUDIT_LOG", raw)
    assert audit_path(None) is None


def test_audit_log_on_a_path_or_the_option(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_FORGE_AUDIT_LOG", "true")
    assert audit_path(None) == default_audit_path()
    monkeypatch.setenv("MODEL_FORGE_AUDIT_LOG", "/var/tmp/x.log")
    assert audit_path(None) == Path("/var/tmp/x.log")
    assert audit_path("") == default_audit_path()  # --audit-log without a path
    assert audit_path("/other.log") == Path("/other.log")


def test_every_documented_setting_is_in_the_readme() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    missing = [name for name in settings.DOCUMENTED if name not in readme]
    assert missing == []
