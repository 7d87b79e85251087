"""Real-process helpers for the reliability tests.

An :class:`AgentWorkspace` owns one short private directory under /tmp (a
socket path must fit in ~107 bytes), runs ``modelforge-agent serve`` as a
child of the test process (so it is reaped by ``wait``, with no subreaper),
runs CLI commands, and kills whatever is left when the test ends.

:class:`PacedClient` is the "well-behaved client": a separate process (so
the test's own GIL and CPU use do not leak into its figures) doing one
``retrieve`` per interval and reporting latency percentiles on request.

:class:`Figures` records each test's figures as JSON lines.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgpack  # type: ignore[import-untyped]
import pytest

from testkit import FakeClock, frame, map_frame, wait_until  # noqa: F401 - re-exported

CLI = (sys.executable, "-m", "modelforge_credentials.cli")
SOCK_VAR = "MODEL_FORGE_AGENT_SOCK"
CONFIG_VAR = "MODEL_FORGE_CONFIG_DIR"
REPORT_VAR = "MODEL_FORGE_RELIABILITY_REPORT"
NOBODY = 65534
AS_NOBODY = ("setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups")
#: Bound on every wait for a process or a reply: a hang fails instead of stalling.
TIMEOUT = 30.0

#: The closed set of error codes of protocol version 1 (docs/PROTOCOL.md, section 5),
#: written out here so the tests do not take the agent's word for it.
PROTOCOL_ERROR_CODES = frozenset(
    {
        "bad_request",
        "unsupported_version",
        "unknown_op",
        "invalid",
        "locked",
        "bad_passphrase",
        "read_only",
        "unavailable",
        "too_large",
        "internal",
    }
)


# -- figures ----------------------------------------------------------------------------

#: Read at import: the autouse isolation fixture removes every MODEL_FORGE_* variable
#: before a test runs.
_REPORT_PATH = os.environ.get(REPORT_VAR) or None


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


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie has exited and does not count)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return text.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def vm_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS line for pid {pid}")


def temp_files(directory: Path) -> list[Path]:
    return sorted(directory.glob(".credentials*.tmp"))


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
    """One private socket path and config dir; runs agents and the CLI; cleans up."""

    def __init__(self, env: dict[str, str]) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="mfr-", dir="/tmp"))
        self.socket = self.base / "sock" / "agent.sock"
        self.config = self.base / "config"
        self.env = {**env, SOCK_VAR: str(self.socket), CONFIG_VAR: str(self.config)}
        self.agents: list[Agent] = []
        self.others: list[subprocess.Popen[bytes]] = []
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

    def cli(
        self,
        *args: str,
        input: str | None = None,
        env: dict[str, str] | None = None,
        prefix: Sequence[str] = (),
        timeout: float = TIMEOUT,
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*prefix, *CLI, *args],
            input=input if input is not None else "",
            capture_output=True,
            text=True,
            env=self.env if env is None else env,
            timeout=timeout,
        )

    def close(self) -> None:
        for agent in self.agents:
            if agent.proc.poll() is None:
                agent.proc.kill()
            agent.proc.wait(timeout=TIMEOUT)
        for proc in self.others:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=TIMEOUT)
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
