"""Real processes: the ``modelforge-agent`` CLI and agents over real sockets.

Every agent here is a separate process found through its socket; signals,
terminals, file modes and peer uids are the kernel's own. Agents that the
CLI detaches are re-parented to this test process (made a child subreaper),
so an agent that exits is reaped at once and "gone" never depends on how, or
whether, pid 1 reaps orphans.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from agent_harness import (
    AS_NOBODY,
    NOBODY,
    SOCK_VAR,
    TIMEOUT,
    AgentReaper,
    AgentWorkspace,
    alive,
    child_subreaper,
    foreign_owned,
    linux_only,
    loose_mode,
    pid_from,
    proc_stat,
    read_until,
    require_nobody_python,
    symlinked,
)
from testkit import wait_until

pytestmark = linux_only("/proc, prctl, setpriv and SO_PEERCRED")


@pytest.fixture(scope="module", autouse=True)
def reaper() -> Iterator[AgentReaper]:
    with contextlib.ExitStack() as stack:
        try:
            watcher = stack.enter_context(child_subreaper())
        except OSError as err:
            pytest.skip(f"cannot become a child subreaper: {err}")
        yield watcher


@pytest.fixture
def agents(isolated_environment: Path, reaper: AgentReaper) -> Iterator[AgentWorkspace]:
    workspace = AgentWorkspace(dict(os.environ), reaper)
    try:
        yield workspace
    finally:
        workspace.close()


@pytest.fixture(scope="module")
def nobody_runs_python() -> None:
    """Skip unless root can act as uid 65534 and that uid can import the package."""
    require_nobody_python("modelforge_credentials.protocol")


def protect_with_passphrase(agents: AgentWorkspace, passphrase: str) -> None:
    agents.ok("set", "openai", "api_key", input="sk-secret-1\n")
    result = agents.cli("passwd", input=passphrase + "\n")
    assert result.returncode == 0, result.stderr
    assert agents.status()["protection"] == "passphrase"


# -- start / eval -----------------------------------------------------------------------


def test_start_prints_shell_commands_and_reuses_the_running_agent(agents: AgentWorkspace) -> None:
    pid, out = agents.start()
    quoted = str(agents.socket)  # mkdtemp names need no shell quoting
    assert f"{SOCK_VAR}={quoted}; export {SOCK_VAR};\n" in out
    assert f"echo Agent pid {pid} started;" in out

    again, out = agents.start()
    assert again == pid
    assert "already running" in out
    assert agents.status()["pid"] == pid

    csh = agents.ok("start", "--csh")
    assert csh.splitlines()[0] == f"setenv {SOCK_VAR} {quoted};"
    fish = agents.ok("start", "--fish")
    assert fish.splitlines()[0] == f"set -gx {SOCK_VAR} {quoted};"
    assert pid_from(csh) == pid_from(fish) == pid


def test_eval_of_start_exports_the_socket_for_later_commands(agents: AgentWorkspace) -> None:
    env = {k: v for k, v in agents.env.items() if k != SOCK_VAR}
    elsewhere = agents.base / "xdg"
    elsewhere.mkdir(mode=0o700)
    env |= {
        "XDG_RUNTIME_DIR": str(elsewhere),
        "MF_PY": sys.executable,
        "MF_SOCK": str(agents.socket),
    }
    script = """
        set -e
        modelforge-agent() { "$MF_PY" -m modelforge_credentials.cli "$@"; }
        eval "$(modelforge-agent --socket "$MF_SOCK" start)"
        printf 'sk-from-bash' | modelforge-agent set openai api_key
        modelforge-agent get openai api_key
        echo "sock=$MODEL_FORGE_AGENT_SOCK"
    """
    result = agents.run(["bash", "-c", script], env=env)
    match = re.search(r"^Agent pid (\d+) started$", result.stdout, re.MULTILINE)
    if match:
        agents.watch(int(match.group(1)))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1:] == ["sk-from-bash", f"sock={agents.socket}"]
    assert not (elsewhere / "model-forge").exists()


# -- credential commands --------------------------------------------------------------


def test_set_get_exists_delete_and_list(agents: AgentWorkspace) -> None:
    agents.start()
    # The value never travels on the command line: a third argument is a usage error.
    on_argv = agents.cli("set", "openai", "api_key", "sk-on-argv", input="ignored\n")
    assert on_argv.returncode == 2
    assert agents.cli("exists", "openai", "api_key").returncode == 1

    agents.ok("set", "openai", "api_key", input="sk-secret-1\n")
    agents.ok("set", "anthropic", "api_key", input="sk-ant = two words")
    assert agents.ok("get", "openai", "api_key") == "sk-secret-1\n"
    assert agents.ok("get", "anthropic", "api_key") == "sk-ant = two words\n"

    absent = agents.cli("get", "openai", "org_id")
    assert absent.returncode == 1
    assert absent.stdout == ""
    assert "modelforge-agent set openai org_id" in absent.stderr

    assert agents.cli("exists", "openai", "api_key").returncode == 0
    assert agents.cli("exists", "openai", "org_id").returncode == 1

    listing = agents.ok("list")
    assert sorted(listing.splitlines()) == ["anthropic\tapi_key", "openai\tapi_key"]
    assert "sk-" not in listing
    assert agents.ok("list", "openai").splitlines() == ["openai\tapi_key"]
    as_json = json.loads(agents.ok("list", "--json"))
    assert sorted(as_json) == [["anthropic", "api_key"], ["openai", "api_key"]]

    assert agents.cli("delete", "openai", "api_key").returncode == 0
    assert agents.cli("delete", "openai", "api_key").returncode == 1
    assert agents.cli("exists", "openai", "api_key").returncode == 1
    assert agents.cli("get", "openai", "api_key").returncode == 1


@pytest.mark.parametrize(
    "args",
    [("get", "", "api_key"), ("get", "openai", ""), ("exists", "", "k"), ("set", "", "k")],
)
def test_invalid_names_are_usage_errors(agents: AgentWorkspace, args: tuple[str, ...]) -> None:
    if not agents.socket.exists():
        agents.start()
    result = agents.cli(*args, input="value\n")
    assert result.returncode == 2, result.stderr
    assert "must not be empty" in result.stderr


def test_status_human_and_json(agents: AgentWorkspace) -> None:
    pid, _ = agents.start("--idle-timeout", "300")
    status = agents.status()
    assert status["pid"] == pid and alive(pid)
    assert status["started_by"] == "manual"
    assert status["locked"] is False
    assert status["backend"] == "encrypted-file"
    assert status["protection"] == "keyfile"
    assert status["cached"] == 0
    assert status["idle_timeout"] == 300
    assert isinstance(status["uptime"], float) and status["uptime"] >= 0
    assert status["socket"] == str(agents.socket)

    human = agents.ok("status")
    assert f"running, pid {pid}" in human
    assert "started by:  manual" in human
    assert "backend:     encrypted-file" in human
    assert "protection:  keyfile" in human
    assert "idle lock:   5m" in human
    assert "modelforge-agent passwd" in human  # the key-file warning says what to do


def test_socket_is_0600_in_a_0700_directory_with_the_lock_beside_it(
    agents: AgentWorkspace,
) -> None:
    agents.start()
    sock = os.lstat(agents.socket)
    assert stat.S_ISSOCK(sock.st_mode)
    assert stat.S_IMODE(sock.st_mode) == 0o600
    directory = os.lstat(agents.socket.parent)
    assert stat.S_ISDIR(directory.st_mode)
    assert stat.S_IMODE(directory.st_mode) == 0o700
    assert sock.st_uid == directory.st_uid == os.getuid()
    lock = os.lstat(agents.socket.parent / "agent.sock.lock")
    assert stat.S_ISREG(lock.st_mode)
    assert stat.S_IMODE(lock.st_mode) == 0o600


# -- passphrase, lock, unlock ---------------------------------------------------------


def test_passwd_lock_and_unlock(agents: AgentWorkspace) -> None:
    agents.start()
    protect_with_passphrase(agents, "pass-one")
    assert agents.ok("get", "openai", "api_key") == "sk-secret-1\n"

    agents.ok("lock")
    assert agents.status()["locked"] is True
    locked = agents.cli("get", "openai", "api_key")
    assert locked.returncode == 3
    assert locked.stdout == ""
    assert "modelforge-agent unlock" in locked.stderr

    wrong = agents.cli("unlock", input="pass-wrong\n")
    assert wrong.returncode == 3
    assert "pass-wrong" not in wrong.stderr
    assert agents.status()["locked"] is True
    agents.ok("unlock", input="pass-one\n")
    assert agents.ok("get", "openai", "api_key") == "sk-secret-1\n"

    # With a passphrase in place, passwd reads the current one, then the new one.
    bad_current = agents.cli("passwd", input="pass-wrong\npass-two\n")
    assert bad_current.returncode == 3, bad_current.stderr
    agents.ok("passwd", input="pass-one\npass-two\n")
    agents.ok("lock")
    assert agents.cli("unlock", input="pass-one\n").returncode == 3
    agents.ok("unlock", input="pass-two\n")
    assert agents.ok("get", "openai", "api_key") == "sk-secret-1\n"


def test_get_on_a_locked_agent_without_a_terminal_fails_at_once(agents: AgentWorkspace) -> None:
    agents.start()
    protect_with_passphrase(agents, "pass-one")
    agents.ok("lock")
    # A pipe that stays open: a prompt reading it would block until the timeout.
    read_end, write_end = os.pipe()
    try:
        began = time.monotonic()
        result = agents.cli("get", "openai", "api_key", stdin=read_end, timeout=15)
        elapsed = time.monotonic() - began
    finally:
        os.close(read_end)
        os.close(write_end)
    assert result.returncode == 3, result.stderr
    assert "Passphrase" not in result.stderr
    assert elapsed < 5


# -- stopping, stale sockets, second agents --------------------------------------------


def test_stop_removes_the_socket_and_later_commands_say_how_to_start(
    agents: AgentWorkspace,
) -> None:
    pid, _ = agents.start()
    result = agents.cli("stop")
    assert result.returncode == 0, result.stderr
    assert not alive(pid)
    assert not agents.socket.exists()

    began = time.monotonic()
    get = agents.cli("get", "openai", "api_key", timeout=15)
    assert time.monotonic() - began < 5
    assert get.returncode == 4
    assert str(agents.socket) in get.stderr
    assert "modelforge-agent start" in get.stderr


def test_stop_does_not_wait_for_the_exited_agent_to_be_reaped(agents: AgentWorkspace) -> None:
    """Bug: `stop` polls kill(pid, 0), which succeeds for a zombie.

    Wherever the agent's new parent does not reap it (a container whose pid 1
    is not an init), `stop` waits its whole timeout and then reports that the
    agent "did not stop", exit 4, although it has exited and removed its socket.
    """
    pid, _ = agents.start(watch=False)
    info = proc_stat(pid)
    assert info is not None and info.ppid == os.getpid()  # we are its parent, and we wait
    began = time.monotonic()
    result = agents.cli("--timeout", "3", "stop", timeout=20)
    elapsed = time.monotonic() - began
    agents.watch(pid)
    assert not agents.socket.exists()
    assert result.returncode == 0, result.stderr
    assert elapsed < 3


def test_a_stale_socket_is_reported_quickly_and_replaced_by_start(
    agents: AgentWorkspace,
) -> None:
    pid, _ = agents.start()
    os.kill(pid, signal.SIGKILL)
    wait_until(lambda: not alive(pid), 10, "the killed agent to exit")
    assert stat.S_ISSOCK(os.lstat(agents.socket).st_mode)

    began = time.monotonic()
    get = agents.cli("get", "openai", "api_key", timeout=15)
    assert time.monotonic() - began < 5
    assert get.returncode == 4
    assert str(agents.socket) in get.stderr

    new_pid, out = agents.start()
    assert new_pid != pid
    assert "started" in out
    agents.ok("set", "openai", "api_key", input="sk-after-stale\n")
    assert agents.ok("get", "openai", "api_key") == "sk-after-stale\n"


def test_a_second_agent_on_the_same_socket_is_refused(agents: AgentWorkspace) -> None:
    pid, _ = agents.start()
    began = time.monotonic()
    second = agents.cli("--socket", str(agents.socket), "serve", timeout=20)
    assert time.monotonic() - began < 10
    assert second.returncode == 4
    assert "already running" in second.stderr
    assert agents.status()["pid"] == pid
    assert stat.S_ISSOCK(os.lstat(agents.socket).st_mode)


@pytest.mark.parametrize(
    ("prepare", "hint"),
    # Another uid's directory is not the user's to chmod or remove: only another path is.
    [
        (loose_mode(0o755), "chmod 700"),
        (symlinked, "remove"),
        (foreign_owned, "private socket path"),
    ],
    ids=["mode-0755", "symlink", "other-owner"],
)
def test_serve_refuses_an_unsafe_socket_directory(
    agents: AgentWorkspace, prepare: Callable[[Path], None], hint: str
) -> None:
    if prepare is foreign_owned and os.geteuid() != 0:
        pytest.skip("needs root to chown")
    prepare(agents.socket.parent)
    try:
        result = agents.cli("--socket", str(agents.socket), "serve", timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("serve accepted the unsafe directory and kept running")
    assert result.returncode != 0
    assert hint in result.stderr, result.stderr
    assert str(agents.socket.parent) in result.stderr
    assert not agents.socket.exists()
    assert not (agents.base / "real" / "agent.sock").exists()


# -- signals and terminals -------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_agent_cleanly(agents: AgentWorkspace, signum: int) -> None:
    agent = agents.serve()
    assert agents.status()["pid"] == agent.pid
    agent.proc.send_signal(signum)
    assert agent.proc.wait(timeout=10) == 0
    assert not agents.socket.exists()


def test_the_agent_survives_its_terminal_hanging_up(agents: AgentWorkspace) -> None:
    out = agents.base / "start.out"
    env = {**agents.env, "MF_PY": sys.executable, "MF_OUT": str(out)}
    script = (
        '"$MF_PY" -m modelforge_credentials.cli start > "$MF_OUT" 2>&1; echo started; read -r line'
    )
    master, slave = pty.openpty()
    try:
        # A session leader with a controlling terminal, as a login shell has.
        shell = subprocess.Popen(
            ["setsid", "--ctty", "bash", "-c", script],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
        )
    finally:
        os.close(slave)
    agents.others.append(shell)
    try:
        read_until(master, b"started", TIMEOUT)
        pid = pid_from(out.read_text())
        agents.watch(pid)
        shell_info, agent_info = proc_stat(shell.pid), proc_stat(pid)
        assert shell_info is not None and agent_info is not None
        assert shell_info.session == shell.pid and shell_info.tty != 0
        assert agent_info.session != shell_info.session
        assert agent_info.tty == 0
    finally:
        os.close(master)  # the terminal goes away: the kernel hangs up its session
    assert shell.wait(timeout=10) == -signal.SIGHUP
    assert alive(pid)
    assert agents.status()["pid"] == pid

    os.kill(pid, signal.SIGHUP)
    # Answering needs the agent to run again, after the signal was delivered.
    assert agents.status()["pid"] == pid
    assert alive(pid)


# -- other users and hardening ----------------------------------------------------------

_RAW_CLIENT = """
import socket, sys
from modelforge_credentials.protocol import Op, encode_request
sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.settimeout(10)
sock.connect(sys.argv[1])
print("connected", flush=True)
try:
    sock.sendall(encode_request(1, Op.HELLO))
    data = sock.recv(65536)
