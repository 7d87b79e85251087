"""``modelforge-agent exec``: secrets into one real child process's environment.

A real agent (encrypted file in a temporary directory) holds the secrets;
every command is a real ``bash -c`` or ``python -c`` child. Without
``--mask`` the exec process *becomes* the command, so exit status, signals,
stdin and stdout/stderr bytes are the command's own.
"""

from __future__ import annotations

import json
import os
import select
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from agent_harness import CLI, AgentWorkspace
from modelforge_credentials.client.sync import AgentClient
from refs_testkit import TIMEOUT, agent_holding, piped

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")

OPENAI = "sk-proj-exec-openai-7c1e9a"
ANTHROPIC = "sk-ant-exec-anthropic-42bd"
GOOGLE = "AIza-exec-google-9f00c1"
OPENROUTER = "sk-or-exec-openrouter-5a5a"
COPILOT = "ghu_execCopilotAccess77aa"
REFRESH = "ghr_execCopilotRefresh11bb"
OTHER = "other-exec-value-3d3d"
STORED = {
    ("openai", "api_key"): OPENAI,
    ("anthropic", "api_key"): ANTHROPIC,
    ("google", "api_key"): GOOGLE,
    ("openrouter", "api_key"): OPENROUTER,
    ("github_copilot", "access_token"): COPILOT,
    ("github_copilot", "refresh_token"): REFRESH,
    ("other", "key"): OTHER,
}
SECRETS = tuple(STORED.values())

#: Prints, as JSON, every variable of the child's environment that holds a secret.
PRINT_SECRET_VARS = (
    "import json, os, sys\n"
    f"secrets = {list(SECRETS)!r}\n"
    "print(json.dumps({k: v for k, v in os.environ.items() if v in secrets or "
    "k.endswith(('_API_KEY', '_ACCESS_TOKEN', '_REFRESH_TOKEN')) or k == 'MY_VAR'}))\n"
)

#: Variables a developer's shell may hold; removed so only exec can put them there.
_SDK_VARIABLES = (
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "GOOGLE_API_KEY",
    "GEMINI_API_KEY",
    "OPENROUTER_API_KEY",
    "MY_VAR",
)


@pytest.fixture
def agent() -> Iterator[AgentWorkspace]:
    env = {k: v for k, v in os.environ.items() if k not in _SDK_VARIABLES}
    with agent_holding(env, STORED) as ws:
        yield ws


_SELECTING = ("-p", "--provider", "-e", "--env", "--env-file", "--all")


def exec_argv(*args: str) -> list[str]:
    """exec with ``args``; ``--all`` when they select nothing (exec then refuses)."""
    options = args[: args.index("--")] if "--" in args else args
    selected = any(o.split("=")[0] in _SELECTING for o in options)
    return [*CLI, "exec", *(() if selected else ("--all",)), *args]


def run(ws: AgentWorkspace, *args: str, input: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        exec_argv(*args), input=input, capture_output=True, env=ws.env, timeout=TIMEOUT
    )


def child_secrets(ws: AgentWorkspace, *options: str) -> dict[str, str]:
    result = run(ws, *options, "--", sys.executable, "-c", PRINT_SECRET_VARS)
    assert result.returncode == 0, result.stderr.decode()
    found: dict[str, str] = json.loads(result.stdout)
    return found


# -- which variables --------------------------------------------------------------------------


def test_default_mapping_fills_model_forge_and_sdk_variables(agent: AgentWorkspace) -> None:
    assert child_secrets(agent) == {
        "OPENAI_API_KEY": OPENAI,
        "MODELFORGE_OPENAI_API_KEY": OPENAI,
        "ANTHROPIC_API_KEY": ANTHROPIC,
        "MODELFORGE_ANTHROPIC_API_KEY": ANTHROPIC,
        "GOOGLE_API_KEY": GOOGLE,
        "GEMINI_API_KEY": GOOGLE,
        "MODELFORGE_GOOGLE_API_KEY": GOOGLE,
        "OPENROUTER_API_KEY": OPENROUTER,
        "MODELFORGE_OPENROUTER_API_KEY": OPENROUTER,
        "MODELFORGE_GITHUB_COPILOT_ACCESS_TOKEN": COPILOT,
    }


