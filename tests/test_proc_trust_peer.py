"""Clients trust only their own user's agent (security review, item 5).

An impostor, a server that answers like an agent and records every byte it
receives, waits where a client will connect: in a directory of uid 65534, in
the world-writable /tmp, behind a symlinked directory, or on a socket it bound
before its directory was tightened. Every client (the sync and asyncio
clients, AgentStorage with auto-start, the keyring plugin, the CLI's start and
stop) must refuse before sending a single byte. The real agent is still
accepted, by root and by an ordinary uid. ``stop`` signals a pid only when
that process is the user's and holds the listening socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import select
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import keyring
import keyring.errors
import pytest

from agent_harness import (
    AS_NOBODY,
    CONFIG_VAR,
    NOBODY,
    SOCK_VAR,
    TIMEOUT,
    AgentWorkspace,
    require_nobody_python,
)
from modelforge_credentials.backends.agent import AgentStorage
from modelforge_credentials.client.aio import AsyncAgentClient
from modelforge_credentials.client.peer import agent_pid_to_signal
from modelforge_credentials.client.sync import AgentClient
from modelforge_credentials.errors import UntrustedAgentError
from modelforge_credentials.keyring_backend import AgentKeyring

CLI = (sys.executable, "-m", "modelforge_credentials.cli")
#: What a client would hand an impostor: it must never reach one, nor any message.
BAIT = "sk-bait-for-the-impostor"


@pytest.fixture(scope="module")
def as_nobody() -> None:
    """Skip unless root can act as uid 65534 and that uid runs this venv (with msgpack)."""
    require_nobody_python("modelforge_credentials.client")


@pytest.fixture
def base(as_nobody: None) -> Iterator[Path]:
    """A directory of root's that uid 65534 may pass through (0711), as a home often is."""
    directory = Path(tempfile.mkdtemp(prefix="mft-", dir="/tmp"))
    directory.chmod(0o711)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


# -- the impostor ------------------------------------------------------------------------

_IMPOSTOR = r"""
import selectors, socket, struct, sys
import msgpack

path, reported_pid = sys.argv[1], int(sys.argv[2])
# Every field of every reply, so that a client that does talk gets what it expects.
answer = {"ok": True, "protocol": 1, "agent": "impostor", "backend": "encrypted-file",
          "locked": False, "protection": "none", "cached": 0, "idle_timeout": None,
          "pid": reported_pid, "uptime": 1.0, "value": "from-the-impostor",
          "deleted": True, "exists": True, "items": []}
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(path)
server.listen(16)
events = selectors.DefaultSelector()
events.register(server, selectors.EVENT_READ)
pending = {}
print("ready", flush=True)
while True:
    for key, _ in events.select():
        if key.fileobj is server:
            conn, _ = server.accept()
            pending[conn] = b""
            events.register(conn, selectors.EVENT_READ)
            print("accepted", flush=True)
            continue
        conn = key.fileobj
        try:
            chunk = conn.recv(65536)
        except OSError:
            chunk = b""
        if chunk == b"END\n" and not pending[conn]:
            print("end", flush=True)
            continue
        if chunk:
            # Recorded before the reply is sent, so before the client can go on.
            print(f"received {len(chunk)}", flush=True)
            data = pending[conn] + chunk
            while len(data) >= 4 and len(data) >= 4 + struct.unpack(">I", data[:4])[0]:
                size = struct.unpack(">I", data[:4])[0]
                request = msgpack.unpackb(data[4 : 4 + size])
                data = data[4 + size :]
                body = msgpack.packb({**answer, "id": request.get("id")})
                conn.sendall(struct.pack(">I", len(body)) + body)
            pending[conn] = data
            continue
        events.unregister(conn)
        del pending[conn]
        conn.close()
"""


