"""The agent under real service managers: systemd and (on Linux, through its
one seam) launchd.

- The unit files and plist in the source tree are byte for byte what
  ``services.shipped_files()`` renders, and ``systemd-analyze verify``
  accepts the units rendered for this interpreter.
- The real ``systemd-socket-activate`` hands the agent its socket on the
  first connection; readiness and stopping arrive as sd_notify datagrams.
- A real ``systemd --user`` manager, in a private mount namespace so that
  nothing on the machine changes, runs the units ``install-service`` writes:
  socket activation, Type=notify, the sandbox seen from /proc and probed with
  ``systemd-run``, a clean stop, and exit-when-idle with re-activation.
  A driver (this file run as a script) does the steps inside the namespace
  and writes JSON lines; the tests below assert on them.
- launchd: the plists parse; ``launchd_sockets`` adopts the fds a fake
  ``launch_activate_socket`` returns; ``serve`` run with launchd's socket
  reports ``started_by == "launchd"``.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import plistlib
import re
import resource
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import modelforge_credentials as credentials_pkg
from agent_harness import stop_process
from modelforge_credentials import services
from modelforge_credentials.client import AgentClient
from modelforge_credentials.daemon import activation, service
from testkit import wait_until

REPO = Path(__file__).resolve().parent.parent
#: The ``src`` directory this test imports from: children import the same code.
SRC = Path(credentials_pkg.__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "modelforge_credentials.cli"]
UNIT_NAMES = ("modelforge-agent.socket", "modelforge-agent.service")
FAIL_KEYRING = "keyring.backends.fail.Keyring"
SECRET = "sk-systemd-4b1e9c07d2"


def need(*programs: str) -> None:
    for program in programs:
        if shutil.which(program) is None:
            pytest.skip(f"{program} is not installed (Debian package: systemd)")


# -- shipped files ---------------------------------------------------------------


@pytest.mark.parametrize("relative", sorted(services.shipped_files()))
def test_shipped_file_is_the_rendering(relative: str) -> None:
    rendered = services.shipped_files()[relative]
    expected = rendered.encode() if isinstance(rendered, str) else rendered
    assert (REPO / relative).read_bytes() == expected, (
        f"{relative} drifted from services.shipped_files(); regenerate it from there"
    )


def test_no_other_service_files_are_shipped() -> None:
    on_disk = {
        str(path.relative_to(REPO))
        for directory in ("systemd", "launchd")
        for path in (REPO / directory).iterdir()
    }
    assert on_disk == set(services.shipped_files())


# -- systemd-analyze verify -------------------------------------------------------


def write_units(directory: Path, units: dict[str, str]) -> None:
    for name, text in units.items():
        (directory / name).write_text(text)


def analyze_verify(directory: Path) -> subprocess.CompletedProcess[str]:
    need("systemd-analyze")
    # verify also checks Documentation=man:modelforge-agent(1): the page as a
    # wheel installs it (share/man under the prefix); an editable install has none.
    manpath = f"{REPO / 'share' / 'man'}:"
    return subprocess.run(
        ["systemd-analyze", "--user", "verify", *(str(directory / n) for n in UNIT_NAMES)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "MANPATH": manpath},
    )


def unit_complaints(stderr: str) -> list[str]:
    """Lines where verify finds fault with our units (not the absent manager)."""
    return [
        line
        for line in stderr.splitlines()
        if "modelforge-agent" in line and re.search(r"Unknown|Failed|Invalid", line)
    ]


def test_systemd_analyze_accepts_the_units_for_this_interpreter(tmp_path: Path) -> None:
    write_units(tmp_path, services.systemd_units(exec_start=shlex.join(CLI)))

    result = analyze_verify(tmp_path)

    assert result.returncode == 0, result.stderr
    assert unit_complaints(result.stderr) == [], result.stderr


def test_the_verify_check_notices_a_broken_unit(tmp_path: Path) -> None:
    units = services.systemd_units(exec_start=shlex.join(CLI))
    broken = units["modelforge-agent.service"]
    broken = broken.replace("NoNewPrivileges=yes", "NoNewPrivileges=yes\nNoNewPrivilege=yes")
    broken = broken.replace("RestrictAddressFamilies=AF_UNIX", "RestrictAddressFamilies=AF_UNIXX")
    units["modelforge-agent.service"] = broken
    write_units(tmp_path, units)

    complaints = unit_complaints(analyze_verify(tmp_path).stderr)

    assert any("Unknown key" in line and "NoNewPrivilege" in line for line in complaints)
    assert any("Failed to parse address family" in line for line in complaints)


# -- systemd-socket-activate --------------------------------------------------------


@dataclass
class Activation:
    proc: subprocess.Popen[bytes]
    socket: Path
    log: Path
    notify: socket.socket

    def notification(self, timeout: float = 15.0) -> str:
        self.notify.settimeout(timeout)
        return self.notify.recv(4096).decode()

    def no_notification_yet(self) -> bool:
        self.notify.setblocking(False)
        try:
            self.notify.recv(4096)
        except BlockingIOError:
            return True
        return False


@dataclass
class SocketActivator:
    runtime: Path
    config: Path
    home: Path
    notify: socket.socket
    started: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def socket_path(self) -> Path:
        return self.runtime / "model-forge" / "agent.sock"

    def start(self, *serve_args: str) -> Activation:
        log = self.runtime.parent / f"activate-{len(self.started)}.log"
        env = {
            "PYTHONPATH": str(SRC),
            "HOME": str(self.home),
            "XDG_RUNTIME_DIR": str(self.runtime),
            "MODEL_FORGE_CONFIG_DIR": str(self.config),
            "NOTIFY_SOCKET": self.notify.getsockname(),
            "PYTHON_KEYRING_BACKEND": FAIL_KEYRING,
        }
        argv = ["systemd-socket-activate", "-l", str(self.socket_path)]
        for name, value in env.items():
            argv += ["-E", f"{name}={value}"]
        argv += [*CLI, "serve", *serve_args]
        with open(log, "wb") as log_file:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT
            )
        self.started.append(proc)
        # Only its own log says it listens: connecting would activate the agent.
        wait_until(
            lambda: (
                f"Listening on {self.socket_path}" in log.read_text() or proc.poll() is not None
            ),
            10,
            "systemd-socket-activate listening",
        )
        assert proc.poll() is None, log.read_text()
        return Activation(proc, self.socket_path, log, self.notify)


@pytest.fixture
def activator(tmp_path: Path) -> Iterator[SocketActivator]:
    need("systemd-socket-activate")
    runtime = Path(os.environ["XDG_RUNTIME_DIR"])
    (runtime / "model-forge").mkdir(mode=0o700)
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(runtime / "notify"))
    home = tmp_path / "home"
    home.mkdir()
    act = SocketActivator(runtime, tmp_path / "config", home, notify)
    yield act
    for proc in act.started:
        stop_process(proc)
    notify.close()


def is_waiting_activator(pid: int) -> bool:
    """The pid is still systemd-socket-activate itself, with no child."""
    exe = os.readlink(f"/proc/{pid}/exe")
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return Path(exe).name == "systemd-socket-activate" and children == []


def test_socket_activation_starts_the_agent_on_first_connection(
    activator: SocketActivator,
) -> None:
    act = activator.start()
    assert is_waiting_activator(act.proc.pid), "an agent ran before anyone connected"
    assert act.no_notification_yet()
    assert not activator.config.exists()

    with AgentClient(act.socket) as client:
        hello = client.hello()
        status = client.status()

    assert hello["backend"] == "encrypted-file"
    assert status["started_by"] == "systemd"
    # systemd-socket-activate execs the agent in its own place: LISTEN_PID is it.
    assert status["pid"] == act.proc.pid
    assert status["socket"] == str(act.socket)
    ready = act.notification()
    assert "READY=1" in ready.splitlines()
    assert f"MAINPID={act.proc.pid}" in ready.splitlines()

    act.proc.send_signal(signal.SIGTERM)
    assert act.notification() == "STOPPING=1"
    assert act.proc.wait(15) == 0, act.log.read_text()


def test_exit_when_idle_under_socket_activation(activator: SocketActivator) -> None:
    first = activator.start("--exit-when-idle", "1")
    with AgentClient(first.socket) as client:
        client.store("openai", "api_key", SECRET)
        status = client.status()
    assert status["protection"] == "keyfile"
    assert "READY=1" in first.notification().splitlines()

    # The client is gone: the agent leaves by itself, telling the manager so.
    assert first.proc.wait(15) == 0, first.log.read_text()
    assert first.notification() == "STOPPING=1"
    assert "no clients for 1 s" in first.log.read_text()

    # The manager listens again; the next connection starts a new agent,
    # which finds the key-file store the first one wrote.
    second = activator.start("--exit-when-idle", "1")
    assert is_waiting_activator(second.proc.pid)
    with AgentClient(second.socket) as client:
        assert client.retrieve("openai", "api_key") == SECRET
        assert client.status()["pid"] == second.proc.pid != first.proc.pid
    assert second.proc.wait(15) == 0, second.log.read_text()


# -- a real systemd user manager ------------------------------------------------------

SYSTEMD_BINARIES = ("/lib/systemd/systemd", "/usr/lib/systemd/systemd")

#: Runs inside ``unshare --mount`` under ``script`` (so /dev/console, where the
#: manager logs, can be this pty instead of the machine's console).
USER_MANAGER_SCRIPT = r"""
set -u
B=$MF_BASE
RESULTS=$B/results.jsonl
fail() { printf '{"step": "error", "why": "%s"}\n' "$1" >> "$RESULTS"; exit 0; }
mount -t tmpfs tmpfs /run/systemd || fail "cannot mount a tmpfs on /run/systemd"
mkdir /run/systemd/system
if mount --bind "$(tty)" /dev/console; then
    LOG_TARGET=console
