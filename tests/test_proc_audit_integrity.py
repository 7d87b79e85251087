"""The audit log cannot be forged, and an entry that is awkward to write is never lost.

A real agent with ``--audit-log``, a real client process whose executable
path holds U+2028 and bytes that are not UTF-8 (a hard link of this
Python's binary in such a directory), and the ``log`` text view.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent_harness import TIMEOUT, AgentWorkspace
from modelforge_credentials.client.sync import AgentClient
from modelforge_credentials.daemon.audit import AuditLog, read_entries, render_entry, text_view
from modelforge_credentials.protocol import Op, Request

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc")

CRAFTED = "x\n2026-12-01T00:00:00+0000 pid=1 uid=0 /bin/sh retrieve forged/line ok\x1b[2J"


def test_text_view_escapes_every_line_breaker_and_terminal_control() -> None:
    for char in ("\n", "\r", "\x1b", "\x85", "\u2028", "\u2029", "\x00", "\udcff"):
        assert char not in text_view(f"a{char}b")
    assert text_view("plain/name-1.2") == "plain/name-1.2"
    assert text_view("a\\x0a") == "a\\\\x0a"  # an escape cannot be faked either


def test_a_crafted_name_is_one_escaped_line_in_the_log(tmp_path: Path) -> None:
    audit = AuditLog(tmp_path / "audit.log")
    audit.record(Request(1, Op.RETRIEVE, CRAFTED, "k"), {"ok": True}, 42, 0, "/usr/bin/x\u2028y")
    audit.record(Request(2, Op.DELETE, "p", "k"), {"ok": True}, 43, 0, "/opt/\udcff/bin")
    audit.close()
    lines = read_entries(tmp_path / "audit.log")
    assert len(lines) == 2
    shown = [render_entry(line) for line in lines]
    assert all(s is not None and "\n" not in s and "\x1b" not in s for s in shown)
    assert "forged/line" in shown[0]  # still there, visibly part of the name
    assert "\\u2028" in shown[0] and "\\udcff" in shown[1]


def test_a_client_with_an_awkward_executable_path_is_answered_and_recorded(
    workspace: AgentWorkspace, tmp_path: Path
) -> None:
    log_path = workspace.base / "audit.log"
    workspace.serve("--idle-timeout", "0", "--audit-log", str(log_path))
    with AgentClient(workspace.socket, timeout=TIMEOUT) as client:
        client.store("openai", "api_key", "sk-audited-1")
    odd = Path(os.fsdecode(bytes(tmp_path) + b"/bin\xff\xe2\x80\xa8dir"))
    odd.mkdir()
    python = odd / "python3"
    os.link(os.path.realpath(sys.executable), python)
    code = (
        "import sys; from modelforge_credentials.client.sync import AgentClient\n"
        f"with AgentClient({str(workspace.socket)!r}, timeout=10) as c:\n"
        "    print(c.delete('openai', 'api_key'))\n"
    )
    env = {
        **workspace.env,
        "PYTHONHOME": sys.base_prefix,
        "PYTHONPATH": os.pathsep.join(p for p in sys.path if p),
    }
    done = subprocess.run(
        [str(python), "-c", code], capture_output=True, text=True, env=env, timeout=TIMEOUT
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "True\n"  # answered, not left hanging
    entries = [json.loads(line) for line in read_entries(log_path)]
    deletes = [e for e in entries if e["op"] == "delete"]
    assert len(deletes) == 1 and deletes[0]["result"] == "ok"
    assert "\u2028" in deletes[0]["exe"]
    shown = workspace.cli("log", "--file", str(log_path))
    assert shown.returncode == 0, shown.stderr
    rows = shown.stdout.splitlines()
    assert any(" delete openai/api_key ok" in row and "\\u2028" in row for row in rows)
    assert all("\u2028" not in row for row in rows)
