"""Pure-bytes tests of the wire protocol: no sockets, no event loop."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path
from types import MappingProxyType

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelforge_credentials.protocol import (
    BAD_REQUEST,
    ERROR_CODES,
    HEADER_SIZE,
    LOCKED,
    MAX_FRAME_SIZE,
    OPS_ALLOWED_WHILE_LOCKED,
    PROTOCOL_VERSION,
    TOO_LARGE,
    UNKNOWN_OP,
    UNSUPPORTED_VERSION,
    EncodeError,
    FrameDecoder,
    FrameError,
    FrameTooLarge,
    Op,
    ProtocolError,
    RemoteError,
    Reply,
    ReplyError,
    Request,
    RequestError,
    encode_frame,
    encode_request,
    error_reply,
    expect_fields,
    ok_reply,
    parse_reply,
    parse_request,
    request_message,
)
from testkit import PROTOCOL_ERROR_CODES, frame

SECRET = "sk-SECRET-7f3a9c"
SRC = Path(__file__).resolve().parents[1] / "src"


def pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def decode_one(data: bytes) -> dict[str, object]:
    decoder = FrameDecoder()
    decoder.feed(data)
    message = decoder.next_message()
    assert message is not None
    assert decoder.next_message() is None
    assert decoder.pending_bytes == 0
    return message


def decode_error(data: bytes) -> FrameError:
    decoder = FrameDecoder()
    with pytest.raises(FrameError) as info:
        decoder.feed(data)
        decoder.next_message()
    assert decoder.failed
    assert decoder.pending_bytes == 0
    return info.value


_DROP = object()  # marks a field to leave out of the request map


def req(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {"v": 1, "id": 7, "op": "retrieve", "provider": "openai", "key": "k"}
    base.update(fields)
    return {name: value for name, value in base.items() if value is not _DROP}


def request_error(message: dict[str, object]) -> RequestError:
    with pytest.raises(RequestError) as info:
        parse_request(message)
    assert info.value.code in ERROR_CODES
    return info.value


# --- constants -------------------------------------------------------------


def test_constants() -> None:
    assert PROTOCOL_VERSION == 1
    assert MAX_FRAME_SIZE == 1_048_576
    assert HEADER_SIZE == 4
    assert ERROR_CODES == PROTOCOL_ERROR_CODES
    assert [op.value for op in Op] == [
        "hello",
        "store",
        "retrieve",
        "delete",
        "exists",
        "list",
        "status",
        "lock",
        "unlock",
    ]
    assert OPS_ALLOWED_WHILE_LOCKED == {Op.HELLO, Op.STATUS, Op.LOCK, Op.UNLOCK}
    assert "status" in OPS_ALLOWED_WHILE_LOCKED


def test_exception_hierarchy() -> None:
    for cls in (FrameError, EncodeError, FrameTooLarge, RequestError, ReplyError, RemoteError):
        assert issubclass(cls, ProtocolError)
    assert issubclass(FrameTooLarge, EncodeError)
    assert FrameTooLarge("x").code == TOO_LARGE


# --- encoding --------------------------------------------------------------


def test_encode_frame_layout() -> None:
    data = encode_frame({"id": 1, "ok": True})
    body = pack({"id": 1, "ok": True})
    assert data == struct.pack(">I", len(body)) + body


def test_encode_frame_accepts_any_mapping() -> None:
    assert encode_frame(MappingProxyType({"a": 1})) == encode_frame({"a": 1})


def test_encode_frame_rejects_non_str_keys() -> None:
    with pytest.raises(EncodeError):
        encode_frame({1: "x"})  # type: ignore[dict-item]


@pytest.mark.parametrize("bad", [object(), 2**64, -(2**63) - 1, "\udc80" + SECRET])
def test_encode_frame_unencodable(bad: object) -> None:
    with pytest.raises(EncodeError) as info:
        encode_frame({"value": bad})
    assert SECRET not in str(info.value)
    assert info.value.__cause__ is None and info.value.__context__ is None


def test_encode_frame_too_large() -> None:
    with pytest.raises(FrameTooLarge) as info:
        encode_frame({"value": "x" * MAX_FRAME_SIZE})
    assert info.value.code == TOO_LARGE


def test_exactly_max_frame_size_round_trips() -> None:
    # fixmap(1) + fixstr "p" (2 bytes) + str32 header (5 bytes) = 8 bytes overhead
    message = {"p": "x" * (MAX_FRAME_SIZE - 8)}
    data = encode_frame(message)
    assert len(data) == HEADER_SIZE + MAX_FRAME_SIZE
    assert decode_one(data) == message
    decoder = FrameDecoder()
    for start in range(0, len(data) - 1, 65536):
        decoder.feed(data[start : min(start + 65536, len(data) - 1)])
        assert decoder.next_message() is None
    assert decoder.pending_bytes == HEADER_SIZE + MAX_FRAME_SIZE - 1
    decoder.feed(data[-1:])
    assert decoder.next_message() == message


def test_encode_request_matches_request_message() -> None:
    expected = encode_frame(
        {"v": 1, "id": 3, "op": "retrieve", "provider": "openai", "key": "api_key"}
    )
    assert encode_request(3, Op.RETRIEVE, provider="openai", key="api_key") == expected
    assert request_message(3, "retrieve", provider="openai", key="api_key") == msgpack.unpackb(
        expected[4:]
    )


def test_request_message_reserved_fields() -> None:
    with pytest.raises(ValueError):
        request_message(1, Op.HELLO, v=2)


# --- framing: lengths ------------------------------------------------------


def test_zero_length_is_fatal() -> None:
    assert decode_error(b"\x00\x00\x00\x00").code == BAD_REQUEST


@pytest.mark.parametrize("length", [MAX_FRAME_SIZE + 1, 0xFFFFFFFF])
def test_over_limit_fails_on_header_alone(length: int) -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameError) as info:
        decoder.feed(struct.pack(">I", length))
    assert info.value.code == TOO_LARGE
    assert decoder.pending_bytes == 0


def test_over_limit_header_split_across_feeds() -> None:
    decoder = FrameDecoder()
    decoder.feed(b"\xff\xff")
    assert decoder.next_message() is None
    with pytest.raises(FrameError):
        decoder.feed(b"\xff\xff")


def test_truncated_frame_waits() -> None:
    data = encode_frame({"id": 1, "ok": True})
    decoder = FrameDecoder()
    decoder.feed(data[:3])
    assert decoder.next_message() is None
    decoder.feed(data[3:-1])
    assert decoder.next_message() is None
    assert decoder.pending_bytes == len(data) - 1
    decoder.feed(data[-1:])
    assert decoder.next_message() == {"id": 1, "ok": True}
    assert decoder.pending_bytes == 0


def test_one_byte_chunks() -> None:
    messages = [{"id": n, "ok": True, "value": SECRET * n} for n in range(5)]
    data = b"".join(encode_frame(m) for m in messages)
    decoder = FrameDecoder()
    received = []
    for i in range(len(data)):
        decoder.feed(data[i : i + 1])
        while (message := decoder.next_message()) is not None:
            received.append(message)
    assert received == messages
    assert decoder.pending_bytes == 0


def test_pipelined_frames_in_one_chunk() -> None:
    data = b"".join(encode_request(n, Op.EXISTS, provider="p", key=str(n)) for n in range(1000))
    decoder = FrameDecoder()
    decoder.feed(data + encode_request(1000, Op.HELLO)[:5])
    ids = []
    while (message := decoder.next_message()) is not None:
        ids.append(parse_request(message).id)
    assert ids == list(range(1000))
    assert decoder.pending_bytes == 5


def test_feed_accepts_bytearray_and_memoryview() -> None:
    data = encode_frame({"a": 1})
    decoder = FrameDecoder()
    decoder.feed(bytearray(data[:2]))
    decoder.feed(memoryview(data)[2:])
    assert decoder.next_message() == {"a": 1}


def test_valid_frame_before_fatal_frame_is_delivered() -> None:
    decoder = FrameDecoder()
    decoder.feed(encode_frame({"a": 1}) + frame(pack([1, 2])))
    assert decoder.next_message() == {"a": 1}
    with pytest.raises(FrameError):
        decoder.next_message()


def test_decoder_unusable_after_fatal_error() -> None:
    decoder = FrameDecoder()
    with pytest.raises(FrameError):
        decoder.feed(b"\x00\x00\x00\x00")
    with pytest.raises(FrameError):
        decoder.next_message()
    with pytest.raises(FrameError):
        decoder.feed(encode_frame({"a": 1}))
    assert decoder.pending_bytes == 0


# --- framing: bodies -------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b"\xc1",  # reserved, never valid msgpack
        b"not msgpack at all",
        pack([1, 2, 3]),
        pack(42),
        pack("a string"),
        pack(None),
        pack(b"bytes"),
        pack({1: "int key"}),
        pack({b"k": "bytes key"}),
        pack({None: 1}),
        pack({(1, 2): "array key"}),
        b"\x81\xa1a\xa2\xff\xfe",  # value: invalid UTF-8
        b"\x81\xa2\xff\xfe\x01",  # key: invalid UTF-8
        pack({"a": 1}) + b"\x00",  # trailing byte inside the frame
        pack({"a": 1}) + pack({"b": 2}),  # two maps in one frame
        b"\x82\xa1a\x01",  # map declares two entries, holds one
        b"\x82\xa1a\x01\xa1a\x02",  # duplicate key
        b"\xd4\xff\x01",  # malformed timestamp ext
    ],
)
def test_malformed_body_is_fatal(body: bytes) -> None:
    error = decode_error(frame(body))
    assert error.code == BAD_REQUEST


def test_deep_nesting_is_a_frame_error() -> None:
    body = b"\x81\xa1a" + b"\x91" * 100_000 + b"\xc0"
    assert len(body) <= MAX_FRAME_SIZE
    decode_error(frame(body))


def test_moderate_nesting_decodes_but_fails_field_check() -> None:
    nested: object = None
    for _ in range(400):
        nested = [nested]
    error = request_error(decode_one(encode_frame(req(provider=nested))))
    assert error.code == BAD_REQUEST and "provider" in str(error)


def test_ext_timestamp_and_bytes_values_decode() -> None:
    message = {"e": msgpack.ExtType(5, b"x"), "t": msgpack.Timestamp(1), "b": b"\x00"}
    assert decode_one(frame(pack(message))) == message


def test_error_message_never_echoes_body() -> None:
    error = decode_error(frame(pack({"value": SECRET}) + b"\x00"))
    assert SECRET not in str(error)
    assert error.__context__ is None
    error = decode_error(frame(b"\x81\xa5value\xb0" + SECRET.encode()[:15] + b"\xff"))
    assert SECRET[:10] not in str(error)


# --- requests --------------------------------------------------------------


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"op": "hello"}, Request(7, Op.HELLO)),
        ({"op": "store", "value": SECRET}, Request(7, Op.STORE, "openai", "k", SECRET)),
        ({"op": "retrieve"}, Request(7, Op.RETRIEVE, "openai", "k")),
        ({"op": "delete"}, Request(7, Op.DELETE, "openai", "k")),
        ({"op": "exists"}, Request(7, Op.EXISTS, "openai", "k")),
        ({"op": "list", "provider": _DROP}, Request(7, Op.LIST)),
        ({"op": "list", "provider": None}, Request(7, Op.LIST)),
        ({"op": "list"}, Request(7, Op.LIST, "openai")),
        ({"op": "status"}, Request(7, Op.STATUS)),
        ({"op": "lock"}, Request(7, Op.LOCK)),
        ({"op": "unlock", "passphrase": SECRET}, Request(7, Op.UNLOCK, passphrase=SECRET)),
        ({"future_field": [1, {"x": b"y"}]}, Request(7, Op.RETRIEVE, "openai", "k")),
        ({"id": 0}, Request(0, Op.RETRIEVE, "openai", "k")),
        ({"id": 2**64 - 1}, Request(2**64 - 1, Op.RETRIEVE, "openai", "k")),
    ],
)
def test_parse_valid_requests(message: dict[str, object], expected: Request) -> None:
    wire = req(**message)
    parsed = parse_request(decode_one(encode_frame(wire)))
    assert parsed == expected
    assert parse_request(parsed.to_message()) == parsed


def test_parse_request_leaves_unused_fields_out() -> None:
    parsed = parse_request(req(op="hello", value=SECRET))
    assert parsed.value is None and parsed.provider is None


@pytest.mark.parametrize(
    ("fields", "code", "request_id"),
    [
        ({"id": _DROP}, BAD_REQUEST, None),
        ({"id": "7"}, BAD_REQUEST, None),
        ({"id": True}, BAD_REQUEST, None),
        ({"id": False}, BAD_REQUEST, None),
        ({"id": -1}, BAD_REQUEST, None),
        ({"id": 2**64}, BAD_REQUEST, None),
        ({"id": 1.0}, BAD_REQUEST, None),
        ({"id": None}, BAD_REQUEST, None),
        ({"v": _DROP}, BAD_REQUEST, 7),
        ({"v": True}, BAD_REQUEST, 7),
        ({"v": "1"}, BAD_REQUEST, 7),
        ({"v": 1.0}, BAD_REQUEST, 7),
        ({"v": 2}, UNSUPPORTED_VERSION, 7),
        ({"v": 0}, UNSUPPORTED_VERSION, 7),
        ({"v": 2, "id": True}, UNSUPPORTED_VERSION, None),
        ({"op": _DROP}, BAD_REQUEST, 7),
        ({"op": 3}, BAD_REQUEST, 7),
        ({"op": b"retrieve"}, BAD_REQUEST, 7),
        ({"op": "fetch"}, UNKNOWN_OP, 7),
        ({"op": "RETRIEVE"}, UNKNOWN_OP, 7),
        ({"provider": _DROP}, BAD_REQUEST, 7),
        ({"provider": 5}, BAD_REQUEST, 7),
        ({"provider": None}, BAD_REQUEST, 7),
        ({"provider": True}, BAD_REQUEST, 7),
        ({"key": _DROP}, BAD_REQUEST, 7),
        ({"key": ["k"]}, BAD_REQUEST, 7),
        ({"op": "store"}, BAD_REQUEST, 7),
        ({"op": "store", "value": SECRET.encode()}, BAD_REQUEST, 7),
        ({"op": "store", "value": msgpack.ExtType(1, SECRET.encode())}, BAD_REQUEST, 7),
        ({"op": "store", "value": msgpack.Timestamp(1)}, BAD_REQUEST, 7),
        ({"op": "store", "value": None}, BAD_REQUEST, 7),
        ({"op": "list", "provider": 1}, BAD_REQUEST, 7),
        ({"op": "unlock"}, BAD_REQUEST, 7),
        ({"op": "unlock", "passphrase": SECRET.encode()}, BAD_REQUEST, 7),
    ],
)
def test_parse_invalid_requests(
    fields: dict[str, object], code: str, request_id: int | None
) -> None:
    error = request_error(req(**fields))
    assert (error.code, error.request_id) == (code, request_id)
    assert SECRET not in str(error) and SECRET not in repr(error)


def test_request_error_never_echoes_unknown_op() -> None:
    error = request_error(req(op=SECRET))
    assert error.code == UNKNOWN_OP
    assert SECRET not in str(error)


def test_request_repr_redacts_secrets() -> None:
    for request in (
        Request(1, Op.STORE, "openai", "api_key", SECRET),
        Request(2, Op.UNLOCK, passphrase=SECRET),
    ):
        text = repr(request)
        assert SECRET not in text and "<redacted>" in text
        assert SECRET not in str(request)
    assert "openai" in repr(Request(1, Op.STORE, "openai", "api_key", SECRET))


# --- replies ---------------------------------------------------------------


def test_ok_and_error_reply_shapes() -> None:
    assert ok_reply(3, value=None) == {"id": 3, "ok": True, "value": None}
    assert error_reply(None, LOCKED, "agent is locked") == {
        "id": None,
        "ok": False,
        "error": {"code": "locked", "message": "agent is locked"},
    }
    with pytest.raises(ValueError):
        error_reply(1, "nope", "x")
    with pytest.raises(ValueError):
        ok_reply(1, ok=False)


def test_parse_reply_success_and_failure() -> None:
    reply = parse_reply(decode_one(encode_frame(ok_reply(4, value=SECRET))))
    assert reply == Reply(4, True, {"value": SECRET})
    failure = parse_reply(decode_one(encode_frame(error_reply(None, LOCKED, "locked"))))
    assert failure == Reply(None, False, {}, LOCKED, "locked")


@pytest.mark.parametrize(
    "message",
    [
        {"id": 1},
        {"id": 1, "ok": 1},
        {"id": 1, "ok": "true"},
        {"ok": True},
        {"id": True, "ok": True},
        {"id": -1, "ok": True},
        {"id": "1", "ok": True},
        {"id": 1, "ok": False},
        {"id": 1, "ok": False, "error": "locked"},
        {"id": 1, "ok": False, "error": {"code": "locked"}},
        {"id": 1, "ok": False, "error": {"message": "x"}},
        {"id": 1, "ok": False, "error": {"code": 1, "message": "x"}},
    ],
)
def test_parse_reply_malformed(message: dict[str, object]) -> None:
    with pytest.raises(ReplyError):
        parse_reply(message)


def test_reply_repr_shows_names_only() -> None:
    text = repr(Reply(1, True, {"value": SECRET}))
    assert SECRET not in text and "value" in text
    assert "locked" in repr(Reply(1, False, {}, LOCKED, "agent is locked"))


VALID_RESULTS: dict[Op, dict[str, object]] = {
    Op.HELLO: {"protocol": 1, "agent": "0.1.0", "backend": "keyring", "locked": False},
    Op.STORE: {},
    Op.RETRIEVE: {"value": SECRET},
    Op.DELETE: {"deleted": False},
    Op.EXISTS: {"exists": True},
    Op.LIST: {"items": [["openai", "api_key"], ["anthropic", "api_key"]]},
    Op.STATUS: {
        "locked": True,
        "backend": "file",
        "protection": "passphrase",
        "cached": 0,
        "idle_timeout": None,
        "pid": 1234,
        "uptime": 1.5,
        "extra": {"anything": [1]},
    },
    Op.LOCK: {},
    Op.UNLOCK: {},
}


@pytest.mark.parametrize("op", list(Op))
def test_expect_fields_accepts_valid_results(op: Op) -> None:
    wire = decode_one(encode_frame(ok_reply(9, **VALID_RESULTS[op])))
    assert expect_fields(parse_reply(wire), op) == VALID_RESULTS[op]


def test_expect_fields_retrieve_absent() -> None:
    assert expect_fields(Reply(1, True, {"value": None}), Op.RETRIEVE) == {"value": None}


@pytest.mark.parametrize(
    ("op", "fields"),
    [
        (Op.RETRIEVE, {}),
        (Op.RETRIEVE, {"value": SECRET.encode()}),
        (Op.RETRIEVE, {"value": 1}),
        (Op.DELETE, {"deleted": 1}),
        (Op.EXISTS, {"exists": None}),
        (Op.LIST, {"items": [["openai"]]}),
        (Op.LIST, {"items": [["openai", 1]]}),
        (Op.LIST, {"items": "openai"}),
        (Op.LIST, {"items": [["openai", "k", SECRET]]}),
        (Op.HELLO, {**VALID_RESULTS[Op.HELLO], "protocol": True}),
        (Op.HELLO, {**VALID_RESULTS[Op.HELLO], "locked": 0}),
        (Op.STATUS, {**VALID_RESULTS[Op.STATUS], "cached": -1}),
        (Op.STATUS, {**VALID_RESULTS[Op.STATUS], "idle_timeout": float("nan")}),
        (Op.STATUS, {**VALID_RESULTS[Op.STATUS], "uptime": None}),
        (Op.STATUS, {**VALID_RESULTS[Op.STATUS], "pid": "1"}),
    ],
)
def test_expect_fields_rejects_bad_results(op: Op, fields: dict[str, object]) -> None:
    with pytest.raises(ReplyError) as info:
        expect_fields(Reply(1, True, fields), op)
    assert SECRET not in str(info.value)


def test_expect_fields_raises_remote_error() -> None:
    with pytest.raises(RemoteError) as info:
        expect_fields(Reply(5, False, {}, LOCKED, "agent is locked"), Op.RETRIEVE)
    assert (info.value.code, info.value.request_id, str(info.value)) == (
        LOCKED,
        5,
        "agent is locked",
    )


# --- property tests --------------------------------------------------------

# The first text draw in a fresh checkout builds Hypothesis's Unicode table,
# which trips the too_slow health check on whichever test runs first.
property_settings = settings(suppress_health_check=[HealthCheck.too_slow])
texts = st.text(max_size=40)
uint64 = st.integers(min_value=0, max_value=2**64 - 1)


@st.composite
def requests(draw: st.DrawFn) -> Request:
    op = draw(st.sampled_from(list(Op)))
    provider = key = value = passphrase = None
    if op in (Op.STORE, Op.RETRIEVE, Op.DELETE, Op.EXISTS):
        provider, key = draw(texts), draw(texts)
    if op is Op.STORE:
        value = draw(texts)
    if op is Op.LIST:
        provider = draw(st.none() | texts)
    if op is Op.UNLOCK:
        passphrase = draw(texts)
    return Request(draw(uint64), op, provider, key, value, passphrase)


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | texts
    | st.binary(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)
result_fields = st.dictionaries(
    texts.filter(lambda name: name not in ("id", "ok", "error")), msgpack_values, max_size=5
)


@property_settings
@given(request=requests(), extra=st.dictionaries(st.just("x-future"), msgpack_values))
def test_request_round_trip(request: Request, extra: dict[str, object]) -> None:
    wire = encode_frame({**request.to_message(), **extra})
    assert parse_request(decode_one(wire)) == request
    fields = {k: v for k, v in request.to_message().items() if k not in ("v", "id", "op")}
    assert encode_request(request.id, request.op, **fields) == encode_frame(request.to_message())


@property_settings
@given(request_id=uint64, fields=result_fields)
def test_ok_reply_round_trip(request_id: int, fields: dict[str, object]) -> None:
    reply = parse_reply(decode_one(encode_frame(ok_reply(request_id, **fields))))
    assert reply == Reply(request_id, True, fields)


@property_settings
@given(
    request_id=st.none() | uint64,
    code=st.sampled_from(sorted(ERROR_CODES)),
    message=texts,
)
def test_error_reply_round_trip(request_id: int | None, code: str, message: str) -> None:
    reply = parse_reply(decode_one(encode_frame(error_reply(request_id, code, message))))
    assert reply == Reply(request_id, False, {}, code, message)


def _segments() -> st.SearchStrategy[bytes]:
    random_bytes = st.binary(max_size=64)
    framed_random = st.binary(min_size=1, max_size=64).map(frame)
    framed_map = result_fields.map(lambda fields: encode_frame(ok_reply(1, **fields)))
    framed_request = requests().map(lambda r: encode_frame(r.to_message()))
    return st.one_of(random_bytes, framed_random, framed_map, framed_request)


@settings(property_settings, max_examples=300)
@given(segments=st.lists(_segments(), max_size=8), cuts=st.lists(st.integers(0, 2000)))
def test_arbitrary_bytes_only_raise_protocol_errors(segments: list[bytes], cuts: list[int]) -> None:
    data = b"".join(segments)
    points = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    decoder = FrameDecoder()
    try:
        for start, end in zip(points, points[1:], strict=False):
            decoder.feed(data[start:end])
            while (message := decoder.next_message()) is not None:
                for parse in (parse_request, parse_reply):
                    try:
                        parse(message)
                    except ProtocolError:
                        pass
            assert decoder.pending_bytes < HEADER_SIZE + MAX_FRAME_SIZE
    except ProtocolError:
        assert decoder.failed
        assert decoder.pending_bytes == 0


# --- import hygiene --------------------------------------------------------


def test_protocol_import_is_light() -> None:
    code = (
        "import sys; import modelforge_credentials.protocol; "
        "print(sorted(m for m in ('asyncio', 'socket', 'selectors', 'threading') "
        "if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"
