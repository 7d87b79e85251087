"""Real CLI processes against real agents: the commands that moved out of
cli.py (agent, exec, diagnostics) keep their exit codes and messages, the
``get`` path stays lean, and a locked agent asks for its passphrase by the
documented rule without a secret ever reaching argv, stdout or a message."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from agent_harness import AgentWorkspace
from modelforge_credentials.cli import COMMAND_MODULES, Cli, _handler
from modelforge_credentials.cli_args import build_parser

PASSPHRASE = "pass-phrase-🔑-review"
VALUE = "sk-review-secret-42"
#: The launcher that ``pip install`` puts on PATH (not ``python -m``).
LAUNCHER = Path(sys.executable).parent / "modelforge-agent"

#: Never imported by a `get` that finds its value: each costs start-up time
#: (socket and enum are what README's "the thin client imports neither" means).
HEAVY_FOR_GET = (
    "socket",
    "enum",
    "re",
    "argparse",
    "typing",
    "pathlib",
    "json",
    "shlex",
    "subprocess",
    "selectors",
    "getpass",
    "cryptography",
    "keyring",
    "asyncio",
    "modelforge_credentials.client.askpass",
    "modelforge_credentials.client.prompters",
    "modelforge_credentials.client.prompt_process",
    "modelforge_credentials.client.pinentry",
    "modelforge_credentials.client.assuan",
    "modelforge_credentials.cli_agent",
    "modelforge_credentials.cli_exec",
    "modelforge_credentials.cli_diagnostics",
    "modelforge_credentials.cli_team",
    "modelforge_credentials.cli_refs",
)


def _askpass(directory: Path, name: str, body: str) -> Path:
    """A small askpass program: records each argv in ``name``.args, then ``body``."""
    path = directory / name
    record = directory / f"{name}.args"
    path.write_text(f'#!/bin/sh\nprintf "%s\\n" "$*" >> {record}\n{body}\n')
    path.chmod(0o700)
    return path


def _locked_store(workspace: AgentWorkspace) -> None:
    """An agent whose store has PASSPHRASE, holding VALUE, locked."""
    workspace.serve()
    workspace.ok("set", "openai", "api_key", input=VALUE)
    workspace.ok("passwd", input=PASSPHRASE + "\n")
    workspace.ok("lock")
    assert workspace.status()["locked"] is True


def _prompting_env(workspace: AgentWorkspace, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in workspace.env.items() if k != "MODEL_FORGE_ASKPASS"}
    env["MODEL_FORGE_PINENTRY"] = "off"
    env.update(extra)
    return env


def _assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert PASSPHRASE not in text
        assert VALUE not in text


# -- the command table ---------------------------------------------------------------


def test_every_subcommand_of_the_parser_has_a_handler() -> None:
    """Each command argparse accepts resolves to a callable (no command lost in the table)."""
    import argparse

    def commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                return dict(action.choices)
        return {}

    for name, sub in commands(build_parser()).items():
        nested = commands(sub)  # `team add`, `team list`, ...: each sets its own run
        for leaf in nested.values() or [sub]:
            namespace = argparse.Namespace(command=name, run=leaf.get_default("run"))
            assert callable(_handler(namespace)), name
    for module, function in COMMAND_MODULES.values():
        assert module.startswith("cli_") and function
    assert not hasattr(Cli, "cmd_serve")  # moved, so the table is the one route


# -- the get path --------------------------------------------------------------------


def test_a_successful_get_imports_nothing_heavy(workspace: AgentWorkspace) -> None:
    """The installed launcher's `get` of a found value stays off every heavy module."""
    workspace.serve()
    workspace.ok("set", "openai", "api_key", input=VALUE)
    assert LAUNCHER.exists(), LAUNCHER
    result = workspace.run(
        [sys.executable, "-X", "importtime", str(LAUNCHER), "get", "openai", "api_key"]
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == VALUE + "\n"
    modules = {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:") and "|" in line
    }
    assert "modelforge_credentials.client.sync" in modules  # the listing is real
    heavy = sorted(m for m in HEAVY_FOR_GET if m in modules)
    assert heavy == [], heavy


# -- exec ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "status", "message"),
    [
        (["/nonexistent/command"], 127, "not found"),
        (["/etc/hostname"], 126, ""),
        (["sh", "-c", "exit 7"], 7, ""),
    ],
)
def test_exec_exit_status_is_envs_and_the_childs(
    workspace: AgentWorkspace, argv: list[str], status: int, message: str
) -> None:
    """exec: 127 for a missing command, 126 for one that cannot run, else the child's status."""
    workspace.serve()
    workspace.ok("set", "openai", "api_key", input=VALUE)
    result = workspace.cli("exec", "-p", "openai", "--", *argv)
    assert result.returncode == status, result.stderr
    assert message in result.stderr.lower()
    _assert_no_secret(result.stdout, result.stderr)


def test_exec_without_names_runs_nothing_and_says_what_to_name(
    workspace: AgentWorkspace, tmp_path: Path
) -> None:
    """Least privilege survives the move: no -p/-e/--env-file/--all is exit 2, nothing run."""
    workspace.serve()
    marker = tmp_path / "ran"
    result = workspace.cli("exec", "--", "touch", str(marker))
    assert result.returncode == 2
    assert "--all" in result.stderr and "-p PROVIDER" in result.stderr
    assert not marker.exists()
    empty = workspace.cli("exec")
    assert empty.returncode == 2 and "exec -- CMD" in empty.stderr


