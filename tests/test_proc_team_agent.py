"""Team secrets through a real agent process and a real OpenBao dev server.

Covers the member's whole path (team add, login with a token, get, get
--source, list with sources, exec, the keyring plugin, a local value winning
over the team's), versions (a `bao kv put` served after one refresh, delete
and destroy dropping a secret), check-and-set (a stale write refused, nothing
changed), and that the token shows up nowhere but the sealed store.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_harness import AgentWorkspace
from openbao_harness import DevServer, hvac, running_dev_server

TEAM = "ml-team"
POLICY = 'path "secret/*" { capabilities = ["create", "read", "update", "delete", "list"] }'
PLUGIN = "modelforge_credentials.keyring_backend.AgentKeyring"


@pytest.fixture
def bao(tmp_path: Path) -> Iterator[DevServer]:
    with running_dev_server(tmp_path) as server:
        server.client().sys.create_or_update_policy(name="team", policy=POLICY)
        yield server


@pytest.fixture
def ws(workspace: AgentWorkspace) -> AgentWorkspace:
    return workspace


def member_token(bao: DevServer, **options: object) -> str:
    """A non-root token with the team policy, as a team lead would hand out."""
    created = bao.client().auth.token.create(policies=["team"], **options)
    return str(created["auth"]["client_token"])


def ok(ws: AgentWorkspace, *args: str, input: str | None = None) -> str:
    return ws.ok(*args, input=input)


def joined(ws: AgentWorkspace, bao: DevServer, token: str) -> list[str]:
    """A member who has joined the team: settings added, logged in with ``token``."""
    outputs = [ok(ws, "team", "add", TEAM, "--url", bao.url)]
    outputs.append(ok(ws, "team", "login", TEAM, input=token + "\n"))
    return outputs


def test_member_reads_team_secrets_everywhere(bao: DevServer, ws: AgentWorkspace) -> None:
    bao.cli("kv", "put", f"secret/{TEAM}/openai", "api_key=sk-team-1", "org=o-team")
    bao.cli("kv", "put", f"secret/{TEAM}/keyring:billing", "user:alice=pw-team")
    ws.serve("--idle-timeout", "0")
    joined(ws, bao, member_token(bao))

    assert ok(ws, "get", "openai", "api_key") == "sk-team-1\n"
    assert ok(ws, "get", "openai", "api_key", "--source") == (
        f"team:{TEAM} secret/{TEAM}/openai version 1\n"
    )
    listing = ok(ws, "list")
    assert f"openai\tapi_key\tteam:{TEAM}\n" in listing
    assert f"openai\torg\tteam:{TEAM}\n" in listing
    script = "import os; print(os.environ['OPENAI_API_KEY'])"
    assert ok(ws, "exec", "-p", "openai", "--", sys.executable, "-c", script) == "sk-team-1\n"

    # keyring's own CLI, routed through the agent's plugin, reads the team's secret.
    env = {**ws.env, "PYTHON_KEYRING_BACKEND": PLUGIN}
    assert _keyring_get(env, "billing", "alice") == "pw-team\n"

    # A local value of the same name wins, and says so; deleting it shows the team's again.
    ok(ws, "set", "openai", "api_key", input="sk-local")
    assert ok(ws, "get", "openai", "api_key") == "sk-local\n"
    assert ok(ws, "get", "openai", "api_key", "--source") == "local\n"
    assert "openai\tapi_key\tlocal\n" in ok(ws, "list")
    ok(ws, "delete", "openai", "api_key")
    assert ok(ws, "get", "openai", "api_key") == "sk-team-1\n"


def _keyring_get(env: dict[str, str], service: str, user: str) -> str:
    import subprocess

    done = subprocess.run(
        [sys.executable, "-m", "keyring", "get", service, user],
        capture_output=True,
        text=True,
        env=env,
        timeout=30,
        start_new_session=True,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_versions_deletes_and_check_and_set(bao: DevServer, ws: AgentWorkspace) -> None:
    path = f"secret/{TEAM}/openai"
    bao.cli("kv", "put", path, "api_key=sk-v1")
    bao.cli("kv", "put", f"secret/{TEAM}/anthropic", "api_key=sk-ant-1")
    ws.serve("--idle-timeout", "0")
    joined(ws, bao, member_token(bao))
    assert ok(ws, "get", "openai", "api_key") == "sk-v1\n"

    # A lead's `bao kv put` is served after one refresh (here: the refresh-now hook).
    bao.cli("kv", "put", path, "api_key=sk-v2")
    assert ok(ws, "get", "openai", "api_key") == "sk-v1\n"  # the cache, until the refresh
    ok(ws, "team", "refresh", TEAM)
    assert ok(ws, "get", "openai", "api_key") == "sk-v2\n"

    # A member's write: check-and-set against version 2, the one the agent saw.
    done = ws.cli("set", "openai", "api_key", "--team", TEAM, input="sk-member")
    assert done.returncode == 0, done.stderr
    assert "version 3" in done.stderr
    assert ok(ws, "get", "openai", "api_key") == "sk-member\n"
    assert bao.cli("kv", "get", "-field=api_key", path).stdout.strip() == "sk-member"

    # The lead writes version 4 meanwhile: the member's next write is refused.
    bao.cli("kv", "put", path, "api_key=sk-lead")
    done = ws.cli("set", "openai", "api_key", "--team", TEAM, input="sk-stale")
    assert done.returncode == 2, done.stderr
    assert "version 4" in done.stderr and "version 3" in done.stderr
    assert "team refresh" in done.stderr
    assert "sk-stale" not in done.stderr + done.stdout
    assert bao.cli("kv", "get", "-field=api_key", path).stdout.strip() == "sk-lead"
    assert ok(ws, "get", "openai", "api_key") == "sk-member\n"  # nothing changed here either
    ok(ws, "team", "refresh", TEAM)
    assert ok(ws, "get", "openai", "api_key") == "sk-lead\n"

    # Deleted (soft) and destroyed versions stop being served at the next refresh.
    bao.cli("kv", "delete", path)
    bao.cli("kv", "destroy", "-versions=1", f"secret/{TEAM}/anthropic")
    assert ok(ws, "get", "anthropic", "api_key") == "sk-ant-1\n"
    ok(ws, "team", "refresh", TEAM)
    for provider in ("openai", "anthropic"):
        done = ws.cli("get", provider, "api_key")
        assert done.returncode == 1, (provider, done.stdout)
    assert "openai" not in ok(ws, "list")


def test_the_token_appears_nowhere_but_the_sealed_store(bao: DevServer, ws: AgentWorkspace) -> None:
    token = member_token(bao)
    bao.cli("kv", "put", f"secret/{TEAM}/openai", "api_key=sk-team-1")
    agent = ws.serve("--idle-timeout", "0", "--audit-log", str(ws.base / "audit.log"))
    outputs = joined(ws, bao, token)
    for args in (
        ("team", "status"),
        ("team", "status", "--json"),
        ("team", "list"),
        ("status", "--json"),
        ("doctor", "--json"),
        ("list",),
        ("get", "openai", "api_key", "--source"),
        ("log",),
    ):
        done = ws.cli(*args)
        outputs += [done.stdout, done.stderr]
    status = json.loads(ok(ws, "team", "status", "--json"))
    assert status[0]["logged_in"] and status[0]["state"] == "ok"
    # The local store itself hides the reserved names from every client.
    assert "modelforge-team" not in ok(ws, "list")
    done = ws.cli("get", f"modelforge-team:{TEAM}", "token")
    # Refused as invalid (exit 2), cached or not: no client may even ask.
    assert done.returncode == 2 and token not in done.stdout + done.stderr
    assert "reserved for team logins" in done.stderr
    outputs += [done.stdout, done.stderr]
    done = ws.cli("set", f"modelforge-team:{TEAM}", "token", input="overwritten")
    assert done.returncode == 2 and "reserved" in done.stderr
    outputs += [done.stdout, done.stderr]

    agent.proc.send_signal(signal.SIGHUP)  # a reload logs too
    ok(ws, "team", "refresh")
    seen = "\n".join(outputs) + agent.log_text()
    assert token not in seen
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            assert token.encode() not in cmdline, pid
    sealed_store = ws.config / "credentials.enc"
    for path in ws.base.rglob("*"):
        if path.is_file() and path != sealed_store:
            assert token.encode() not in path.read_bytes(), path
    assert sealed_store.exists() and (ws.config / f"team-{TEAM}.cache").exists()
    assert oct((ws.config / "teams.json").stat().st_mode & 0o777) == "0o600"
    assert hvac  # the team extra is what these tests run against


def test_hvac_is_imported_only_by_an_agent_with_a_team(bao: DevServer, ws: AgentWorkspace) -> None:
    import subprocess

    bao.cli("kv", "put", f"secret/{TEAM}/openai", "api_key=sk-team-1")
    ws.serve("--idle-timeout", "0")
    joined(ws, bao, member_token(bao))
    # The CLI's get path (and the thin client under it) against an agent that has a team.
    probe = (
        "import sys; from modelforge_credentials import cli; "
        "sys.stdout.write(str(cli.main(['get', 'openai', 'api_key']))); "
        "assert 'hvac' not in sys.modules and 'requests' not in sys.modules, 'imported'"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=ws.env, timeout=30
    )
    assert done.returncode == 0 and done.stdout == "sk-team-1\n0", done.stderr
    # An agent without a team never imports it; one with a team does, when it loads it.
    probe = (
        "import asyncio, sys, tempfile\n"
        "from modelforge_credentials.backends.encrypted_file import EncryptedFileStorage\n"
        "from modelforge_credentials.daemon.state import Agent, AgentConfig\n"
        "d = tempfile.mkdtemp()\n"
        "async def main():\n"
        "    agent = Agent(EncryptedFileStorage(d), AgentConfig(team_dir=d))\n"
        "    await agent.start()\n"
        "    agent.close()\n"
        "asyncio.run(main())\n"
        "assert 'hvac' not in sys.modules, 'imported'\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=ws.env, timeout=30
    )
    assert done.returncode == 0, done.stderr
