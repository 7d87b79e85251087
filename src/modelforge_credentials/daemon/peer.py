"""What the kernel says about a connected client: who it is, what it sent."""

from __future__ import annotations

import asyncio
import fcntl
import socket
import struct
import sys
import termios


def peer_credentials(sock: socket.socket) -> tuple[int | None, int | None]:
    """The connecting process's (pid, uid) from the kernel, never from the client."""
    if sys.platform.startswith("linux"):
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _ = struct.unpack("3i", creds)
        return int(pid), int(uid)
    if sys.platform == "darwin" or "bsd" in sys.platform:
        # struct xucred { u_int cr_version; uid_t cr_uid; ... } via LOCAL_PEERCRED.
        local_peercred = 0x001
        creds = sock.getsockopt(0, local_peercred, 76)
        return None, int(struct.unpack_from("=I", creds, 4)[0])
    return None, None


def unread_bytes(transport: asyncio.Transport) -> int:
    """Bytes the peer sent that the kernel holds and we have not read yet."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        unread = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return 0
    return int.from_bytes(unread, sys.byteorder)
