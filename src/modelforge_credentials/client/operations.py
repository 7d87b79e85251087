"""Every client operation, written once: the request it sends, what it returns.

An :class:`Operation` is the op, its fields, and how the checked result
fields become the caller's value. The blocking client (:mod:`.sync`) and the
asyncio client (:mod:`.aio`) are adapters that only move it over their own
I/O: ``client.run(operations.retrieve("openai", "api_key"))``. No I/O here,
and nothing heavy to import (the thin client loads this on every ``get``).
"""

from __future__ import annotations

from .. import settings
from ..errors import AgentProtocolError, CredentialStorageError, error_for_code
from ..protocol import PROTOCOL_VERSION, AnyOp, Op, RemoteError, TeamOp

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from ..protocol.client_conn import Outcome

    Result = dict[str, object]


class Operation:
    """One request and the decoding of its reply's fields."""

    __slots__ = ("op", "fields", "decode")

    def __init__(self, op: AnyOp, decode: Callable[[Result], Any], **fields: object) -> None:
        self.op = op
        self.fields = fields
        self.decode = decode

    def __repr__(self) -> str:
        # Field names only: a store's value and an unlock's passphrase never show.
        return f"Operation({self.op.value}, {sorted(self.fields)})"


#: How much longer an unlock's answer may take than any other: after failed
#: attempts the agent waits before each answer, up to its unlock delay cap.
UNLOCK_WAIT = settings.DEFAULT_UNLOCK_DELAY_CAP


def reply_timeout(op: AnyOp, timeout: float) -> float:
    """How long a client waits for the reply to ``op``."""
    return timeout + UNLOCK_WAIT if op is Op.UNLOCK else timeout


def timeout_message(path: str, op: AnyOp, waited: float) -> str:
    """What a client says when the reply to ``op`` did not come in time."""
    if op is Op.UNLOCK:
        return (
            f"the agent at {path} did not answer the unlock within {waited:g} s; after "
            "failed attempts it waits longer before each answer (serve "
            "--unlock-delay-cap): wait, then retry with a larger --timeout"
        )
    return (
        f"the agent at {path} did not answer within {waited:g} s; "
        "check `modelforge-agent status` or restart it"
    )


def result_of(outcome: Outcome) -> Result:
    """The checked result fields of a reply, else the error for its caller:
    the agent's failure as its CredentialStorageError, a reply that does not
    fit its request as AgentProtocolError. The one translation, for both
    adapters."""
    if isinstance(outcome, dict):
        return outcome
    raise failure_of(outcome)


def failure_of(outcome: Exception) -> CredentialStorageError:
    if isinstance(outcome, RemoteError):
        return error_for_code(outcome.code, outcome.message)
    return AgentProtocolError(
        f"the agent sent a reply this client cannot read ({outcome}); restart it "
        "with `modelforge-agent stop` so the installed version starts"
    )


def _checked_hello(result: Result) -> Result:
    if result.get("protocol") != PROTOCOL_VERSION:
        raise AgentProtocolError(
            f"the agent speaks protocol {result.get('protocol')}, this client "
            f"{PROTOCOL_VERSION}; restart the agent (`modelforge-agent stop`)"
        )
    return result


def _nothing(result: Result) -> None:
    return None


def _value(result: Result) -> str | None:
    value = result["value"]
    return value if isinstance(value, str) else None


def _names(result: Result) -> list[tuple[str, str]]:
    items = result["items"]
    if not isinstance(items, list):
        raise AgentProtocolError("the agent's list reply holds no list; restart the agent")
    return [(str(item[0]), str(item[1])) for item in items]


def _same(result: Result) -> Result:
    return result


def _sourced_names(result: Result) -> list[tuple[str, ...]]:
    """(provider, key) rows, each with its source once a team is configured."""
    items = _names(result)
    sources = result.get("sources")
    if not isinstance(sources, list) or len(sources) != len(items):
        return list(items)
    return [(*item, str(source)) for item, source in zip(items, sources, strict=True)]


def hello() -> Operation:
    return Operation(Op.HELLO, _checked_hello)


def store(provider: str, key: str, value: str) -> Operation:
    return Operation(Op.STORE, _nothing, provider=provider, key=key, value=value)


def retrieve(provider: str, key: str) -> Operation:
    return Operation(Op.RETRIEVE, _value, provider=provider, key=key)


def delete(provider: str, key: str) -> Operation:
    return Operation(Op.DELETE, lambda r: bool(r["deleted"]), provider=provider, key=key)


def exists(provider: str, key: str) -> Operation:
    return Operation(Op.EXISTS, lambda r: bool(r["exists"]), provider=provider, key=key)


def list_keys(provider: str | None = None) -> Operation:
    if provider is None:
        return Operation(Op.LIST, _names)
    return Operation(Op.LIST, _names, provider=provider)


def status() -> Operation:
    return Operation(Op.STATUS, _same)


def lock() -> Operation:
    return Operation(Op.LOCK, _nothing)


def unlock(passphrase: str) -> Operation:
    return Operation(Op.UNLOCK, _nothing, passphrase=passphrase)


def list_sourced(provider: str | None = None) -> Operation:
    """``list``, keeping where each name comes from (local or a team)."""
    if provider is None:
        return Operation(Op.LIST, _sourced_names)
    return Operation(Op.LIST, _sourced_names, provider=provider)


def locate(provider: str, key: str) -> Operation:
    """Where a value would come from: ``source`` (nil when absent), ``path``, ``version``."""
    return Operation(TeamOp.LOCATE, _same, provider=provider, key=key)


def team_store(team: str, provider: str, key: str, value: str) -> Operation:
    """A check-and-set write to ``team``'s server: ``path``, ``version``, ``shadowed``."""
    return Operation(TeamOp.TEAM_STORE, _same, team=team, provider=provider, key=key, value=value)
