"""protocol.server_conn.ServerConnection: the agent's conversation rules, as
bytes in and events out, with a fake clock and no socket."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelforge_credentials.protocol import (
    HEADER_SIZE,
    MAX_FRAME_SIZE,
    FrameDecoder,
    Op,
    Request,
    TeamOp,
    encode_request,
    ok_reply,
)
from modelforge_credentials.protocol.ops import Operation
from modelforge_credentials.protocol.server_conn import (
    CLOSE,
    CLOSED,
    CLOSING,
    IDLE,
    NEED_DATA,
    NEXT_TURN,
    PARTIAL,
    PAUSED,
    READY,
    WAITING,
    ServerConnection,
    encode_reply,
)
from testkit import FakeClock


def new(clock: FakeClock | None = None, **limits: int) -> ServerConnection:
    return ServerConnection(clock or FakeClock(), read_deadline=10.0, **limits)  # type: ignore[arg-type]


def decode(frames: bytes) -> list[dict[str, object]]:
    decoder = FrameDecoder()
    decoder.feed(frames)
    out = []
    while (message := decoder.next_message()) is not None:
        out.append(message)
    return out


def run_turn(conn: ServerConnection, unsent: int = 0) -> tuple[list[object], object]:
    """One turn answering every request at once; the events and the last signal."""
    conn.start_turn(unsent)
    events: list[object] = []
    while True:
        event = conn.next_event()
        if isinstance(event, Request):
            events.append(event)
            events.append(conn.answer(ok_reply(event.id)))
        elif isinstance(event, bytes):
            events.append(event)
        else:
            return events, event


def test_a_request_is_handed_out_and_nothing_after_it_until_answered() -> None:
    conn = new()
    conn.receive_data(encode_request(1, Op.STORE, provider="p", key="k", value="v"))
    conn.receive_data(encode_request(2, Op.HELLO))
    conn.start_turn(0)
    first = conn.next_event()
    assert isinstance(first, Request) and first.id == 1
    assert conn.state is WAITING
    # The second request is complete, but order holds it back.
    assert conn.next_event() is PAUSED
    assert conn.next_event() is PAUSED
    reply = conn.answer(ok_reply(1))
    assert decode(reply) == [{"id": 1, "ok": True}]
    assert conn.state is READY
    second = conn.next_event()
    assert isinstance(second, Request) and second.id == 2
    conn.answer(ok_reply(2))
    assert conn.next_event() is NEED_DATA
    assert conn.state is IDLE


def test_a_turn_answers_at_most_its_budget_of_frames() -> None:
    conn = new(frames_per_turn=3)
    conn.receive_data(b"".join(encode_request(i, Op.HELLO) for i in range(7)))
    events, signal = run_turn(conn)
    assert signal is NEXT_TURN and conn.state is READY
    assert [e.id for e in events if isinstance(e, Request)] == [0, 1, 2]
    events, signal = run_turn(conn)
    assert [e.id for e in events if isinstance(e, Request)] == [3, 4, 5]
    events, signal = run_turn(conn)
    assert [e.id for e in events if isinstance(e, Request)] == [6]
    assert signal is NEED_DATA


def test_a_turn_stops_at_the_high_water_mark_counting_unsent_replies() -> None:
    conn = new(high_water=100)
    conn.receive_data(b"".join(encode_request(i, Op.HELLO) for i in range(5)))
    # The transport holds more than the mark unsent: nothing is answered.
    events, signal = run_turn(conn, unsent=101)
    assert events == [] and signal is NEXT_TURN
    # At exactly the mark the transport does not pause (it pauses above it),
    # so the turn goes on: stopping there would reschedule it forever.
    conn.start_turn(100)
    first = conn.next_event()
    assert isinstance(first, Request)
    conn.answer(ok_reply(first.id))
    # Each big reply counts: the turn stops once they pass the mark.
    conn.start_turn(0)
    answered = 0
    while isinstance(event := conn.next_event(), Request):
        conn.answer(ok_reply(event.id, blob="x" * 60))
        answered += 1
    assert event is NEXT_TURN and answered == 2


def test_a_peer_that_does_not_read_gets_nothing_answered() -> None:
    conn = new()
    conn.receive_data(encode_request(1, Op.HELLO))
    conn.peer_paused()
    conn.start_turn(0)
    assert conn.next_event() is PAUSED
    assert conn.evictable(lambda: 1)  # not reading its replies: its slot may go
    conn.peer_resumed()
    assert isinstance(conn.next_event(), Request)


def test_a_bad_header_gets_one_reply_after_those_before_it_then_close() -> None:
    conn = new()
    conn.receive_data(encode_request(1, Op.STORE, provider="p", key="k", value="v"))
    conn.start_turn(0)
    assert isinstance(conn.next_event(), Request)
    conn.receive_data((MAX_FRAME_SIZE + 1).to_bytes(HEADER_SIZE, "big"))
    assert conn.next_event() is PAUSED  # the request in flight is answered first
    assert decode(conn.answer(ok_reply(1)))[0]["id"] == 1
    last = conn.next_event()
    assert isinstance(last, bytes)
    [reply] = decode(last)
    assert reply["id"] is None and reply["error"]["code"] == "too_large"  # type: ignore[index]
    assert conn.state is CLOSING and conn.next_event() is CLOSE
    conn.receive_data(encode_request(2, Op.HELLO))  # ignored once closing
    assert conn.next_event() is CLOSE


def test_a_bad_body_is_answered_in_order_then_close() -> None:
    conn = new()
    body = msgpack.packb([1, 2])
    conn.receive_data(encode_request(1, Op.HELLO) + len(body).to_bytes(4, "big") + body)
    events, signal = run_turn(conn)
    assert isinstance(events[0], Request) and events[0].id == 1
    assert decode(events[-1])[0]["error"]["code"] == "bad_request"  # type: ignore[index]
    assert signal is CLOSE


def test_a_request_error_is_answered_without_a_request_and_the_conversation_goes_on() -> None:
    conn = new()
    conn.receive_data(encode_request(1, "no-such-op") + encode_request(2, Op.HELLO))
    events, signal = run_turn(conn)
    assert isinstance(events[0], bytes)
    assert decode(events[0])[0]["error"]["code"] == "unknown_op"  # type: ignore[index]
    assert isinstance(events[1], Request) and events[1].id == 2
    assert signal is NEED_DATA


def test_end_of_stream_answers_every_complete_frame_then_closes() -> None:
    conn = new()
    conn.receive_data(encode_request(1, Op.HELLO) + encode_request(2, Op.HELLO)[:3])
    conn.receive_eof()
    events, signal = run_turn(conn)
    assert [e.id for e in events if isinstance(e, Request)] == [1]
    assert signal is CLOSE and conn.state is CLOSING


def test_end_of_stream_while_waiting_closes_after_the_reply() -> None:
    conn = new()
    conn.receive_data(encode_request(1, Op.HELLO))
    conn.start_turn(0)
    assert isinstance(conn.next_event(), Request)
    conn.receive_eof()
    assert conn.state is WAITING and conn.next_event() is PAUSED
    conn.answer(ok_reply(1))
    assert conn.next_event() is CLOSE


def test_the_read_deadline_dates_the_first_byte_of_an_unfinished_frame() -> None:
    clock = FakeClock()
    conn = new(clock)
    frame = encode_request(1, Op.HELLO)
    conn.receive_data(frame[:2])
    assert run_turn(conn)[1] is NEED_DATA and conn.state is PARTIAL
    start = clock()
    assert conn.due == start + 10 and conn.unfinished_frame() == 0
    clock.advance(6)
    conn.receive_data(frame[2:4])  # trickling does not postpone it
    run_turn(conn)
    assert conn.due == start + 10 and not conn.overdue(clock())
    clock.advance(4)
    assert conn.overdue(clock())
    conn.receive_data(frame[4:] + frame[:1])  # completes it and starts the next
    run_turn(conn)
    assert conn.unfinished_frame() == 1 and conn.due == start + 20
    assert not conn.overdue(clock())


def test_between_frames_there_is_no_deadline() -> None:
    clock = FakeClock()
    conn = new(clock)
    conn.receive_data(encode_request(1, Op.HELLO))
    run_turn(conn)
    clock.advance(1e6)
    assert conn.due is None and not conn.overdue(clock())
    assert conn.unfinished_frame() is None


def test_the_lone_retrieve_is_taken_only_on_an_idle_reading_connection() -> None:
    conn = new()
    frame = encode_request(7, Op.RETRIEVE, provider="openai", key="api_key")
    assert conn.lone_retrieve(frame) == (7, "openai", "api_key")
    assert decode(conn.cached_reply(7, "v")) == [{"id": 7, "ok": True, "value": "v"}]
    assert conn.frames_done == 1
    conn.receive_data(frame[:3])
    run_turn(conn)
    assert conn.lone_retrieve(frame) is None  # mid-frame: the general way
    idle = new()
    idle.peer_paused()
    assert idle.lone_retrieve(frame) is None
    ended = new()
    ended.receive_eof()
    assert ended.lone_retrieve(frame) is None
    assert new().lone_retrieve(encode_request(1, Op.EXISTS, provider="p", key="k")) is None


def test_eviction_prefers_connections_that_never_worked_then_the_least_recent() -> None:
    clock = FakeClock()
    fresh = new(clock)
    clock.advance(1)
    worked = new(clock)
    worked.receive_data(encode_request(1, Op.HELLO))
    run_turn(worked)
    clock.advance(1)
    later = new(clock)
    assert fresh.evictable(lambda: 0) and worked.evictable(lambda: 0)
    assert not worked.evictable(lambda: 5)  # the kernel holds bytes for it: working
    order = sorted([later, worked, fresh], key=ServerConnection.eviction_order)
    assert order == [fresh, later, worked]
    waiting = new(clock)
    waiting.receive_data(encode_request(1, Op.HELLO))
    waiting.start_turn(0)
    assert isinstance(waiting.next_event(), Request)
    assert not waiting.evictable(lambda: 0)
    waiting.abort()
    assert waiting.state is CLOSED and waiting.evictable(lambda: 0)


def test_a_reply_over_the_frame_limit_becomes_too_large() -> None:
    [reply] = decode(encode_reply(ok_reply(3, value="x" * MAX_FRAME_SIZE)))
    assert reply["id"] == 3 and reply["error"]["code"] == "too_large"  # type: ignore[index]
    [reply] = decode(encode_reply(ok_reply(4, value=object())))
    assert reply["error"]["code"] == "internal"  # type: ignore[index]


@given(st.lists(st.integers(min_value=1, max_value=40), max_size=30), st.integers(1, 5))
def test_any_split_of_a_pipeline_is_answered_once_each_in_order(
    cuts: list[int], budget: int
) -> None:
    stream = b"".join(encode_request(i, Op.HELLO) for i in range(12))
    conn = new(frames_per_turn=budget)
    answered: list[int] = []
    position = 0
    for cut in [*cuts, len(stream)]:
        conn.receive_data(stream[position : position + cut])
        position += cut
        while True:
            events, signal = run_turn(conn)
            answered += [e.id for e in events if isinstance(e, Request)]
            if signal is not NEXT_TURN:
                break
        if position >= len(stream):
            break
    assert answered == list(range(12))


@pytest.mark.parametrize("op", [*Op, *TeamOp])
def test_every_operation_reaches_the_dispatcher_as_a_request(op: Operation) -> None:
    fields = {name: "x" for name, optional in op.request if not optional}
    conn = new()
    conn.receive_data(encode_request(1, op, **fields))
    conn.start_turn(0)
    event = conn.next_event()
    assert isinstance(event, Request) and event.op is op