else
    LOG_TARGET=null
    printf '{"step": "console", "ok": false}\n' >> "$RESULTS"
fi
export XDG_RUNTIME_DIR=$B/run HOME=$B/home
export XDG_CONFIG_HOME=$B/home/.config XDG_DATA_HOME=$B/home/.local/share
export PYTHON_KEYRING_BACKEND=keyring.backends.fail.Keyring
mkdir -m 700 "$XDG_RUNTIME_DIR" "$HOME"
dbus-daemon --session --address="unix:path=$XDG_RUNTIME_DIR/bus" --nofork --nopidfile \
    >/dev/null 2>&1 &
DBUS=$!
echo "$DBUS" >> "$B/pids"
export DBUS_SESSION_BUS_ADDRESS="unix:path=$XDG_RUNTIME_DIR/bus"
SYSTEMD_LOG_TARGET=$LOG_TARGET SYSTEMD_LOG_LEVEL=debug "$MF_SYSTEMD" --user >/dev/null 2>&1 &
MANAGER=$!
echo "$MANAGER" >> "$B/pids"
trap 'kill $MANAGER 2>/dev/null; wait $MANAGER; kill $DBUS 2>/dev/null; wait $DBUS' EXIT
for _ in $(seq 150); do
    [ -S "$XDG_RUNTIME_DIR/systemd/private" ] && break
    kill -0 $MANAGER 2>/dev/null || fail "systemd --user exited at start"
    sleep 0.1