def test_provider_option_limits_to_that_provider(agent: AgentWorkspace) -> None:
    assert child_secrets(agent, "--provider", "openai") == {
        "OPENAI_API_KEY": OPENAI,
        "MODELFORGE_OPENAI_API_KEY": OPENAI,
    }
    assert child_secrets(agent, "-p", "github_copilot", "-p", "anthropic") == {
        "MODELFORGE_GITHUB_COPILOT_ACCESS_TOKEN": COPILOT,
        "ANTHROPIC_API_KEY": ANTHROPIC,
        "MODELFORGE_ANTHROPIC_API_KEY": ANTHROPIC,
    }


def test_env_option_adds_a_variable(agent: AgentWorkspace) -> None:
    found = child_secrets(agent, "--provider", "openai", "--env", "MY_VAR=openai/api_key")
    assert found == {
        "OPENAI_API_KEY": OPENAI,
        "MODELFORGE_OPENAI_API_KEY": OPENAI,
        "MY_VAR": OPENAI,
    }
    refresh = child_secrets(
        agent, "-p", "openai", "-e", "GITHUB_COPILOT_REFRESH_TOKEN=github_copilot/refresh_token"
    )
    assert refresh["GITHUB_COPILOT_REFRESH_TOKEN"] == REFRESH


def test_env_option_overrides_a_built_in_name(agent: AgentWorkspace) -> None:
    found = child_secrets(agent, "--all", "--env", "OPENAI_API_KEY=other/key")
    assert found["OPENAI_API_KEY"] == OTHER
    assert found["MODELFORGE_OPENAI_API_KEY"] == OPENAI


def test_env_option_alone_injects_that_variable_only(agent: AgentWorkspace) -> None:
    assert child_secrets(agent, "--env", "OPENAI_API_KEY=other/key") == {"OPENAI_API_KEY": OTHER}


def test_env_file_references_and_plain_values_reach_the_child_only_named(
    agent: AgentWorkspace, tmp_path: Path
) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text('# dev\nMY_VAR="plain value"\nexport OPENAI_API_KEY=mf://openai/api_key\n')
    found = child_secrets(agent, "--env-file", str(env_file))
    assert found == {"OPENAI_API_KEY": OPENAI, "MY_VAR": "plain value"}
    env_file.write_text("A=mf://nosuch/key\nB=mf://other/missing\n")
    result = run(agent, "--env-file", str(env_file), "--", sys.executable, "-c", "print('ran')")
    assert result.returncode == 1
    assert b"mf://nosuch/key" in result.stderr and b"mf://other/missing" in result.stderr
    assert b"ran" not in result.stdout


# -- only the child sees them; exec becomes the child ------------------------------------------


def test_secrets_reach_only_the_child_not_the_calling_shell(agent: AgentWorkspace) -> None:
    command = shlex.join(exec_argv("--", "printenv", "OPENAI_API_KEY"))
    script = f'{command}; echo "status=$?"; echo "shell=${{OPENAI_API_KEY-unset}}"; env'
    result = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, env=agent.env, timeout=TIMEOUT
    )
    lines = result.stdout.splitlines()
    assert lines[:3] == [OPENAI, "status=0", "shell=unset"], result.stderr
    shell_env = "\n".join(lines[3:])
    for secret in SECRETS:
        assert secret not in shell_env
    assert not any(secret in value for value in os.environ.values() for secret in SECRETS)


def test_exec_process_is_replaced_by_the_command(agent: AgentWorkspace) -> None:
    proc = subprocess.Popen(
        exec_argv("--", "bash", "-c", 'echo "$$"; cat /proc/$$/cmdline | tr "\\0" " "'),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=agent.env,
    )
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err.decode()
    pid_line, cmdline = out.decode().splitlines()
    assert int(pid_line) == proc.pid
    assert cmdline.startswith("bash -c")


def test_mask_runs_the_command_as_a_child_of_exec(agent: AgentWorkspace) -> None:
    proc = subprocess.Popen(
        exec_argv("--mask", "--", "bash", "-c", 'echo "$$ $PPID"'),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=agent.env,
    )
    out, err = proc.communicate(timeout=TIMEOUT)
    assert proc.returncode == 0, err.decode()
    child, parent = map(int, out.split())
    assert child != proc.pid and parent == proc.pid


