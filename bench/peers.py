"""The processes the benchmarks talk to, each in its own private directory.

An agent (encrypted file or keyring backend), the floor server, OpenSSH's
ssh-agent and gnome-keyring's Secret Service. None of them sees the real
home directory, runtime directory, session bus or keyring: every environment
is built from scratch paths. A peer whose programs are missing raises
:class:`PeerUnavailable` with the reason; ``install_missing`` installs them
with apt-get when the caller allows it.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import msgpack

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
START_TIMEOUT = 30.0

# Debian packages that provide each peer's programs.
APT_PACKAGES = {
    "ssh-agent": "openssh-client",
    "dbus-daemon": "dbus-daemon",
    "gnome-keyring-daemon": "gnome-keyring",
    "secret-tool": "libsecret-tools",
}

# Variables of the caller's session that must not reach a peer.
_PRIVATE_VARIABLES = (
    "MODEL_FORGE_AGENT_SOCK",
    "MODEL_FORGE_BACKEND",
    "MODEL_FORGE_CONFIG_DIR",
    "DBUS_SESSION_BUS_ADDRESS",
    "GNOME_KEYRING_CONTROL",
    "SSH_AUTH_SOCK",
    "SSH_AGENT_PID",
    "PYTHON_KEYRING_BACKEND",
)


def load_by_path(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_realpeers = load_by_path("mf_bench_realpeers", ROOT / "tests" / "realpeers.py")
PeerUnavailable = _realpeers.PeerUnavailable


def missing_programs() -> list[str]:
    return [program for program in APT_PACKAGES if shutil.which(program) is None]


def missing_program(program: str) -> str | None:
    """Why ``program`` (a key of APT_PACKAGES) cannot run, or None."""
    if shutil.which(program) is None:
        return f"{program} is not installed (Debian: {APT_PACKAGES[program]}; use --install-peers)"
    return None


def install_missing() -> str | None:
    """apt-get install the missing peers; the error text, or None on success."""
    needed = sorted({APT_PACKAGES[p] for p in missing_programs()})
    if not needed:
        return None
    print(f"installing peers with apt-get: {' '.join(needed)}", flush=True)
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, timeout=600)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *needed],
            env=env,
            check=True,
            timeout=900,
            stdout=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError) as err:
        return f"apt-get install {' '.join(needed)} failed: {err}"
    return None


def use_bytecode_cache(directory: Path) -> None:
    """Let this process's children cache bytecode, under ``directory``.

    Installed code runs from compiled bytecode; a child that recompiled every
    changed module on each start (PYTHONDONTWRITEBYTECODE with stale caches)
    would make start-up rows measure the compiler. The prefix keeps the
    caches out of the source tree.
    """
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(directory)


def private_env(root: Path, **extra: str) -> dict[str, str]:
    """An environment rooted in ``root``: home, runtime and config dirs of its own."""
    env = {k: v for k, v in os.environ.items() if k not in _PRIVATE_VARIABLES}
    home, runtime = root / "home", root / "run"
    for directory in (home, runtime):
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    env.update(
        HOME=str(home),
        XDG_RUNTIME_DIR=str(runtime),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_DATA_HOME=str(home / ".local" / "share"),
        XDG_CACHE_HOME=str(home / ".cache"),
        PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
    )
    env.update(extra)
    return env


@contextlib.contextmanager
def environ(env: dict[str, str]) -> Iterator[None]:
    """Run a block of this process with ``env`` as its whole environment."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def _read_line(fd: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", "replace").strip()


