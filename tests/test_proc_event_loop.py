"""MODEL_FORGE_EVENT_LOOP: the setting, the loop it chooses, and serve on each loop."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from agent_harness import AgentWorkspace
from modelforge_credentials import settings
from modelforge_credentials.client.sync import AgentClient
from modelforge_credentials.daemon.loop import (
    ASYNCIO_LOOP,
    EventLoopUnavailableError,
    loop_factory,
    loop_name,
)
from modelforge_credentials.errors import CredentialStorageUnavailableError

HAVE_UVLOOP = importlib.util.find_spec("uvloop") is not None
needs_uvloop = pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed")


@pytest.mark.parametrize(
    ("raw", "choice"),
    [("", "auto"), ("auto", "auto"), ("asyncio", "asyncio"), (" UVLoop ", "uvloop")],
)
def test_the_setting_accepts_its_three_choices_in_any_case(raw: str, choice: str) -> None:
    assert settings.event_loop({settings.EVENT_LOOP: raw}) == choice
    assert settings.event_loop({}) == "auto"


def test_an_unknown_loop_is_a_setting_error_naming_the_choices() -> None:
    with pytest.raises(settings.SettingError, match="'trio'.*auto, asyncio, uvloop"):
        settings.event_loop({settings.EVENT_LOOP: "trio"})


def test_the_setting_is_never_a_credential() -> None:
    assert settings.EVENT_LOOP in settings.NAMES


def test_asyncio_is_asyncio_even_with_uvloop_installed() -> None:
    assert loop_factory({settings.EVENT_LOOP: "asyncio"}) is ASYNCIO_LOOP


def test_auto_without_uvloop_is_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop: ImportError
    assert loop_factory({}) is ASYNCIO_LOOP


def test_uvloop_asked_for_but_missing_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)
    with pytest.raises(EventLoopUnavailableError) as caught:
        loop_factory({settings.EVENT_LOOP: "uvloop"})
    assert isinstance(caught.value, CredentialStorageUnavailableError)
    assert "pip install uvloop" in str(caught.value)
    assert "MODEL_FORGE_EVENT_LOOP=asyncio" in str(caught.value)


@needs_uvloop
@pytest.mark.parametrize("raw", ["auto", "uvloop"])
def test_auto_and_uvloop_choose_uvloop_when_installed(raw: str) -> None:
    loop = loop_factory({settings.EVENT_LOOP: raw})()
    try:
        assert loop_name(loop) == "uvloop"
    finally:
        loop.close()


def test_asyncio_is_asyncios_own_loop_whatever_the_policy() -> None:
    loop = loop_factory({settings.EVENT_LOOP: "asyncio"})()
    try:
        assert loop_name(loop) == "asyncio"
    finally:
        loop.close()


@pytest.mark.parametrize("choice", ["asyncio", pytest.param("uvloop", marks=needs_uvloop)])
def test_serve_runs_on_the_chosen_loop(workspace: AgentWorkspace, choice: str) -> None:
    workspace.env[settings.EVENT_LOOP] = choice
    agent = workspace.serve()
    stored = workspace.cli("set", "openai", "api_key", input="sk-loop\n")
    assert stored.returncode == 0, stored.stderr
    with AgentClient(workspace.socket) as client:
        assert client.retrieve("openai", "api_key") == "sk-loop"
        assert client.status()["event_loop"] == choice
    assert agent.stop() == 0
    assert f"{choice} event loop" in agent.log_text()


def test_serve_with_uvloop_missing_exits_4_saying_what_to_do(
    workspace: AgentWorkspace, tmp_path: Path
) -> None:
    # A uvloop that cannot be imported, ahead of any installed one.
    stub = tmp_path / "shadow" / "uvloop"
    stub.mkdir(parents=True)
    (stub / "__init__.py").write_text("raise ImportError('uvloop is not installed here')\n")
    env = {**workspace.env, settings.EVENT_LOOP: "uvloop", "PYTHONPATH": str(stub.parent)}
    result = workspace.cli("serve", env=env)
    assert result.returncode == 4, result.stderr
    assert "pip install uvloop" in result.stderr
    assert "MODEL_FORGE_EVENT_LOOP=asyncio" in result.stderr
    assert not workspace.socket.exists()
