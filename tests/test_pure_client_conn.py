"""protocol.client_conn.ClientConnection: request ids, replies matched in
order, and what makes a connection unusable; bytes only, no socket."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelforge_credentials.client import operations
from modelforge_credentials.errors import (
    AgentProtocolError,
    CredentialLockedError,
    CredentialValidationError,
)
from modelforge_credentials.protocol import (
    EncodeError,
    FrameError,
    Op,
    RemoteError,
    ReplyError,
    encode_frame,
    error_reply,
    ok_reply,
)
from modelforge_credentials.protocol.client_conn import ClientConnection


def test_ids_count_up_and_replies_settle_the_oldest_first() -> None:
    conn = ClientConnection()
    first, _ = conn.send(Op.RETRIEVE, provider="p", key="k")
    second, _ = conn.send(Op.EXISTS, provider="p", key="k")
    assert (first, second) == (1, 2) and conn.waiting == 2
    both = encode_frame(ok_reply(1, value="v")) + encode_frame(ok_reply(2, exists=True))
    settled = conn.receive_data(both[:7])
    assert settled == []  # a partial frame settles nothing
    settled = conn.receive_data(both[7:])
    assert settled == [(1, {"value": "v"}), (2, {"exists": True})]
    assert conn.waiting == 0


def test_a_failure_reply_is_that_request_s_outcome_and_the_stream_goes_on() -> None:
    conn = ClientConnection()
    conn.send(Op.RETRIEVE, provider="p", key="k")
    conn.send(Op.HELLO)
    [(one, failure)] = conn.receive_data(encode_frame(error_reply(1, "locked", "run unlock")))
    assert one == 1 and isinstance(failure, RemoteError) and failure.code == "locked"
    with pytest.raises(CredentialLockedError, match="run unlock"):
        operations.result_of(failure)
    hello = ok_reply(2, protocol=1, agent="x", backend="b", locked=False)
    assert conn.receive_data(encode_frame(hello))[0][0] == 2


def test_a_reply_that_does_not_fit_its_operation_fails_only_that_request() -> None:
    conn = ClientConnection()
    conn.send(Op.DELETE, provider="p", key="k")
    [(_, outcome)] = conn.receive_data(encode_frame(ok_reply(1, deleted="yes")))
    assert isinstance(outcome, ReplyError)
    with pytest.raises(AgentProtocolError, match="deleted"):
        operations.result_of(outcome)


def test_a_reply_nobody_asked_for_makes_the_connection_unusable() -> None:
    conn = ClientConnection()
    conn.send(Op.LOCK)
    # Its own reply and one more in the same bytes: the first still settles.
    assert conn.receive_data(encode_frame(ok_reply(1)) * 2) == [(1, {})]
    assert isinstance(conn.broken, ReplyError) and "nobody asked for" in str(conn.broken)
    with pytest.raises(ReplyError, match="nobody asked for"):
        conn.receive_data(b"")


def test_a_reply_for_another_request_than_the_oldest_is_a_desync() -> None:
    conn = ClientConnection()
    conn.send(Op.LOCK)
    conn.send(Op.LOCK)
    assert conn.receive_data(encode_frame(ok_reply(2))) == []
    assert "answered request 2 while request 1 was next" in str(conn.broken)
    # The agent's own refusal of the stream (id nil) says why.
    conn = ClientConnection()
    conn.send(Op.LOCK)
    conn.receive_data(encode_frame(error_reply(None, "too_large", "frame length 9 too big")))
    assert "frame length 9 too big" in str(conn.broken)


def test_bytes_that_cannot_be_framed_raise() -> None:
    conn = ClientConnection()
    conn.send(Op.LOCK)
    assert conn.receive_data(b"\x00\x00\x00\x00") == []
    assert isinstance(conn.broken, FrameError)


def test_fail_all_forgets_every_waiting_request() -> None:
    conn = ClientConnection()
    for _ in range(3):
        conn.send(Op.HELLO)
    assert conn.fail_all() == [1, 2, 3]
    assert conn.waiting == 0
    conn.receive_data(encode_frame(ok_reply(1)))  # a late reply is now for nobody
    assert isinstance(conn.broken, ReplyError)


def test_a_request_that_cannot_be_encoded_leaves_nothing_waiting() -> None:
    conn = ClientConnection()
    with pytest.raises(EncodeError):
        conn.send(Op.STORE, provider="p", key="k", value=object())
    assert conn.waiting == 0
    assert conn.send(Op.HELLO)[0] == 1  # the id was not used up


def test_the_agent_s_code_becomes_its_typed_error() -> None:
    conn = ClientConnection()
    conn.send(Op.RETRIEVE, provider="p", key="k")
    [(_, outcome)] = conn.receive_data(encode_frame(error_reply(1, "invalid", "bad name")))
    assert isinstance(outcome, RemoteError)
    error = operations.failure_of(outcome)
    assert type(error) is CredentialValidationError and str(error) == "bad name"


@given(st.lists(st.integers(min_value=1, max_value=30), max_size=20))
def test_any_split_of_the_replies_settles_each_request_once_in_order(cuts: list[int]) -> None:
    conn = ClientConnection()
    for _ in range(10):
        conn.send(Op.RETRIEVE, provider="p", key="k")
    stream = b"".join(encode_frame(ok_reply(i, value=f"v{i}")) for i in range(1, 11))
    settled: list[int] = []
    position = 0
    for cut in [*cuts, len(stream)]:
        settled += [rid for rid, _ in conn.receive_data(stream[position : position + cut])]
        position += cut
        if position >= len(stream):
            break
    assert settled == list(range(1, 11))