def test_exec_on_a_locked_agent_unlocks_through_askpass_and_injects(
    workspace: AgentWorkspace, tmp_path: Path
) -> None:
    """exec's -p and env-file lookups share the unlock-and-retry; the value is in env only."""
    _locked_store(workspace)
    askpass = _askpass(tmp_path, "askpass", f"printf '%s\\n' '{PASSPHRASE}'")
    env = _prompting_env(workspace, MODEL_FORGE_ASKPASS=str(askpass))
    result = workspace.cli(
        "exec", "-p", "openai", "--", "sh", "-c", 'test "$OPENAI_API_KEY" = ' + VALUE, env=env
    )
    assert result.returncode == 0, result.stderr
    _assert_no_secret(result.stdout, result.stderr)
    assert (tmp_path / "askpass.args").read_text() == "Passphrase: \n"


# -- agent commands moved to cli_agent ---------------------------------------------------


def test_status_and_stop_keep_their_output_and_exit_codes(workspace: AgentWorkspace) -> None:
    """status prints its table, stop prints the unset line and later status is exit 4."""
    agent = workspace.serve()
    status = workspace.ok("status")
    assert status.startswith(f"agent:       running, pid {agent.pid}")
    stopped = workspace.cli("stop", "--fish")
    assert stopped.returncode == 0, stopped.stderr
    assert (
        stopped.stdout == f"set -e MODEL_FORGE_AGENT_SOCK;\necho Agent pid {agent.pid} stopped;\n"
    )
    assert agent.proc.wait(timeout=10) == 0
    again = workspace.cli("stop")
    assert again.returncode == 0 and again.stdout == "unset MODEL_FORGE_AGENT_SOCK;\n"
    assert "nothing to stop" in again.stderr
    gone = workspace.cli("status")
    assert gone.returncode == 4
    assert "modelforge-agent start" in gone.stderr or "serve" in gone.stderr


def test_a_locked_get_with_a_missing_askpass_is_exit_4_naming_the_variable(
    workspace: AgentWorkspace, tmp_path: Path
) -> None:
    """An askpass that cannot run is "unavailable" (4) and says which variable chose it."""
    _locked_store(workspace)
    missing = tmp_path / "no-such-askpass"
    env = _prompting_env(workspace, MODEL_FORGE_ASKPASS=str(missing))
    result = workspace.cli("get", "openai", "api_key", env=env)
    assert result.returncode == 4, result.stderr
    assert "MODEL_FORGE_ASKPASS=" in result.stderr and "cannot be run" in result.stderr


def test_set_on_a_locked_agent_reads_the_value_from_stdin_and_the_passphrase_from_askpass(
    workspace: AgentWorkspace, tmp_path: Path
) -> None:
    """stdin carries set's value, never the passphrase; askpass gets the prompt only."""
    _locked_store(workspace)
    askpass = _askpass(tmp_path, "askpass", f"printf '%s\\n' '{PASSPHRASE}'")
    env = _prompting_env(workspace, MODEL_FORGE_ASKPASS=str(askpass))
    result = workspace.cli("set", "openai", "org", input="org-value\n", env=env)
    assert result.returncode == 0, result.stderr
    assert "The agent is locked." in result.stderr
    _assert_no_secret(result.stdout, result.stderr)
    assert workspace.ok("get", "openai", "org") == "org-value\n"
    assert (tmp_path / "askpass.args").read_text() == "Passphrase: \n"


def test_unlock_takes_a_stdin_line_before_askpass_and_askpass_before_ssh_askpass(
    workspace: AgentWorkspace, tmp_path: Path
) -> None:
    """The order through the real CLI: a stdin line, MODEL_FORGE_ASKPASS, SSH_ASKPASS."""
    _locked_store(workspace)
    ours = _askpass(tmp_path, "ours", f"printf '%s\\n' '{PASSPHRASE}'")
    ssh = _askpass(tmp_path, "ssh", "echo wrong")
    env = _prompting_env(
        workspace, MODEL_FORGE_ASKPASS=str(ours), SSH_ASKPASS=str(ssh), DISPLAY=":0"
    )
    piped = workspace.cli("unlock", input=PASSPHRASE + "\n", env=env)
    assert piped.returncode == 0, piped.stderr
    assert not (tmp_path / "ours.args").exists() and not (tmp_path / "ssh.args").exists()
    workspace.ok("lock")
    asked = workspace.cli("unlock", env=env)  # stdin ends without a line
    assert asked.returncode == 0, asked.stderr
    assert (tmp_path / "ours.args").exists() and not (tmp_path / "ssh.args").exists()
    workspace.ok("lock")
    del env["MODEL_FORGE_ASKPASS"]
    by_ssh = workspace.cli("unlock", env=env)
    assert by_ssh.returncode == 3, by_ssh.stderr  # SSH_ASKPASS answered, wrongly
    assert (tmp_path / "ssh.args").read_text() == "Passphrase: \n"
    _assert_no_secret(piped.stderr, asked.stderr, by_ssh.stderr)


def test_a_wrong_passphrase_under_the_agents_throttle_is_still_exit_3(
    workspace: AgentWorkspace,
) -> None:
    """Repeated wrong passphrases: the answer is "wrong" (3), not "agent hung, restart it" (4).

    The agent delays each failed unlock (doubling, up to --unlock-delay-cap,
    10 s by default) and the CLI's --timeout is 10 s by default: here both are
    0.3 s, so every failure waits as long as the client does.
    """
    workspace.serve("--unlock-delay-cap", "0.3")
    workspace.ok("set", "openai", "api_key", input=VALUE)
    workspace.ok("passwd", input=PASSPHRASE + "\n")
    workspace.ok("lock")
    for attempt in range(3):
        wrong = workspace.cli("--timeout", "0.3", "unlock", input="wrong\n")
        assert wrong.returncode == 3, f"attempt {attempt + 1}: {wrong.stderr}"
        assert "restart" not in wrong.stderr
