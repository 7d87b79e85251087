"""A three-node Raft cluster on 127.0.0.1 (three `bao server` processes, each
with its own config file, initialised, unsealed and joined by the test): the
leader is killed while a client reads through the agent without pause.
Reads never fail; a team write succeeds once a new leader is elected; no
acknowledged write is lost. Bounded: elections at performance_multiplier 1."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_harness import AgentWorkspace
from modelforge_credentials.client.sync import AgentClient
from openbao_harness import Cluster, running_cluster, wait_for
from test_proc_team_agent import TEAM, ok

pytestmark = pytest.mark.slow
PATH = f"secret/{TEAM}/openai"


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with running_cluster(tmp_path, size=3) as nodes:
        yield nodes


class Reader(threading.Thread):
    """Reads the team secret through the agent as fast as it can."""

    def __init__(self, socket: Path) -> None:
        super().__init__(daemon=True)
        self.socket = socket
        self.stop = threading.Event()
        self.reads = 0
        self.failures: list[str] = []

    def run(self) -> None:
        with AgentClient(self.socket, timeout=10) as client:
            while not self.stop.is_set():
                try:
                    if client.retrieve("openai", "api_key") is None:
                        self.failures.append("absent")
                except Exception as err:  # noqa: BLE001 - every failure counts
                    self.failures.append(type(err).__name__)
                self.reads += 1


def test_leader_killed_reads_go_on_and_writes_resume(cluster: Cluster) -> None:
    began = time.monotonic()
    cluster.cli("kv", "put", PATH, "api_key=sk-0")
    ws = AgentWorkspace(dict(os.environ))
    reader = Reader(ws.socket)
    try:
        ws.serve("--idle-timeout", "0")
        ok(ws, "team", "add", TEAM, "--url", cluster.url)
        ok(ws, "team", "login", TEAM, input=cluster.token + "\n")
        acknowledged = []
        for n in range(1, 4):
            done = ws.cli("set", "openai", "api_key", "--team", TEAM, input=f"sk-{n}")
            assert done.returncode == 0, done.stderr
            acknowledged.append(f"sk-{n}")
        reader.start()
        leader = cluster.leader()
        leader.kill()
        survivors = [node for node in cluster.nodes if node is not leader]
        new_leader = wait_for(
            lambda: next((n for n in survivors if _leads(cluster, n)), None),
            "a new leader among the survivors",
        )
        assert new_leader is not leader

        def write() -> bool:
            done = ws.cli("set", "openai", "api_key", "--team", TEAM, input="sk-after-failover")
            return done.returncode == 0

        wait_for(write, "a team write to succeed after the election")
        acknowledged.append("sk-after-failover")
        time.sleep(0.2)  # reads keep running over the write, too
        reader.stop.set()
        reader.join(timeout=30)
        assert reader.reads > 100 and reader.failures == [], reader.failures[:5]
        assert ok(ws, "get", "openai", "api_key") == "sk-after-failover\n"
        history = [
            cluster.cli(
                "kv", "get", f"-version={v}", "-field=api_key", PATH, node=new_leader
            ).stdout.strip()
            for v in range(2, 2 + len(acknowledged))
        ]
        assert history == acknowledged  # every acknowledged write, in order
        assert time.monotonic() - began < 120
    finally:
        reader.stop.set()
        ws.close()


def _leads(cluster: Cluster, node: object) -> bool:
    return bool(cluster.client(node).sys.read_leader_status()["is_self"])  # type: ignore[arg-type]
