"""The closed set of operations of protocol version 1: one table.

Each operation is one row: its request fields, its result fields, whether it
is allowed while the agent is locked, whether the audit log records it,
whether it writes the local store, and whether it is a team operation. The
request parser, the reply checker, the agent's dispatch and the audit log
all read this table; none keeps a list of its own.

An :class:`Operation` is its wire name (a ``str``), so it compares, hashes
and packs as that name. Not an ``enum``: the thin client imports this
module on every call, and ``enum`` would be a tenth of its start-up.
"""

from __future__ import annotations

import math

PROTOCOL_VERSION = 1

# The thin client imports this module: typing stays out of its start-up.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator


class Kind:
    """What a result field must be: a description for messages and a check."""

    __slots__ = ("description", "check")

    def __init__(self, description: str, check: Callable[[object], bool]) -> None:
        self.description = description
        self.check = check

    def or_nil(self) -> Kind:
        check = self.check
        return Kind(f"{self.description} or nil", lambda value: value is None or check(value))


def _is_seconds(value: object) -> bool:
    return (type(value) is int or type(value) is float) and math.isfinite(value) and value >= 0


def _is_pair_list(value: object) -> bool:
    return isinstance(value, list | tuple) and all(
        isinstance(pair, list | tuple)
        and len(pair) == 2
        and isinstance(pair[0], str)
        and isinstance(pair[1], str)
        for pair in value
    )


STR = Kind("a str", lambda value: isinstance(value, str))
BOOL = Kind("a bool", lambda value: type(value) is bool)
UINT = Kind("an unsigned int", lambda value: type(value) is int and value >= 0)
SECONDS = Kind("a non-negative number of seconds", _is_seconds)
PAIRS = Kind("a list of [provider, key] string pairs", _is_pair_list)
MAPS = Kind("a list of maps", lambda v: isinstance(v, list) and all(isinstance(t, dict) for t in v))

#: A request field: (name, optional). Every request field is a str; an
#: optional one may also be absent or nil.
RequestField = tuple[str, bool]
#: A result field: (name, kind). Replies may carry more fields than listed
#: (a newer agent adds them); clients pass those through.
ResultField = tuple[str, Kind]

_PAIR: tuple[RequestField, ...] = (("provider", False), ("key", False))


class Operation(str):
    """One operation: its wire name, with its row of the table as attributes."""

    request: tuple[RequestField, ...]
    result: tuple[ResultField, ...]
    while_locked: bool
    audited: bool
    writes: bool
    team: bool

    def __new__(
        cls,
        name: str,
        request: tuple[RequestField, ...] = (),
        result: tuple[ResultField, ...] = (),
        *,
        while_locked: bool = False,
        audited: bool = True,
        writes: bool = False,
        team: bool = False,
    ) -> Operation:
        op = super().__new__(cls, name)
        op.request, op.result = request, result
        op.while_locked, op.audited, op.writes, op.team = while_locked, audited, writes, team
        return op

    @property
    def value(self) -> str:
        """The wire name as a plain ``str``."""
        return str.__str__(self)

    def __repr__(self) -> str:
        return f"Operation({str.__repr__(self)})"


class _OpSet(type):
    """A namespace of operations that iterates in declaration order and
    answers ``isinstance(op, Op)`` for its own members."""

    _members: tuple[Operation, ...]

    def __new__(mcs, name: str, bases: tuple[type, ...], namespace: dict[str, object]) -> _OpSet:
        cls = super().__new__(mcs, name, bases, namespace)
        cls._members = tuple(v for v in namespace.values() if isinstance(v, Operation))
        return cls

    def __iter__(cls) -> Iterator[Operation]:
        return iter(cls._members)

    def __len__(cls) -> int:
        return len(cls._members)

    def __instancecheck__(cls, instance: object) -> bool:
        return isinstance(instance, Operation) and instance in cls._members


class Op(metaclass=_OpSet):
    """The core operations (docs/PROTOCOL.md 4)."""

    HELLO = Operation(
        "hello",
        result=(("protocol", UINT), ("agent", STR), ("backend", STR), ("locked", BOOL)),
        while_locked=True,
        audited=False,
    )
    STORE = Operation("store", (*_PAIR, ("value", False)), writes=True)
    RETRIEVE = Operation("retrieve", _PAIR, (("value", STR.or_nil()),))
    DELETE = Operation("delete", _PAIR, (("deleted", BOOL),), writes=True)
    EXISTS = Operation("exists", _PAIR, (("exists", BOOL),))
    LIST = Operation("list", (("provider", True),), (("items", PAIRS),))
    STATUS = Operation(
        "status",
        result=(
            ("locked", BOOL),
            ("backend", STR),
            ("protection", STR),
            ("cached", UINT),
            ("idle_timeout", SECONDS.or_nil()),
            ("pid", UINT),
            ("uptime", SECONDS),
        ),
        while_locked=True,
        audited=False,
    )
    LOCK = Operation("lock", while_locked=True)
    UNLOCK = Operation("unlock", (("passphrase", False),), while_locked=True)


class TeamOp(metaclass=_OpSet):
    """The team-secrets operations (docs/PROTOCOL.md 4.1): additive within
    version 1, kept apart from :class:`Op` so that the core set stays closed
    and a client can probe for them (an older agent answers ``unknown_op``)."""

    LOCATE = Operation("locate", _PAIR, (("source", STR.or_nil()),), team=True)
    TEAM_STORE = Operation(
        "team_store",
        (("team", False), *_PAIR, ("value", False)),
        (("version", UINT), ("path", STR)),
        team=True,
    )
    # Writes: the token it obtains is kept in the local store.
    TEAM_LOGIN = Operation(
        "team_login",
        (("team", False), ("method", False), ("secret", False), ("login_name", True)),
        writes=True,
        team=True,
    )
    # Names and times only, never a secret: allowed while locked, as status.
    TEAM_STATUS = Operation("team_status", result=(("teams", MAPS),), while_locked=True, team=True)
    TEAM_REFRESH = Operation("team_refresh", (("team", True),), (("teams", MAPS),), team=True)


AnyOp = Operation

#: Every operation by wire name, core ones first.
OPS_BY_NAME: dict[str, Operation] = {op: op for op in (*Op, *TeamOp)}

OPS_ALLOWED_WHILE_LOCKED: frozenset[Operation] = frozenset(
    op for op in OPS_BY_NAME.values() if op.while_locked and not op.team
)
