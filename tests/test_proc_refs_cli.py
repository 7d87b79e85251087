"""``modelforge-agent read`` and ``inject`` through a real agent process.

A real agent (encrypted file in a temporary directory) holds the secrets,
some under names with ``/``, ``%`` and non-ASCII characters; every command
is a real CLI process. No secret may appear in any error message.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_harness import CLI, AgentWorkspace
from modelforge_credentials import refs, secret_env
from modelforge_credentials.client.sync import AgentClient
from modelforge_credentials.secret_env import Binding
from refs_testkit import TIMEOUT, agent_holding

OPENAI = "sk-proj-refs-cli-openai-91ac"
TEAM = "team-prod-token-5e5e"
PERCENT = "percent-secret-77d0"
CAFE = "café-sécret-ключ-03"
MULTILINE = "-----BEGIN KEY-----\nline\n-----END KEY-----"
STORED = {
    ("openai", "api_key"): OPENAI,
    ("team/prod", "api_key"): TEAM,
    ("p%q", "100%"): PERCENT,
    ("café", "ключ"): CAFE,
    ("pem", "key"): MULTILINE,
}
SECRETS = tuple(STORED.values())
UMASK_022 = ("sh", "-c", 'umask 022 && exec "$@"', "sh")


@pytest.fixture
def agent() -> Iterator[AgentWorkspace]:
    with agent_holding(dict(os.environ), STORED) as ws:
        yield ws


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


def failed(result: subprocess.CompletedProcess[str], status: int) -> str:
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    assert result.stdout == ""
    assert_no_secret(result.stderr)
    return result.stderr


# -- read -------------------------------------------------------------------------------


def test_read_prints_the_value_with_a_newline(agent: AgentWorkspace) -> None:
    result = agent.cli("read", "mf://openai/api_key")
    assert (result.returncode, result.stdout, result.stderr) == (0, OPENAI + "\n", "")
    bare = agent.cli("read", "-n", "mf://openai/api_key")
    assert (bare.returncode, bare.stdout) == (0, OPENAI)
    assert agent.cli("read", "--no-newline", "mf://pem/key").stdout == MULTILINE


@pytest.mark.parametrize(
    ("reference", "value"),
    [
        ("mf://team%2Fprod/api_key", TEAM),
        ("mf://p%25q/100%25", PERCENT),
        ("mf://caf%C3%A9/%D0%BA%D0%BB%D1%8E%D1%87", CAFE),
        ("mf://caf%c3%a9/%d0%ba%d0%bb%d1%8e%d1%87", CAFE),
        ("mf://café/ключ", CAFE),
    ],
)
def test_read_decodes_escaped_names(agent: AgentWorkspace, reference: str, value: str) -> None:
    result = agent.cli("read", reference)
    assert (result.returncode, result.stdout) == (0, value + "\n"), result.stderr


def test_read_of_an_unknown_reference_exits_1_and_names_it(agent: AgentWorkspace) -> None:
    stderr = failed(agent.cli("read", "mf://team%2Fprod/missing%25"), 1)
    assert stderr == (
        "modelforge-agent read: unknown reference mf://team%2Fprod/missing%25: no credential "
        "'missing%' for provider 'team/prod'; nothing was printed. Store it with "
        "`modelforge-agent set team/prod missing%`\n"
    )
    # Unescaped, the / in the provider's name makes a reference of three parts: exit 2.
    stderr = failed(agent.cli("read", "mf://team/prod/api_key"), 2)
    assert "'mf://team/prod/api_key'" in stderr and "%2F" in stderr


@pytest.mark.parametrize(
    ("reference", "problem"),
    [
        ("op://openai/api_key", "starts with mf://"),
        ("mf://openai", "one / between the names"),
        ("mf://open ai/api_key", "written %20"),
        ("mf://openai/%ZZ", "two hex digits"),
    ],
)
def test_read_of_a_malformed_reference_exits_2(
    agent: AgentWorkspace, reference: str, problem: str
) -> None:
    stderr = failed(agent.cli("read", reference), 2)
    assert stderr.startswith("modelforge-agent read: ") and problem in stderr
    assert repr(reference) in stderr


# -- inject -----------------------------------------------------------------------------

TEMPLATE = """\
# generated config: {{ .Left.Alone }}
openai: {{ mf://openai/api_key }}
team: "{{mf://team%2Fprod/api_key}}"
percent={{	mf://p%25q/100%25	}}
cafe={{ mf://café/ключ }} and again {{ mf://caf%C3%A9/%D0%BA%D0%BB%D1%8E%D1%87 }}
bare mf://openai/api_key stays
pem: |
  {{ mf://pem/key }}
"""
RENDERED = f"""\
# generated config: {{{{ .Left.Alone }}}}
openai: {OPENAI}
team: "{TEAM}"
percent={PERCENT}
cafe={CAFE} and again {CAFE}
bare mf://openai/api_key stays
pem: |
  {MULTILINE}
"""


def write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def test_inject_to_stdout(agent: AgentWorkspace) -> None:
    template = write(agent.base / "app.tmpl", TEMPLATE)
    result = agent.cli("inject", "-i", str(template))
    assert (result.returncode, result.stdout, result.stderr) == (0, RENDERED, "")


def test_inject_keeps_bytes_and_line_endings(agent: AgentWorkspace) -> None:
    template = agent.base / "latin.tmpl"
    template.write_bytes(b"caf\xe9=\r\n{{ mf://openai/api_key }}\r\n")
    result = subprocess.run(
        [*CLI, "inject", "-i", str(template)],
        capture_output=True,
        env=agent.env,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"caf\xe9=\r\n" + OPENAI.encode() + b"\r\n"


def test_inject_without_references_needs_no_agent(agent: AgentWorkspace) -> None:
    template = write(agent.base / "plain.tmpl", "nothing {{ here }}\n")
    result = agent.cli("--socket", str(agent.base / "absent.sock"), "inject", "-i", str(template))
    assert (result.returncode, result.stdout) == (0, "nothing {{ here }}\n"), result.stderr


def test_inject_out_file_is_0600_whatever_the_template_mode_and_umask(
    agent: AgentWorkspace,
) -> None:
    work = agent.base / "work"
    work.mkdir()
    template = write(work / "app.tmpl", TEMPLATE, mode=0o644)
    out = work / "app.conf"
    result = agent.cli("inject", "-i", str(template), "-o", str(out), prefix=UMASK_022)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert out.read_text(encoding="utf-8") == RENDERED
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert stat.S_IMODE(template.stat().st_mode) == 0o644
    assert sorted(p.name for p in work.iterdir()) == ["app.conf", "app.tmpl"]  # no temp left
    # An existing, more open OUT is replaced by a new private file, not rewritten in place.
    out.chmod(0o644)
    before = out.stat().st_ino
    again = agent.cli("inject", "-i", str(template), "-o", str(out), prefix=UMASK_022)
    assert again.returncode == 0, again.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o600 and out.stat().st_ino != before
    assert out.read_text(encoding="utf-8") == RENDERED
    assert sorted(p.name for p in work.iterdir()) == ["app.conf", "app.tmpl"]


def test_an_unknown_reference_leaves_out_untouched_and_names_them_all(
    agent: AgentWorkspace,
) -> None:
    work = agent.base / "work"
    work.mkdir()
    template = write(
        work / "app.tmpl",
        TEMPLATE + "x={{ mf://nobody/api_key }}\ny={{ mf://team%2Fprod/gone%25 }}\n"
        "z={{ mf://nobody/api_key }}\n",
    )
    out = write(work / "app.conf", "the previous good config\n", mode=0o640)
    before = out.stat()
    stderr = failed(agent.cli("inject", "-i", str(template), "-o", str(out)), 1)
    assert stderr.startswith(
        "modelforge-agent inject: 2 unknown references: mf://nobody/api_key, "
        "mf://team%2Fprod/gone%25; nothing was written."
    ), stderr
    after = out.stat()
    assert out.read_text() == "the previous good config\n"
    assert (after.st_ino, after.st_mtime_ns, stat.S_IMODE(after.st_mode)) == (
        before.st_ino,
        before.st_mtime_ns,
        0o640,
    )
    assert sorted(p.name for p in work.iterdir()) == ["app.conf", "app.tmpl"]
    # To standard output: not a byte of the template's first part either.
    failed(agent.cli("inject", "-i", str(template)), 1)


def test_a_malformed_placeholder_is_exit_2_with_its_line_and_nothing_written(
    agent: AgentWorkspace,
) -> None:
    template = write(
        agent.base / "bad.tmpl", "openai: {{ mf://openai/api_key }}\nteam: {{ mf://team/prod/x }}\n"
    )
    out = agent.base / "out.conf"
    stderr = failed(agent.cli("inject", "-i", str(template), "-o", str(out)), 2)
    assert stderr.startswith("modelforge-agent inject: line 2: malformed secret reference")
    assert "'mf://team/prod/x'" in stderr
    assert not out.exists()


def test_inject_refuses_to_write_over_its_template(agent: AgentWorkspace) -> None:
    template = write(agent.base / "app.tmpl", TEMPLATE)
    link = agent.base / "link.conf"
    link.symlink_to(template)
    hard = agent.base / "hard.conf"
    os.link(template, hard)
    for out in (template, link, hard, agent.base / "." / "app.tmpl"):
        stderr = failed(agent.cli("inject", "-i", str(template), "-o", str(out)), 2)
        assert "is the template itself; nothing was written" in stderr
    assert template.read_text(encoding="utf-8") == TEMPLATE


def test_inject_refuses_special_missing_and_oversized_templates(agent: AgentWorkspace) -> None:
    fifo = agent.base / "fifo.tmpl"
    os.mkfifo(fifo)
    stderr = failed(agent.cli("inject", "-i", str(fifo), timeout=10), 4)
    assert "not a regular file" in stderr
    stderr = failed(agent.cli("inject", "-i", str(agent.base / "absent.tmpl")), 2)
    assert "does not exist" in stderr
    big = agent.base / "big.tmpl"
    big.write_bytes(b"{{ mf://openai/api_key }}" + b"x" * refs.MAX_TEMPLATE_BYTES)
    out = agent.base / "big.conf"
    stderr = failed(agent.cli("inject", "-i", str(big), "-o", str(out)), 2)
    assert f"over the limit of {refs.MAX_TEMPLATE_BYTES:,} bytes" in stderr
    assert not out.exists()


def test_inject_unwritable_out_is_exit_4_and_leaves_no_temp(agent: AgentWorkspace) -> None:
    template = write(agent.base / "app.tmpl", TEMPLATE)
    out = agent.base / "missing-dir" / "app.conf"
    stderr = failed(agent.cli("inject", "-i", str(template), "-o", str(out)), 4)
    assert f"cannot write {out}" in stderr


# -- exec --env-file's helpers, against the real agent ----------------------------------------


def test_env_file_references_resolve_through_the_agent(agent: AgentWorkspace) -> None:
    env_file = write(
        agent.base / "app.env",
        "PLAIN=1\nOPENAI_API_KEY=mf://openai/api_key\nTEAM='mf://team%2Fprod/api_key'\n"
        'CAFE="mf://café/ключ"\n',
    )
    plain, bindings = secret_env.env_file_bindings(env_file)
    assert plain == {"PLAIN": "1"}
    with AgentClient(agent.socket, timeout=TIMEOUT) as client:
        assert refs.resolve_all(bindings, client.retrieve) == {
            "OPENAI_API_KEY": OPENAI,
            "TEAM": TEAM,
            "CAFE": CAFE,
        }
        missing = [*bindings, Binding("A", "nobody", "k", True), Binding("B", "p%q", "x", True)]
        with pytest.raises(refs.UnknownReferencesError) as caught:
            refs.resolve_all(missing, client.retrieve)
    assert caught.value.references == ["A=mf://nobody/k", "B=mf://p%25q/x"]
    assert_no_secret(str(caught.value))
