"""Replies: building them (the agent) and validating them (clients)."""

from __future__ import annotations

from collections.abc import Mapping

from .errors import ERROR_CODES, RemoteError, ReplyError
from .ops import AnyOp

_UINT64_LIMIT = 1 << 64
_MISSING = object()
_RESERVED_REPLY_KEYS = frozenset({"id", "ok", "error"})


def _type_name(value: object) -> str:
    return "nil" if value is None else type(value).__name__


def ok_reply(request_id: int, **fields: object) -> dict[str, object]:
    """Build a success reply map: ``{"id": request_id, "ok": True, **fields}``.

    ``fields`` must not include ``id``, ``ok`` or ``error`` (ValueError).
    """
    if not _RESERVED_REPLY_KEYS.isdisjoint(fields):
        raise ValueError("result fields must not include 'id', 'ok' or 'error'")
    return {"id": request_id, "ok": True, **fields}


def error_reply(request_id: int | None, code: str, message: str) -> dict[str, object]:
    """Build a failure reply map.  ``code`` must be one of ``ERROR_CODES``
    (ValueError otherwise); ``message`` must not contain secrets."""
    if code not in ERROR_CODES:
        raise ValueError(f"unknown error code {code!r}")
    return {"id": request_id, "ok": False, "error": {"code": code, "message": message}}


class Reply:
    """A structurally valid reply (immutable).

    For a success reply ``fields`` holds every key except ``id`` and ``ok``;
    for a failure reply it is empty and ``error_code``/``error_message`` are
    set.
    """

    __slots__ = ("id", "ok", "fields", "error_code", "error_message")

    id: int | None
    ok: bool
    fields: dict[str, object]
    error_code: str | None
    error_message: str | None

    def __init__(
        self,
        id: int | None,
        ok: bool,
        fields: dict[str, object] | None = None,
        error_code: str | None = None,
        error_message: str | None = None,
    ) -> None:
        init = object.__setattr__
        init(self, "id", id)
        init(self, "ok", ok)
        init(self, "fields", {} if fields is None else fields)
        init(self, "error_code", error_code)
        init(self, "error_message", error_message)

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Reply is immutable; cannot set {name!r}")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Reply):
            return NotImplemented
        return (self.id, self.ok, self.fields, self.error_code, self.error_message) == (
            other.id,
            other.ok,
            other.fields,
            other.error_code,
            other.error_message,
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        if self.ok:
            # Names only: a retrieve reply carries the secret in ``value``.
            return f"Reply(id={self.id!r}, ok=True, fields={sorted(self.fields)!r})"
        return (
            f"Reply(id={self.id!r}, ok=False, error_code={self.error_code!r}, "
            f"error_message={self.error_message!r})"
        )


def parse_reply(message: Mapping[str, object]) -> Reply:
    """Check the envelope of a decoded reply map.

    Raises :class:`ReplyError` when ``ok`` is not a bool, ``id`` is absent or
    neither nil nor an unsigned int, or a failure reply lacks a proper
    ``error`` map.  Result fields are checked by :func:`expect_fields`.
    """
    ok = message.get("ok", _MISSING)
    if type(ok) is not bool:
        raise ReplyError(f"reply 'ok' must be a bool, got {_type_name(ok)}")
    request_id = message.get("id", _MISSING)
    if request_id is not None and not (type(request_id) is int and 0 <= request_id < _UINT64_LIMIT):
        raise ReplyError(
            "reply has no 'id' field"
            if request_id is _MISSING
            else f"reply 'id' must be nil or an unsigned int, got {_type_name(request_id)}"
        )
    if ok:
        fields = dict(message)
        del fields["ok"], fields["id"]
        return Reply(request_id, True, fields)
    error = message.get("error")
    if not isinstance(error, Mapping):
        raise ReplyError(f"failure reply 'error' must be a map, got {_type_name(error)}")
    code = error.get("code")
    text = error.get("message")
    if not isinstance(code, str) or not isinstance(text, str):
        raise ReplyError("failure reply 'error' needs 'code' and 'message' strings")
    return Reply(request_id, False, {}, code, text)


def expect_fields(reply: Reply, op: AnyOp) -> dict[str, object]:
    """Return the result fields of a success reply to ``op`` after checking
    their types against the operation's result table.

    Raises :class:`RemoteError` (carrying the agent's code and message) for a
    failure reply and :class:`ReplyError` for a missing or mistyped field.
    """
    if not reply.ok:
        raise RemoteError(
            reply.error_message or "agent reported an error",
            code=reply.error_code or "internal",
            request_id=reply.id,
        )
    fields = reply.fields
    for name, kind in op.result:
        value = fields.get(name, _MISSING)
        if value is _MISSING:
            raise ReplyError(f"'{op.value}' reply lacks '{name}' ({kind.description})")
        if not kind.check(value):
            raise ReplyError(
                f"'{name}' in a '{op.value}' reply must be {kind.description}, "
                f"got {_type_name(value)}"
            )
    return fields
