"""The team refresher and max-stale with injected clocks, against a real dev server.

The agent runs in this process (its refresher parked on a sleep that never
returns), so the monotonic clock (refresh interval, token TTL) and the wall
clock (max-stale, which survives restarts) move only when the test says.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from modelforge_credentials.backends.encrypted_file import EncryptedFileStorage
from modelforge_credentials.daemon.dispatch import answer
from modelforge_credentials.daemon.state import Agent, AgentConfig
from modelforge_credentials.protocol import Op, Request, TeamOp
from modelforge_credentials.team.config import TeamConfig, write_teams
from openbao_harness import DevServer
from test_proc_team_agent import POLICY, TEAM

_ids = itertools.count(1)


class Clocks:
    def __init__(self) -> None:
        self.mono = 1000.0
        self.wall = 1_800_000_000.0


async def parked(_: float) -> None:
    await asyncio.Event().wait()  # the refresher only moves when the test calls it


@pytest.fixture
def bao(tmp_path: Path) -> Iterator[DevServer]:
    server = DevServer(tmp_path).start()
    try:
        server.client().sys.create_or_update_policy(name="team", policy=POLICY)
        server.cli("kv", "put", f"secret/{TEAM}/openai", "api_key=sk-v1")
        yield server
    finally:
        server.kill()


def make_agent(directory: Path, clocks: Clocks) -> Agent:
    return Agent(
        EncryptedFileStorage(directory),
        AgentConfig(idle_timeout=None, team_dir=str(directory)),
        clock=lambda: clocks.mono,
        wall=lambda: clocks.wall,
        sleep=parked,
    )


@pytest.fixture
async def agent(bao: DevServer, tmp_path: Path) -> AsyncIterator[tuple[Agent, Clocks, str]]:
    directory = tmp_path / "config"
    write_teams(directory, [TeamConfig(TEAM, bao.url, refresh=60.0, max_stale=600.0)])
    clocks = Clocks()
    token = bao.client().auth.token.create(policies=["team"], ttl="100s", renewable=True)
    agent = make_agent(directory, clocks)
    await agent.start()
    reply = await ask(
        agent, TeamOp.TEAM_LOGIN, team=TEAM, method="token", secret=token["auth"]["client_token"]
    )
    assert reply["ok"], reply
    yield agent, clocks, str(directory)
    agent.close()


async def ask(agent: Agent, op: Op | TeamOp, **fields: str) -> dict[str, object]:
    return await answer(agent, Request(next(_ids), op, **fields))


async def value(agent: Agent, provider: str = "openai", key: str = "api_key") -> object:
    reply = await ask(agent, Op.RETRIEVE, provider=provider, key=key)
    return reply["value"] if reply["ok"] else reply["error"]


async def test_a_new_version_is_served_within_one_refresh_interval(
    agent: tuple[Agent, Clocks, str], bao: DevServer
) -> None:
    a, clocks, _ = agent
    assert a.teams is not None
    bao.cli("kv", "put", f"secret/{TEAM}/openai", "api_key=sk-v2")
    clocks.mono += 59.0
    await a.teams.refresh_due()
    assert a.cached("openai", "api_key") == "sk-v1"  # the hot path, before the interval
    clocks.mono += 1.0
    await a.teams.refresh_due()
    assert a.cached("openai", "api_key") == "sk-v2"
    team = a.teams.teams[TEAM]
    assert team.fetched == 2 and team.refreshes == 2  # v1 at login, v2 now: only what changed
    clocks.mono += 60.0
    await a.teams.refresh_due()
    assert team.fetched == 2 and team.refreshes == 3  # nothing changed: nothing fetched
    # The 100 s token is renewed before it expires (under three refresh intervals left).
    assert team.renewals >= 1 and team.token_ttl is not None


async def test_max_stale_then_a_restart_while_the_server_is_down(
    agent: tuple[Agent, Clocks, str], bao: DevServer
) -> None:
    a, clocks, directory = agent
    assert a.teams is not None
    bao.kill()
    clocks.mono += 60.0
    clocks.wall += 599.0
    await a.teams.refresh_due()
    assert a.teams.teams[TEAM].state == "unreachable"
    assert await value(a) == "sk-v1"
    clocks.wall += 2.0
    error = await value(a)
    assert isinstance(error, dict) and error["code"] == "unavailable"
    assert "max-stale 600" in error["message"] and "does not answer" in error["message"]
    reply = await ask(a, TeamOp.LOCATE, provider="openai", key="api_key")
    assert not reply["ok"]
    a.close()

    # A restart while the server is still down: the sealed cache, until max-stale.
    clocks.wall -= 101.0
    again = make_agent(Path(directory), clocks)
    await again.start()
    assert again.cached("openai", "api_key") == "sk-v1"
    listing = await ask(again, Op.LIST)
    assert listing["sources"] == [f"team:{TEAM}"]
    clocks.wall += 101.0
    error = await value(again)
    assert isinstance(error, dict) and error["code"] == "unavailable"
    again.close()


async def test_lock_drops_team_secrets(agent: tuple[Agent, Clocks, str]) -> None:
    a, _, _ = agent
    assert a.teams is not None
    await ask(a, Op.LOCK)
    assert a.teams.index == {} and a.teams.teams[TEAM].token is None
    assert a.teams.teams[TEAM].secrets == {}
    # Key-file protection: the next request reads the store and the sealed cache again.
    assert await value(a) == "sk-v1"
    assert a.teams.teams[TEAM].token is not None
