"""The agent's side of one connection, as a state machine without I/O.

Bytes go in (:meth:`ServerConnection.receive_data`), events come out
(:meth:`ServerConnection.next_event`): a :class:`Request` to answer, a frame
to send, or what the transport should do next. The adapter (daemon/server.py)
only moves bytes and timers; every rule of the conversation is here:

- replies leave in request order: while a request is out for an answer
  (``WAITING``), nothing after it is handed out;
- a turn answers at most ``frames_per_turn`` frames, and stops once the
  replies the peer has not taken reach ``high_water`` bytes (one reply, at
  most a frame, may cross it);
- a frame may stay unfinished ``read_deadline`` seconds, by the injected
  clock (:attr:`ServerConnection.due`);
- after a framing error the connection sends one failure reply and closes;
  after the peer's end of stream every complete frame is answered first.

States (``ServerConnection.state``):

``IDLE``     nothing buffered
``PARTIAL``  part of a frame buffered; the read deadline runs
``READY``    input to look at: frames may be complete, to answer in this
             turn or the next
``WAITING``  a request handed out; its reply comes through :meth:`answer`
``CLOSING``  a last reply (or none) is queued and the connection closes
``CLOSED``   the transport is gone

Independently, ``peer_reading`` is False while the peer does not take its
replies (the transport's write buffer is over its high-water mark): nothing
is answered then.
"""

from __future__ import annotations

from collections.abc import Callable

import msgpack  # type: ignore[import-untyped]

from .errors import (
    BAD_REQUEST,
    INTERNAL,
    TOO_LARGE,
    EncodeError,
    FrameError,
    FrameTooLarge,
    RequestError,
)
from .framing import HEADER_SIZE, FrameDecoder, encode_frame
from .reply import error_reply
from .request import Request, parse_request, peek_retrieve

IDLE = "idle"
PARTIAL = "partial"
READY = "ready"
WAITING = "waiting"
CLOSING = "closing"
CLOSED = "closed"

#: Frames answered per turn before other connections get a go.
FRAMES_PER_TURN = 32
#: Replies buffered for a peer that does not read before we stop answering
#: and reading it; one reply (at most a frame) may cross it.
WRITE_HIGH_WATER = 256 * 1024

Reply = dict[str, object]


class Signal:
    """What the adapter does when no request or frame is ready."""

    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<{self.name}>"


#: Nothing complete: read more (and arm the read deadline if :attr:`due` is set).
NEED_DATA = Signal("NEED_DATA")
#: More is buffered but this turn is over: stop reading, call again next turn.
NEXT_TURN = Signal("NEXT_TURN")
#: A reply is awaited, or the peer does not read: stop reading and wait.
PAUSED = Signal("PAUSED")
#: Close once what was written is sent (after a last reply, or at end of stream).
CLOSE = Signal("CLOSE")

_pack = msgpack.Packer(use_bin_type=True, autoreset=True, datetime=False).pack


