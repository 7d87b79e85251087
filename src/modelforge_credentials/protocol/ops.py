"""The closed set of operations of protocol version 1."""

from __future__ import annotations

import enum

PROTOCOL_VERSION = 1


class Op(enum.StrEnum):
    """Operation names as sent in a request's ``op`` field."""

    HELLO = "hello"
    STORE = "store"
    RETRIEVE = "retrieve"
    DELETE = "delete"
    EXISTS = "exists"
    LIST = "list"
    STATUS = "status"
    LOCK = "lock"
    UNLOCK = "unlock"


OPS_ALLOWED_WHILE_LOCKED: frozenset[Op] = frozenset({Op.HELLO, Op.STATUS, Op.LOCK, Op.UNLOCK})
