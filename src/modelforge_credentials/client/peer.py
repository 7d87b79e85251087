"""Is the socket the user's own agent? Decided before a single byte is sent.

Whoever can create the socket path first (MODEL_FORGE_AGENT_SOCK in /tmp, or
in a directory others can write) could otherwise answer as the agent: receive
stored values and unlock passphrases, call itself "already running", and
have ``stop`` signal any pid it names. So both clients check the directory
before connecting and the listener's uid, from the kernel, right after; the
agent does the same to its clients. ``stop`` signals only a pid that holds
the listening socket.

Imports only what the thin client has loaded already: its start-up time is
part of every ``modelforge-agent get``.
"""

from __future__ import annotations

import _socket  # not socket: see sync.py
import os
import stat
import struct
import sys

from ..errors import UntrustedAgentError

#: The way out of every refusal, for the clients and the agent alike. Never "chmod" or
#: "rm" a directory that may not be the user's (/tmp, another uid's).
PRIVATE_SOCKET_ADVICE = (
    "choose a private socket path: MODEL_FORGE_AGENT_SOCK=$XDG_RUNTIME_DIR/model-forge/"
    "agent.sock (the default when it is unset), or a socket in a 0700 directory of your own"
)

_ROOT = 0
# Linux: struct ucred {pid_t pid; uid_t uid; gid_t gid;}.
_UCRED = struct.Struct("=iII")
# macOS and the BSDs: level SOL_LOCAL (0); struct xucred {u_int cr_version; uid_t cr_uid;
# short cr_ngroups; gid_t cr_groups[16];}, 76 bytes; LOCAL_PEERPID is macOS only.
_SOL_LOCAL = 0
_LOCAL_PEERCRED = 0x001
_LOCAL_PEERPID = 0x002
_XUCRED_SIZE = 76
_XUCRED_VERSION = 0
# /proc/net/unix: __SO_ACCEPTCON in the Flags column marks a listening socket.
_SO_ACCEPTCON = 0x10000


def check_socket_directory(path: str) -> None:
    """Refuse a socket path that another uid could have prepared.

    Its directory must be the user's (or root's, for a system runtime dir),
    writable by nobody else, and not a symlink; the socket not a symlink
    either. The listener check alone would accept any server run by root, and
    whoever can write the directory can swap the socket before a reconnect.
    An absent directory or socket passes: connecting then reports that no
    agent runs, so auto-start can create them.
    """
    directory = os.path.dirname(path) or "."
    euid = os.geteuid()
    try:
        info = os.lstat(directory)
    except OSError:
        return  # absent or unreachable: connect() says which, and nothing is sent
    if stat.S_ISLNK(info.st_mode):
        raise UntrustedAgentError(
            f"the socket directory {directory} is a symlink, which may lead to another "
            f"user's directory; nothing was sent to it; {PRIVATE_SOCKET_ADVICE}"
        )
    if info.st_uid not in (euid, _ROOT):
        raise UntrustedAgentError(
            f"the socket directory {directory} belongs to uid {info.st_uid}, not to you "
            f"(uid {euid}) or root, so its socket may not be your agent; nothing was sent "
            f"to it; {PRIVATE_SOCKET_ADVICE}"
        )
    if info.st_mode & 0o022:
        raise UntrustedAgentError(
            f"the socket directory {directory} can be written by others (mode "
            f"{stat.S_IMODE(info.st_mode):o}), so anyone could have put a socket there "
            f"first; nothing was sent to it; {PRIVATE_SOCKET_ADVICE}"
        )
    try:
        is_link = stat.S_ISLNK(os.lstat(path).st_mode)
    except OSError:
        return
    if is_link:
        raise UntrustedAgentError(
            f"the socket {path} is a symlink, which may lead to another user's socket; "
            f"nothing was sent to it; {PRIVATE_SOCKET_ADVICE}"
        )


def listener_credentials(sock: _socket.socket) -> tuple[int, int | None]:
    """(uid, pid or None) of the process that made the peer listen, from the kernel."""
    if sys.platform.startswith("linux"):
        pid, uid, _ = _UCRED.unpack(
            sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, _UCRED.size)
        )
        return uid, pid
    if sys.platform == "darwin" or "bsd" in sys.platform:
        creds = sock.getsockopt(_SOL_LOCAL, _LOCAL_PEERCRED, _XUCRED_SIZE)
        version, uid = struct.unpack_from("=II", creds)
        if version != _XUCRED_VERSION:
            raise OSError(f"unknown struct xucred version {version}")
        pid = None
        if sys.platform == "darwin":
            (pid,) = struct.unpack("=i", sock.getsockopt(_SOL_LOCAL, _LOCAL_PEERPID, 4))
        return uid, pid
    raise OSError(f"no way to ask the kernel for a socket peer's uid on {sys.platform}")


