"""``modelforge-agent doctor`` and the agent's access log, with real processes.

Doctor runs as a CLI process in three sessions: with a real Secret Service
(a private gnome-keyring), without one (keyring's fail backend, or a D-Bus
address nobody answers on), and with a socket directory that is unsafe.
The audit log is written by a real agent for requests from real client
processes, whose pid and executable it must name.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agent_harness import (
    CLI,
    NOBODY,
    AgentWorkspace,
    ReplyReader,
    connect,
    frame,
    pack,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")

TIMEOUT = 30.0
SECRET = "sk-proj-audit-never-logged-3f9e1d"
AUDIT_FIELDS = {"time", "pid", "uid", "exe", "op", "provider", "key", "result"}
MAX_BYTES = 1_048_576  # daemon/audit.py DEFAULT_MAX_BYTES, written out so a change shows


def doctor(ws: AgentWorkspace, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = ws.cli("doctor", *args, env=env)
    assert "Traceback" not in result.stderr, result.stderr
    return result.returncode, result.stdout


def doctor_json(ws: AgentWorkspace, env: dict[str, str] | None = None) -> tuple[int, Any]:
    code, out = doctor(ws, "--json", env=env)
    return code, json.loads(out)


# -- doctor --------------------------------------------------------------------------------


def test_doctor_with_a_secret_service_and_an_agent_finds_no_problem(
    secret_service: dict[str, str],
) -> None:
    ws = AgentWorkspace(dict(os.environ))  # made now: the Secret Service's bus is in os.environ
    try:
        agent = ws.serve("--idle-timeout", "0")
        code, report = doctor_json(ws)
        assert report["backends"]["keyring"]["usable"] is True
        assert report["backends"]["keyring"]["dbus_session"] is True
        assert "SecretService" in report["backends"]["keyring"]["detail"]
        assert report["selected"]["backend"] == "keyring"
        sock = report["socket"]
        assert sock["directory_ok"] is True
        assert sock["mode"] == "600"
        assert sock["agent"]["pid"] == agent.pid
        assert sock["agent"]["started_by"] == "manual"
        assert sock["agent"]["backend"] == "keyring"
        assert report["problems"] == []
        assert code == 0
        code, text = doctor(ws)
        assert code == 0
        assert re.search(r"^ok keyring ", text, re.MULTILINE), text
        assert re.search(r"^selected: +keyring ", text, re.MULTILINE), text
        assert f"agent:             pid {agent.pid}, started by manual" in text
        assert f"{ws.socket} (mode 600)" in text
        assert "no problems found" in text
    finally:
        ws.close()


def test_doctor_without_a_session_bus_says_so_and_selects_the_file(
    workspace: AgentWorkspace,
) -> None:
    code, report = doctor_json(workspace)
    keyring_info = report["backends"]["keyring"]
    assert keyring_info["usable"] is False
    assert keyring_info["dbus_session"] is False
    assert "no D-Bus session" in keyring_info["detail"]
    assert report["selected"]["backend"] == "encrypted-file"
    assert report["socket"]["agent"] is None
    problems = {p["problem"]: p["fix"] for p in report["problems"]}
    assert "modelforge-agent start" in problems["no agent answers on the socket"]
    assert code == 4
    code, text = doctor(workspace)
    assert code == 4
    assert re.search(r"^-- keyring .*no D-Bus session", text, re.MULTILINE), text
    assert re.search(r"^selected: +encrypted-file ", text, re.MULTILINE), text
    assert "agent:             not running" in text
    assert "fix: start one" in text


def test_doctor_with_a_dead_session_bus_names_the_bus(workspace: AgentWorkspace) -> None:
    """The address is set but nothing answers there: the reason must point at the bus,
    not only say "no usable backend"."""
    env = {**workspace.env, "DBUS_SESSION_BUS_ADDRESS": f"unix:path={workspace.base}/no-bus"}
    env.pop("PYTHON_KEYRING_BACKEND")
    code, report = doctor_json(workspace, env=env)
    keyring_info = report["backends"]["keyring"]
    assert keyring_info["usable"] is False
    assert report["selected"]["backend"] == "encrypted-file"
    assert code == 4
    assert "D-Bus" in keyring_info["detail"], keyring_info["detail"]


def break_directory(directory: Path, how: str) -> None:
    if how == "mode-755":
        directory.mkdir(mode=0o700)
        directory.chmod(0o755)
    elif how == "symlink":
        real = directory.with_name("real-sock-dir")
        real.mkdir(mode=0o700)
        directory.symlink_to(real)
    else:
        directory.mkdir(mode=0o700)
        os.chown(directory, NOBODY, NOBODY)


@pytest.mark.parametrize(
    ("how", "fix"),
    [("mode-755", "chmod 700"), ("symlink", "rm -r"), ("owner-nobody", "private socket path")],
)
def test_doctor_reports_an_unsafe_socket_directory_with_its_fix(
    workspace: AgentWorkspace, how: str, fix: str
) -> None:
    if how == "owner-nobody" and os.geteuid() != 0:
        pytest.skip("needs root to give a directory away")
    directory = workspace.socket.parent
    break_directory(directory, how)
    code, report = doctor_json(workspace)
    assert code == 4
    assert report["socket"]["directory_ok"] is False
    [problem] = [p for p in report["problems"] if str(directory) in p["problem"]]
    assert fix in problem["fix"] and str(directory) in problem["fix"], problem
    # "No agent answers" would only repeat the cause: the directory is the problem.
    assert not any("no agent answers" in p["problem"] for p in report["problems"])
    code, text = doctor(workspace)
    assert code == 4
    assert f"fix: {problem['fix']}" in text


def test_doctor_with_an_agent_on_the_encrypted_file(workspace: AgentWorkspace) -> None:
    agent = workspace.serve("--idle-timeout", "0")
    code, report = doctor_json(workspace)
    assert report["socket"]["agent"]["pid"] == agent.pid
    assert report["socket"]["agent"]["started_by"] == "manual"
    assert report["socket"]["agent"]["backend"] == "encrypted-file"
    assert report["socket"]["mode"] == "600"
    assert stat.S_IMODE(workspace.socket.stat().st_mode) == 0o600
    assert report["problems"] == []
    assert code == 0
    # Once a value is stored, the file exists, protected only by a key file beside it:
    # that is a problem, with its fix.
    assert workspace.cli("set", "openai", "api_key", input=SECRET).returncode == 0
    code, report = doctor_json(workspace)
    assert report["backends"]["encrypted-file"]["protection"] == "keyfile"
    assert [p["fix"] for p in report["problems"]] == ["set a passphrase: modelforge-agent passwd"]
    assert code == 4


# -- the audit log -------------------------------------------------------------------------


def run_cli(ws: AgentWorkspace, *args: str, input: str = "") -> tuple[int, int, str]:
    """(pid, exit status, stdout) of one CLI process."""
    proc = subprocess.Popen(
        [*CLI, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=ws.env,
    )
    out, err = proc.communicate(input, timeout=TIMEOUT)
    assert "Traceback" not in err, err
    return proc.pid, proc.returncode, out


def raw_requests(ws: AgentWorkspace, requests: list[dict[str, object]]) -> list[Any]:
    """Send ``requests`` from this process, pipelined in batches; return the replies."""
    replies: list[Any] = []
    with connect(ws.socket) as sock:
        reader = ReplyReader(sock)
        for start in range(0, len(requests), 64):
            batch = requests[start : start + 64]
            sock.sendall(b"".join(frame(pack(r)) for r in batch))
            replies += reader.replies(len(batch))
    assert len(replies) == len(requests)
    return replies


def entries(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_audit_log_has_one_entry_per_request_and_never_a_value(
    workspace: AgentWorkspace,
) -> None:
    log_path = workspace.base / "audit" / "audit.log"
    workspace.serve("--idle-timeout", "0", "--audit-log", str(log_path))
    exe = os.path.realpath(sys.executable)
    expected = []
    for args, op, code in [
        (("set", "openai", "api_key"), "store", 0),
        (("get", "openai", "api_key"), "retrieve", 0),
        (("exists", "openai", "api_key"), "exists", 0),
        (("list", "openai"), "list", 0),
        (("delete", "openai", "api_key"), "delete", 0),
        (("get", "openai", "api_key"), "retrieve", 1),
        (("status",), None, 0),
    ]:
        pid, status, out = run_cli(workspace, *args, input=SECRET)
        assert status == code, (args, out)
        if op is not None:
            provider = "openai"
            key = "api_key" if op != "list" else None
            expected.append((pid, op, provider, key, "ok"))
    [refused] = raw_requests(
        workspace, [{"v": 1, "id": 7, "op": "retrieve", "provider": "bad\x01name", "key": "k"}]
    )
    assert refused["error"]["code"] == "invalid"
    expected.append((os.getpid(), "retrieve", "bad\x01name", "k", "invalid"))

    found = entries(log_path)
    assert [(e["pid"], e["op"], e["provider"], e["key"], e["result"]) for e in found] == expected
    for entry in found:
        assert set(entry) == AUDIT_FIELDS
        assert entry["uid"] == os.getuid()
        assert entry["exe"] == exe
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4}", entry["time"])
    assert stat.S_IMODE(log_path.stat().st_mode) == 0o600
    assert stat.S_IMODE(log_path.parent.stat().st_mode) == 0o700
    assert SECRET.encode() not in log_path.read_bytes()
    assert SECRET not in workspace.agents[0].log_text()


def test_log_command_shows_entries(workspace: AgentWorkspace) -> None:
    log_path = workspace.base / "audit.log"
    workspace.serve("--idle-timeout", "0", "--audit-log", str(log_path))
    set_pid, _, _ = run_cli(workspace, "set", "anthropic", "api_key", input=SECRET)
    get_pid, _, _ = run_cli(workspace, "get", "anthropic", "api_key")
    del_pid, _, _ = run_cli(workspace, "delete", "anthropic", "api_key")

    result = workspace.cli("log")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3
    exe = os.path.realpath(sys.executable)
    for line, pid, op in zip(
        lines, (set_pid, get_pid, del_pid), ("store", "retrieve", "delete"), strict=True
    ):
        assert f"pid={pid} uid={os.getuid()} {exe} {op} anthropic/api_key ok" in line
    result = workspace.cli("log", "--json", "-n", "2")
    assert result.returncode == 0, result.stderr
    assert [json.loads(line)["pid"] for line in result.stdout.splitlines()] == [get_pid, del_pid]
    result = workspace.cli("log", "--file", str(log_path), "-n", "1")
    assert result.returncode == 0 and "delete anthropic/api_key ok" in result.stdout
    assert SECRET not in workspace.cli("log", "--json", "-n", "0").stdout


def test_audit_log_rotates_past_its_size_cap(workspace: AgentWorkspace) -> None:
    log_path = workspace.base / "audit.log"
    workspace.serve("--idle-timeout", "0", "--audit-log", str(log_path))
    key = "k" * 255
    count = 2000  # ~720 bytes per entry: one rotation at 1 MiB, and some after it
    requests: list[dict[str, object]] = [
        {"v": 1, "id": i + 1, "op": "exists", "provider": f"{i:05d}" + "p" * 250, "key": key}
        for i in range(count)
    ]
    replies = raw_requests(workspace, requests)
    assert all(r.get("ok") for r in replies)

    rotated = log_path.with_name("audit.log.1")
    assert rotated.exists()
    assert MAX_BYTES - 1000 < rotated.stat().st_size <= MAX_BYTES
    assert log_path.stat().st_size < rotated.stat().st_size
    assert stat.S_IMODE(rotated.stat().st_mode) == 0o600
    assert stat.S_IMODE(log_path.stat().st_mode) == 0o600
    old, new = entries(rotated), entries(log_path)
    numbers = [int(e["provider"][:5]) for e in old + new]
    assert numbers == list(range(count)), "entries lost or reordered across the rotation"
    assert new and int(new[0]["provider"][:5]) == len(old)


def test_without_audit_log_no_file_is_written(
    workspace: AgentWorkspace, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    workspace.env["XDG_STATE_HOME"] = str(state)
    workspace.serve("--idle-timeout", "0")
    run_cli(workspace, "set", "openai", "api_key", input=SECRET)
    run_cli(workspace, "get", "openai", "api_key")
    status = json.loads(workspace.cli("status", "--json").stdout)
    assert status.get("audit_log") is None
    assert not state.exists()
    assert not any("audit" in p.name for p in workspace.base.rglob("*"))
    result = workspace.cli("log")
    assert result.returncode == 1
    assert "--audit-log" in result.stderr and "MODEL_FORGE_AUDIT_LOG" in result.stderr


def test_audit_log_variable_uses_the_state_directory(
    workspace: AgentWorkspace, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    workspace.env["XDG_STATE_HOME"] = str(state)
    workspace.env["MODEL_FORGE_AUDIT_LOG"] = "1"
    workspace.serve("--idle-timeout", "0")
    expected = state / "model-forge" / "audit.log"
    status = json.loads(workspace.cli("status", "--json").stdout)
    assert status["audit_log"] == str(expected)
    pid, code, _ = run_cli(workspace, "set", "openai", "api_key", input=SECRET)
    assert code == 0
    assert [(e["pid"], e["op"]) for e in entries(expected)] == [(pid, "store")]
    assert stat.S_IMODE(expected.stat().st_mode) == 0o600
    env = {k: v for k, v in workspace.env.items() if k != "MODEL_FORGE_AUDIT_LOG"}
    result = workspace.cli("log", env=env)
    assert result.returncode == 0 and "store openai/api_key ok" in result.stdout
