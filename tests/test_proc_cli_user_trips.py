"""What a new user trips on, through the real CLI against a real agent process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_harness import AgentWorkspace
from modelforge_credentials import EncryptedFileStorage

VALUE = "sk-user-trips-value-6d2a"


@pytest.fixture
def ws() -> Iterator[AgentWorkspace]:
    workspace = AgentWorkspace({})
    import os

    workspace.env = {**os.environ, **workspace.env, "MODEL_FORGE_BACKEND": "encrypted-file"}
    try:
        workspace.serve("--idle-timeout", "0")
        yield workspace
    finally:
        workspace.close()


def test_unlock_before_any_store_refuses_and_points_to_passwd(ws: AgentWorkspace) -> None:
    result = ws.cli("unlock", input="a typo\n")
    assert result.returncode == 2
    assert "passwd" in result.stderr and "asks twice" in result.stderr
    assert ws.cli("set", "openai", "api_key", input=VALUE).returncode == 0
    assert EncryptedFileStorage(ws.config).protection == "keyfile"


def test_key_file_mode_lock_and_unlock_say_there_is_no_passphrase(ws: AgentWorkspace) -> None:
    assert ws.cli("set", "openai", "api_key", input=VALUE).returncode == 0
    locked = ws.cli("lock")
    assert locked.returncode == 0
    assert "no passphrase" in locked.stderr and "modelforge-agent passwd" in locked.stderr
    unlocked = ws.cli("unlock", input="whatever\n")
    assert unlocked.returncode == 2
    assert "no passphrase" in unlocked.stderr and "passwd" in unlocked.stderr


@pytest.mark.parametrize("stdin", ["", "\n"])
def test_set_with_an_empty_or_closed_stdin_stores_nothing(ws: AgentWorkspace, stdin: str) -> None:
    result = ws.cli("set", "openai", "api_key", input=stdin)
    assert result.returncode == 2
    assert "empty" in result.stderr and "--allow-empty" in result.stderr
    assert ws.cli("exists", "openai", "api_key").returncode == 1
    assert ws.cli("set", "openai", "api_key", "--allow-empty", input=stdin).returncode == 0
    assert ws.cli("exists", "openai", "api_key").returncode == 0


def test_a_value_on_the_command_line_is_refused_without_echoing_it(ws: AgentWorkspace) -> None:
    result = ws.cli("set", "openai", "api_key", VALUE)
    assert result.returncode == 2
    assert VALUE not in result.stderr + result.stdout
    assert "printf %s" in result.stderr and "never from the command line" in result.stderr
    assert ws.cli("exists", "openai", "api_key").returncode == 1


def test_status_and_start_say_the_running_agent_uses_another_backend(ws: AgentWorkspace) -> None:
    env = {**ws.env, "MODEL_FORGE_BACKEND": "env"}
    for command in ("status", "start"):
        result = ws.cli(command, env=env)
        assert result.returncode == 0, result.stderr
        assert "asks for the env backend" in result.stderr
        assert "uses encrypted-file" in result.stderr and "modelforge-agent stop" in result.stderr
    quiet = ws.cli("status")
    assert "asks for" not in quiet.stderr


@pytest.mark.parametrize(
    "flag, line", [((), "unset MODEL_FORGE_AGENT_SOCK;"), (("--csh",), "unsetenv")]
)
def test_stop_prints_the_unset_lines_for_eval(
    ws: AgentWorkspace, flag: tuple[str, ...], line: str
) -> None:
    result = ws.cli("stop", *flag)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0].startswith(line)
    assert "stopped;" in result.stdout
    again = ws.cli("stop", *flag)
    assert again.returncode == 0 and again.stdout.startswith(line)


def damage(ws: AgentWorkspace) -> bytes:
    path = ws.config / "credentials.enc"
    blob = bytearray(path.read_bytes())
    blob[-3] ^= 0x55
    path.write_bytes(bytes(blob))
    return bytes(blob)


def test_a_damaged_key_file_store_says_what_to_do_and_restore_backup_repairs_it(
    ws: AgentWorkspace,
) -> None:
    assert ws.cli("set", "openai", "api_key", input="sk-first").returncode == 0
    assert ws.cli("set", "anthropic", "api_key", input="sk-second").returncode == 0
    assert ws.cli("stop").returncode == 0
    damaged = damage(ws)

    started = ws.cli("start")
    assert started.returncode == 4
    assert "restore-backup --dry-run" in started.stderr
    doctor = json.loads(ws.cli("doctor", "--json").stdout)
    assert any("restore-backup" in p["fix"] for p in doctor["problems"])

    dry = ws.cli("restore-backup", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "openai/api_key" in dry.stdout and "1 credentials" in dry.stdout
    assert "sk-first" not in dry.stdout
    assert (ws.config / "credentials.enc").read_bytes() == damaged
    refused = ws.cli("restore-backup")  # no terminal and no --yes: it asks for --yes
    assert refused.returncode == 2 and "--yes" in refused.stderr

    done = ws.cli("restore-backup", "--yes")
    assert done.returncode == 0, done.stderr
    assert "credentials.enc.damaged" in done.stdout
    ws.serve("--idle-timeout", "0")
    assert ws.cli("get", "openai", "api_key").stdout == "sk-first\n"


def test_a_damaged_passphrase_store_says_so_at_unlock_and_the_running_agent_recovers(
    ws: AgentWorkspace,
) -> None:
    assert ws.cli("passwd", input="first passphrase\n").returncode == 0
    assert ws.cli("set", "openai", "api_key", input="sk-first").returncode == 0
    assert ws.cli("set", "anthropic", "api_key", input="sk-second").returncode == 0
    assert ws.cli("lock").returncode == 0
    damage(ws)
    unlock = ws.cli("unlock", input="first passphrase\n")
    assert unlock.returncode == 4
    assert "fail authentication" in unlock.stderr and "restore-backup" in unlock.stderr
    done = ws.cli("restore-backup", "--yes", input="first passphrase\n")
    assert done.returncode == 0, done.stderr
    assert ws.cli("unlock", input="first passphrase\n").returncode == 0
    assert ws.cli("get", "openai", "api_key").stdout == "sk-first\n"


def test_agent_storage_warns_once_when_the_agent_uses_another_backend(
    ws: AgentWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    from modelforge_credentials.backends.agent import AgentStorage

    monkeypatch.setenv("MODEL_FORGE_BACKEND", "keyring")
    storage = AgentStorage(ws.socket, autostart=False)
    try:
        with pytest.warns(
            RuntimeWarning, match="asks for the keyring backend.*uses encrypted-file"
        ):
            storage.store("openai", "api_key", VALUE)
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert storage.retrieve("openai", "api_key") == VALUE  # once is enough
    finally:
        storage.close()


def test_a_locked_agent_is_unlocked_through_askpass_when_there_is_no_terminal(
    ws: AgentWorkspace, tmp_path: Path
) -> None:
    assert ws.cli("passwd", input="askpass passphrase\n").returncode == 0
    assert ws.cli("set", "openai", "api_key", input=VALUE).returncode == 0
    assert ws.cli("lock").returncode == 0
    askpass = tmp_path / "askpass"
    askpass.write_text("#!/bin/sh\nprintf '%s\\n' 'askpass passphrase'\n")
    askpass.chmod(0o700)
    env = {**ws.env, "MODEL_FORGE_ASKPASS": str(askpass)}
    got = ws.cli("get", "openai", "api_key", env=env)
    assert got.returncode == 0, got.stderr
    assert got.stdout == VALUE + "\n"
    assert "askpass passphrase" not in got.stderr
    # and without an askpass program, a locked agent is reported as locked (exit 3)
    assert ws.cli("lock").returncode == 0
    locked = ws.cli("get", "openai", "api_key", env={**ws.env, "MODEL_FORGE_ASKPASS": "off"})
    assert locked.returncode == 3
