"""protocol.server_conn.ServerConnection attacked alone: bytes in, events out,
a fake clock, no socket. Each case is one way a client could try to get a
reply out of order, an answer it should not, or a deadline it should not."""

from __future__ import annotations

import msgpack

from modelforge_credentials.protocol import (
    HEADER_SIZE,
    MAX_FRAME_SIZE,
    Op,
    Request,
    encode_request,
    ok_reply,
)
from modelforge_credentials.protocol.server_conn import (
    CLOSE,
    CLOSED,
    CLOSING,
    IDLE,
    NEED_DATA,
    NEXT_TURN,
    PAUSED,
    READY,
    WAITING,
    ServerConnection,
)
from test_pure_server_conn import decode, new
from testkit import FakeClock

RETRIEVE = encode_request(7, Op.RETRIEVE, provider="openai", key="api_key")


def handed_out(conn: ServerConnection) -> Request:
    conn.start_turn(0)
    event = conn.next_event()
    assert isinstance(event, Request), event
    return event


def test_no_lone_retrieve_in_any_state_but_idle() -> None:
    """Guards the fast path: waiting, ready (a turn due), mid-frame, closing,
    after a fatal header, after abort: the whole frame goes the general way."""
    waiting = new()
    waiting.receive_data(encode_request(1, Op.STORE, provider="p", key="k", value="v"))
    handed_out(waiting)
    ready = new(frames_per_turn=1)
    ready.receive_data(encode_request(1, Op.HELLO) * 2)
    ready.answer(ok_reply(handed_out(ready).id))
    assert ready.next_event() is NEXT_TURN and ready.state is READY
    closing = new()
    closing.receive_data(b"\0\0\0\0")
    closing.start_turn(0)
    assert isinstance(closing.next_event(), bytes) and closing.state is CLOSING
    fatal = new()
    fatal.receive_data((MAX_FRAME_SIZE + 1).to_bytes(HEADER_SIZE, "big"))
    aborted = new()
    aborted.abort()
    for conn in (waiting, ready, closing, fatal, aborted):
        assert conn.lone_retrieve(RETRIEVE) is None, conn.state


def test_a_fatal_header_read_while_waiting_comes_after_the_reply_and_drops_later_bytes() -> None:
    """Guards order and the end: a bad header while a request is out is
    answered after its reply; bytes after it are never answered."""
    conn = new()
    conn.receive_data(encode_request(1, Op.STORE, provider="p", key="k", value="v"))
    handed_out(conn)
    conn.receive_data(b"\xff\xff\xff\xff" + encode_request(2, Op.HELLO))
    conn.receive_data(encode_request(3, Op.HELLO))
    assert conn.next_event() is PAUSED
    assert decode(conn.answer(ok_reply(1))) == [{"id": 1, "ok": True}]
    last = conn.next_event()
    assert isinstance(last, bytes)
    [reply] = decode(last)
    assert reply["id"] is None and reply["error"]["code"] == "too_large"  # type: ignore[index]
    assert conn.next_event() is CLOSE


def test_end_of_stream_and_a_bad_body_behind_a_request_error() -> None:
    """Guards order with non-fatal errors first: an unknown op, a hello,
    then a bad body and end of stream: three replies in order, then close."""
    conn = new()
    body = msgpack.packb("not a map")
    conn.receive_data(
        encode_request(1, "nope")
        + encode_request(2, Op.HELLO)
        + len(body).to_bytes(4, "big")
        + body
    )
    conn.receive_eof()
    conn.start_turn(0)
    first = conn.next_event()
    assert isinstance(first, bytes) and decode(first)[0]["id"] == 1
    second = conn.next_event()
    assert isinstance(second, Request) and second.id == 2
    conn.answer(ok_reply(2))
    last = conn.next_event()
    assert isinstance(last, bytes) and decode(last)[0]["id"] is None
    assert conn.next_event() is CLOSE and conn.state is CLOSING


