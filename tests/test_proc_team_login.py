"""Logging in to a team: userpass and approle (enabled by the test on a real
dev server), a refused password, and TLS verified against a CA the test made."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_harness import AgentWorkspace
from openbao_harness import DevServer, make_ca_and_cert, running_cluster, running_dev_server
from test_proc_team_agent import POLICY, TEAM, member_token, ok

ALICE_USERPASS_LOGIN = ("team", "login", TEAM, "--method", "userpass", "--username", "alice")


@pytest.fixture
def bao(tmp_path: Path) -> Iterator[DevServer]:
    with running_dev_server(tmp_path) as server:
        client = server.client()
        client.sys.create_or_update_policy(name="team", policy=POLICY)
        client.sys.enable_auth_method("userpass")
        client.auth.userpass.create_or_update_user(
            username="alice", password="alice-password-7f3a", policies=["team"]
        )
        client.sys.enable_auth_method("approle")
        client.auth.approle.create_or_update_approle("member", token_policies=["team"])
        server.cli("kv", "put", f"secret/{TEAM}/openai", "api_key=sk-team-1")
        yield server


@pytest.fixture
def ws(workspace: AgentWorkspace) -> AgentWorkspace:
    workspace.serve("--idle-timeout", "0")
    return workspace


def team_status(ws: AgentWorkspace) -> dict[str, object]:
    status: list[dict[str, object]] = json.loads(ok(ws, "team", "status", "--json"))
    return status[0]


def test_userpass_login(bao: DevServer, ws: AgentWorkspace) -> None:
    ok(ws, "team", "add", TEAM, "--url", bao.url)
    done = ws.cli(*ALICE_USERPASS_LOGIN, input="wrong-password\n")
    assert done.returncode == 4 and "login was refused" in done.stderr
    assert "wrong-password" not in done.stderr + done.stdout
    assert ws.cli("get", "openai", "api_key").returncode == 1
    ok(ws, *ALICE_USERPASS_LOGIN, input="alice-password-7f3a\n")
    assert ok(ws, "get", "openai", "api_key") == "sk-team-1\n"
    status = team_status(ws)
    assert (status["method"], status["login_name"], status["state"]) == ("userpass", "alice", "ok")
    assert isinstance(status["token_ttl"], float) and status["token_ttl"] > 0
    # The method is remembered: the next login asks only for the password.
    ok(ws, "team", "login", TEAM, input="alice-password-7f3a\n")


def test_approle_login(bao: DevServer, ws: AgentWorkspace) -> None:
    approle = bao.client().auth.approle
    role_id = approle.read_role_id("member")["data"]["role_id"]
    secret_id = approle.generate_secret_id("member")["data"]["secret_id"]
    ok(ws, "team", "add", TEAM, "--url", bao.url)
    done = ws.cli("team", "login", TEAM, "--method", "approle", input=secret_id + "\n")
    assert done.returncode == 2 and "--role-id" in done.stderr
    ok(
        ws,
        "team",
        "login",
        TEAM,
        "--method",
        "approle",
        "--role-id",
        role_id,
        input=secret_id + "\n",
    )
    assert ok(ws, "get", "openai", "api_key") == "sk-team-1\n"
    assert team_status(ws)["method"] == "approle"


def test_a_revoked_token_asks_for_team_login(bao: DevServer, ws: AgentWorkspace) -> None:
    token = member_token(bao)
    ok(ws, "team", "add", TEAM, "--url", bao.url)
    ok(ws, "team", "login", TEAM, input=token + "\n")
    bao.client().auth.token.revoke(token)
    ok(ws, "team", "refresh")
    status = team_status(ws)
    assert status["needs_login"] and status["state"] == "needs_login"
    assert f"team login {TEAM}" in str(status["error"])
    # A refusal is not an outage: the copy stops being served at once, and its
    # sealed cache is gone too (a member who left keeps nothing).
    gone = ws.cli("get", "openai", "api_key")
    assert gone.returncode == 1 and "sk-team-1" not in gone.stdout
    assert not list(ws.config.glob("team-*.cache"))
    doctor = ws.cli("doctor")
    assert f"team login {TEAM}" in doctor.stdout and doctor.returncode == 4
    assert token not in doctor.stdout + doctor.stderr


def test_tls_with_the_team_ca(tmp_path: Path, ws: AgentWorkspace) -> None:
    ca, cert, key = make_ca_and_cert(tmp_path)
    with running_cluster(tmp_path, size=1, ca=ca, tls=(cert, key)) as cluster:
        cluster.cli("kv", "put", f"secret/{TEAM}/openai", "api_key=sk-over-tls")
        # Without the CA: the certificate cannot be verified, and the message says what to pass.
        ok(ws, "team", "add", TEAM, "--url", cluster.url)
        done = ws.cli("team", "login", TEAM, input=cluster.token + "\n")
        assert done.returncode == 4 and "--ca-cert" in done.stderr, done.stderr
        ok(ws, "team", "add", TEAM, "--url", cluster.url, "--ca-cert", str(ca))
        ok(ws, "team", "login", TEAM, input=cluster.token + "\n")
        assert ok(ws, "get", "openai", "api_key") == "sk-over-tls\n"
        report = json.loads(ws.cli("doctor", "--json").stdout)
        team = report["teams"][0]
        assert team["tls"] == "verified" and team["reachable"] and team["sealed"] is False
