"""The team's server goes away and comes back (a real single-node Raft server,
so its data survives the kill): cached secrets keep being served, an agent
restarted meanwhile serves them from its sealed cache, and refresh resumes."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_harness import AgentWorkspace
from openbao_harness import Cluster, running_cluster
from test_proc_team_agent import TEAM, ok


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path, size=1) as nodes:
        yield nodes


def test_server_down_then_back(cluster: Cluster) -> None:
    ws = AgentWorkspace(dict(os.environ))
    try:
        cluster.cli("kv", "put", f"secret/{TEAM}/openai", "api_key=sk-before")
        agent = ws.serve("--idle-timeout", "0")
        ok(ws, "team", "add", TEAM, "--url", cluster.url)
        ok(ws, "team", "login", TEAM, input=cluster.token + "\n")
        assert ok(ws, "get", "openai", "api_key") == "sk-before\n"

        node = cluster.nodes[0]
        node.kill()
        ok(ws, "team", "refresh")  # fails, and says so, but serving goes on
        status = json.loads(ok(ws, "team", "status", "--json"))[0]
        assert status["state"] == "unreachable" and status["serving"]
        assert "does not answer" in status["error"]
        assert ok(ws, "get", "openai", "api_key") == "sk-before\n"
        done = ws.cli("set", "openai", "api_key", "--team", TEAM, input="sk-offline")
        assert done.returncode == 4 and "does not answer" in done.stderr
        assert ok(ws, "get", "openai", "api_key") == "sk-before\n"  # a failed write changes nothing

        # Restarted while the server is down: the sealed cache is served.
        assert agent.stop() == 0
        ws.serve("--idle-timeout", "0")
        assert ok(ws, "get", "openai", "api_key") == "sk-before\n"
        assert f"openai\tapi_key\tteam:{TEAM}" in ok(ws, "list")

        cluster.restart(node)
        cluster.cli("kv", "put", f"secret/{TEAM}/openai", "api_key=sk-after")
        ok(ws, "team", "refresh")
        status = json.loads(ok(ws, "team", "status", "--json"))[0]
        assert status["state"] == "ok", status
        assert ok(ws, "get", "openai", "api_key") == "sk-after\n"
    finally:
        ws.close()
