"""Requests: building them (clients) and validating them (the agent)."""

from __future__ import annotations

from collections.abc import Mapping

from .errors import BAD_REQUEST, UNKNOWN_OP, UNSUPPORTED_VERSION, ProtocolError, RequestError
from .framing import HEADER_SIZE, MAX_FRAME_SIZE, decode_body, encode_str_keyed_dict
from .ops import OPS_BY_NAME, PROTOCOL_VERSION, AnyOp, Op

# The thin client imports this module: typing and dataclasses stay out of
# its start-up (they cost more than the whole rest of the client).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TypeGuard

_UINT64_LIMIT = 1 << 64
_MISSING = object()
_RESERVED_REQUEST_KEYS = frozenset({"v", "id", "op"})
_FIXMAP_5 = 0x85


def _type_name(value: object) -> str:
    return "nil" if value is None else type(value).__name__


def _is_uint64(value: object) -> TypeGuard[int]:
    # ``type(...) is int`` on purpose: bool is an int subclass and must not
    # pass as an id.
    return type(value) is int and 0 <= value < _UINT64_LIMIT


class Request:
    """A validated request (immutable).  Fields an operation does not take are None."""

    __slots__ = (
        "id",
        "op",
        "provider",
        "key",
        "value",
        "passphrase",
        "team",
        "method",
        "secret",
        "login_name",
    )

    id: int
    op: AnyOp
    provider: str | None
    key: str | None
    value: str | None
    passphrase: str | None
    team: str | None
    method: str | None
    secret: str | None
    login_name: str | None

    def __init__(
        self,
        id: int,
        op: AnyOp,
        provider: str | None = None,
        key: str | None = None,
        value: str | None = None,
        passphrase: str | None = None,
        team: str | None = None,
        method: str | None = None,
        secret: str | None = None,
        login_name: str | None = None,
    ) -> None:
        init = object.__setattr__
        init(self, "id", id)
        init(self, "op", op)
        init(self, "provider", provider)
        init(self, "key", key)
        init(self, "value", value)
        init(self, "passphrase", passphrase)
        init(self, "team", team)
        init(self, "method", method)
        init(self, "secret", secret)
        init(self, "login_name", login_name)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Request is immutable; cannot set {name!r}")

    def _astuple(self) -> tuple[object, ...]:
        return (
            self.id,
            self.op,
            self.provider,
            self.key,
            self.value,
            self.passphrase,
            self.team,
            self.method,
            self.secret,
            self.login_name,
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Request):
            return NotImplemented
        return self._astuple() == other._astuple()

    def __hash__(self) -> int:
        return hash(self._astuple())

    def __repr__(self) -> str:
        parts = [f"id={self.id}", f"op={self.op.value!r}"]
        if self.provider is not None:
            parts.append(f"provider={self.provider!r}")
        if self.key is not None:
            parts.append(f"key={self.key!r}")
        if self.value is not None:
            parts.append("value=<redacted>")
        if self.passphrase is not None:
            parts.append("passphrase=<redacted>")
        if self.team is not None:
            parts.append(f"team={self.team!r}")
        if self.method is not None:
            parts.append(f"method={self.method!r}")
        if self.secret is not None:
            parts.append("secret=<redacted>")
        if self.login_name is not None:
            parts.append(f"login_name={self.login_name!r}")
        return f"Request({', '.join(parts)})"

    def to_message(self) -> dict[str, object]:
        """The request map that :func:`parse_request` turns back into ``self``."""
        fields: dict[str, object] = {}
        for name, optional in self.op.request:
            field_value = getattr(self, name)
            if field_value is not None or optional:
                fields[name] = field_value
        return request_message(self.id, self.op, **fields)


def parse_request(message: Mapping[str, object]) -> Request:
    """Validate a decoded request map.

    Checks, in order: ``v`` (so a newer client learns about the version even
    if its ids look different), ``id``, ``op``, then the operation's fields.
    Unknown extra fields are ignored.  Raises :class:`RequestError` with the
    reply code and the request id (None when ``id`` is unusable).
    """
    request_id, op = _checked_header(message)
    values = _checked_fields(message, request_id, op)
    return Request(
        request_id,
        op,
        values.get("provider"),
        values.get("key"),
        values.get("value"),
        values.get("passphrase"),
        values.get("team"),
        values.get("method"),
        values.get("secret"),
        values.get("login_name"),
    )