class ServerConnection:
    """One client connection's conversation. ``clock`` gives seconds."""

    def __init__(
        self,
        clock: Callable[[], float],
        *,
        read_deadline: float,
        frames_per_turn: int = FRAMES_PER_TURN,
        high_water: int = WRITE_HIGH_WATER,
    ) -> None:
        self._clock = clock
        self.read_deadline = read_deadline
        self.frames_per_turn = frames_per_turn
        self.high_water = high_water
        self.state = IDLE
        self.peer_reading = True
        self.eof = False
        self.frames_done = 0
        self.last_seen = clock()
        self._decoder = FrameDecoder()
        self._fatal: Reply | None = None  # the last reply after a framing error
        self._frame_began: float | None = None
        self._budget = 0
        self._unsent = 0

    # -- input --------------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Bytes from the peer. A framing error is answered in order, then closes."""
        if self.state in (CLOSING, CLOSED) or self._fatal is not None:
            return
        self.last_seen = self._now()
        try:
            self._decoder.feed(data)
        except FrameError as err:
            self._fatal = _fatal_reply(err)
        if self.state in (IDLE, PARTIAL):
            self.state = READY

    def receive_eof(self) -> None:
        """The peer finished sending: answer every complete frame, then close."""
        self.eof = True
        if self.state in (IDLE, PARTIAL):
            self.state = READY

    def peer_paused(self) -> None:
        """The transport's write buffer went over its high-water mark."""
        self.peer_reading = False

    def peer_resumed(self) -> None:
        """The peer took its replies: it is alive, and answering goes on."""
        self.peer_reading = True
        self.last_seen = self._now()

    def abort(self) -> None:
        """The connection is over (lost, closed, evicted, cut off at its
        deadline): nothing more is answered."""
        self.state = CLOSED
        self._frame_began = None

    # -- the fast path ------------------------------------------------------------

    def lone_retrieve(self, data: bytes) -> tuple[int, str, str] | None:
        """``(id, provider, key)`` when ``data`` is one whole ``retrieve``
        frame arriving on an idle connection; None otherwise.

        The request a tool sends on every call, taken without the decoder's
        buffer or a :class:`Request` (measured, those were most of the
        agent's time per request). The checks are the general ones
        (:func:`~.request.peek_retrieve`). The caller either answers it at
        once with :meth:`cached_reply` or, on a cache miss, hands ``data``
        to :meth:`receive_data`, which takes the general way.
        """
        if self.state is not IDLE or not self.peer_reading or self.eof:
            return None
        return peek_retrieve(data)

    def cached_reply(self, request_id: int, value: str | None) -> bytes:
        """The frame answering a :meth:`lone_retrieve` from the cache."""
        self.frames_done += 1
        self.last_seen = self._now()
        body: bytes = _pack({"id": request_id, "ok": True, "value": value})
        return len(body).to_bytes(HEADER_SIZE, "big") + body

    # -- events -------------------------------------------------------------------

    def start_turn(self, unsent: int) -> None:
        """A new turn; ``unsent`` is what the transport holds that the peer
        has not taken yet."""
        self._budget = self.frames_per_turn
        self._unsent = unsent

    def next_event(self) -> Request | bytes | Signal:
        """The next thing to do, in order.

        A :class:`Request` must be answered through :meth:`answer` (now, or
        later from a task: the connection is ``WAITING`` until then). A
        ``bytes`` frame is an answer already made (a request's own error):
        write it. A :class:`Signal` ends the turn.
        """
        state = self.state
        if state is WAITING or state is CLOSED:
            return PAUSED if state is WAITING else CLOSE
        if state is CLOSING:
            return CLOSE
        if not self.peer_reading:
            return PAUSED
        if self._fatal is not None:
            # A bad frame header: nothing complete stood before it.
            fatal, self._fatal = self._fatal, None
            return self._last_reply(fatal)
        # Over the mark, as the transport counts it (it pauses only above the
        # mark): at exactly the mark a turn that stopped would be rescheduled
        # every loop turn without the transport ever pausing.
        if self._budget <= 0 or self._unsent > self.high_water:
            return NEXT_TURN
        try:
            message = self._decoder.next_message()
        except FrameError as err:
            return self._last_reply(_fatal_reply(err))
        if message is None:
            return self._nothing_complete()
        self._budget -= 1
        self.frames_done += 1
        self._frame_began = None
        try:
            request = parse_request(message)
        except RequestError as err:
            return self._count(encode_reply(error_reply(err.request_id, err.code, str(err))))
        self.state = WAITING
        return request

    def answer(self, reply: Reply) -> bytes:
        """The frame for the reply to the request last handed out."""
        if self.state is WAITING:
            self.state = READY
        return self._count(encode_reply(reply))

    # -- deadlines and eviction -----------------------------------------------------

    @property
    def pending_bytes(self) -> int:
        """Bytes received and not answered yet (a partial frame included)."""
        return self._decoder.pending_bytes

    @property
    def due(self) -> float | None:
        """Clock time by which the unfinished frame must be complete, or None."""
        began = self._frame_began
        return None if began is None else began + self.read_deadline

    def overdue(self, now: float) -> bool:
        """A frame left unfinished for the read deadline or longer."""
        due = self.due
        return due is not None and now >= due

    def unfinished_frame(self) -> int | None:
        """Which frame is unfinished (its number), or None: a timer the
        adapter armed for one frame must not cut off the next."""
        return None if self._frame_began is None else self.frames_done

    def evictable(self, unread: Callable[[], int]) -> bool:
        """Not working, so a new connection may take this one's slot: idle,
        mid-frame, not reading its replies, or closing. ``unread()`` is what
        the kernel holds from the peer that we have not read yet: working,
        while we still read this peer (asked only when it decides)."""
        if self.state in (CLOSING, CLOSED) or not self.peer_reading:
            return True
        if self.state in (WAITING, READY):
            return False
        return unread() == 0

    def eviction_order(self) -> tuple[bool, float]:
        """Sort key among evictable connections: first those that never
        completed a frame, do not read their replies or are closing; then
        the others; least recently heard from first."""
        worked = self.frames_done > 0 and self.peer_reading and self.state not in (CLOSING, CLOSED)
        return worked, self.last_seen

    # -- pieces -----------------------------------------------------------------------

    def _now(self) -> float:
        return self._clock()

    def _nothing_complete(self) -> Signal:
        if self.eof:
            self.state = CLOSING
            return CLOSE
        if self._decoder.pending_bytes:
            self.state = PARTIAL
            if self._frame_began is None:
                self._frame_began = self._now()
        else:
            self.state = IDLE
        return NEED_DATA

    def _last_reply(self, reply: Reply) -> bytes:
        self.state = CLOSING
        self._frame_began = None
        return encode_reply(reply)

    def _count(self, frame: bytes) -> bytes:
        self._unsent += len(frame)
        return frame


def _fatal_reply(err: FrameError) -> Reply:
    # The frame's id is unknowable once framing failed: id nil.
    return error_reply(None, err.code or BAD_REQUEST, str(err))


def encode_reply(reply: Reply) -> bytes:
    """Frame ``reply``; one over the frame limit becomes a ``too_large`` failure."""
    request_id = reply.get("id")
    try:
        return encode_frame(reply)
    except FrameTooLarge:
        failure = error_reply(
            request_id if isinstance(request_id, int) else None,
            TOO_LARGE,
            "the reply would exceed the 1 MiB frame limit; narrow the request "
            "(e.g. `list PROVIDER`)",
        )
    except EncodeError:
        failure = error_reply(
            request_id if isinstance(request_id, int) else None,
            INTERNAL,
            "the reply could not be encoded",
        )
    return encode_frame(failure)