class Impostor:
    """A fake agent at ``path`` (run as uid 65534 unless ``prefix`` says otherwise)."""

    def __init__(
        self, path: Path, *, prefix: tuple[str, ...] = AS_NOBODY, reported_pid: int = 4242
    ) -> None:
        self.path = path
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-c", _IMPOSTOR, str(path), str(reported_pid)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,  # unbuffered, so select() sees every line that readline() has not read
        )
        if self._line() != "ready":
            self.close()
            pytest.fail(f"the impostor did not start: {self._stderr()}")

    def _line(self) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], TIMEOUT)
        return self.proc.stdout.readline().decode().strip() if ready else ""

    def _stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read().decode(errors="replace") if self.proc.poll() else ""

    def record(self) -> tuple[int, int]:
        """(connections, bytes) received so far from anyone but this call.

        Asked over one more connection: a client waits for a reply, which the
        impostor sends only after it has printed what it got, so everything a
        client sent is printed before this connection's "end".
        """
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sentinel:
            sentinel.settimeout(TIMEOUT)
            sentinel.connect(str(self.path))
            sentinel.sendall(b"END\n")
            connections, received = -1, 0  # the sentinel's own "accepted" is not counted
            while (line := self._line()) != "end":
                if not line:
                    pytest.fail(f"the impostor stopped answering: {self._stderr()}")
                if line == "accepted":
                    connections += 1
                else:
                    received += int(line.split()[1])
        return connections, received

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=TIMEOUT)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        if self.path.is_socket():
            self.path.unlink()


def as_nobody_run(*command: str) -> None:
    subprocess.run([*AS_NOBODY, *command], check=True, timeout=TIMEOUT)


def nobody_dir(path: Path) -> Path:
    path.mkdir(mode=0o700)
    os.chown(path, NOBODY, NOBODY)
    return path