done
[ -S "$XDG_RUNTIME_DIR/systemd/private" ] || fail "systemd --user did not come up in 15 s"
"$MF_PYTHON" "$MF_DRIVER" --user-manager-driver "$RESULTS"
"""

#: Service settings that are not part of the sandbox (the probe gets the rest).
NOT_SANDBOX = {"Type", "NotifyAccess", "ExecStart", "Restart"}


@dataclass
class UserManagerRun:
    steps: dict[str, dict[str, Any]]
    console: str

    def step(self, name: str) -> dict[str, Any]:
        if name not in self.steps:
            pytest.fail(f"the user-manager driver did not reach step {name!r}: {self.steps}")
        return self.steps[name]

    def notifications(self, pid: int) -> list[str]:
        return re.findall(rf"Got notification message from PID {pid} \(([^)]*)\)", self.console)


@pytest.fixture(scope="module")
def user_manager() -> Iterator[UserManagerRun]:
    """One run of the driver in a real ``systemd --user`` manager."""
    for program in ("unshare", "script", "dbus-daemon", "systemctl", "systemd-run"):
        if shutil.which(program) is None:
            pytest.skip(f"{program} is not installed; cannot run a private user manager")
    manager = next((p for p in SYSTEMD_BINARIES if os.access(p, os.X_OK)), None)
    if manager is None:
        pytest.skip("no systemd binary (Debian package: systemd)")
    if os.geteuid() != 0:
        pytest.skip("a private mount namespace (unshare --mount) needs root here")
    base = Path(tempfile.mkdtemp(prefix="mf-um-"))
    script = base / "user-manager.sh"
    script.write_text(USER_MANAGER_SCRIPT)
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(
            ("MODEL_FORGE_", "MODELFORGE_", "XDG_", "DBUS_", "SYSTEMD_", "LISTEN_", "NOTIFY_")
        )
        and name not in ("PYTHON_KEYRING_BACKEND", "INVOCATION_ID", "HOME")
    }
    env.update(
        MF_BASE=str(base),
        MF_PYTHON=sys.executable,
        MF_DRIVER=str(Path(__file__).resolve()),
        MF_SYSTEMD=manager,
        PYTHONPATH=str(SRC),
    )
    typescript = base / "console.log"
    try:
        try:
            subprocess.run(
                [
                    "unshare",
                    "--mount",
                    "--propagation",
                    "private",
                    "script",
                    "--quiet",
                    "--flush",
                    "--return",
                    "--command",
                    f"bash {shlex.quote(str(script))}",
                    str(typescript),
                ],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                timeout=120,
                check=False,
            )
        except subprocess.TimeoutExpired:
            pass
        results = base / "results.jsonl"
        lines = results.read_text().splitlines() if results.exists() else []
        steps = {record["step"]: record for record in map(json.loads, lines)}
        console = typescript.read_text(errors="replace") if typescript.exists() else ""
        if "error" in steps:
            print(console[-4000:])
            pytest.skip(f"no private systemd user manager: {steps['error']['why']}")
        if not steps:
            print(console[-4000:])
            pytest.fail("the user-manager script wrote no results; see the console log above")
        yield UserManagerRun(steps, console)
    finally:
        kill_leftovers(base)
        shutil.rmtree(base, ignore_errors=True)


def kill_leftovers(base: Path) -> None:
    """Processes the script started that outlived it (only if it was cut short)."""
    pids = base / "pids"
    agents = base / "agent-pids"
    for pid_file, expected in ((pids, ("dbus-daemon", "systemd")), (agents, ("modelforge",))):
        if not pid_file.exists():
            continue
        for pid in map(int, pid_file.read_text().split()):
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if any(name in cmdline for name in expected):
                os.kill(pid, signal.SIGKILL)


def test_user_manager_runs(user_manager: UserManagerRun) -> None:
    assert user_manager.step("running")["state"] in ("running", "degraded")


def test_install_service_writes_the_units_and_prints_the_enable_command(
    user_manager: UserManagerRun,
) -> None:
    install = user_manager.step("install")
    assert install["rc"] == 0, install["stderr"]
    assert install["enable_command"] == (
        "systemctl --user daemon-reload && systemctl --user enable --now modelforge-agent.socket"
    )
    assert install["units"] == services.systemd_units(shlex.join(CLI))
    enable = user_manager.step("enable")
    assert enable["rc"] == 0, enable["stderr"]


def test_only_the_socket_listens_before_the_first_client(user_manager: UserManagerRun) -> None:
    before = user_manager.step("before")
    assert before["socket"]["ActiveState"] == "active"
    assert before["socket"]["SubState"] == "listening"
    assert before["service"]["ActiveState"] == "inactive"
    assert before["service"]["MainPID"] == "0"
    assert before["socket_exists"]


def test_set_and_get_through_the_socket_activated_agent(user_manager: UserManagerRun) -> None:
    assert user_manager.step("set")["rc"] == 0, user_manager.step("set")["stderr"]
    get = user_manager.step("get")
    assert get["rc"] == 0, get["stderr"]
    assert get["stdout"] == SECRET + "\n"

    unit = user_manager.step("service")
    # Type=notify: "active" only once READY=1 came from the agent.
    assert unit["Type"] == "notify"
    assert (unit["ActiveState"], unit["SubState"]) == ("active", "running")
    status = json.loads(user_manager.step("status")["stdout"])
    assert status["started_by"] == "systemd"
    assert status["pid"] == int(unit["MainPID"])
    assert status["protection"] == "keyfile"


def test_the_manager_got_ready_from_the_agent(user_manager: UserManagerRun) -> None:
    if not user_manager.console:
        pytest.skip("the manager's log was not captured")
    pid = int(user_manager.step("service")["MainPID"])
    assert any("READY=1" in n for n in user_manager.notifications(pid)), user_manager.console[
        -3000:
    ]


def test_the_agent_runs_sandboxed(user_manager: UserManagerRun) -> None:
    proc = user_manager.step("proc")
    assert proc["NoNewPrivs"] == "1"
    assert proc["Seccomp"] == "2"  # a seccomp filter is installed


def test_socket_and_directory_are_private(user_manager: UserManagerRun) -> None:
    modes = user_manager.step("modes")
    assert modes["socket"] == 0o600
    assert modes["directory"] == 0o700


def test_restrict_address_families_blocks_the_network(user_manager: UserManagerRun) -> None:
    directives = user_manager.step("directives")["sandbox"]
    assert "RestrictAddressFamilies=AF_UNIX" in directives
    assert "NoNewPrivileges=yes" in directives

    blocked = user_manager.step("probe_inet_sandboxed")
    assert blocked["rc"] != 0
    assert "Address family not supported" in blocked["stdout"] + blocked["stderr"]
    unix = user_manager.step("probe_unix_sandboxed")
    assert unix["rc"] == 0, unix["stderr"]
    # The same probe without that one directive works: it is the one that blocks.
    allowed = user_manager.step("probe_inet_unrestricted")
    assert allowed["rc"] == 0, allowed["stderr"]


def test_stop_sends_stopping_and_exits_cleanly(user_manager: UserManagerRun) -> None:
    stop = user_manager.step("stop")
    assert stop["rc"] == 0, stop["stderr"]
    unit = stop["service"]
    assert unit["ActiveState"] == "inactive"
    assert unit["Result"] == "success"
    assert (unit["ExecMainCode"], unit["ExecMainStatus"]) == ("1", "0")  # exited, status 0
    assert stop["socket"]["SubState"] == "listening"
    if not user_manager.console:
        pytest.skip("the manager's log was not captured: STOPPING=1 unseen")
    pid = int(user_manager.step("service")["MainPID"])
    assert "STOPPING=1" in user_manager.notifications(pid)


def test_exit_when_idle_and_the_next_client_starts_it_again(
    user_manager: UserManagerRun,
) -> None:
    first = user_manager.step("idle_get")
    assert first["rc"] == 0 and first["stdout"] == SECRET + "\n", first["stderr"]
    idle = user_manager.step("idle_exit")
    assert idle["service"]["ActiveState"] == "inactive", idle
    assert idle["service"]["Result"] == "success"
    assert idle["socket"]["SubState"] == "listening"
    again = user_manager.step("reactivate")
    assert again["rc"] == 0 and again["stdout"] == SECRET + "\n", again["stderr"]
    assert again["pid"] not in (0, first["pid"])
    if user_manager.console:
        assert "STOPPING=1" in user_manager.notifications(first["pid"])


# The driver: runs inside the namespace, where systemctl reaches the manager.


class Driver:
    def __init__(self, results: Path) -> None:
        self.results = results
        self.env = dict(os.environ)
        self.config_home = Path(os.environ["XDG_CONFIG_HOME"])
        self.runtime = Path(os.environ["XDG_RUNTIME_DIR"])

    def emit(self, step: str, **record: Any) -> None:
        with open(self.results, "a") as out:
            out.write(json.dumps({"step": step, **record}) + "\n")

    def run(self, argv: list[str], stdin: str = "") -> dict[str, Any]:
        try:
            proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=60)
        except subprocess.TimeoutExpired as err:
            return {"rc": -1, "stdout": "", "stderr": f"timed out: {err}"}
        return {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.run(["systemctl", "--user", "show", *(f"--property={p}" for p in props), unit])
        return dict(line.split("=", 1) for line in out["stdout"].splitlines() if "=" in line)

    def unit_state(self) -> dict[str, Any]:
        return {
            "service": self.show(
                "modelforge-agent.service",
                "ActiveState",
                "SubState",
                "Result",
                "MainPID",
                "ExecMainCode",
                "ExecMainStatus",
                "Type",
            ),
            "socket": self.show("modelforge-agent.socket", "ActiveState", "SubState"),
        }

    def main_pid(self) -> int:
        pid = int(self.show("modelforge-agent.service", "MainPID").get("MainPID", "0"))
        if pid:
            with open(self.results.parent / "agent-pids", "a") as out:
                out.write(f"{pid}\n")
        return pid

    def wait_for(self, condition: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.1)
        return False

    def drive(self) -> None:
        state = {"out": ""}

        def settled() -> bool:
            state["out"] = self.run(["systemctl", "--user", "is-system-running"])["stdout"]
            return state["out"].strip() in ("running", "degraded")

        self.wait_for(settled, 15)
        self.emit("running", state=state["out"].strip())

        install = self.run([*CLI, "install-service"])
        lines = install["stderr"].splitlines()
        enable_command = ""
        if "enable it with:" in lines:
            enable_command = lines[lines.index("enable it with:") + 1].strip()
        unit_dir = self.config_home / "systemd" / "user"
        units = {n: (unit_dir / n).read_text() for n in UNIT_NAMES if (unit_dir / n).exists()}
        self.emit("install", **install, enable_command=enable_command, units=units)
        self.emit("enable", **self.run(["bash", "-c", enable_command]))

        sock = self.runtime / "model-forge" / "agent.sock"
        self.emit("before", **self.unit_state(), socket_exists=sock.is_socket())

        self.emit("set", **self.run([*CLI, "set", "openai", "api_key"], stdin=SECRET + "\n"))
        self.emit("get", **self.run([*CLI, "get", "openai", "api_key"]))
        self.emit("status", **self.run([*CLI, "status", "--json"]))
        pid = self.main_pid()
        self.emit("service", **self.unit_state()["service"])
        fields = dict(
            line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        )
        self.emit("proc", **{k: fields[k].strip() for k in ("NoNewPrivs", "Seccomp")})
        self.emit(
            "modes",
            socket=sock.stat().st_mode & 0o7777,
            directory=sock.parent.stat().st_mode & 0o7777,
        )

        section = (unit_dir / "modelforge-agent.service").read_text().split("[Service]")[1]
        section = section.split("\n[")[0]
        sandbox = [
            line
            for line in section.splitlines()
            if "=" in line and not line.startswith("#") and line.split("=")[0] not in NOT_SANDBOX
        ]
        self.emit("directives", sandbox=sandbox)

        def probe(directives: list[str], family: str) -> dict[str, Any]:
            props = [f"--property={d}" for d in directives]
            code = f"import socket; socket.socket(socket.{family}).close()"
            return self.run(
                ["systemd-run", "--user", "--wait", "--pipe", "--quiet", *props]
                + [sys.executable, "-c", code]
            )

        unrestricted = [d for d in sandbox if not d.startswith("RestrictAddressFamilies=")]
        self.emit("probe_inet_sandboxed", **probe(sandbox, "AF_INET"))
        self.emit("probe_unix_sandboxed", **probe(sandbox, "AF_UNIX"))
        self.emit("probe_inet_unrestricted", **probe(unrestricted, "AF_INET"))

        stop = self.run(["systemctl", "--user", "stop", "modelforge-agent.service"])
        self.emit("stop", **stop, **self.unit_state())

        # Exit-when-idle in a second's time, through a drop-in on the same unit.
        exec_start = next(line for line in section.splitlines() if line.startswith("ExecStart="))
        dropin = unit_dir / "modelforge-agent.service.d"
        dropin.mkdir()
        (dropin / "idle.conf").write_text(
            "[Service]\nExecStart=\n"
            + re.sub(r"--exit-when-idle \S+", "--exit-when-idle 1", exec_start)
            + "\n"
        )
        self.run(["systemctl", "--user", "daemon-reload"])
        get = self.run([*CLI, "get", "openai", "api_key"])
        first = self.main_pid()
        self.emit("idle_get", **get, pid=first)

        def exited() -> bool:
            return self.show("modelforge-agent.service", "ActiveState")["ActiveState"] in (
                "inactive",
                "failed",
            )

        started = time.monotonic()
        self.wait_for(exited, 15)
        self.emit("idle_exit", **self.unit_state(), seconds=time.monotonic() - started)
        get = self.run([*CLI, "get", "openai", "api_key"])
        self.emit("reactivate", **get, pid=self.main_pid())
        self.run(["systemctl", "--user", "stop", "modelforge-agent.service"])


# -- launchd ------------------------------------------------------------------------------


def check_launchd_plist(plist: dict[str, Any]) -> dict[str, Any]:
    assert plist["Label"] == services.LAUNCHD_LABEL
    assert plist["ProgramArguments"][-1] == "serve"
    listener = plist["Sockets"]["Listener"]
    assert Path(listener["SockPathName"]).is_absolute()
    assert listener["SockPathMode"] == 0o600
    assert Path(plist["StandardErrorPath"]).is_absolute()
    assert plist["EnvironmentVariables"]["MODEL_FORGE_AGENT_SOCK"] == listener["SockPathName"]
    return listener


def test_shipped_plist_parses() -> None:
    plist = plistlib.loads((REPO / "launchd" / f"{services.LAUNCHD_LABEL}.plist").read_bytes())
    check_launchd_plist(plist)


def test_install_service_print_darwin_gives_a_plist_for_this_interpreter(
    isolated_environment: Path,
) -> None:
    result = subprocess.run(
        [*CLI, "install-service", "--print", "--platform", "darwin"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    header, _, body = result.stdout.partition("\n")
    home = isolated_environment
    target = home / "Library" / "LaunchAgents" / f"{services.LAUNCHD_LABEL}.plist"
    assert header == f"# {target}"
    plist = plistlib.loads(body.encode())
    listener = check_launchd_plist(plist)
    assert plist["ProgramArguments"] == [*CLI, "serve"]
    runtime = Path(os.environ["XDG_RUNTIME_DIR"])
    assert listener["SockPathName"] == str(runtime / "model-forge" / "agent.sock")
    assert Path(plist["StandardErrorPath"]).is_relative_to(home / "Library" / "Logs")
    assert not (home / "Library").exists(), "--print must not write anything"


@pytest.fixture
def listening_socket() -> Iterator[tuple[socket.socket, Path]]:
    directory = Path(os.environ["XDG_RUNTIME_DIR"]) / "model-forge"
    directory.mkdir(mode=0o700)
    path = directory / "agent.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    sock.listen()
    yield sock, path
    sock.close()


@pytest.fixture
def under_launchd(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.setenv("XPC_SERVICE_NAME", services.LAUNCHD_LABEL)


def test_launchd_sockets_adopts_the_fds_launchd_hands_over(
    under_launchd: None, listening_socket: tuple[socket.socket, Path]
) -> None:
    listener, path = listening_socket
    handed = os.dup(listener.fileno())
    asked = []

    def fake_launch_activate_socket(name: str) -> list[int]:
        asked.append(name)
        return [handed]

    adopted = activation.launchd_sockets(activate=fake_launch_activate_socket)

    assert asked == ["Listener"]  # the plist's Sockets entry
    assert [s.fileno() for s in adopted] == [handed]
    sock = adopted[0]
    assert (sock.family, sock.type) == (socket.AF_UNIX, socket.SOCK_STREAM)
    assert sock.getsockname() == str(path)
    sock.settimeout(10)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(str(path))
        accepted, _ = sock.accept()
        accepted.close()
    sock.close()


def test_launchd_sockets_is_empty_outside_launchd(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_be_called(name: str) -> list[int]:
        raise AssertionError("launch_activate_socket called outside launchd")

    monkeypatch.delenv("XPC_SERVICE_NAME", raising=False)
    monkeypatch.setattr(sys, "platform", "darwin")
    assert activation.launchd_sockets(activate=must_not_be_called) == []

    monkeypatch.setenv("XPC_SERVICE_NAME", services.LAUNCHD_LABEL)
    monkeypatch.setattr(sys, "platform", "linux")
    assert activation.launchd_sockets(activate=must_not_be_called) == []


def test_launchd_sockets_is_empty_without_a_sockets_entry(under_launchd: None) -> None:
    def no_such_entry(name: str) -> list[int]:
        raise OSError(3, "No such process")  # launchd's ESRCH: no Sockets entry

    assert activation.launchd_sockets(activate=no_such_entry) == []


@pytest.fixture
def restore_process_state() -> Iterator[None]:
    """``serve`` hardens and sets signal handlers for the whole process: undo it."""
    pr_set_dumpable = 4
    sighup = signal.getsignal(signal.SIGHUP)
    core = resource.getrlimit(resource.RLIMIT_CORE)
    yield
    signal.signal(signal.SIGHUP, sighup)
    try:
        resource.setrlimit(resource.RLIMIT_CORE, core)
    except (ValueError, OSError):
        pass
    ctypes.CDLL(None).prctl(pr_set_dumpable, 1, 0, 0, 0)


async def test_serve_with_launchd_socket_reports_launchd(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    listening_socket: tuple[socket.socket, Path],
    restore_process_state: None,
) -> None:
    listener, path = listening_socket
    monkeypatch.setattr(service, "launchd_sockets", lambda: [listener])
    read_end, write_end = os.pipe()
    options = service.ServeOptions(config_dir=tmp_path / "config", ready_fd=write_end)
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()
    loop.add_reader(read_end, lambda: ready.done() or ready.set_result(None))
    serving = asyncio.create_task(service.serve(options))
    try:
        done, _ = await asyncio.wait({ready, serving}, timeout=15, return_when="FIRST_COMPLETED")
        assert ready in done, "serve did not report readiness"
        assert select.select([read_end], [], [], 0)[0]
        assert os.read(read_end, 100) == b"ready\n"

        def agent_status() -> dict[str, object]:
            with AgentClient(path) as client:
                return client.status()

        status = await asyncio.to_thread(agent_status)

        assert status["started_by"] == "launchd"
        assert status["socket"] == str(path)
        assert status["pid"] == os.getpid()
        os.kill(os.getpid(), signal.SIGTERM)  # handled by serve's loop handler
        assert await asyncio.wait_for(serving, 15) == 0
        assert path.is_socket(), "launchd owns the socket file; the agent must leave it"
    finally:
        loop.remove_reader(read_end)
        os.close(read_end)
        if not serving.done():
            serving.cancel()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


if __name__ == "__main__" and sys.argv[1:2] == ["--user-manager-driver"]:
    Driver(Path(sys.argv[2])).drive()