def _wait_connectable(path: Path, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with status {proc.returncode}")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(str(path))
                return
            except OSError:
                pass
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on {path} after {timeout:.0f} s")


class Peer:
    """A server process on a Unix socket."""

    name = "peer"

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.socket = Path()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None


class AgentPeer(Peer):
    """``modelforge-agent serve`` on a private socket and config directory."""

    name = "agent"

    def __init__(self, root: Path, *, config_dir: Path | None = None, **env: str) -> None:
        super().__init__()
        self.root = root
        self.config_dir = config_dir or root / "config"
        self.socket = root / "run" / "model-forge" / "agent.sock"
        self.env = private_env(root, MODEL_FORGE_CONFIG_DIR=str(self.config_dir), **env)

    def start(self, *extra: str) -> AgentPeer:
        read_end, write_end = os.pipe()
        command = [
            sys.executable,
            "-m",
            "modelforge_credentials.cli",
            "--socket",
            str(self.socket),
            "serve",
            "--ready-fd",
            str(write_end),
            *extra,
        ]
        log = open(self.root / "agent.log", "ab")  # noqa: SIM115
        try:
            self.proc = subprocess.Popen(
                command,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                pass_fds=(write_end,),
            )
        finally:
            os.close(write_end)
            log.close()
        try:
            message = _read_line(read_end, START_TIMEOUT)
        finally:
            os.close(read_end)
        if message != "ready":
            self.stop()
            tail = (self.root / "agent.log").read_text(errors="replace")[-400:]
            raise RuntimeError(f"the agent did not start ({message!r}): {tail}")
        return self


class FloorPeer(Peer):
    """bench/floor_server.py answering retrieves from a dict."""

    name = "floor"

    def __init__(self, root: Path, credentials: dict[str, dict[str, str]]) -> None:
        super().__init__()
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.socket = root / "floor.sock"
        self.credentials = credentials
        self.env = private_env(root)

    def start(self) -> FloorPeer:
        self.proc = subprocess.Popen(
            [sys.executable, str(BENCH / "floor_server.py"), str(self.socket)],
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(msgpack.packb(self.credentials))
        self.proc.stdin.close()
        line = _read_line(self.proc.stdout.fileno(), START_TIMEOUT)
        if line != "ready":
            self.stop()
            raise RuntimeError(f"the floor server did not start ({line!r})")
        return self


class SshAgentPeer(Peer):
    """OpenSSH's ssh-agent in the foreground (-D) on a private socket, no keys."""

    name = "ssh-agent"

    def __init__(self, root: Path) -> None:
        super().__init__()
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.socket = root / "ssh-agent.sock"
        self.env = private_env(root)

    @staticmethod
    def missing() -> str | None:
        return missing_program("ssh-agent")

    def start(self) -> SshAgentPeer:
        why = self.missing()
        if why:
            raise PeerUnavailable(why)
        self.proc = subprocess.Popen(
            ["ssh-agent", "-D", "-a", str(self.socket)],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_connectable(self.socket, self.proc, START_TIMEOUT)
        return self


class IdlePythonPeer(Peer):
    """The venv's python doing nothing: ``python -c`` blocked reading stdin.

    The smallest resident set a Python process of this venv has, for
    comparing the agent's memory with. It prints ``ready`` once it blocks.
    """

    name = "idle python"
    CODE = "import sys; print('ready', flush=True); sys.stdin.read()"

    def __init__(self, env: dict[str, str]) -> None:
        super().__init__()
        self.env = env

    def start(self) -> IdlePythonPeer:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self.CODE],
            env=self.env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.proc.stdout is not None
        line = _read_line(self.proc.stdout.fileno(), START_TIMEOUT)
        if line != "ready":
            self.stop()
            raise RuntimeError(f"python -c did not start ({line!r})")
        return self

    def stop(self) -> None:
        if self.proc is not None:
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None:
                    pipe.close()  # end of input: it exits on its own
        super().stop()


class SecretServicePeer:
    """gnome-keyring's Secret Service on its own D-Bus session bus."""

    name = "secret-service"

    def __init__(self, root: Path) -> None:
        self.session = _realpeers.SecretServiceSession(root)
        self.env: dict[str, str] = {}

    @staticmethod
    def missing() -> str | None:
        why = _realpeers.SecretServiceSession.missing()
        return f"{why}; use --install-peers" if why else None

    def start(self) -> SecretServicePeer:
        self.env = self.session.start()
        return self

    def client_env(self, **extra: str) -> dict[str, str]:
        """A whole environment for a process that should use this keyring only."""
        env = {k: v for k, v in os.environ.items() if k not in _PRIVATE_VARIABLES}
        env.update(self.env)
        env["PYTHON_KEYRING_BACKEND"] = "keyring.backends.SecretService.Keyring"
        env.update(extra)
        return env

    def pids(self) -> list[int]:
        return [proc.pid for proc in self.session._procs if proc.poll() is None]

    def stop(self) -> None:
        self.session.stop()
