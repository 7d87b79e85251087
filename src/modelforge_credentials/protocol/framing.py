"""Length-prefixed msgpack frames: encoding and an incremental decoder.

A frame is a 4-byte unsigned big-endian length ``L`` (1 <= L <= MAX_FRAME_SIZE)
followed by ``L`` bytes holding exactly one msgpack map with string keys.
Nothing here performs I/O: bytes go in, dicts come out.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

import msgpack  # type: ignore[import-untyped]

from .errors import TOO_LARGE, EncodeError, FrameError, FrameTooLarge

# The thin client imports this module: typing and dataclasses stay out of
# its start-up (they cost more than the whole rest of the client).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import NoReturn

HEADER_SIZE = 4
MAX_FRAME_SIZE = 1_048_576

_HEADER = struct.Struct(">I")
_STR_ONLY = frozenset({str})  # key types allowed: exactly str (not a subclass, not bytes)
_packb = msgpack.packb
_unpackb = msgpack.unpackb


def encode_frame(message: Mapping[str, object]) -> bytes:
    """Encode ``message`` as one frame (length prefix + msgpack map).

    Raises :class:`FrameTooLarge` when the body would exceed ``MAX_FRAME_SIZE``
    and :class:`EncodeError` when msgpack cannot represent the message.
    """
    if type(message) is not dict:
        # msgpack packs only real dicts as maps; other Mappings would fail.
        message = dict(message)
    for key in message:
        if not isinstance(key, str):
            raise EncodeError("message keys must be str")
    return encode_str_keyed_dict(message)


def encode_str_keyed_dict(message: dict[str, object]) -> bytes:
    """``encode_frame`` for a dict whose keys are known to be str (keyword
    arguments, literals): skips the key scan on the client's hot path."""
    failure: str
    try:
        body: bytes = _packb(message, use_bin_type=True, datetime=False)
    except Exception as err:
        # Raised outside this block so the original exception, which may hold
        # the offending (possibly secret) value, is not chained.
        failure = type(err).__name__
    else:
        size = len(body)
        if size > MAX_FRAME_SIZE:
            raise FrameTooLarge(
                f"encoded message is {size} bytes, over the {MAX_FRAME_SIZE}-byte frame limit"
            )
        return _HEADER.pack(size) + body
    raise EncodeError(f"message cannot be encoded as msgpack ({failure})")


def _declared_map_len(body: bytes | bytearray | memoryview) -> int:
    """The entry count written in the map header at the start of ``body``."""
    first = body[0]
    if 0x80 <= first <= 0x8F:
        return first & 0x0F
    if first == 0xDE:
        return int.from_bytes(body[1:3], "big")
    if first == 0xDF:
        return int.from_bytes(body[1:5], "big")
    return -1


def _describe_decode_failure(err: Exception) -> str:
    # The decoder's own exception text is not reused: some carry the decoded
    # data (ExtraData.unpacked) and the pure-Python fallback differs in wording.
    if isinstance(err, msgpack.ExtraData):
        return "trailing bytes after the msgpack map"
    if isinstance(err, UnicodeDecodeError):
        return "a msgpack string is not valid UTF-8"
    if isinstance(err, (msgpack.StackError, RecursionError)):
        return "msgpack nesting is too deep"
    return f"frame body is not valid msgpack ({type(err).__name__})"


