"""A client's side of one connection, without I/O: request ids, the order of
the requests still waiting, and which reply answers which.

The blocking client sends one request at a time and the asyncio client
pipelines; both hand every byte they read to
:meth:`ClientConnection.receive_data` and get back, for each reply completed,
the request id and its outcome. The agent answers in request order
(docs/PROTOCOL.md 8), so a reply for nobody, or for another request than the
oldest waiting one, means the two ends disagree on the stream: the
connection is then :attr:`~ClientConnection.broken`, and the adapter drops it
and fails every request still waiting (:meth:`ClientConnection.fail_all`).
"""

from __future__ import annotations

from collections import deque

from .errors import FrameError, RemoteError, ReplyError
from .framing import FrameDecoder
from .reply import expect_fields, parse_reply
from .request import encode_request

# The thin client imports this module: typing stays out of its start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from .ops import AnyOp

#: The checked result fields, or why there are none: the agent's failure
#: (RemoteError) or a reply that does not fit its operation (ReplyError).
Outcome = dict[str, object] | RemoteError | ReplyError


class ClientConnection:
    """One connection's requests and replies, as bytes out and outcomes in."""

    __slots__ = ("_decoder", "_waiting", "_next_id", "broken")

    def __init__(self) -> None:
        self.broken: FrameError | ReplyError | None = None
        self._decoder = FrameDecoder()
        self._waiting: deque[tuple[int, AnyOp]] = deque()
        self._next_id = 0

    @property
    def waiting(self) -> int:
        """Requests sent and not answered yet."""
        return len(self._waiting)

    def send(self, op: AnyOp, **fields: object) -> tuple[int, bytes]:
        """The next request's id and frame. Raises EncodeError (nothing is
        then waiting) when the fields cannot be encoded."""
        request_id = self._next_id + 1
        frame = encode_request(request_id, op, **fields)
        self._next_id = request_id
        self._waiting.append((request_id, op))
        return request_id, frame

    def receive_data(self, data: bytes) -> list[tuple[int, Outcome]]:
        """The requests ``data`` completes the answers of, oldest first.

        Bytes that cannot be framed, or a reply out of turn (for no request,
        or not the oldest one), make the connection unusable: :attr:`broken`
        says why, the replies completed before it are still returned, and
        every later call raises it.
        """
        if self.broken is not None:
            raise self.broken
        settled: list[tuple[int, Outcome]] = []
        try:
            self._decoder.feed(data)
            while (message := self._decoder.next_message()) is not None:
                settled.append(self._settle(message))
        except (FrameError, ReplyError) as err:
            self.broken = err
        return settled

    def fail_all(self) -> list[int]:
        """Forget every waiting request (the connection is gone); their ids."""
        ids = [request_id for request_id, _ in self._waiting]
        self._waiting.clear()
        return ids

    def _settle(self, message: dict[str, object]) -> tuple[int, Outcome]:
        if not self._waiting:
            raise ReplyError("the agent sent a reply nobody asked for")
        request_id, op = self._waiting.popleft()
        try:
            reply = parse_reply(message)
        except ReplyError as err:
            return request_id, err
        if reply.id != request_id:
            # A nil id is the agent refusing the stream itself; its message says why.
            why = f" ({reply.error_message})" if reply.error_message else ""
            raise ReplyError(
                f"the agent answered request {reply.id} while request {request_id} was next{why}"
            )
        try:
            return request_id, expect_fields(reply, op)
        except (RemoteError, ReplyError) as err:
            return request_id, err
