"""The agent's place on disk: a private directory, one socket, one owner.

The directory is created 0700 in the mkdir call (never chmod-ed after the
fact) and refused when it is a symlink, owned by someone else or open to
group or others. An flock on ``agent.lock`` beside the socket makes "one
agent per socket" hold even when two agents start at the same instant; the
socket file alone cannot, since "stale" and "about to be bound" look alike.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import socket
import stat
from pathlib import Path

from .. import settings
from ..client.peer import PRIVATE_SOCKET_ADVICE
from ..errors import CredentialStorageUnavailableError


class AgentRuntimeError(CredentialStorageUnavailableError):
    """The agent cannot take its socket; the message says how to fix it."""


class AlreadyRunningError(AgentRuntimeError):
    """Another agent already serves this socket."""


#: Directories every user shares or the system owns: advice never says to chmod or
#: remove one. Root owns them, so for root, ownership cannot tell them from its own.
SYSTEM_DIRS = frozenset(
    {
        "/", "/tmp", "/var/tmp", "/dev", "/dev/shm", "/run", "/run/user", "/var", "/var/run",
        "/usr", "/etc", "/home", "/opt", "/srv", "/mnt", "/media",
        "/private", "/private/tmp", "/private/var", "/private/var/tmp", "/Users", "/Volumes",
    }
)  # fmt: skip


def _yours_to_change(path: Path, info: os.stat_result) -> bool:
    """Whether advice may say to chmod or remove ``path``: the user's own entry, not a
    sticky directory others share (/tmp), not a system directory (or a link to one)."""
    if info.st_uid != os.getuid() or info.st_mode & stat.S_ISVTX:
        return False
    return not {os.path.abspath(path), os.path.realpath(path)} & SYSTEM_DIRS


def check_private_dir(path: Path, *, create: bool = True) -> None:
    """Make sure ``path`` is a directory only the current user can use.

    The message's advice after its first ``;`` (doctor shows it as the fix)
    changes or removes ``path`` only when it is the user's own; otherwise it
    says to choose a private socket path.
    """
    uid = os.getuid()
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        if not create:
            raise
        parent = path.parent
        if not parent.is_dir():
            raise AgentRuntimeError(
                f"the runtime directory {parent} does not exist; set XDG_RUNTIME_DIR "
                "to a private directory, or MODEL_FORGE_AGENT_SOCK to a socket path in one"
            ) from None
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as err:
            raise AgentRuntimeError(
                f"cannot create {path}: {err.strerror}; {PRIVATE_SOCKET_ADVICE}"
            ) from err
        info = os.lstat(path)
    yours = _yours_to_change(path, info)
    elsewhere = f"leave {path} as it is and {PRIVATE_SOCKET_ADVICE}"
    remove = (
        f"remove it (rm -r {path}) so the agent can create it, or {PRIVATE_SOCKET_ADVICE}"
        if yours
        else elsewhere
    )
    if stat.S_ISLNK(info.st_mode):
        raise AgentRuntimeError(f"the socket directory {path} is a symlink; {remove}")
    if not stat.S_ISDIR(info.st_mode):
        raise AgentRuntimeError(f"the socket directory {path} is not a directory; {remove}")
    if info.st_uid != uid:
        raise AgentRuntimeError(
            f"the socket directory {path} belongs to uid {info.st_uid}, not to you "
            f"(uid {uid}); {elsewhere}"
        )
    if info.st_mode & 0o077:
        mode = stat.S_IMODE(info.st_mode)
        if not yours:
            kind = "shared by every user" if mode & stat.S_ISVTX else "a system directory"
            raise AgentRuntimeError(
                f"the socket directory {path} (mode {mode:o}) is {kind}, open to others; "
                f"{elsewhere}"
            )
        raise AgentRuntimeError(
            f"the socket directory {path} has mode {mode:o}, open to group or others; "
            f"run `chmod 700 {path}` or {PRIVATE_SOCKET_ADVICE}"
        )


def probe_socket(path: Path, timeout: float = 1.0) -> bool:
    """True when something accepts connections on ``path``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
    except OSError:
        return False
    finally:
        sock.close()
    return True


class RuntimeDir:
    """Owns the socket directory, the instance lock and the socket file."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.directory = socket_path.parent
        self.lock_path = self.directory / (socket_path.name + ".lock")
        self._lock_fd: int | None = None
        self._socket_ino: int | None = None

    def acquire(self) -> None:
        """Check the directory and take the instance lock."""
        check_private_dir(self.directory)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AlreadyRunningError(
                f"an agent is already running on {self.socket_path}; use it "
                "(`modelforge-agent status`) or stop it (`modelforge-agent stop`)"
            ) from None
        self._lock_fd = fd

    def bind(self) -> socket.socket:
        """A listening socket at the path (mode 0600), replacing a stale one."""
        assert self._lock_fd is not None, "acquire() first"
        path = self.socket_path
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISSOCK(info.st_mode):
                raise AgentRuntimeError(
                    f"{path} exists and is not a socket; move it away or set "
                    f"{settings.SOCKET} to another path"
                )
            if probe_socket(path):
                raise AlreadyRunningError(
                    f"another process answers on {path}; stop it or choose another "
                    f"{settings.SOCKET}"
                )
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # The mode is fixed at bind time through the umask, so the socket is
        # never reachable by others, not even for an instant.
        old_umask = os.umask(0o177)
        try:
            sock.bind(str(path))
        except OSError as err:
            sock.close()
            if err.errno == errno.ENAMETOOLONG or "too long" in str(err):
                raise AgentRuntimeError(
                    f"the socket path {path} is too long for a Unix socket; set "
                    "MODEL_FORGE_AGENT_SOCK to a shorter path"
                ) from err
            raise AgentRuntimeError(f"cannot bind {path}: {err.strerror or err}") from err
        finally:
            os.umask(old_umask)
        sock.listen(128)
        self._socket_ino = os.stat(path).st_ino
        return sock

    def adopt(self, sock: socket.socket) -> None:
        """Remember a socket handed over by a service manager (not removed on exit)."""
        self._socket_ino = None

    def release(self) -> None:
        """Remove our socket file (only if it is still ours) and drop the lock."""
        if self._socket_ino is not None:
            with contextlib.suppress(OSError):
                if os.stat(self.socket_path).st_ino == self._socket_ino:
                    os.unlink(self.socket_path)
            self._socket_ino = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
