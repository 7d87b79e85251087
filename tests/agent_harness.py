"""Real-process helpers for the reliability tests.

An :class:`AgentWorkspace` owns one short private directory under /tmp (a
socket path must fit in ~107 bytes), runs ``modelforge-agent serve`` as a
child of the test process (so it is reaped by ``wait``, with no subreaper),
runs CLI commands, and kills whatever is left when the test ends. Agents the
CLI detaches (``start``, auto-start) are watched by pid; with an
:class:`AgentReaper` (see :func:`child_subreaper`) they are reaped as they exit.

:class:`PacedClient` is the "well-behaved client": a separate process (so
the test's own GIL and CPU use do not leak into its figures) doing one
``retrieve`` per interval and reporting latency percentiles on request.

:class:`NewFileWatch` tells the moment another process creates a file
(inotify), so a crash test can SIGKILL a writer inside its atomic write.

:class:`Figures` records each test's figures as JSON lines.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgpack  # type: ignore[import-untyped]
import pytest

from realpeers import REQUIRE_VARIABLE, PeerUnavailable, SecretServiceSession
from testkit import (  # noqa: F401 - re-exported
    PROTOCOL_ERROR_CODES,
    FakeClock,
    frame,
    map_frame,
    wait_until,
)

CLI = (sys.executable, "-m", "modelforge_credentials.cli")
SOCK_VAR = "MODEL_FORGE_AGENT_SOCK"
CONFIG_VAR = "MODEL_FORGE_CONFIG_DIR"
REPORT_VAR = "MODEL_FORGE_RELIABILITY_REPORT"
NOBODY = 65534
AS_NOBODY = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")
#: Bound on every wait for a process or a reply: a hang fails instead of stalling.
TIMEOUT = 30.0

PR_SET_CHILD_SUBREAPER = 36
_PID_LINE = re.compile(r"^echo Agent pid (\d+) (started|already running);$", re.MULTILINE)


# -- skips ------------------------------------------------------------------------------


def linux_only(uses: str) -> pytest.MarkDecorator:
    """A mark that skips a module off Linux; ``uses`` names what it needs of Linux."""
    return pytest.mark.skipif(not sys.platform.startswith("linux"), reason=f"uses {uses}")


def require_nobody_python(module: str = "modelforge_credentials.client") -> None:
    """Skip unless root can act as uid 65534 and that uid can import ``module``
    with this venv's python (setpriv from util-linux)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another uid")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is not installed")
    probe = subprocess.run(
        [*AS_NOBODY, sys.executable, "-c", f"import msgpack, {module}"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    if probe.returncode != 0:
        pytest.skip(f"uid {NOBODY} cannot run this venv's python: {probe.stderr.strip()}")


# -- figures ----------------------------------------------------------------------------

#: Read at import: the autouse isolation fixture removes every MODEL_FORGE_* variable
#: before a test runs.
_REPORT_PATH = os.environ.get(REPORT_VAR) or None


class Figures:
    """Appends ``{"test", "figure", "value", "unit"}`` lines to $MODEL_FORGE_RELIABILITY_REPORT
    (when set) and prints each figure."""

    def __init__(self, test: str) -> None:
        self.test = test
        self.path = _REPORT_PATH

    def record(self, figure: str, value: float | int | str, unit: str = "") -> None:
        if isinstance(value, float):
            value = round(value, 6)
        line = {"test": self.test, "figure": figure, "value": value, "unit": unit}
        print(f"[figure] {self.test}: {figure} = {value} {unit}".rstrip())
        if self.path:
            with open(self.path, "a", encoding="utf-8") as handle:
                handle.write(json.dumps(line) + "\n")


# -- processes --------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcStat:
    """The fields of /proc/PID/stat the tests look at."""

    state: str
    ppid: int
    session: int
    tty: int


def proc_stat(pid: int) -> ProcStat | None:
    """``pid``'s state, parent, session and terminal; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return None
    # The command name may hold spaces and parentheses; the fields follow the last ")".
    fields = text.rsplit(")", 1)[1].split()
    return ProcStat(fields[0], int(fields[1]), int(fields[3]), int(fields[4]))


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie has exited and does not count)."""
    info = proc_stat(pid)
    return info is not None and info.state not in ("Z", "X")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """SIGTERM, then SIGKILL if ``proc`` is still there after ``timeout`` seconds."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pid_from(start_output: str) -> int:
    """The agent's pid in the shell commands ``start`` prints."""
    match = _PID_LINE.search(start_output)
    assert match, f"no pid line in the output of `start`: {start_output!r}"
    return int(match.group(1))


def read_until(fd: int, marker: bytes, timeout: float) -> bytes:
    """Bytes from ``fd`` up to and including ``marker`` (fails on timeout or end of file)."""
    deadline = time.monotonic() + timeout
    data = b""
    while marker not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"timed out waiting for {marker!r}; got {data!r}")
        ready, _, _ = select.select([fd], [], [], remaining)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:
                chunk = b""
            if not chunk:
                pytest.fail(f"end of output before {marker!r}; got {data!r}")
            data += chunk
    return data


class AgentReaper:
    """Waits for detached agents, by pid, as they exit.

    Only pids handed to :meth:`watch` are waited for, so it never races
    ``subprocess`` for its own children.
    """

    def __init__(self) -> None:
        self._pids: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="agent-reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def watch(self, pid: int) -> None:
        with self._lock:
            self._pids.add(pid)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            with self._lock:
                pids = list(self._pids)
            for pid in pids:
                try:
                    done, _ = os.waitpid(pid, os.WNOHANG)
                except ChildProcessError:
                    done = pid  # not ours (pid 1 adopted it): nothing to wait for
                if done:
                    with self._lock:
                        self._pids.discard(pid)


def _prctl(option: int, value: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl failed")


@contextlib.contextmanager
def child_subreaper() -> Iterator[AgentReaper]:
    """Make this process the subreaper of its descendants for the block.

    Agents the CLI detaches are then re-parented here and reaped at once, so
    "gone" never depends on how, or whether, pid 1 reaps orphans. Raises
    OSError where prctl refuses.
    """
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    reaper = AgentReaper()
    reaper.start()
    try:
        yield reaper
    finally:
        reaper.stop()
        _prctl(PR_SET_CHILD_SUBREAPER, 0)


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS line for pid {pid}")


# -- crashes and file systems ---------------------------------------------------------


def temp_files(directory: Path) -> list[Path]:
    """The temp files of atomic writes of the credentials file in ``directory``."""
    return sorted(directory.glob(".credentials*.tmp"))


class NewFileWatch:
    """inotify on one directory: the moment a file whose name matches appears.

    Lets a test act (a SIGKILL) while another process is inside an atomic
    write, between creating its temp file and renaming it, without a timer.
    """

    _IN_CREATE = 0x100
    _IN_MOVED_TO = 0x80
    _IN_NONBLOCK = os.O_NONBLOCK
    _IN_CLOEXEC = os.O_CLOEXEC
    _HEADER = struct.Struct("iIII")

    def __init__(self, directory: Path) -> None:
        self._libc = ctypes.CDLL(None, use_errno=True)
        self.fd = self._libc.inotify_init1(self._IN_NONBLOCK | self._IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        mask = self._IN_CREATE | self._IN_MOVED_TO
        if self._libc.inotify_add_watch(self.fd, str(directory).encode(), mask) < 0:
            errno = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(errno, f"inotify_add_watch {directory} failed")

    def drain(self) -> None:
        """Forget the names that appeared so far."""
        while select.select([self.fd], [], [], 0)[0]:
            os.read(self.fd, 65_536)

    def wait(self, matches: Callable[[str], bool], timeout: float) -> str | None:
        """The first new name ``matches`` accepts, or None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            if not select.select([self.fd], [], [], remaining)[0]:
                break
            data = os.read(self.fd, 65_536)
            offset = 0
            while offset < len(data):
                _, _, _, length = self._HEADER.unpack_from(data, offset)
                offset += self._HEADER.size
                name = data[offset : offset + length].rstrip(b"\0").decode()
                offset += length
                if matches(name):
                    return name
        return None

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> NewFileWatch:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def is_temp_name(name: str) -> bool:
    """A temp file of an atomic write of the credentials file (see :func:`temp_files`)."""
    return name.startswith(".credentials") and name.endswith(".tmp")


@contextlib.contextmanager
def mounted_tmpfs(mount_point: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (e.g. "256k") at a new ``mount_point`` for the block,
    unmounted afterwards; skips where mounting is not allowed."""
    mount_point.mkdir(mode=0o700)
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}")
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", str(mount_point)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_point)], check=False)


# -- real peers -------------------------------------------------------------------------


def started_secret_service(session: SecretServiceSession) -> dict[str, str]:
    """``session`` started (its environment); skips without a Secret Service, or
    fails where one is required ($MODEL_FORGE_REQUIRE_SECRET_SERVICE=1)."""
    try:
        return session.start()
    except (PeerUnavailable, TimeoutError) as err:
        session.stop()
        if os.environ.get(REQUIRE_VARIABLE) == "1":
            pytest.fail(f"a Secret Service is required here ({REQUIRE_VARIABLE}=1): {err}")
        pytest.skip(f"no Secret Service: {err}")


# -- unsafe socket directories ----------------------------------------------------------


def loose_mode(mode: int) -> Callable[[Path], None]:
    """Prepares a socket directory others may enter or write (``mode``)."""

    def prepare(directory: Path) -> None:
        directory.mkdir(mode=0o700)
        directory.chmod(mode)

    return prepare


def symlinked(directory: Path) -> None:
    """A socket directory that is a symlink to a private directory beside it."""
    real = directory.parent / "real"
    real.mkdir(mode=0o700)
    directory.symlink_to(real)


def foreign_owned(directory: Path) -> None:
    """A private socket directory of uid 65534 (needs root)."""
    directory.mkdir(mode=0o700)
    os.chown(directory, NOBODY, NOBODY)


@dataclass
class Agent:
    """One ``serve`` process, a child of the test process."""

    proc: subprocess.Popen[bytes]
    log: Path
    started_in: float

    @property
    def pid(self) -> int:
        return self.proc.pid

    def running(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=TIMEOUT)

    def stop(self) -> int:
        """SIGTERM, as a service manager would; returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=TIMEOUT)

    def log_text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""


class AgentWorkspace:
    """One private socket path and config dir; runs agents and the CLI; cleans up.

    With a ``reaper`` (a workspace for agents the CLI detaches), :meth:`close`
    first asks a running agent to ``stop``, then kills every watched pid.
    """

    def __init__(self, env: dict[str, str], reaper: AgentReaper | None = None) -> None:
        # Short, under /tmp: Unix socket paths are limited to ~107 bytes.
        self.base = Path(tempfile.mkdtemp(prefix="mfr-", dir="/tmp"))
        self.socket = self.base / "sock" / "agent.sock"
        self.config = self.base / "config"
        self.env = {**env, SOCK_VAR: str(self.socket), CONFIG_VAR: str(self.config)}
        self.agents: list[Agent] = []
        self.others: list[subprocess.Popen[bytes]] = []
        self.reaper = reaper
        self.detached: set[int] = set()
        self._logs = 0

    def serve(
        self,
        *args: str,
        socket: Path | None = None,
        prefix: Sequence[str] = (),
        env: dict[str, str] | None = None,
        log: Path | None = None,
    ) -> Agent:
        """``serve`` in the foreground, returned once it reports readiness."""
        if log is None:
            self._logs += 1
            log = self.base / f"agent-{self._logs}.log"
        read_end, write_end = os.pipe()
        began = time.monotonic()
        try:
            with open(log, "ab") as log_file:
                proc = subprocess.Popen(
                    [
                        *prefix,
                        *CLI,
                        "--socket",
                        str(socket or self.socket),
                        "serve",
                        "--ready-fd",
                        str(write_end),
                        *args,
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=log_file,
                    env=self.env if env is None else env,
                    pass_fds=(write_end,),
                )
        finally:
            os.close(write_end)
        agent = Agent(proc, log, 0.0)
        self.agents.append(agent)
        try:
            ready, _, _ = select.select([read_end], [], [], TIMEOUT)
            message = os.read(read_end, 4096) if ready else b""
        finally:
            os.close(read_end)
        if not message.startswith(b"ready"):
            agent.kill()
            pytest.fail(f"serve did not report readiness ({message!r}):\n{agent.log_text()}")
        agent.started_in = time.monotonic() - began
        return agent

    def run(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        stdin: int | None = None,
        env: dict[str, str] | None = None,
        timeout: float = TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` in this workspace's environment, its output captured as text.

        Standard input is ``input``, else the descriptor ``stdin``, else empty.
        """
        feed: dict[str, object] = {"stdin": stdin} if stdin is not None else {"input": input or ""}
        result: subprocess.CompletedProcess[str] = subprocess.run(
            list(argv),
            capture_output=True,
            text=True,
            env=self.env if env is None else env,
            timeout=timeout,
            **feed,  # type: ignore[call-overload]
        )
        return result

    def cli(
        self,
        *args: str,
        input: str | None = None,
        stdin: int | None = None,
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
        timeout: float = TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        """One ``modelforge-agent`` command (after ``prefix``, e.g. :data:`AS_NOBODY`)."""
        return self.run([*prefix, *CLI, *args], input=input, stdin=stdin, env=env, timeout=timeout)

    def ok(self, *args: str, input: str | None = None) -> str:
        """A CLI command that must succeed; its standard output."""
        result = self.cli(*args, input=input)
        assert result.returncode == 0, (
            f"{args}: exit {result.returncode}: {result.stdout} {result.stderr}"
        )
        return result.stdout

    def status(self) -> dict[str, object]:
        """``status --json`` of the agent on this workspace's socket."""
        status = json.loads(self.ok("status", "--json"))
        assert isinstance(status, dict)
        return status

    def watch(self, pid: int) -> None:
        """Own a detached agent: reaped as it exits (with a reaper), killed at close."""
        self.detached.add(pid)
        if self.reaper is not None:
            self.reaper.watch(pid)

    def start(self, *extra: str, watch: bool = True) -> tuple[int, str]:
        """``start`` (a detached agent); its pid and the shell commands it printed."""
        result = self.cli("start", *extra)
        if result.returncode == 0 and watch:
            self.watch(pid_from(result.stdout))
        assert result.returncode == 0, f"start: exit {result.returncode}: {result.stderr}"
        return pid_from(result.stdout), result.stdout

    def nobody_control(self, env: dict[str, str]) -> subprocess.Popen[bytes]:
        """A plain process of uid 65534 that waits on its input: what an ordinary
        process of that uid looks like in /proc. Returned once it runs as that uid."""
        plain = subprocess.Popen(
            [*AS_NOBODY, sys.executable, "-I", "-S", "-c", "import sys; sys.stdin.read()"],
            stdin=subprocess.PIPE,
            env=env,
        )
        self.others.append(plain)
        environ = Path(f"/proc/{plain.pid}/environ")
        wait_until(lambda: environ.stat().st_uid == NOBODY, 10, "the control to run as nobody")
        return plain

    def home_for_nobody(self) -> tuple[Path, dict[str, str]]:
        """A home of uid 65534 inside the workspace, and an environment that uses it."""
        self.base.chmod(0o711)  # uid 65534 reaches its own directory inside
        home = self.base / "nobody"
        home.mkdir(mode=0o700)
        os.chown(home, NOBODY, NOBODY)
        return home, {**self.env, "HOME": str(home), CONFIG_VAR: str(home / "config")}

    def close(self) -> None:
        if self.reaper is not None and self.socket.exists():
            self.cli("--timeout", "5", "stop", timeout=20)
        for pid in self.detached:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for proc in [agent.proc for agent in self.agents] + self.others:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=TIMEOUT)
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        try:
            wait_until(
                lambda: not any(alive(pid) for pid in self.detached), 10, "the agents to exit"
            )
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


# -- raw frames -------------------------------------------------------------------------


def pack(message: object) -> bytes:
    return bytes(msgpack.packb(message, use_bin_type=True))


class ReplyReader:
    """Reads length-prefixed replies from a blocking socket, independently of the agent's
    own codec (msgpack straight, no FrameDecoder)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.eof = False

    def _fill(self, deadline: float) -> bool:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no reply from the agent in time")
        self.sock.settimeout(remaining)
        try:
            chunk = self.sock.recv(262_144)
        except ConnectionResetError:
            chunk = b""
        if not chunk:
            self.eof = True
            return False
        self.buf += chunk
        return True

    def replies(self, count: int, timeout: float = TIMEOUT) -> list[object]:
        """``count`` replies, or fewer if the agent closes first."""
        deadline = time.monotonic() + timeout
        out: list[object] = []
        while len(out) < count:
            if len(self.buf) >= 4:
                (length,) = struct.unpack_from(">I", self.buf)
                if len(self.buf) >= 4 + length:
                    body = bytes(self.buf[4 : 4 + length])
                    del self.buf[: 4 + length]
                    out.append(msgpack.unpackb(body, raw=False, strict_map_key=False))
                    continue
            if self.eof or not self._fill(deadline):
                break
        return out

    def rest_until_eof(self, timeout: float = TIMEOUT) -> bytes:
        """Every byte left until the agent closes the connection (fails on timeout)."""
        deadline = time.monotonic() + timeout
        while not self.eof:
            self._fill(deadline)
        rest = bytes(self.buf)
        self.buf.clear()
        return rest


def connect(path: Path, timeout: float = TIMEOUT) -> socket.socket:
    """A connected socket; retries while the listen backlog is full (EAGAIN on AF_UNIX)."""
    deadline = time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
            return sock
        except BlockingIOError:
            sock.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.001)
        except BaseException:
            sock.close()
            raise


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the peer has closed ``sock`` (EOF or reset), without consuming data."""
    poller = select.poll()  # not select(): a thousand sockets pass FD_SETSIZE
    poller.register(sock, select.POLLIN)
    if not poller.poll(0):
        return False
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


# -- the well-behaved client ---------------------------------------------------------------

_PACED_CLIENT = r"""
import json, os, select, sys, time
from modelforge_credentials.client.sync import AgentClient

path, provider, key, interval = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
client = AgentClient(path, timeout=10)
expected = client.retrieve(provider, key)

def command():
    line = b""
    while not line.endswith(b"\n"):
        chunk = os.read(0, 1)
        if not chunk:
            return None
        line += chunk
    return line.decode().strip()

print("ready", flush=True)
while command() == "go":
    latencies, errors, wrong = [], 0, 0
    next_at = time.perf_counter()
    # The wait for the next tick is also the wait for "stop": no sleep, no extra syscall.
    while not select.select([0], [], [], max(0.0, next_at - time.perf_counter()))[0]:
        began = time.perf_counter()
        try:
            value = client.retrieve(provider, key)
        except Exception:
            errors += 1
        else:
            latencies.append(time.perf_counter() - began)
            wrong += value != expected
        next_at = began + interval
    command()
    print(json.dumps({"errors": errors, "wrong": wrong,
                      "latencies_us": [round(x * 1e6, 1) for x in latencies]}), flush=True)
"""


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Latencies:
    """A well-behaved client's answers over one or more measurement windows."""

    samples: list[float] = field(default_factory=list)
    errors: int = 0
    wrong: int = 0

    def add(self, other: Latencies) -> None:
        self.samples += other.samples
        self.errors += other.errors
        self.wrong += other.wrong

    @property
    def p50(self) -> float:
        return percentile(self.samples, 0.5)

    @property
    def p99(self) -> float:
        return percentile(self.samples, 0.99)


@dataclass
class PacedClient:
    """A separate process doing one ``retrieve`` every ``interval`` seconds.

    ``begin()`` starts a measurement window, ``end()`` returns its
    :class:`Latencies` (µs; errors; wrong: a value other than the expected one).
    """

    path: Path
    env: dict[str, str]
    provider: str
    key: str
    interval: float = 0.001
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    def start(self) -> PacedClient:
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _PACED_CLIENT,
                str(self.path),
                self.provider,
                self.key,
                str(self.interval),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
        )
        assert self._line() == "ready", self._failure()
        return self

    def _line(self) -> str:
        assert self.proc is not None and self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], TIMEOUT)
        return self.proc.stdout.readline().decode().strip() if ready else ""

    def _send(self, line: str) -> None:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def _failure(self) -> str:
        assert self.proc is not None
        self.proc.kill()
        _, err = self.proc.communicate(timeout=TIMEOUT)
        return f"the paced client failed:\n{err.decode()}"

    def begin(self) -> None:
        self._send("go")

    def end(self) -> Latencies:
        self._send("stop")
        line = self._line()
        if not line.startswith("{"):
            pytest.fail(self._failure())
        summary = json.loads(line)
        return Latencies(summary["latencies_us"], summary["errors"], summary["wrong"])

    def measure(self, seconds: float) -> Latencies:
        """A measurement over ``seconds`` of the client's own pace (no other load)."""
        self.begin()
        time.sleep(seconds)  # the measurement window itself, not a wait for the agent
        return self.end()

    def close(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=TIMEOUT)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def read_for(fd: int, seconds: float) -> bytes:
    """Bytes from ``fd`` until ``seconds`` pass or it reaches end of file."""
    deadline = time.monotonic() + seconds
    chunks = []
    while (remaining := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            break
        chunk = os.read(fd, 65_536)
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks)
