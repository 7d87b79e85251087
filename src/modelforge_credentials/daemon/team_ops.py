"""The agent's answers to the team operations (docs/PROTOCOL.md 4.1).

Called from daemon/dispatch.py once the lock rule and file reload are done;
every failure is a CredentialStorageError, which the agent turns into a
failure reply in its one place for that.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import CredentialStorageUnavailableError, CredentialValidationError
from ..protocol import Request, ok_reply
from ..team import is_reserved
from ..team.config import METHODS
from ..validation import validate_name, validate_pair, validate_value
from .cache import MISS

if TYPE_CHECKING:
    from ..team.hub import TeamHub
    from .state import Agent

Reply = dict[str, object]
Pair = tuple[str, str]


def check_not_reserved(provider: str | None) -> None:
    if is_reserved(provider):
        raise CredentialValidationError(
            "that provider name is reserved for team logins (the agent keeps team tokens "
            "under it and never hands them out); choose another provider name"
        )


def list_reply(
    hub: TeamHub | None, request_id: int, local: list[Pair], provider: str | None
) -> Reply:
    """``list``: local names first, then the teams' in order; ``sources`` says
    where each comes from (only when a team is configured)."""
    names = [pair for pair in local if not is_reserved(pair[0])]
    if hub is None or not hub.configured:
        return ok_reply(request_id, items=[list(p) for p in names])
    sources = {pair: "local" for pair in names}
    for pair, source in hub.names(provider).items():
        sources.setdefault(pair, source)
    items = sorted(sources)
    return ok_reply(request_id, items=[list(p) for p in items], sources=[sources[p] for p in items])


def _hub(agent: Agent) -> TeamHub:
    if agent.teams is None:
        raise CredentialStorageUnavailableError(
            "this agent has no config directory for team settings; restart it with "
            "`modelforge-agent serve --config-dir DIR` (or MODEL_FORGE_CONFIG_DIR set)"
        )
    return agent.teams


async def refresh(agent: Agent, req: Request) -> Reply:
    """``team_refresh``: fetch now, one team or all."""
    hub = _hub(agent)
    if req.team is not None:
        validate_name("team", req.team)
    await hub.refresh_now(req.team)
    return ok_reply(req.id, teams=hub.status())


async def login(agent: Agent, req: Request) -> Reply:
    """``team_login``: exchange the method's secret for a token, kept in the store."""
    hub = _hub(agent)
    assert req.team is not None and req.method is not None and req.secret is not None
    if req.method not in METHODS:
        raise CredentialValidationError(f"login method must be one of {', '.join(METHODS)}")
    if req.method != "token" and not req.login_name:
        what = "--username" if req.method == "userpass" else "--role-id"
        raise CredentialValidationError(f"a {req.method} login needs {what}")
    hub.reload_config()
    await hub.login(req.team, req.method, req.secret, req.login_name)
    return ok_reply(req.id)


async def store(agent: Agent, req: Request) -> Reply:
    """``team_store``: a check-and-set write to the team's server."""
    hub = _hub(agent)
    assert req.team is not None
    provider, key = validate_pair(req.provider, req.key)
    check_not_reserved(provider)
    value = validate_value(req.value)
    result: dict[str, Any] = await hub.write(req.team, provider, key, value)
    result["shadowed"] = await _local_value(agent, (provider, key)) is not None
    return ok_reply(req.id, **result)


async def locate(agent: Agent, req: Request) -> Reply:
    """``locate``: where a value would come from (local, a team, or nowhere)."""
    hub = _hub(agent)
    pair = validate_pair(req.provider, req.key)
    check_not_reserved(pair[0])
    if await _local_value(agent, pair) is not None:
        return ok_reply(req.id, source="local", path=None, version=None)
    if not hub.loaded:
        await hub.load()
    found, _ = hub.answer(pair)  # raises when the team's copy is too stale
    info = hub.source_of(pair) if found is not None else None
    return ok_reply(req.id, **(info or {"source": None, "path": None, "version": None}))


async def _local_value(agent: Agent, pair: Pair) -> str | None:
    if agent.cache.complete:
        found = agent.cache.lookup(pair, agent.clock())
        if found is not MISS:
            return found if isinstance(found, str) else None
    value: str | None = await agent.run(agent.backend.retrieve, *pair)
    return value