def decode_body(body: bytes | bytearray | memoryview) -> dict[str, object]:
    """The message in one frame body: exactly one msgpack map with distinct str keys.

    Raises :class:`FrameError` (``bad_request``) otherwise. The one body check,
    shared by :class:`FrameDecoder` and :func:`~.request.peek_retrieve`.
    """
    reason: str
    try:
        decoded: object = _unpackb(body, raw=False, strict_map_key=False)
    except Exception as err:
        # msgpack's C and pure-Python implementations raise different
        # types (ValueError family, TypeError for unhashable keys,
        # RecursionError); all of them mean the same thing here.
        reason = _describe_decode_failure(err)
    else:
        if type(decoded) is not dict:
            kind = "nil" if decoded is None else type(decoded).__name__
            reason = f"frame body is a msgpack {kind}, not a map"
        elif not {*map(type, decoded)} <= _STR_ONLY:
            reason = "message keys must be msgpack strings"
        elif len(decoded) != _declared_map_len(body):
            reason = "message has duplicate keys"
        else:
            return decoded
    # Raised here rather than inside ``except`` so no exception that may
    # reference decoded data is attached as __context__.
    raise FrameError(reason)


class FrameDecoder:
    """Incremental frame decoder: ``feed`` bytes, then call ``next_message``
    until it returns None.

    The decoder holds at most one incomplete frame (fewer than
    ``HEADER_SIZE + MAX_FRAME_SIZE`` bytes) plus whatever was fed since the
    caller last drained it, so a caller that drains after every ``feed``
    never buffers more than one frame plus one read.  A declared length over
    the limit is rejected as soon as the four header bytes arrive.

    Any :class:`FrameError` is fatal: the decoder drops its buffer and every
    later call raises again.
    """

    __slots__ = ("_buf", "_pos", "_error")

    def __init__(self) -> None:
        self._buf = bytearray()
        # Consumed frames are skipped by offset and compacted only when the
        # decoder runs dry, so pipelined frames cost no repeated copying.
        self._pos = 0
        self._error: FrameError | None = None

    @property
    def pending_bytes(self) -> int:
        """Bytes received but not yet returned as a message."""
        return len(self._buf) - self._pos

    @property
    def failed(self) -> bool:
        """True once a fatal :class:`FrameError` has been raised."""
        return self._error is not None

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes.  Raises :class:`FrameError` if the frame at
        the head of the buffer declares an invalid length (or an earlier
        call failed)."""
        if self._error is not None:
            self._raise_again()
        self._buf += data
        if len(self._buf) - self._pos >= HEADER_SIZE:
            self._check_length(_HEADER.unpack_from(self._buf, self._pos)[0])

    def next_message(self) -> dict[str, object] | None:
        """Return the next complete message, or None until more bytes arrive.

        Raises :class:`FrameError` (fatal) for a bad length or a body that is
        not one msgpack map with distinct string keys.
        """
        if self._error is not None:
            self._raise_again()
        buf = self._buf
        start = self._pos
        available = len(buf) - start
        if available < HEADER_SIZE:
            self._compact()
            return None
        length: int = _HEADER.unpack_from(buf, start)[0]
        self._check_length(length)
        end = start + HEADER_SIZE + length
        if end > len(buf):
            self._compact()
            return None
        body = buf[start + HEADER_SIZE : end]
        if end == len(buf):
            buf.clear()
            self._pos = 0
        else:
            self._pos = end
        return self._decode(body)

    def _check_length(self, length: int) -> None:
        if length == 0:
            self._fail(FrameError("frame length is 0; a frame holds one msgpack map"))
        if length > MAX_FRAME_SIZE:
            self._fail(
                FrameError(
                    f"frame length {length} exceeds the {MAX_FRAME_SIZE}-byte limit",
                    code=TOO_LARGE,
                )
            )

    def _decode(self, body: bytearray) -> dict[str, object]:
        try:
            return decode_body(body)
        except FrameError as err:
            failure = err
        self._fail(failure)

    def _compact(self) -> None:
        if self._pos:
            del self._buf[: self._pos]
            self._pos = 0

    def _fail(self, error: FrameError) -> NoReturn:
        self._error = error
        self._buf = bytearray()
        self._pos = 0
        raise error

    def _raise_again(self) -> NoReturn:
        assert self._error is not None
        raise FrameError(
            f"decoder unusable after a fatal error: {self._error.message}",
            code=self._error.code,
        )
