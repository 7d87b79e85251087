"""The agent's socket server: asyncio Protocols over the shared frame codec.

A Protocol (not the streams API) because the hot path is one small frame in,
one small frame out: answering a cache hit inside ``data_received`` costs no
task, no future and no extra copy. Replies leave in request order; a request
that needs the backend parks the connection's later requests until it is
answered, while other connections go on.

What one connection may hold is bounded: a few dozen frames answered per
loop turn (fairness), replies no further than the write high-water mark
past what the peer has read (memory), and a slot in the connection table
that a new connection takes over once this one is idle, mid-frame, or not
reading its replies.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import socket
import struct
import sys
import termios
from collections.abc import Callable
from typing import Any

import msgpack  # type: ignore[import-untyped]

from ..protocol import (
    BAD_REQUEST,
    HEADER_SIZE,
    INTERNAL,
    TOO_LARGE,
    EncodeError,
    FrameDecoder,
    FrameError,
    FrameTooLarge,
    Request,
    RequestError,
    encode_frame,
    error_reply,
    parse_request,
    peek_retrieve,
)
from .audit import AuditLog
from .state import MISS, Agent

log = logging.getLogger("modelforge_credentials.agent")


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


def _encode(reply: dict[str, object]) -> bytes:
    """Frame ``reply``; one over the frame limit becomes a ``too_large`` failure."""
    try:
        return encode_frame(reply)
    except FrameTooLarge:
        return encode_frame(
            error_reply(
                _reply_id(reply),
                TOO_LARGE,
                "the reply would exceed the 1 MiB frame limit; narrow the request "
                "(e.g. `list PROVIDER`)",
            )
        )
    except EncodeError as err:
        log.error("cannot encode a reply: %s", err.message)
        return encode_frame(
            error_reply(_reply_id(reply), INTERNAL, "the reply could not be encoded")
        )


def _reply_id(reply: dict[str, object]) -> int | None:
    request_id = reply.get("id")
    return request_id if isinstance(request_id, int) else None


class _Fatal:
    """A failure reply after which the connection closes."""

    __slots__ = ("reply",)

    def __init__(self, reply: dict[str, object]) -> None:
        self.reply = reply

    @classmethod
    def for_error(cls, err: FrameError) -> _Fatal:
        # The frame's id is unknowable once framing failed: id nil.
        return cls(error_reply(None, err.code or BAD_REQUEST, str(err)))


Item = Request | _Fatal | dict[str, object]

_pack = msgpack.Packer(use_bin_type=True, autoreset=True, datetime=False).pack

#: Frames answered per event-loop turn before other connections get a go.
FRAMES_PER_TURN = 32
#: Replies buffered for a peer that does not read before we stop answering
#: and reading it; one reply (at most a frame) may cross it.
WRITE_HIGH_WATER = 256 * 1024


def _unread_bytes(transport: asyncio.Transport) -> int:
    """Bytes the peer sent that the kernel holds and we have not read yet."""
    sock = transport.get_extra_info("socket")
    if sock is None:
        return 0
    try:
        unread = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except OSError:
        return 0
    return int.from_bytes(unread, sys.byteorder)


class AgentConnection(asyncio.Protocol):
    """One client. Frames are pulled from the decoder only as fast as they
    are answered: a burst, a slow backend call, or a peer that does not read
    its replies pauses reading instead of piling up requests or replies."""

    def __init__(self, server: AgentServer) -> None:
        self.server = server
        self.agent = server.agent
        self.decoder = FrameDecoder()
        self.transport: asyncio.Transport | None = None
        self.busy = False  # a slow (backend) request is in flight
        self.write_paused = False
        self.eof = False
        self.closing = False
        self.frames_done = 0
        self.last_seen = 0.0
        self._fatal: _Fatal | None = None
        self._scheduled = False
        self._reading = True
        self._deadline: asyncio.TimerHandle | None = None
        self._frame_began: float | None = None  # the agent's clock, while a frame is unfinished
        self.peer_pid: int | None = None
        self.peer_uid: int | None = None
        self._peer_exe: str | None = None

    # -- asyncio callbacks ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        pid, uid = peer_credentials(sock) if sock is not None else (None, None)
        self.peer_pid, self.peer_uid = pid, uid
        if uid is None or uid not in self.server.allowed_uids:
            log.warning("refused a connection from uid %s", uid)
            self.closing = True
            transport.abort()
            return
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.last_seen = self.server.clock()
        self.server.register(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self._cancel_deadline()
        self.server.unregister(self)

    def data_received(self, data: bytes) -> None:
        if self.closing or self._fatal is not None:
            return
        self.last_seen = self.server.clock()
        if (
            not (self.busy or self.write_paused or self.eof or self.decoder.pending_bytes)
            and self.server.audit is None
        ):
            reply = self._cached_retrieve(data)
            if reply is not None:
                assert self.transport is not None
                self.transport.write(reply)
                self.frames_done += 1
                return
        try:
            self.decoder.feed(data)
        except FrameError as err:
            self._fatal = _Fatal.for_error(err)
        self._pump()

    def _cached_retrieve(self, data: bytes) -> bytes | None:
        """The reply to a lone cached ``retrieve`` frame, or None.

        The one request a tool sends on every call, answered without the
        decoder's buffer, the Request object or the generic dispatch:
        measured, these were most of the agent's time per request. The
        protocol's peek applies the general checks; whatever it does not
        take, and every cache miss, goes the general way.
        """
        peeked = peek_retrieve(data)
        if peeked is None:
            return None
        request_id, provider, key = peeked
        found = self.agent.cached(provider, key)
        if found is MISS:
            return None
        body: bytes = _pack({"id": request_id, "ok": True, "value": found})
        return len(body).to_bytes(HEADER_SIZE, "big") + body

    def eof_received(self) -> bool:
        # The peer finished sending; every complete frame still gets its
        # reply before we close (True keeps our side open for writing).
        self.eof = True
        self._pump()
        return True

    def pause_writing(self) -> None:
        self.write_paused = True
        self._set_reading(False)

    def resume_writing(self) -> None:
        self.write_paused = False
        self.last_seen = self.server.clock()  # the peer reads: it is alive
        self._schedule()

    # -- the pump -----------------------------------------------------------------

    def _next_item(self) -> Item | None:
        try:
            message = self.decoder.next_message()
        except FrameError as err:
            return _Fatal.for_error(err)
        if message is None:
            fatal, self._fatal = self._fatal, None
            return fatal
        self.frames_done += 1
        self._cancel_deadline()
        try:
            return parse_request(message)
        except RequestError as err:
            return error_reply(err.request_id, err.code, str(err))

    def _pump(self) -> None:
        """Answer what can be answered now, in order, within this turn's budget:
        FRAMES_PER_TURN frames, and replies up to the write high-water mark
        counting those the peer has not taken yet (a frame count alone let
        32 large replies pile up at once)."""
        self._scheduled = False
        replies: list[bytes] = []
        budget = FRAMES_PER_TURN
        assert self.transport is not None
        unsent = self.transport.get_write_buffer_size()
        exhausted = False
        while not (self.closing or self.busy or self.write_paused):
            if budget == 0 or unsent >= WRITE_HIGH_WATER:
                break
            item = self._next_item()
            if item is None:
                exhausted = True
                break
            budget -= 1
            unsent += self._process(item, replies)
        self._flush(replies)
        if self.closing:
            return
        if exhausted and not self.busy:
            if self.eof:
                self._close()
                return
            self._set_reading(not self.write_paused)
            if self.decoder.pending_bytes:
                self._arm_deadline()
        else:
            # More may be waiting in the buffer: stop reading until it is
            # answered, and yield the loop to other connections meanwhile.
            self._set_reading(False)
            if not self.busy and not self.write_paused:
                self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled and not self.closing:
            self._scheduled = True
            self.server.loop.call_soon(self._pump)

    def _set_reading(self, on: bool) -> None:
        if on != self._reading and self.transport is not None and not self.closing:
            self._reading = on
            if on:
                self.transport.resume_reading()
            else:
                self.transport.pause_reading()

    def _process(self, item: Item, replies: list[bytes]) -> int:
        """Answer ``item`` now if possible, otherwise start the slow path;
        the size of the reply added to ``replies``."""
        if isinstance(item, _Fatal):
            replies.append(_encode(item.reply))
            self._flush(replies)
            self._close()
            return 0
        if isinstance(item, dict):
            replies.append(_encode(item))
            return len(replies[-1])
        reply = self.agent.fast(item)
        if reply is not None:
            if self.server.audit is not None:
                self._audit(item, reply)
            replies.append(_encode(reply))
            return len(replies[-1])
        self.busy = True
        task = self.server.loop.create_task(self._slow(item))
        self.server.tasks.add(task)
        task.add_done_callback(self.server.tasks.discard)
        return 0

    async def _slow(self, req: Request) -> None:
        reply = await self.agent.slow(req)
        self.server.wake_timers()
        if self.server.audit is not None:
            self._audit(req, reply)
        self.busy = False
        if self.closing:
            return
        replies = [_encode(reply)]
        self._flush(replies)
        self._pump()

    def _audit(self, req: Request, reply: dict[str, object]) -> None:
        assert self.server.audit is not None
        if self._peer_exe is None:
            from .audit import peer_exe

            self._peer_exe = peer_exe(self.peer_pid) or ""
        self.server.audit.record(req, reply, self.peer_pid, self.peer_uid, self._peer_exe or None)

    def _flush(self, replies: list[bytes]) -> None:
        if replies and self.transport is not None and not self.closing:
            self.transport.write(b"".join(replies) if len(replies) > 1 else replies[0])
        replies.clear()

    def _close(self) -> None:
        """Close once the replies already written are sent (a fatal error, end of stream)."""
        self.closing = True
        self._cancel_deadline()
        if self.transport is not None:
            self.transport.close()

    def _abort(self) -> None:
        """Close now, dropping unsent replies: close() would keep the socket and
        its buffer until a peer that may never read had read them."""
        self.closing = True
        self._cancel_deadline()
        if self.transport is not None:
            self.transport.abort()

    # -- read deadline: one frame may stay unfinished this long ----------------------

    # The loop's timer closes a stalled frame even when nothing else happens;
    # the agent's (injected) clock dates the frame, so that a full connection
    # table drops overdue frames by the same clock as every other timer.

    def _arm_deadline(self) -> None:
        if self._deadline is None:
            self._frame_began = self.server.clock()
            self._deadline = self.server.loop.call_later(
                self.server.read_deadline, self._deadline_passed
            )

    def _cancel_deadline(self) -> None:
        self._frame_began = None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _deadline_passed(self) -> None:
        self._deadline = None
        if self.decoder.pending_bytes and not self.closing and not self.busy:
            self.cut_off()

    def overdue(self, now: float) -> bool:
        """A frame unfinished for the read deadline or longer."""
        began = self._frame_began
        return began is not None and now - began >= self.server.read_deadline

    def cut_off(self) -> None:
        log.info("closing a connection that left a frame unfinished")
        self._abort()

    # -- eviction: which connection a new one may replace ------------------------------

    def evictable(self) -> bool:
        """Not working: idle, mid-frame, not reading its replies, or closing.

        Working is a request in flight or due (busy, more frames scheduled)
        or one the kernel holds unread while we are still reading this
        peer. A peer we stopped reading because it does not read its
        replies is not working, whatever it has sent.
        """
        if self.closing or self.write_paused:
            return True
        if self.busy or self._scheduled or self.transport is None:
            return False
        return _unread_bytes(self.transport) == 0

    def eviction_order(self) -> tuple[bool, float]:
        """Sort key: first the connections that never completed a frame, do not
        read their replies or are closing; then the others; least recently
        heard from first."""
        worked = self.frames_done > 0 and not self.write_paused and not self.closing
        return worked, self.last_seen


class AgentServer:
    """Serves ``agent`` on a listening Unix socket."""

    def __init__(
        self,
        agent: Agent,
        *,
        max_connections: int = 256,
        read_deadline: float = 10.0,
        allowed_uids: frozenset[int] | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.audit = audit
        self.agent = agent
        self.clock = agent.clock
        self.max_connections = max_connections
        self.read_deadline = read_deadline
        self.allowed_uids = allowed_uids or frozenset({os.getuid(), 0})
        self.connections: dict[AgentConnection, None] = {}
        self.tasks: set[asyncio.Task[Any]] = set()
        self.loop = asyncio.get_running_loop()
        self._server: asyncio.AbstractServer | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.on_activity: Callable[[], None] | None = None

    async def start(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self._server = await self.loop.create_unix_server(
            lambda: AgentConnection(self), sock=sock, backlog=128
        )
        self.wake_timers()

    def register(self, conn: AgentConnection) -> None:
        if len(self.connections) >= self.max_connections:
            self._make_room()
            if len(self.connections) >= self.max_connections:
                conn._abort()  # every connection is working
                return
        self.connections[conn] = None
        if self.on_activity is not None:
            self.on_activity()

    def _make_room(self) -> None:
        """Drop every frame past the read deadline, or else one connection that
        is not working (AgentConnection.eviction_order), so that a flood of
        idle, half-sent or unread connections cannot lock out a client that
        is working (or about to)."""
        now = self.clock()
        overdue = [c for c in self.connections if c.overdue(now) and not c.busy]
        for conn in overdue:
            conn.cut_off()
            self.connections.pop(conn, None)
        if overdue:
            return
        idle = [c for c in self.connections if c.evictable()]
        if idle:
            victim = min(idle, key=AgentConnection.eviction_order)
            victim._abort()
            self.connections.pop(victim, None)

    def unregister(self, conn: AgentConnection) -> None:
        self.connections.pop(conn, None)
        if self.on_activity is not None:
            self.on_activity()

    def wake_timers(self) -> None:
        """(Re)schedule the agent's idle/maximum lock check."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.agent.next_deadline()
        if deadline is None:
            return
        delay = max(0.0, deadline - self.agent.clock())
        self._timer = self.loop.call_later(delay + 0.01, self._timer_fired)

    def _timer_fired(self) -> None:
        self._timer = None
        self.agent.check_timers()
        self.wake_timers()

    async def close(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._server is not None:
            self._server.close()
        for conn in list(self.connections):
            conn._close()
        if self._server is not None:
            await self._server.wait_closed()
        for task in list(self.tasks):
            task.cancel()
        self.agent.close()
        if self.audit is not None:
            self.audit.close()
