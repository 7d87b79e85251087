"""The agent's socket server: asyncio Protocols around protocol.ServerConnection.

The conversation's rules (order, turn budget, reply accounting, deadlines)
are the I/O-free core's; this adapter moves bytes, pauses and resumes
reading, and keeps the timers. A Protocol rather than the streams API: a
cache hit is answered inside ``data_received``, with no task, no future and
no extra copy.

What one connection may hold is bounded: a few dozen frames answered per
loop turn (fairness), replies no further than the write high-water mark
past what the peer has read (memory), and a slot in the connection table
that a new connection takes over once this one is idle, mid-frame, or not
reading its replies.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable, Coroutine
from typing import Any, cast

from .. import settings
from ..protocol import Request
from ..protocol.server_conn import (
    CLOSE,
    CLOSED,
    NEED_DATA,
    NEXT_TURN,
    WRITE_HIGH_WATER,
    ServerConnection,
    Signal,
)
from .audit import AuditLog
from .cache import MISS
from .dispatch import dispatch
from .peer import peer_credentials, unread_bytes
from .state import Agent

__all__ = ["WRITE_HIGH_WATER", "AgentConnection", "AgentServer"]

log = logging.getLogger("modelforge_credentials.agent")

Reply = dict[str, object]


class AgentConnection(asyncio.Protocol):
    """One client: its transport, its conversation, its read-deadline timer."""

    def __init__(self, server: AgentServer) -> None:
        self.server = server
        self.agent = server.agent
        self.conn = ServerConnection(server.clock, read_deadline=server.read_deadline)
        self.transport: asyncio.Transport | None = None
        self._scheduled = False
        self._reading = True
        self._deadline: asyncio.TimerHandle | None = None
        self._deadline_frame: int | None = None
        self.peer_pid: int | None = None
        self.peer_uid: int | None = None
        self._peer_exe: str | None = None

    # -- asyncio callbacks ------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = transport = cast(asyncio.Transport, transport)
        sock = transport.get_extra_info("socket")
        pid, uid = peer_credentials(sock) if sock is not None else (None, None)
        self.peer_pid, self.peer_uid = pid, uid
        if uid is None or uid not in self.server.allowed_uids:
            log.warning("refused a connection from uid %s", uid)
            self.abort()
            return
        transport.set_write_buffer_limits(high=WRITE_HIGH_WATER)
        self.conn.last_seen = self.server.clock()
        self.server.register(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.abort()
        self._sync_deadline()
        self.server.unregister(self)

    def data_received(self, data: bytes) -> None:
        conn = self.conn
        if self.server.audit is None:
            peeked = conn.lone_retrieve(data)
            if peeked is not None:
                found = self.agent.cached(peeked[1], peeked[2])
                if found is not MISS:
                    assert self.transport is not None
                    self.transport.write(conn.cached_reply(peeked[0], found))  # type: ignore[arg-type]
                    return
        conn.receive_data(data)
        self._pump()

    def eof_received(self) -> bool:
        # True keeps our side open: every complete frame still gets its reply.
        self.conn.receive_eof()
        self._pump()
        return True

    def pause_writing(self) -> None:
        self.conn.peer_paused()
        self._set_reading(False)

    def resume_writing(self) -> None:
        self.conn.peer_resumed()
        self._schedule()

    # -- the pump -----------------------------------------------------------------

    def _pump(self) -> None:
        """Answer what the conversation hands out in this turn, then do what
        its closing signal says."""
        self._scheduled = False
        conn, transport = self.conn, self.transport
        if conn.state is CLOSED or transport is None:
            return
        conn.start_turn(transport.get_write_buffer_size())
        replies: list[bytes] = []
        while True:
            event = conn.next_event()
            if type(event) is bytes:
                replies.append(event)
                continue
            if isinstance(event, Request):
                reply = dispatch(self.agent, event)
                if type(reply) is dict:
                    self._audit(event, reply)
                    replies.append(conn.answer(reply))
                    continue
                self._answer_later(event, reply)  # type: ignore[arg-type]
                break
            assert isinstance(event, Signal)
            self._flush(replies)
            self._follow(event)
            return
        self._flush(replies)
        self._follow(None)

    def _follow(self, signal: Signal | None) -> None:
        if signal is CLOSE:
            self.close()
            return
        self._set_reading(signal is NEED_DATA)
        if signal is NEXT_TURN:
            self._schedule()  # yield the loop to other connections meanwhile
        self._sync_deadline()

    def _answer_later(self, req: Request, work: Coroutine[Any, Any, Reply]) -> None:
        task = self.server.loop.create_task(self._backend(req, work))
        self.server.tasks.add(task)
        task.add_done_callback(self.server.tasks.discard)

    async def _backend(self, req: Request, work: Coroutine[Any, Any, Reply]) -> None:
        reply = await work
        self.server.wake_timers()
        self._audit(req, reply)
        if self.conn.state is CLOSED:
            return
        self._flush([self.conn.answer(reply)])
        self._pump()

    def _schedule(self) -> None:
        if not self._scheduled and self.conn.state is not CLOSED:
            self._scheduled = True
            self.server.loop.call_soon(self._pump)

    def _set_reading(self, on: bool) -> None:
        transport = self.transport
        if on != self._reading and transport is not None and self.conn.state is not CLOSED:
            self._reading = on
            if on:
                transport.resume_reading()
            else:
                transport.pause_reading()

    def _audit(self, req: Request, reply: Reply) -> None:
        audit = self.server.audit
        if audit is None:
            return
        if self._peer_exe is None:
            from .audit import peer_exe

            self._peer_exe = peer_exe(self.peer_pid) or ""
        audit.record(req, reply, self.peer_pid, self.peer_uid, self._peer_exe or None)

    def _flush(self, replies: list[bytes]) -> None:
        if replies and self.transport is not None and self.conn.state is not CLOSED:
            self.transport.write(b"".join(replies) if len(replies) > 1 else replies[0])

    def close(self) -> None:
        """Close once the replies already written are sent (a fatal error, end of stream)."""
        self.conn.abort()
        self._sync_deadline()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        """Close now, dropping unsent replies: close() would keep the socket and
        its buffer until a peer that may never read had read them."""
        self.conn.abort()
        self._sync_deadline()
        if self.transport is not None:
            self.transport.abort()

    # -- read deadline: one frame may stay unfinished this long ----------------------

    # The loop's timer closes a stalled frame even when nothing else happens;
    # the agent's (injected) clock dates the frame, so that a full connection
    # table drops overdue frames by the same clock as every other timer.

    def _sync_deadline(self) -> None:
        frame = self.conn.unfinished_frame() if self.conn.state is not CLOSED else None
        if frame == self._deadline_frame:
            return
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        self._deadline_frame = frame
        if frame is not None:
            self._deadline = self.server.loop.call_later(
                self.server.read_deadline, self._deadline_passed, frame
            )

    def _deadline_passed(self, frame: int) -> None:
        self._deadline = None
        if self.conn.unfinished_frame() == frame and self.conn.state is not CLOSED:
            self.cut_off()

    def cut_off(self) -> None:
        log.info("closing a connection that left a frame unfinished")
        self.abort()

    # -- eviction -------------------------------------------------------------------

    def evictable(self) -> bool:
        transport = self.transport

        def unread() -> int:
            # A turn already scheduled is work in hand, as unread bytes are.
            if self._scheduled or transport is None:
                return 1
            return unread_bytes(transport)

        return self.conn.evictable(unread)


class AgentServer:
    """Serves ``agent`` on a listening Unix socket."""

    def __init__(
        self,
        agent: Agent,
        *,
        max_connections: int = settings.DEFAULT_MAX_CONNECTIONS,
        read_deadline: float = settings.DEFAULT_READ_DEADLINE,
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
                conn.abort()  # every connection is working
                return
        self.connections[conn] = None
        if self.on_activity is not None:
            self.on_activity()

    def _make_room(self) -> None:
        """Drop every frame past the read deadline, or else one connection that
        is not working (ServerConnection.eviction_order), so that a flood of
        idle, half-sent or unread connections cannot lock out a client that
        is working (or about to)."""
        now = self.clock()
        overdue = [c for c in self.connections if c.conn.overdue(now)]
        for conn in overdue:
            conn.cut_off()
            self.connections.pop(conn, None)
        if overdue:
            return
        idle = [c for c in self.connections if c.evictable()]
        if idle:
            victim = min(idle, key=lambda c: c.conn.eviction_order())
            victim.abort()
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
            conn.close()
        if self._server is not None:
            await self._server.wait_closed()
        for task in list(self.tasks):
            task.cancel()
        self.agent.close()
        if self.audit is not None:
            self.audit.close()