def test_a_frame_buffered_behind_a_waiting_request_has_no_deadline_until_read_again() -> None:
    """Guards the deadline: while a request is out the peer cannot be blamed
    for the half frame behind it; the deadline starts when the turn after the
    reply finds the frame unfinished."""
    clock = FakeClock()
    conn = new(clock)
    conn.receive_data(encode_request(1, Op.HELLO) + encode_request(2, Op.HELLO)[:3])
    handed_out(conn)
    clock.advance(60)
    assert conn.due is None and not conn.overdue(clock())
    assert not conn.evictable(lambda: 0)  # a request out: working
    conn.answer(ok_reply(1))
    assert conn.next_event() is NEED_DATA
    assert conn.due == clock() + 10


def test_a_trickled_frame_is_overdue_by_its_first_byte() -> None:
    """Guards the deadline against trickling: one byte at a time never
    postpones it, and the frame number identifies it."""
    clock = FakeClock()
    conn = new(clock)
    frame = encode_request(1, Op.HELLO)
    start = clock()
    for byte in frame[:-1]:
        conn.receive_data(bytes([byte]))
        conn.start_turn(0)
        assert conn.next_event() is NEED_DATA
        clock.advance(0.5)
    assert conn.due == start + 10 and conn.unfinished_frame() == 0
    clock.advance(10)
    assert conn.overdue(clock()) and conn.evictable(lambda: 0)


def test_a_turn_that_stops_at_the_budget_is_not_evictable_and_resumes_in_order() -> None:
    """Guards eviction and fairness: complete frames left for the next turn
    are work in hand (never evicted), answered next turn, in order."""
    conn = new(frames_per_turn=2)
    conn.receive_data(b"".join(encode_request(i, Op.HELLO) for i in range(5)))
    ids = []
    for _ in range(3):
        conn.start_turn(0)
        while isinstance(event := conn.next_event(), Request):
            ids.append(event.id)
            conn.answer(ok_reply(event.id))
        if event is NEXT_TURN:
            assert not conn.evictable(lambda: 0)
    assert ids == [0, 1, 2, 3, 4] and event is NEED_DATA and conn.state is IDLE


def test_one_reply_may_cross_the_high_water_mark_and_no_more() -> None:
    """Guards the memory bound: just under the mark one big reply is answered,
    then the turn stops, whatever the frame budget."""
    conn = new(high_water=1000)
    conn.receive_data(b"".join(encode_request(i, Op.HELLO) for i in range(4)))
    conn.start_turn(999)
    event = conn.next_event()
    assert isinstance(event, Request)
    conn.answer(ok_reply(event.id, blob="x" * 5000))
    assert conn.next_event() is NEXT_TURN
    conn.peer_paused()
    conn.start_turn(0)
    assert conn.next_event() is PAUSED


def test_nothing_is_answered_after_abort_even_with_complete_frames() -> None:
    """Guards abort (eviction, deadline): complete frames buffered are dropped,
    and bytes or end of stream after it change nothing."""
    conn = new()
    conn.receive_data(encode_request(1, Op.HELLO) * 3)
    conn.abort()
    conn.receive_data(encode_request(2, Op.HELLO))
    conn.receive_eof()
    conn.start_turn(0)
    assert conn.next_event() is CLOSE and conn.state is CLOSED
    assert conn.lone_retrieve(RETRIEVE) is None


def test_a_waiting_connection_that_stops_reading_may_be_evicted() -> None:
    """Documents a rule the old adapter had too: not reading its replies wins
    over a request in flight (PROTOCOL.md 8.1 lists both; the first decides)."""
    conn = new()
    conn.receive_data(encode_request(1, Op.HELLO))
    handed_out(conn)
    assert conn.state is WAITING and not conn.evictable(lambda: 0)
    conn.peer_paused()
    assert conn.evictable(lambda: 0)
    assert conn.eviction_order()[0] is False  # among the first to go
