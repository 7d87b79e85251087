"""serve's settings file and SIGHUP (systemd's ExecReload), on a real agent process."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from agent_harness import TIMEOUT, AgentWorkspace, wait_until
from modelforge_credentials.client.sync import AgentClient


@pytest.fixture
def ws(workspace: AgentWorkspace) -> AgentWorkspace:
    return workspace


def status(ws: AgentWorkspace) -> dict[str, object]:
    with AgentClient(ws.socket, timeout=TIMEOUT) as client:
        return client.status()


def test_sighup_applies_a_changed_settings_file(ws: AgentWorkspace) -> None:
    settings = ws.base / "agent.toml"
    settings.write_text("idle_timeout = 0\nmax_connections = 64\n")
    agent = ws.serve("--settings", str(settings))
    assert status(ws)["idle_timeout"] is None
    settings.write_text("idle_timeout = 120\n")
    os.kill(agent.pid, signal.SIGHUP)
    wait_until(lambda: status(ws)["idle_timeout"] == 120, TIMEOUT, "the reload")
    assert agent.running()  # SIGHUP (a closing terminal too) never stops it
    assert "reloaded: idle_timeout=120" in agent.log_text()


def test_the_command_line_wins_over_the_file_across_reloads(ws: AgentWorkspace) -> None:
    settings = ws.base / "agent.toml"
    settings.write_text("idle_timeout = 60\n")
    agent = ws.serve("--settings", str(settings), "--idle-timeout", "30")
    assert status(ws)["idle_timeout"] == 30
    settings.write_text("idle_timeout = 90\n")
    os.kill(agent.pid, signal.SIGHUP)
    wait_until(lambda: "reloaded" in agent.log_text(), TIMEOUT, "the reload")
    assert status(ws)["idle_timeout"] == 30


def test_a_broken_file_on_reload_keeps_the_current_settings(ws: AgentWorkspace) -> None:
    settings = ws.base / "agent.toml"
    settings.write_text("idle_timeout = 45\n")
    agent = ws.serve("--settings", str(settings))
    settings.write_text("idle_timeout = 'soon'\n")
    os.kill(agent.pid, signal.SIGHUP)
    wait_until(lambda: "settings not reloaded" in agent.log_text(), TIMEOUT, "the refusal")
    assert "idle_timeout must be a number" in agent.log_text()
    assert status(ws)["idle_timeout"] == 45 and agent.running()


def test_an_unknown_setting_at_start_is_refused_naming_it(ws: AgentWorkspace) -> None:
    settings = ws.base / "agent.toml"
    settings.write_text("idle_timout = 45\n")
    result = ws.cli("serve", "--settings", str(settings), timeout=TIMEOUT)
    assert result.returncode != 0
    assert "unknown settings idle_timout" in result.stderr


def test_sighup_reopens_the_audit_log_after_rotation(ws: AgentWorkspace) -> None:
    log_path = ws.base / "audit.log"
    agent = ws.serve("--idle-timeout", "0", "--audit-log", str(log_path))
    with AgentClient(ws.socket, timeout=TIMEOUT) as client:
        client.store("openai", "api_key", "sk-reload-1")
    log_path.rename(ws.base / "audit.log.old")  # what logrotate does
    os.kill(agent.pid, signal.SIGHUP)
    wait_until(lambda: "reloaded" in agent.log_text(), TIMEOUT, "the reload")
    with AgentClient(ws.socket, timeout=TIMEOUT) as client:
        client.delete("openai", "api_key")
    entries = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert [e["op"] for e in entries] == ["delete"]
    assert Path(ws.base / "audit.log.old").read_text().count('"store"') == 1
