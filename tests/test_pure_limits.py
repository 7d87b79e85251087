"""The agent's cached-retrieve peek against the general decoding, bytes only.

``peek_retrieve`` must take exactly the frames that ``FrameDecoder`` plus
``parse_request`` turn into a ``retrieve`` request, with the same fields, and
nothing else (docs/PROTOCOL.md sections 2 and 5.1).
"""

from __future__ import annotations

import struct

import msgpack  # type: ignore[import-untyped]
import pytest
from hypothesis import given
from hypothesis import strategies as st

from modelforge_credentials.protocol import (
    FrameDecoder,
    FrameError,
    Op,
    RequestError,
    encode_request,
    parse_request,
    peek_retrieve,
)
from testkit import frame


def general(data: bytes) -> tuple[int, str, str] | None:
    """What the general path makes of ``data``: a retrieve's fields, or None."""
    decoder = FrameDecoder()
    try:
        decoder.feed(data)
        message = decoder.next_message()
        if message is None or decoder.pending_bytes:
            return None
        request = parse_request(message)
    except (FrameError, RequestError):
        return None
    if request.op is not Op.RETRIEVE:
        return None
    assert request.provider is not None and request.key is not None
    return request.id, request.provider, request.key


def str_(text: str) -> bytes:
    return bytes(msgpack.packb(text))


def fixmap5(*entries: tuple[bytes, bytes]) -> bytes:
    return frame(b"\x85" + b"".join(k + v for k, v in entries))


GOOD = [
    (str_("v"), b"\x01"),
    (str_("id"), b"\x07"),
    (str_("op"), str_("retrieve")),
    (str_("provider"), str_("openai")),
    (str_("key"), str_("api_key")),
]


def replaced(index: int, value: bytes) -> list[tuple[bytes, bytes]]:
    entries = list(GOOD)
    entries[index] = (entries[index][0], value)
    return entries


FRAMES: dict[str, bytes] = {
    "well-formed": fixmap5(*GOOD),
    "v as uint8": fixmap5(*replaced(0, b"\xcc\x01")),
    "v true": fixmap5(*replaced(0, b"\xc3")),
    "v 1.0": fixmap5(*replaced(0, b"\xcb" + struct.pack(">d", 1.0))),
    "v float32 1.0": fixmap5(*replaced(0, b"\xca" + struct.pack(">f", 1.0))),
    "v 2": fixmap5(*replaced(0, b"\x02")),
    "id true": fixmap5(*replaced(1, b"\xc3")),
    "id 2**64-1": fixmap5(*replaced(1, b"\xcf" + b"\xff" * 8)),
    "id -1": fixmap5(*replaced(1, b"\xff")),
    "op bin": fixmap5(*replaced(2, b"\xc4\x08retrieve")),
    "provider bin": fixmap5(*replaced(3, b"\xc4\x06openai")),
    "key ext": fixmap5(*replaced(4, b"\xd4\x01\x00")),
    "key nil": fixmap5(*replaced(4, b"\xc0")),
    "a bin key": fixmap5(*GOOD[:4], (b"\xc4\x03key", str_("api_key"))),
    "duplicate key": fixmap5(*GOOD[:4], GOOD[0]),
    "trailing byte": frame(fixmap5(*GOOD)[4:] + b"\xc0"),
    "invalid utf-8": fixmap5(*replaced(4, b"\xa2\xff\xfe")),
    "op exists": fixmap5(*replaced(2, str_("exists"))),
    "length one short": fixmap5(*GOOD)[:-1],
    "two frames": fixmap5(*GOOD) * 2,
    "extra field": encode_request(9, Op.RETRIEVE, provider="p", key="k", extra=1),
}


@pytest.mark.parametrize("data", FRAMES.values(), ids=FRAMES.keys())
def test_the_peek_takes_what_the_general_path_calls_a_retrieve(data: bytes) -> None:
    peeked = peek_retrieve(data)
    if peeked is not None:
        assert peeked == general(data)
    elif data[4] == 0x85 and int.from_bytes(data[:4], "big") == len(data) - 4:
        # A lone five-entry map: the shape the peek is for. It may leave nothing
        # that the general path accepts as a retrieve.
        assert general(data) is None


def test_the_peek_refuses_v_true_and_v_one_point_zero() -> None:
    assert peek_retrieve(FRAMES["v true"]) is None
    assert peek_retrieve(FRAMES["v 1.0"]) is None
    assert peek_retrieve(FRAMES["well-formed"]) == (7, "openai", "api_key")


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=8),
)


@given(
    v=scalars,
    request_id=scalars,
    op=st.one_of(st.sampled_from(["retrieve", "exists", "hello"]), scalars),
    provider=scalars,
    key=scalars,
)
def test_the_peek_agrees_with_the_general_path(
    v: object, request_id: object, op: object, provider: object, key: object
) -> None:
    message = {"v": v, "id": request_id, "op": op, "provider": provider, "key": key}
    data = frame(msgpack.packb(message, use_bin_type=True))
    assert peek_retrieve(data) == general(data)