# -- status, signals, stdio ------------------------------------------------------------------


@pytest.mark.parametrize("mask", [(), ("--mask",)], ids=["plain", "mask"])
@pytest.mark.parametrize("status", [0, 3, 42])
def test_exit_status_passes_through(
    agent: AgentWorkspace, mask: tuple[str, ...], status: int
) -> None:
    result = run(agent, *mask, "--", "bash", "-c", f"exit {status}")
    assert result.returncode == status, result.stderr.decode()


@pytest.mark.parametrize("mask", [(), ("--mask",)], ids=["plain", "mask"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGKILL], ids=["TERM", "KILL"])
def test_a_command_killed_by_a_signal_shows_that_signal(
    agent: AgentWorkspace, mask: tuple[str, ...], signum: signal.Signals
) -> None:
    result = run(agent, *mask, "--", "bash", "-c", f"kill -{signum.name[3:]} $$")
    assert result.returncode == -signum, result.stderr.decode()
    assert b"Traceback" not in result.stderr


def read_within(stream: IO[bytes], count: int, timeout: float) -> bytes:
    """Up to ``count`` bytes of ``stream``, as many as arrive within ``timeout``."""
    data = b""
    deadline = time.monotonic() + timeout
    while len(data) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not select.select([stream], [], [], remaining)[0]:
            break
        chunk = os.read(stream.fileno(), count - len(data))
        if not chunk:
            break
        data += chunk
    return data


def wait_for_file(path: Path, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.005)


#: Installs a SIGTERM handler (exit 17), says so with a file, prints a short line, and
#: waits for signals; a line on stdin makes it exit 0.
WAITER = r"""
import signal, sys
signal.signal(signal.SIGTERM, lambda *a: sys.exit(17))
open(sys.argv[1], "w").close()
print("waiting", flush=True)
sys.stdin.readline()
"""


def masked_waiter(ready: Path) -> list[str]:
    """exec --mask of WAITER, which creates ``ready`` and then waits for a line."""
    return exec_argv("--mask", "--", sys.executable, "-c", WAITER, str(ready))


def test_a_signal_sent_to_exec_under_mask_reaches_the_command(
    agent: AgentWorkspace, tmp_path: Path
) -> None:
    ready = tmp_path / "ready"
    with piped(masked_waiter(ready), agent.env) as proc:
        wait_for_file(ready)
        proc.send_signal(signal.SIGTERM)
        # Wait before communicate() closes stdin: the command's readline
        # would otherwise see EOF and exit 0 before the signal reaches it.
        proc.wait(timeout=TIMEOUT)
        _, err = proc.communicate()
    assert proc.returncode == 17, err.decode()


def test_mask_does_not_hold_back_short_output(agent: AgentWorkspace, tmp_path: Path) -> None:
    """A prompt or progress line without any secret shows at once, not at the next
    write or at exit (only a possible start of a secret may wait for more bytes)."""
    ready = tmp_path / "ready"
    with piped(masked_waiter(ready), agent.env) as proc:
        assert proc.stdout is not None
        seen = read_within(proc.stdout, len(b"waiting\n"), timeout=5)
        proc.communicate(b"done\n", timeout=TIMEOUT)
    assert proc.returncode == 0
    assert seen == b"waiting\n", "the masked command's output was held back while it ran"


@pytest.mark.parametrize("mask", [(), ("--mask",)], ids=["plain", "mask"])
def test_stdin_passes_through(agent: AgentWorkspace, mask: tuple[str, ...]) -> None:
    data = b"line one\nline two\x00\xff\xfe binary\n" * 1000
    result = run(agent, *mask, "--", "cat", input=data)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == data


def test_stdout_and_stderr_are_the_commands_own_bytes(agent: AgentWorkspace) -> None:
    every_byte = bytes(range(256)) * 64
    script = (
        "import sys\n"
        f"sys.stdout.buffer.write({every_byte!r})\n"
        f"sys.stderr.buffer.write({every_byte[::-1]!r})\n"
    )
    result = run(agent, "--", sys.executable, "-c", script)
    assert result.returncode == 0
    assert result.stdout == every_byte
    assert result.stderr == every_byte[::-1]