def check_listener(sock: _socket.socket, path: str) -> None:
    """Refuse a connected socket whose listener is neither this user nor root."""
    euid = os.geteuid()
    try:
        uid, _ = listener_credentials(sock)
    except OSError as err:
        raise UntrustedAgentError(
            f"cannot tell who listens on {path} ({err}); nothing was sent to it"
        ) from None
    if uid not in (euid, _ROOT):
        raise UntrustedAgentError(
            f"the process listening on {path} runs as uid {uid}, not as you (uid {euid}) "
            f"or root, so it is not your agent; nothing was sent to it; "
            f"{PRIVATE_SOCKET_ADVICE}"
        )


# -- stop ---------------------------------------------------------------------------------


def agent_pid_to_signal(socket_path: str, reported_pid: object) -> int:
    """``reported_pid`` (from the agent's status) if ``stop`` may SIGTERM it.

    Only a process of this user that holds the listening socket at
    ``socket_path`` qualifies; otherwise :class:`UntrustedAgentError` says why
    and what to do. The pid is a claim made over the socket, so it is checked
    against the kernel's view of who holds that socket. Sends no signal.
    """
    path = os.fspath(socket_path)
    if type(reported_pid) is not int or not 1 < reported_pid < 2**31:
        raise UntrustedAgentError(
            f"the agent at {path} reported no usable pid; nothing was signalled; stop it "
            "with the service manager that started it"
        )
    pid = reported_pid
    if sys.platform.startswith("linux"):
        _check_owner_linux(path, pid)
        if _holds_listener_linux(path, pid):
            return pid
    elif _listener_pid(path) == pid:  # macOS: LOCAL_PEERPID, from a listener of our uid
        return pid
    raise UntrustedAgentError(
        f"pid {pid}, which the agent at {path} reported, does not hold the socket "
        "listening there; nothing was signalled; if a service manager started the agent, "
        "stop it with that (systemctl --user stop, launchctl), else find the process "
        "listening on the socket (`ss -xlp` on Linux, `lsof -U` on macOS) and stop that"
    )


def _check_owner_linux(path: str, pid: int) -> None:
    """Refuse a pid whose real or effective uid is not ours."""
    euid = os.geteuid()
    uids: list[int] = []
    try:
        # status stays readable when the agent is not dumpable (its /proc/PID/fd is not).
        with open(f"/proc/{pid}/status", "rb") as handle:
            for line in handle:
                if line.startswith(b"Uid:"):
                    uids = [int(field) for field in line.split()[1:3]]  # real, effective
                    break
    except OSError:
        raise UntrustedAgentError(
            f"pid {pid}, which the agent at {path} reported, is not running; nothing was "
            "signalled; check `modelforge-agent status`"
        ) from None
    others = sorted(set(uids) - {euid})
    if len(uids) != 2 or others:
        shown = others[0] if others else "unknown"
        raise UntrustedAgentError(
            f"pid {pid}, which the agent at {path} reported, runs as uid {shown}, not as "
            f"you (uid {euid}); nothing was signalled; if that agent is a system service, "
            f"stop it with its service manager, else {PRIVATE_SOCKET_ADVICE}"
        )


def _holds_listener_linux(path: str, pid: int) -> bool:
    fd_dir = f"/proc/{pid}/fd"
    names: list[str] | None
    try:
        names = os.listdir(fd_dir)
    except PermissionError:
        names = None  # a non-dumpable agent's fd links are root's, even for its own user
    except FileNotFoundError:
        return False
    inodes = _listening_inodes(path)
    if names is None or not inodes:
        # The kernel's record of the process that made the socket listen: the agent
        # itself, unless a service manager did (then use that manager to stop it).
        return _listener_pid(path) == pid
    for name in names:
        try:
            link = os.readlink(f"{fd_dir}/{name}")
        except OSError:
            continue
        if link.startswith("socket:[") and link[8:-1] in inodes:
            return True
    return False


def _listening_inodes(path: str) -> set[str]:
    """Socket inodes of the listening Unix sockets bound at ``path`` (in /proc/net/unix)."""
    found: set[str] = set()
    try:
        target = os.stat(path)
        with open("/proc/net/unix", "rb") as table:
            lines = table.read().splitlines()[1:]  # after the header
    except OSError:
        return found
    name = os.path.basename(path)
    for line in lines:
        # Num RefCount Protocol Flags Type St Inode Path; a path may hold spaces.
        fields = line.split(maxsplit=7)
        if len(fields) < 8 or not int(fields[3], 16) & _SO_ACCEPTCON:
            continue
        # The table has the path as the agent gave it to bind(), perhaps spelled
        # otherwise: the file's identity decides, the name only spares stat calls.
        bound = os.fsdecode(fields[7])
        if bound != path and os.path.basename(bound) != name:
            continue
        try:
            info = os.stat(bound)
        except OSError:
            continue
        if (info.st_dev, info.st_ino) == (target.st_dev, target.st_ino):
            found.add(fields[6].decode())
    return found


def _listener_pid(path: str) -> int | None:
    """The pid the kernel recorded for the socket's listener if it is of our uid.

    Connecting sends nothing; the agent sees a connection close unused.
    """
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(5.0)
        sock.connect(path)
        uid, pid = listener_credentials(sock)
    except OSError:
        return None
    finally:
        sock.close()
    return pid if uid == os.geteuid() else None
