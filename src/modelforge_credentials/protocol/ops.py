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


class TeamOp(enum.StrEnum):
    """The team-secrets operations (docs/PROTOCOL.md 4.1): additive within
    version 1, kept apart from :class:`Op` so that the core set stays closed
    and a client can probe for them (an older agent answers ``unknown_op``)."""

    LOCATE = "locate"
    TEAM_STORE = "team_store"
    TEAM_LOGIN = "team_login"
    TEAM_STATUS = "team_status"
    TEAM_REFRESH = "team_refresh"


AnyOp = Op | TeamOp


OPS_ALLOWED_WHILE_LOCKED: frozenset[Op] = frozenset({Op.HELLO, Op.STATUS, Op.LOCK, Op.UNLOCK})
