"""Error codes of protocol version 1 and the exceptions of the protocol layer.

Every exception here derives from :class:`ProtocolError` and carries the
``code`` a server would put in the failure reply for it.  No message built by
this package ever includes a field's value, because values may be secrets:
messages name the field and the expected type only.
"""

from __future__ import annotations

BAD_REQUEST = "bad_request"
UNSUPPORTED_VERSION = "unsupported_version"
UNKNOWN_OP = "unknown_op"
INVALID = "invalid"
LOCKED = "locked"
BAD_PASSPHRASE = "bad_passphrase"
READ_ONLY = "read_only"
UNAVAILABLE = "unavailable"
TOO_LARGE = "too_large"
INTERNAL = "internal"

ERROR_CODES: frozenset[str] = frozenset(
    {
        BAD_REQUEST,
        UNSUPPORTED_VERSION,
        UNKNOWN_OP,
        INVALID,
        LOCKED,
        BAD_PASSPHRASE,
        READ_ONLY,
        UNAVAILABLE,
        TOO_LARGE,
        INTERNAL,
    }
)


class ProtocolError(Exception):
    """Root of every error raised by ``modelforge_credentials.protocol``.

    ``code`` is the wire error code that describes the failure; a server can
    answer with ``error_reply(request_id, err.code, str(err))`` because the
    message never contains a secret.
    """

    code: str = INTERNAL

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class FrameError(ProtocolError):
    """Raised by :class:`FrameDecoder` when the byte stream cannot be framed.

    A declared length of 0 or over ``MAX_FRAME_SIZE`` (code ``too_large``), or
    a body that is not exactly one msgpack map with distinct string keys (code
    ``bad_request``).  This is fatal for the connection: send one failure reply
    with id nil, then close.  The decoder refuses further use.
    """

    code = BAD_REQUEST


class EncodeError(ProtocolError):
    """Raised by ``encode_frame`` when a message cannot be encoded.

    Non-string keys, values msgpack cannot represent (integers beyond 64 bits,
    strings with lone surrogates, arbitrary objects).  Nothing was written, so
    the connection is still usable; a server should answer ``internal``.
    """

    code = INTERNAL


class FrameTooLarge(EncodeError):
    """Raised by ``encode_frame`` when the encoded body exceeds ``MAX_FRAME_SIZE``.

    Nothing was written; a server answers the request with ``too_large``
    instead, a client should refuse to send the request.
    """

    code = TOO_LARGE


class RequestError(ProtocolError):
    """Raised by ``parse_request`` for a well-framed map that is not a valid request.

    Not fatal: answer ``error_reply(err.request_id, err.code, str(err))`` and
    keep reading.  ``request_id`` is None when the map had no usable ``id``.
    """

    def __init__(self, message: str, *, code: str, request_id: int | None) -> None:
        super().__init__(message, code=code)
        self.request_id = request_id


class ReplyError(ProtocolError):
    """Raised on the client side when the agent sent a malformed reply.

    A missing or mistyped ``ok``/``id``/``error``, or result fields that do
    not match the operation.  The agent and client disagree about the
    protocol: drop the connection and report it; retrying will not help.
    """

    code = INTERNAL


class RemoteError(ProtocolError):
    """Raised by ``expect_fields`` when the agent answered with a failure reply.

    ``code`` is the agent's error code (treat codes outside ``ERROR_CODES``,
    sent by a newer agent, like ``internal``) and ``request_id`` the reply's
    id.  Translate it into the caller's own error type.
    """

    def __init__(self, message: str, *, code: str, request_id: int | None) -> None:
        super().__init__(message, code=code)
        self.request_id = request_id
