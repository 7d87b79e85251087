"""Wire protocol of the model-forge credential agent (version 1), without I/O.

Frames are a 4-byte big-endian length followed by one msgpack map.  This
package turns bytes into validated :class:`Request`/:class:`Reply` objects and
back; the daemon, the blocking client and the asyncio client each add their
own I/O around it.  See docs/PROTOCOL.md for the specification.
"""

from .errors import (
    BAD_PASSPHRASE,
    BAD_REQUEST,
    ERROR_CODES,
    INTERNAL,
    INVALID,
    LOCKED,
    READ_ONLY,
    TOO_LARGE,
    UNAVAILABLE,
    UNKNOWN_OP,
    UNSUPPORTED_VERSION,
    EncodeError,
    FrameError,
    FrameTooLarge,
    ProtocolError,
    RemoteError,
    ReplyError,
    RequestError,
)
from .framing import HEADER_SIZE, MAX_FRAME_SIZE, FrameDecoder, encode_frame
from .ops import OPS_ALLOWED_WHILE_LOCKED, PROTOCOL_VERSION, AnyOp, Op, TeamOp
from .reply import Reply, error_reply, expect_fields, ok_reply, parse_reply
from .request import Request, encode_request, parse_request, peek_retrieve, request_message

__all__ = [
    "BAD_PASSPHRASE",
    "BAD_REQUEST",
    "ERROR_CODES",
    "HEADER_SIZE",
    "INTERNAL",
    "INVALID",
    "LOCKED",
    "MAX_FRAME_SIZE",
    "OPS_ALLOWED_WHILE_LOCKED",
    "PROTOCOL_VERSION",
    "READ_ONLY",
    "TOO_LARGE",
    "UNAVAILABLE",
    "UNKNOWN_OP",
    "UNSUPPORTED_VERSION",
    "EncodeError",
    "FrameDecoder",
    "FrameError",
    "FrameTooLarge",
    "AnyOp",
    "Op",
    "ProtocolError",
    "RemoteError",
    "Reply",
    "ReplyError",
    "Request",
    "RequestError",
    "TeamOp",
    "encode_frame",
    "encode_request",
    "error_reply",
    "expect_fields",
    "ok_reply",
    "parse_reply",
    "parse_request",
    "peek_retrieve",
    "request_message",
]