@contextlib.contextmanager
def process_of_nobody() -> Iterator[int]:
    """The pid of a process running as uid 65534 (setpriv has exec-ed into it)."""
    proc = subprocess.Popen(
        [*AS_NOBODY, sys.executable, "-c", "import sys; print('up', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == b"up\n"
        yield proc.pid
    finally:
        proc.kill()
        proc.wait(timeout=TIMEOUT)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                stream.close()


# -- where the impostor waits: each gives (the path a client is told, the impostor) ---------

Place = Callable[[Path, list[Path]], tuple[Path, Impostor]]


def in_its_own_directory(base: Path, litter: list[Path]) -> tuple[Path, Impostor]:
    path = nobody_dir(base / "evil") / "agent.sock"
    return path, Impostor(path)


def directly_in_tmp(base: Path, litter: list[Path]) -> tuple[Path, Impostor]:
    """MODEL_FORGE_AGENT_SOCK=/tmp/...: anyone may create that name first."""
    path = Path(f"/tmp/mft-{secrets.token_hex(6)}.sock")
    litter.append(path)
    return path, Impostor(path)


def behind_its_symlink_in_tmp(base: Path, litter: list[Path]) -> tuple[Path, Impostor]:
    evil = nobody_dir(base / "evil")
    link = Path(f"/tmp/mft-{secrets.token_hex(6)}")
    as_nobody_run("ln", "-s", str(evil), str(link))
    litter.append(link)
    impostor = Impostor(evil / "agent.sock")
    return link / "agent.sock", impostor


def behind_a_symlink_to_a_private_dir(base: Path, litter: list[Path]) -> tuple[Path, Impostor]:
    """Only the symlink gives it away: directory and listener are root's."""
    real = base / "real"
    real.mkdir(mode=0o700)
    (base / "link").symlink_to(real)
    return base / "link" / "agent.sock", Impostor(real / "agent.sock", prefix=())


def in_a_world_writable_directory(base: Path, litter: list[Path]) -> tuple[Path, Impostor]:
    """Only the directory's mode gives it away: directory and listener are root's."""
    shared = base / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    return shared / "agent.sock", Impostor(shared / "agent.sock", prefix=())


def bound_before_the_chmod(base: Path, litter: list[Path]) -> tuple[Path, Impostor]:
    """Only the listener's uid gives it away: the directory is root's, 0755, by now."""
    directory = base / "sockdir"
    directory.mkdir()
    directory.chmod(0o777)
    impostor = Impostor(directory / "agent.sock")
    directory.chmod(0o755)
    return directory / "agent.sock", impostor


#: name -> (place, what the refusal must say, connections the client may make: 0 when the
#: directory alone gives the impostor away, 1 when only the listener's uid can).
PLACES: dict[str, tuple[Place, str, int]] = {
    "in its own directory": (in_its_own_directory, f"belongs to uid {NOBODY}", 0),
    "directly in /tmp": (directly_in_tmp, r"/tmp can be written by others \(mode 1777\)", 0),
    "behind its symlink in /tmp": (behind_its_symlink_in_tmp, "is a symlink", 0),
    "behind a symlink to a private dir": (behind_a_symlink_to_a_private_dir, "is a symlink", 0),
    "in a world-writable directory": (in_a_world_writable_directory, "written by others", 0),
    "bound before the chmod": (bound_before_the_chmod, f"runs as uid {NOBODY}", 1),
}


@pytest.fixture(params=list(PLACES))
def impostor(
    request: pytest.FixtureRequest, base: Path
) -> Iterator[tuple[Path, Impostor, str, int]]:
    litter: list[Path] = []
    place, reason, connections = PLACES[request.param]
    path, fake = place(base, litter)
    try:
        yield path, fake, reason, connections
    finally:
        fake.close()
        for leftover in litter:
            if leftover.is_symlink() or leftover.exists():
                leftover.unlink()


# -- the clients, each doing what would hand over a secret ----------------------------------


def sync_store(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with AgentClient(path, timeout=TIMEOUT) as client:
        client.store("openai", "api_key", BAIT)


def async_unlock(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def unlock() -> None:
        async with AsyncAgentClient(path, timeout=TIMEOUT) as client:
            await client.unlock(BAIT)

    asyncio.run(unlock())


def storage_store(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = AgentStorage(path, timeout=TIMEOUT)  # autostart on, as CredentialManager() has it
    try:
        storage.store("openai", "api_key", BAIT)
    finally:
        storage.close()


def keyring_set(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(SOCK_VAR, str(path))
    backend = AgentKeyring()
    keyring.set_keyring(backend)  # conftest puts the previous backend back
    try:
        keyring.set_password("service", "user", BAIT)
    finally:
        backend.close()


CLIENTS: dict[str, Callable[[Path, pytest.MonkeyPatch], None]] = {
    "sync client": sync_store,
    "asyncio client": async_unlock,
    "AgentStorage": storage_store,
    "keyring plugin": keyring_set,
}


def processes_naming(path: Path, but: int) -> list[int]:
    """Pids other than ``but`` and ours whose command line holds ``path``: an auto-started agent."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in (os.getpid(), but):
            continue
        try:
            if str(path).encode() in (entry / "cmdline").read_bytes():
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("client", list(CLIENTS))
def test_every_client_refuses_an_impostor_before_sending_a_byte(
    impostor: tuple[Path, Impostor, str, int], client: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, fake, reason, allowed_connections = impostor
    refusal: Exception | None = None
    try:
        CLIENTS[client](path, monkeypatch)
    except (UntrustedAgentError, keyring.errors.KeyringError) as err:
        refusal = err
    connections, received = fake.record()
    assert received == 0, f"the impostor received {received} bytes over {connections} connections"
    assert connections == allowed_connections
    expected = keyring.errors.KeyringError if client == "keyring plugin" else UntrustedAgentError
    assert isinstance(refusal, expected), refusal
    message = str(refusal)
    assert re.search(reason, message), message
    assert str(path.parent) in message, message
    assert "MODEL_FORGE_AGENT_SOCK" in message and "0700 directory of your own" in message, message
    # Never advise to loosen, tighten or delete a directory that may not be the user's.
    assert "chmod" not in message and "rm " not in message, message
    assert BAIT not in message
    assert processes_naming(path, but=fake.proc.pid) == [], "an agent was started anyway"


# -- the CLI's start and stop ------------------------------------------------------------------


def cli(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "--socket", str(path), *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=TIMEOUT,
    )


@pytest.fixture
def victim() -> Iterator[subprocess.Popen[bytes]]:
    """A process of ours that an impostor would like ``stop`` to kill."""
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    yield proc
    proc.kill()
    proc.wait(timeout=TIMEOUT)
    assert proc.stdin is not None
    proc.stdin.close()


def test_start_does_not_take_an_impostor_for_a_running_agent(base: Path) -> None:
    path, fake = bound_before_the_chmod(base, [])
    try:
        result = cli(path, "start")
        assert fake.record()[1] == 0
    finally:
        fake.close()
    assert result.returncode == 4, result
    assert "already running" not in result.stdout
    assert f"uid {NOBODY}" in result.stderr, result.stderr


def test_stop_does_not_signal_the_pid_an_impostor_reports(
    base: Path, victim: subprocess.Popen[bytes]
) -> None:
    directory = base / "sockdir"
    directory.mkdir()
    directory.chmod(0o777)
    fake = Impostor(directory / "agent.sock", reported_pid=victim.pid)
    directory.chmod(0o755)
    try:
        result = cli(directory / "agent.sock", "stop")
        assert fake.record()[1] == 0
    finally:
        fake.close()
    assert result.returncode == 4, result
    assert victim.poll() is None, "stop killed the process the impostor named"


def test_stop_does_not_signal_a_pid_that_does_not_hold_the_socket(
    base: Path, victim: subprocess.Popen[bytes]
) -> None:
    """A listener of our own uid that lies about its pid: only the pid check stops it."""
    real = base / "real"
    real.mkdir(mode=0o700)
    fake = Impostor(real / "agent.sock", prefix=(), reported_pid=victim.pid)
    try:
        result = cli(real / "agent.sock", "stop")
    finally:
        fake.close()
    assert victim.poll() is None, "stop killed a process that does not hold the socket"
    assert result.returncode == 4, result
    assert "does not hold" in result.stderr, result.stderr


# -- the real agent is still accepted -------------------------------------------------------


@pytest.fixture
def workspace() -> Iterator[AgentWorkspace]:
    ws = AgentWorkspace(dict(os.environ))
    yield ws
    ws.close()


def test_every_client_accepts_roots_own_agent(
    workspace: AgentWorkspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace.serve("--idle-timeout", "0")
    with AgentClient(workspace.socket) as client:
        assert client.hello()["protocol"] == 1
        client.store("openai", "api_key", "sk-own")

    async def fetch() -> str | None:
        async with AsyncAgentClient(workspace.socket) as client:
            return await client.retrieve("openai", "api_key")

    assert asyncio.run(fetch()) == "sk-own"
    storage = AgentStorage(workspace.socket, autostart=False)
    try:
        assert storage.retrieve("openai", "api_key") == "sk-own"
    finally:
        storage.close()
    monkeypatch.setenv(SOCK_VAR, str(workspace.socket))
    backend = AgentKeyring()
    try:
        backend.set_password("service", "user", "pw")
        assert backend.get_password("service", "user") == "pw"
    finally:
        backend.close()


_OWN_UID_CLIENT = r"""
import asyncio, sys
from modelforge_credentials.client.aio import AsyncAgentClient
from modelforge_credentials.client.sync import AgentClient

path = sys.argv[1]
with AgentClient(path) as client:
    client.store("openai", "api_key", "sk-nobody")
    print(client.retrieve("openai", "api_key"))

async def fetch():
    async with AsyncAgentClient(path) as client:
        return await client.retrieve("openai", "api_key")

print(asyncio.run(fetch()))
"""


@pytest.fixture
def nobody_agent(workspace: AgentWorkspace, as_nobody: None) -> tuple[Path, int, dict[str, str]]:
    """An agent run as uid 65534 in a home of its own: (socket, pid, env)."""
    workspace.base.chmod(0o711)
    home = nobody_dir(workspace.base / "nobody")
    env = {**workspace.env, "HOME": str(home), CONFIG_VAR: str(home / "config")}
    socket_path = home / "s" / "agent.sock"
    agent = workspace.serve(
        "--idle-timeout", "0", socket=socket_path, prefix=AS_NOBODY, env=env, log=home / "log"
    )
    return socket_path, agent.pid, env


def test_an_ordinary_uid_accepts_its_own_agent(
    nobody_agent: tuple[Path, int, dict[str, str]],
) -> None:
    socket_path, _, env = nobody_agent
    result = subprocess.run(
        [*AS_NOBODY, sys.executable, "-c", _OWN_UID_CLIENT, str(socket_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["sk-nobody", "sk-nobody"]


def test_root_refuses_an_agent_of_another_uid(
    nobody_agent: tuple[Path, int, dict[str, str]],
) -> None:
    socket_path, _, _ = nobody_agent
    with pytest.raises(UntrustedAgentError, match=rf"belongs to uid {NOBODY}\b"):
        AgentClient(socket_path).hello()


# -- stop's pid check ------------------------------------------------------------------------


def test_stop_may_signal_the_agent_that_holds_the_socket(workspace: AgentWorkspace) -> None:
    agent = workspace.serve("--idle-timeout", "0")
    assert agent_pid_to_signal(str(workspace.socket), agent.pid) == agent.pid


def test_stop_refuses_a_pid_that_does_not_hold_the_socket(
    workspace: AgentWorkspace, victim: subprocess.Popen[bytes]
) -> None:
    workspace.serve("--idle-timeout", "0")
    with pytest.raises(UntrustedAgentError, match="does not hold") as caught:
        agent_pid_to_signal(str(workspace.socket), victim.pid)
    assert str(workspace.socket) in str(caught.value)
    assert "nothing was signalled" in str(caught.value)


def test_stop_refuses_an_agent_that_holds_another_socket(workspace: AgentWorkspace) -> None:
    workspace.serve("--idle-timeout", "0")
    other = workspace.serve("--idle-timeout", "0", socket=workspace.base / "other" / "agent.sock")
    with pytest.raises(UntrustedAgentError, match="does not hold"):
        agent_pid_to_signal(str(workspace.socket), other.pid)


def test_stop_refuses_a_pid_of_another_uid(workspace: AgentWorkspace, as_nobody: None) -> None:
    workspace.serve("--idle-timeout", "0")
    with process_of_nobody() as theirs:
        with pytest.raises(UntrustedAgentError, match=rf"runs as uid {NOBODY}\b"):
            agent_pid_to_signal(str(workspace.socket), theirs)


@pytest.mark.parametrize("reported", [None, "123", True, 0, 1, -7, 2**40])
def test_stop_refuses_a_pid_that_is_no_pid(workspace: AgentWorkspace, reported: object) -> None:
    workspace.serve("--idle-timeout", "0")
    with pytest.raises(UntrustedAgentError, match="nothing was signalled"):
        agent_pid_to_signal(str(workspace.socket), reported)


_NOBODY_STOP_CHECK = r"""
import os, sys
from modelforge_credentials.client.peer import agent_pid_to_signal
from modelforge_credentials.errors import UntrustedAgentError

path, agent_pid, other_pid = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
try:
    os.listdir(f"/proc/{agent_pid}/fd")
except PermissionError:
    print("fd-private")  # the agent is not dumpable: the check must do without /proc/PID/fd
print(agent_pid_to_signal(path, agent_pid) == agent_pid)
try:
    agent_pid_to_signal(path, other_pid)
except UntrustedAgentError as err:
    print("refused:", err)
"""


def test_stop_check_works_for_an_ordinary_uid(
    nobody_agent: tuple[Path, int, dict[str, str]],
) -> None:
    socket_path, pid, env = nobody_agent
    with process_of_nobody() as other:
        result = subprocess.run(
            [*AS_NOBODY, sys.executable, "-c", _NOBODY_STOP_CHECK]
            + [str(socket_path), str(pid), str(other)],
            capture_output=True,
            text=True,
            env=env,
            timeout=TIMEOUT,
        )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["fd-private", "True"], result.stdout
    assert lines[2].startswith("refused:") and "nothing was signalled" in lines[2], lines
