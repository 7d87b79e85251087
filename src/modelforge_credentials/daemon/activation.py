"""Sockets and readiness from service managers: systemd and launchd.

systemd: ``LISTEN_PID``/``LISTEN_FDS`` name fds from 3 (sd_listen_fds), and
``NOTIFY_SOCKET`` takes ``READY=1``/``STOPPING=1`` datagrams (sd_notify).
launchd: ``launch_activate_socket`` hands over the sockets of a plist's
``Sockets`` entry; the ctypes call sits in :func:`_launch_activate_socket`,
the one function that only runs on macOS.
"""

from __future__ import annotations

import ctypes
import os
import socket
import sys

SD_LISTEN_FDS_START = 3
LAUNCHD_SOCKET_NAME = "Listener"


def systemd_sockets(unset_environment: bool = True) -> list[socket.socket]:
    """Listening sockets passed by systemd to this process, if any."""
    try:
        pid = int(os.environ.get("LISTEN_PID", ""))
        count = int(os.environ.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    if unset_environment:
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(name, None)
    if pid != os.getpid() or count <= 0:
        return []
    sockets = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        os.set_inheritable(fd, False)
        sockets.append(socket.socket(fileno=fd))
    return sockets


def sd_notify(state: str) -> bool:
    """Send ``state`` to ``$NOTIFY_SOCKET``; False when there is none."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        sock.connect(address)
        sock.sendall(state.encode("ascii"))
    return True


def _launch_activate_socket(name: str) -> list[int]:
    """The fds launchd holds for the plist's ``Sockets`` entry ``name``."""
    libc = ctypes.CDLL("/usr/lib/libSystem.B.dylib", use_errno=True)
    fds = ctypes.POINTER(ctypes.c_int)()
    count = ctypes.c_size_t(0)
    err = libc.launch_activate_socket(name.encode(), ctypes.byref(fds), ctypes.byref(count))
    if err != 0:
        raise OSError(err, os.strerror(err))
    try:
        return [fds[i] for i in range(count.value)]
    finally:
        libc.free(fds)


def launchd_sockets(activate=_launch_activate_socket) -> list[socket.socket]:  # type: ignore[no-untyped-def]
    """Sockets from launchd when running under it on macOS, else ``[]``."""
    if sys.platform != "darwin" or "XPC_SERVICE_NAME" not in os.environ:
        return []
    try:
        fds = activate(LAUNCHD_SOCKET_NAME)
    except OSError:
        return []
    return [socket.socket(fileno=fd) for fd in fds]