def peek_retrieve(data: bytes) -> tuple[int, str, str] | None:
    """``(id, provider, key)`` when ``data`` is exactly one frame holding a
    ``retrieve`` request; None for anything else.

    An agent's hot path: the request a tool sends on every call, without a
    decoder's buffer or a :class:`Request`. The checks are the general ones
    (:func:`~.framing.decode_body`, then those of :func:`parse_request`), so a
    None only means "not taken here": hand ``data`` to a :class:`FrameDecoder`
    and :func:`parse_request`, which give the answer, error or not.
    """
    # Cheap exits first, for speed only: a five-entry map (v, id, op,
    # provider, key) as clients send it, filling the frame exactly.
    if len(data) <= HEADER_SIZE or data[HEADER_SIZE] != _FIXMAP_5:
        return None
    if int.from_bytes(data[:HEADER_SIZE], "big") != len(data) - HEADER_SIZE:
        return None
    if len(data) - HEADER_SIZE > MAX_FRAME_SIZE:
        return None
    try:
        message = decode_body(data[HEADER_SIZE:])
        request_id, op = _checked_header(message)
        if op is not Op.RETRIEVE:
            return None
        values = _checked_fields(message, request_id, op)
    except ProtocolError:
        return None
    return request_id, values["provider"], values["key"]


def _checked_header(message: Mapping[str, object]) -> tuple[int, AnyOp]:
    """``v``, ``id`` and ``op``, checked in the order docs/PROTOCOL.md 5.1 gives."""
    raw_id = message.get("id", _MISSING)
    request_id = raw_id if _is_uint64(raw_id) else None

    version = message.get("v", _MISSING)
    if version is _MISSING:
        raise RequestError(
            "request has no 'v' (protocol version) field", code=BAD_REQUEST, request_id=request_id
        )
    if type(version) is not int:
        raise RequestError(
            f"'v' must be an int, got {_type_name(version)}",
            code=BAD_REQUEST,
            request_id=request_id,
        )
    if version != PROTOCOL_VERSION:
        raise RequestError(
            f"protocol version {version} is not supported; this agent speaks "
            f"version {PROTOCOL_VERSION}",
            code=UNSUPPORTED_VERSION,
            request_id=request_id,
        )

    if request_id is None:
        problem = (
            "request has no 'id' field"
            if raw_id is _MISSING
            else f"'id' must be an unsigned int below 2**64, got {_type_name(raw_id)}"
        )
        raise RequestError(problem, code=BAD_REQUEST, request_id=None)

    op_name = message.get("op", _MISSING)
    if op_name is _MISSING:
        raise RequestError("request has no 'op' field", code=BAD_REQUEST, request_id=request_id)
    if not isinstance(op_name, str):
        raise RequestError(
            f"'op' must be a str, got {_type_name(op_name)}",
            code=BAD_REQUEST,
            request_id=request_id,
        )
    op = OPS_BY_NAME.get(op_name)
    if op is None:
        # The unknown name is not echoed: it is peer-controlled text.
        raise RequestError(
            f"unknown operation; known operations: {', '.join(OPS_BY_NAME)}",
            code=UNKNOWN_OP,
            request_id=request_id,
        )
    return request_id, op


def _checked_fields(message: Mapping[str, object], request_id: int, op: AnyOp) -> dict[str, str]:
    """The operation's fields (section 4 of docs/PROTOCOL.md), each checked to be a str."""
    values: dict[str, str] = {}
    for name, optional in op.request:
        field_value = message.get(name)
        if field_value is None:
            if optional:
                continue
            raise RequestError(
                f"'{op.value}' needs a '{name}' field (str)"
                if name not in message
                else f"'{name}' must be a str, got nil",
                code=BAD_REQUEST,
                request_id=request_id,
            )
        if not isinstance(field_value, str):
            raise RequestError(
                f"'{name}' must be a str{' or nil' if optional else ''}, "
                f"got {_type_name(field_value)}",
                code=BAD_REQUEST,
                request_id=request_id,
            )
        values[name] = field_value
    return values


def request_message(request_id: int, op: AnyOp | str, **fields: object) -> dict[str, object]:
    """Build a request map: ``{"v": 1, "id": request_id, "op": op, **fields}``.

    No field validation happens here (the agent does it); ``fields`` must not
    repeat ``v``, ``id`` or ``op`` (ValueError).
    """
    if not _RESERVED_REQUEST_KEYS.isdisjoint(fields):
        raise ValueError("fields must not include 'v', 'id' or 'op'")
    return {"v": PROTOCOL_VERSION, "id": request_id, "op": str(op), **fields}


def encode_request(request_id: int, op: AnyOp | str, **fields: object) -> bytes:
    """``encode_frame(request_message(request_id, op, **fields))`` in one call."""
    if not _RESERVED_REQUEST_KEYS.isdisjoint(fields):
        raise ValueError("fields must not include 'v', 'id' or 'op'")
    return encode_str_keyed_dict({"v": PROTOCOL_VERSION, "id": request_id, "op": str(op), **fields})