# -- missing secrets -----------------------------------------------------------------------


def marker_command(marker: Path) -> list[str]:
    return ["--", "bash", "-c", f"touch {shlex.quote(str(marker))}"]


def refused_before_running(agent: AgentWorkspace, tmp_path: Path, *options: str) -> bytes:
    """exec with ``options`` fails (exit 1) before its command runs, printing no
    secret; returns its standard error."""
    marker = tmp_path / "ran"
    result = run(agent, *options, *marker_command(marker))
    assert result.returncode == 1
    assert not marker.exists()
    for secret in SECRETS:
        assert secret.encode() not in result.stdout + result.stderr
    return result.stderr


def test_unknown_provider_fails_before_the_command_starts(
    agent: AgentWorkspace, tmp_path: Path
) -> None:
    stderr = refused_before_running(agent, tmp_path, "--provider", "nosuch")
    assert b"nosuch" in stderr and b"--skip-missing" in stderr


def test_missing_env_credential_fails_before_the_command_starts(
    agent: AgentWorkspace, tmp_path: Path
) -> None:
    stderr = refused_before_running(agent, tmp_path, "--env", "X=p/missing")
    assert b"X" in stderr and b"missing" in stderr


def test_skip_missing_runs_the_command_without_them(agent: AgentWorkspace) -> None:
    found = child_secrets(
        agent, "--skip-missing", "-p", "nosuch", "-p", "openai", "-e", "X=p/missing"
    )
    assert found == {"OPENAI_API_KEY": OPENAI, "MODELFORGE_OPENAI_API_KEY": OPENAI}