except (ConnectionResetError, BrokenPipeError):
    data = b""
print("reply" if data else "closed")
"""


@pytest.mark.usefixtures("nobody_runs_python")
def test_another_uid_is_refused_even_when_the_socket_is_open_to_it(
    agents: AgentWorkspace,
) -> None:
    log = agents.base / "agent.log"
    pid, _ = agents.start("--log", str(log))
    # Loosen every mode after the start, as a careless chmod would.
    agents.base.chmod(0o711)
    agents.socket.parent.chmod(0o711)
    agents.socket.chmod(0o666)

    raw = agents.run([*AS_NOBODY, sys.executable, "-c", _RAW_CLIENT, str(agents.socket)])
    assert raw.returncode == 0, raw.stderr
    assert raw.stdout.split() == ["connected", "closed"]

    cli = agents.cli("--socket", str(agents.socket), "status", "--json", prefix=AS_NOBODY)
    assert cli.returncode == 4
    assert cli.stdout == ""

    assert agents.status()["pid"] == pid
    assert f"refused a connection from uid {NOBODY}" in log.read_text()


def test_the_agent_cannot_dump_core(agents: AgentWorkspace) -> None:
    pid, _ = agents.start()
    limits = Path(f"/proc/{pid}/limits").read_text()
    assert re.search(r"^Max core file size\s+0\s+0\s", limits, re.MULTILINE), limits


@pytest.mark.usefixtures("nobody_runs_python")
def test_the_agent_is_not_dumpable(agents: AgentWorkspace) -> None:
    """Non-dumpable processes' /proc files belong to root, whoever runs them."""
    home, env = agents.home_for_nobody()
    # Control: an ordinary process of that uid owns its /proc files.
    agents.nobody_control(env)

    agent = agents.serve(socket=home / "s" / "agent.sock", prefix=AS_NOBODY, env=env)
    status = Path(f"/proc/{agent.pid}/status").read_text()
    assert re.search(rf"^Uid:\s+{NOBODY}\s", status, re.MULTILINE), status
    assert Path(f"/proc/{agent.pid}/environ").stat().st_uid == 0
    limits = Path(f"/proc/{agent.pid}/limits").read_text()
    assert re.search(r"^Max core file size\s+0\s+0\s", limits, re.MULTILINE), limits
    assert agent.stop() == 0


# -- auto-start -------------------------------------------------------------------------

_AUTOSTART_CLIENT = """
from modelforge_credentials import CredentialManager
manager = CredentialManager()
manager.store("openai", "api_key", "sk-auto")
print(manager.retrieve("openai", "api_key"))
"""


def test_credential_manager_starts_an_agent_on_first_use(agents: AgentWorkspace) -> None:
    assert not agents.socket.exists()
    child = agents.run([sys.executable, "-c", _AUTOSTART_CLIENT])
    if agents.socket.exists():
        agents.watch(int(agents.status()["pid"]))  # type: ignore[call-overload]
    assert child.returncode == 0, child.stderr
    assert child.stdout == "sk-auto\n"
    status = agents.status()
    assert status["started_by"] == "auto-start"
    assert isinstance(status["pid"], int) and alive(status["pid"])
    assert agents.ok("get", "openai", "api_key") == "sk-auto\n"