def test_malformed_env_option_is_a_usage_error(agent: AgentWorkspace, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    result = run(agent, "--env", "NO_SLASH=openai", *marker_command(marker))
    assert result.returncode == 2
    assert b"VAR=PROVIDER/KEY" in result.stderr
    assert not marker.exists()


# -- masking -------------------------------------------------------------------------------

#: Writes the first half of a secret, flushes, waits until the reader has taken those
#: bytes out of the pipe (FIONREAD on its own end reads 0), then writes the rest: the
#: two halves reach the masker in two separate reads.
SPLIT_WRITER = r"""
import fcntl, os, struct, sys, termios, time
secret = os.environ["OPENAI_API_KEY"]

def drained(fd):
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0" * 4))[0] == 0:
            return
        time.sleep(0.001)
    raise SystemExit("the reader never drained the pipe")

for stream in (sys.stdout, sys.stderr):
    half = len(secret) // 2
    stream.write("before<" + secret[:half])
    stream.flush()
    drained(stream.fileno())
    stream.write(secret[half:] + ">after\n")
    stream.flush()
print("plain line", flush=True)
"""


def test_mask_hides_secrets_on_stdout_and_stderr(agent: AgentWorkspace) -> None:
    script = (
        'echo "key=$OPENAI_API_KEY token=$MODELFORGE_GITHUB_COPILOT_ACCESS_TOKEN"; '
        'echo "err=$ANTHROPIC_API_KEY" >&2; echo "no secret here"'
    )
    result = run(agent, "--mask", "--", "bash", "-c", script)
    assert result.returncode == 0
    assert result.stdout == b"key=*** token=***\nno secret here\n"
    assert result.stderr == b"err=***\n"


def test_mask_hides_a_secret_split_across_two_writes(agent: AgentWorkspace) -> None:
    result = run(agent, "--mask", "--", sys.executable, "-c", SPLIT_WRITER)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout == b"before<***>after\nplain line\n"
    assert result.stderr == b"before<***>after\n"


def test_mask_leaves_output_without_secrets_unchanged(agent: AgentWorkspace) -> None:
    data = bytes(range(256)) * 256 + b"sk-proj-exec-openai (not the whole key)\n"
    result = run(agent, "--mask", "--", "cat", input=data)
    assert result.returncode == 0
    assert result.stdout == data
    assert result.stderr == b""


# -- usage ---------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [(), ("--",), ("--mask", "--")], ids=["none", "dashes", "mask"])
def test_no_command_is_a_usage_error(agent: AgentWorkspace, args: tuple[str, ...]) -> None:
    result = run(agent, *args)
    assert result.returncode == 2
    assert b"exec needs a command" in result.stderr


@pytest.mark.parametrize("mask", [(), ("--mask",)], ids=["plain", "mask"])
def test_command_not_found_is_a_clear_error(agent: AgentWorkspace, mask: tuple[str, ...]) -> None:
    result = run(agent, *mask, "--", "no-such-command-8e1f")
    assert result.returncode != 0
    assert b"command not found: 'no-such-command-8e1f'" in result.stderr
    assert b"Traceback" not in result.stderr


# -- names, as model-forge spells them ----------------------------------------------------


def _model_forge_normalize(provider_name: str) -> str:
    # model-forge-llm 2.3, modelforge/auth.py: _normalize_provider_name_for_env, restated
    # here so the test does not take our word for it (the real one is compared in
    # tests/test_proc_model_forge_real.py).
    return provider_name.upper().replace("-", "_")


@pytest.mark.parametrize("provider", ["openai", "github-copilot", "my.local", "a_b-c.d", "Ünï"])
def test_exec_names_variables_exactly_as_model_forge_reads_them(provider: str) -> None:
    from modelforge_credentials.secret_env import default_bindings

    variables = {b.variable for b in default_bindings(provider, ["api_key", "access_token"])}
    normalized = _model_forge_normalize(provider)
    assert {f"MODELFORGE_{normalized}_API_KEY", f"MODELFORGE_{normalized}_ACCESS_TOKEN"} <= (
        variables
    )


# -- collisions and the exit status of a command that cannot run ----------------------


def test_two_providers_filling_one_variable_are_refused_naming_both(
    agent: AgentWorkspace,
) -> None:
    with AgentClient(agent.socket, timeout=TIMEOUT) as client:
        client.store("OpenAI", "api_key", "sk-the-other-openai-value")
    result = run(agent, "--", sys.executable, "-c", "print('ran')")
    assert result.returncode == 2
    err = result.stderr.decode()
    assert "'OpenAI'" in err and "'openai'" in err and "-p" in err
    assert b"ran" not in result.stdout
    assert "sk-the-other-openai-value" not in err
    # choosing one is fine
    found = child_secrets(agent, "-p", "OpenAI")
    assert found["MODELFORGE_OPENAI_API_KEY"] == "sk-the-other-openai-value"


def test_a_providers_own_sdk_name_wins_over_a_secondary_claim(agent: AgentWorkspace) -> None:
    with AgentClient(agent.socket, timeout=TIMEOUT) as client:
        client.store("gemini", "api_key", "gemini-exec-key-0042")
    found = child_secrets(agent, "-p", "google", "-p", "gemini")
    assert found["GOOGLE_API_KEY"] == GOOGLE
    assert found["GEMINI_API_KEY"] == "gemini-exec-key-0042"


@pytest.mark.parametrize("mask", [(), ("--mask",)])
def test_a_missing_command_exits_127_and_a_non_executable_one_126(
    agent: AgentWorkspace, tmp_path: Path, mask: tuple[str, ...]
) -> None:
    missing = run(agent, "-p", "openai", *mask, "--", str(tmp_path / "no-such-command"))
    assert missing.returncode == 127, missing.stderr
    assert b"command not found" in missing.stderr
    script = tmp_path / "not-executable"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    refused = run(agent, "-p", "openai", *mask, "--", str(script))
    assert refused.returncode == 126, refused.stderr
    assert b"not executable" in refused.stderr


def test_exec_without_a_selection_refuses_and_says_how_to_choose(agent: AgentWorkspace) -> None:
    result = subprocess.run(
        [*CLI, "exec", "--", sys.executable, "-c", "print('ran')"],
        capture_output=True,
        env=agent.env,
        timeout=TIMEOUT,
    )
    assert result.returncode == 2
    assert b"ran" not in result.stdout
    for option in (b"-p PROVIDER", b"-e VAR=PROVIDER/KEY", b"--all"):
        assert option in result.stderr
