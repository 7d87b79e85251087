"""git-credential-modelforge: the protocol as bytes, the rules over an in-memory agent,
then the real git against a real agent and a loopback HTTP server that demands basic auth.

git runs as in a user's shell: ``credential.helper modelforge`` makes it find
``git-credential-modelforge`` (the launcher in scripts/) on PATH. Its config is
a temp file (GIT_CONFIG_NOSYSTEM, GIT_CONFIG_GLOBAL, HOME and XDG_CONFIG_HOME
all point into the test's directory), so the machine's git config is never
read or written, and GIT_TERMINAL_PROMPT=0 turns any prompt into a failure.
Every process is bounded by a timeout.
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_harness import AgentWorkspace, alive, wait_until
from git_http_server import GitHttpServer
from modelforge_credentials.client.sync import AgentClient
from modelforge_credentials.integrations import git_credential as gc
from modelforge_credentials.integrations import git_credential_wire as wire
from modelforge_credentials.validation import MAX_NAME_LENGTH, validate_name
from refs_testkit import piped

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and SO_PEERCRED"),
    pytest.mark.skipif(shutil.which("git") is None, reason="needs git"),
]

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
HELPER = SCRIPTS / "git-credential-modelforge"
TIMEOUT = 60.0
#: A clone that cannot get a credential must end at once (prompts are off); far below TIMEOUT.
QUICK = 15.0
ALICE_TOKEN = "hf_alice-token-3f9c1e7a"
BOB_TOKEN = "hf_bob-token-8d2b4c6e"
WRONG = "hf_wrong-token-0a1b2c3d"


# -- tier 1: bytes and names --------------------------------------------------------------


def test_the_description_parser_tolerates_what_newer_gits_send() -> None:
    data = (
        b"capability[]=authtype\r\n"
        b"capability[]=state\n"
        b"protocol=https\n"
        b"host=huggingface.co\n"
        b'wwwauth[]=Basic realm="hf"\n'
        b'wwwauth[]=Bearer realm="hf"\n'
        b"password_expiry_utc=1700000000\n"
        b"oauth_refresh_token=r-1\n"
        b"state[]=helper:abc\n"
        b"no equals sign here\n"
        b"username=alice\r\n"
        b"host=huggingface.co\n"  # a repeated attribute: the later value wins, as in git
        b"\n"
        b"protocol=http\n"  # past the blank line: not part of the description
    )
    assert wire.parse_attributes(data) == {
        "protocol": "https",
        "host": "huggingface.co",
        "password_expiry_utc": "1700000000",
        "oauth_refresh_token": "r-1",
        "username": "alice",
    }
    assert wire.parse_attributes(b"protocol=https\nhost=h") == {"protocol": "https", "host": "h"}


def test_reading_stops_at_the_blank_line_even_when_the_pipe_stays_open() -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(read_end, "rb") as stream:
        os.write(write_end, b"protocol=https\nhost=example.com\n\n")
        # The write end stays open: a reader waiting for EOF would hang here.
        assert wire.read_description(stream) == {"protocol": "https", "host": "example.com"}
    os.close(write_end)


def test_an_endless_input_is_refused_with_its_own_error() -> None:
    stream = io.BytesIO(b"x" * (wire.MAX_INPUT_BYTES + 10))
    with pytest.raises(wire.HelperUsageError, match=str(wire.MAX_INPUT_BYTES)):
        wire.read_description(stream)


@pytest.mark.parametrize(
    ("attributes", "provider"),
    [
        ({"protocol": "https", "host": "huggingface.co"}, "git:https://huggingface.co"),
        ({"protocol": "http", "host": "127.0.0.1:8080"}, "git:http://127.0.0.1:8080"),
        (
            {"protocol": "https", "host": "example.com", "path": "org/repo.git"},
            "git:https://example.com/org/repo.git",
        ),
        ({"protocol": "cert", "host": "", "path": "home/u/c.p12"}, "git:cert:///home/u/c.p12"),
        ({"protocol": "https", "host": "a%b\tc"}, "git:https://a%25b%09c"),
        ({"host": "example.com"}, None),
        ({"protocol": "https"}, None),
    ],
)
def test_the_provider_is_the_url_git_describes(
    attributes: dict[str, str], provider: str | None
) -> None:
    assert wire.provider_for(attributes) == provider


@pytest.mark.parametrize(
    "text",
    ["alice", "", "a%b", "100%", "%zz", "tab\there", "nl\nx", "\x7f\x9f", "é ü 名", "\udce9\udcff"],
)
def test_any_user_name_maps_to_a_valid_key_and_back(text: str) -> None:
    encoded = wire.encode_name(text)
    assert wire.decode_name(encoded) == text
    validate_name("key", wire.PASSWORD_PREFIX + encoded)


def test_an_unknown_action_is_ignored_and_a_bad_command_line_is_a_usage_error() -> None:
    out, err = io.BytesIO(), io.StringIO()
    assert gc.main(["capability"], io.BytesIO(b"protocol=https\n"), out, err) == 0
    assert (out.getvalue(), err.getvalue()) == (b"", "")
    assert gc.main(["--verbose", "get"], io.BytesIO(), out, err) == gc.EXIT_USAGE
    assert "unknown option '--verbose'" in err.getvalue() and "usage:" in err.getvalue()
    assert gc.main([], io.BytesIO(), out, io.StringIO()) == gc.EXIT_USAGE


def test_nothing_to_do_asks_no_agent() -> None:
    # A socket that cannot exist: any attempt to reach or start an agent would say so.
    argv = ["--socket", "/nonexistent/dir/agent.sock", "--no-start"]
    for action, text in [
        ("get", b"host=example.com\n\n"),  # no protocol
        ("store", b"protocol=https\nhost=example.com\npassword=p\n\n"),  # no user
        ("erase", b"username=alice\n\n"),
    ]:
        out, err = io.BytesIO(), io.StringIO()
        assert gc.main([*argv, action], io.BytesIO(text), out, err) == 0
        assert (out.getvalue(), err.getvalue()) == (b"", "")


def test_a_password_that_is_not_utf8_is_refused_before_any_agent_is_asked() -> None:
    argv = ["--socket", "/nonexistent/dir/agent.sock", "store"]
    text = b"protocol=https\nhost=example.com\nusername=alice\npassword=pw-\xff-secret\n\n"
    err = io.StringIO()
    assert gc.main(argv, io.BytesIO(text), io.BytesIO(), err) == gc.EXIT_USAGE
    message = err.getvalue()
    assert "not valid Unicode" in message and "was not saved" in message
    assert "too long" not in message and "secret" not in message
    assert "/nonexistent" not in message  # refused before any connection


def test_an_unreadable_agent_setting_starts_no_agent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_FORGE_AGENT", "perhaps")
    allowed, why = gc._autostart_allowed(no_start=False)
    assert not allowed and "MODEL_FORGE_AGENT='perhaps'" in why
    monkeypatch.setenv("MODEL_FORGE_AGENT", "on")
    assert gc._autostart_allowed(no_start=False) == (True, "")


# -- tier 2: the rules, over an in-memory agent ---------------------------------------------


class MemoryAgent:
    """What the helper uses of AgentClient, over a dict; counts writes."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], str] = {}
        self.writes = 0

    def store(self, provider: str, key: str, value: str) -> None:
        validate_name("provider", provider)
        validate_name("key", key)
        self.writes += 1
        self.data[provider, key] = value

    def retrieve(self, provider: str, key: str) -> str | None:
        return self.data.get((provider, key))

    def delete(self, provider: str, key: str) -> bool:
        self.writes += 1
        return self.data.pop((provider, key), None) is not None

    def list_keys(self, provider: str | None = None) -> list[tuple[str, str]]:
        return sorted(k for k in self.data if provider is None or k[0] == provider)


HF = {"protocol": "https", "host": "huggingface.co"}
HF_PROVIDER = "git:https://huggingface.co"


def memory_helper(
    agent: MemoryAgent, now: float = 1_000_000.0
) -> tuple[gc.GitCredentialHelper, io.StringIO]:
    notes = io.StringIO()
    return gc.GitCredentialHelper(agent, now, notes), notes  # type: ignore[arg-type]


def test_get_answers_the_only_account_and_refuses_to_guess_among_several() -> None:
    agent = MemoryAgent()
    h, notes = memory_helper(agent)
    assert h.get(HF) == []
    h.store({**HF, "username": "alice", "password": ALICE_TOKEN})
    assert agent.data == {(HF_PROVIDER, "user:alice"): ALICE_TOKEN}
    assert h.get(HF) == [("username", "alice"), ("password", ALICE_TOKEN)]
    assert h.get({**HF, "username": "bob"}) == []

    h.store({**HF, "username": "bob", "password": BOB_TOKEN})
    assert h.get({**HF, "username": "bob"}) == [("username", "bob"), ("password", BOB_TOKEN)]
    assert h.get(HF) == []
    message = notes.getvalue()
    assert "2 accounts" in message and "alice, bob" in message
    assert "git config --global credential.https://huggingface.co.username alice" in message
    assert ALICE_TOKEN not in message and BOB_TOKEN not in message


def test_store_writes_nothing_when_the_agent_already_holds_the_same_values() -> None:
    agent = MemoryAgent()
    h, _ = memory_helper(agent)
    h.store({**HF, "username": "alice", "password": ALICE_TOKEN})
    writes = agent.writes
    h.store({**HF, "username": "alice", "password": ALICE_TOKEN})  # git approves after each use
    assert agent.writes == writes
    h.store({**HF, "username": "alice", "password": BOB_TOKEN})
    assert agent.writes == writes + 1
    assert agent.data[HF_PROVIDER, "user:alice"] == BOB_TOKEN


def test_store_without_a_user_or_a_password_stores_nothing() -> None:
    agent = MemoryAgent()
    h, _ = memory_helper(agent)
    h.store({**HF, "password": ALICE_TOKEN})
    h.store({**HF, "username": "alice"})
    assert agent.data == {}


def test_an_expired_password_is_withheld_and_its_refresh_token_is_not() -> None:
    agent = MemoryAgent()
    h, _ = memory_helper(agent, now=2000.0)
    extras = {"password_expiry_utc": "3000", "oauth_refresh_token": "refresh-1"}
    h.store({**HF, "username": "alice", "password": ALICE_TOKEN, **extras})
    assert agent.data[HF_PROVIDER, "expiry:alice"] == "3000"
    assert agent.data[HF_PROVIDER, "refresh:alice"] == "refresh-1"
    assert h.get(HF) == [
        ("username", "alice"),
        ("password", ALICE_TOKEN),
        ("password_expiry_utc", "3000"),
        ("oauth_refresh_token", "refresh-1"),
    ]
    later, _ = memory_helper(agent, now=3000.0)
    # git (2.41+) would drop an expired password itself; older gits would send it.
    assert later.get(HF) == [("username", "alice"), ("oauth_refresh_token", "refresh-1")]
    # A new password without an expiry drops the old expiry and refresh token.
    later.store({**HF, "username": "alice", "password": BOB_TOKEN})
    assert agent.data == {(HF_PROVIDER, "user:alice"): BOB_TOKEN}


def test_erase_forgets_only_the_password_git_rejected() -> None:
    agent = MemoryAgent()
    h, _ = memory_helper(agent)
    h.store({**HF, "username": "alice", "password": ALICE_TOKEN, "oauth_refresh_token": "r"})
    h.store({**HF, "username": "bob", "password": BOB_TOKEN})
    assert h.erase({**HF, "username": "alice", "password": WRONG}) == 0
    assert h.erase({**HF, "password": WRONG}) == 0
    assert len(agent.data) == 3
    assert h.erase({**HF, "username": "alice", "password": ALICE_TOKEN}) == 1
    assert agent.data == {(HF_PROVIDER, "user:bob"): BOB_TOKEN}  # its refresh token went too
    # Without a password git's own helpers forget whatever matches; so does this one.
    assert h.erase(dict(HF)) == 1
    assert agent.data == {}


def test_a_stored_value_git_cannot_carry_is_not_sent() -> None:
    agent = MemoryAgent()
    agent.data[HF_PROVIDER, "user:alice"] = "line one\nusername=mallory"
    h, notes = memory_helper(agent)
    assert h.get(HF) == []
    assert "newline" in notes.getvalue() and "modelforge-agent set" in notes.getvalue()
    assert "mallory" not in notes.getvalue()


# -- tier 3: real git, real agent, real HTTP ----------------------------------------------


def make_repo(root: Path, name: str, env: dict[str, str]) -> None:
    work = root.parent / f"work-{name}"
    run(["git", "init", "-q", "-b", "main", str(work)], env)
    (work / "README").write_text(f"{name}\n")
    run(["git", "-C", str(work), "add", "README"], env)
    run(["git", "-C", str(work), "commit", "-q", "-m", f"{name}: first"], env)
    run(["git", "clone", "-q", "--bare", str(work), str(root / name)], env)


def run(
    argv: list[str], env: dict[str, str], input: str | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        argv, env=env, input=input, capture_output=True, text=True, timeout=TIMEOUT
    )
    assert result.returncode == 0, f"{argv}: {result.stderr}"
    return result


class GitSetup:
    """An agent, a server with repositories a.git (alice) and b.git (bob), and git's env."""

    def __init__(self, base: Path, ws: AgentWorkspace) -> None:
        self.base = base
        self.ws = ws
        home = base / "home"
        (home / ".config").mkdir(parents=True)
        self.gitconfig = home / "gitconfig"
        self.gitconfig.write_text("")
        self.trace = base / "git-trace.log"
        clean = {k: v for k, v in ws.env.items() if not k.startswith(("GIT_", "SSH_ASKPASS"))}
        self.env = {
            **clean,
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": str(self.gitconfig),
            "GIT_TERMINAL_PROMPT": "0",
            "GIT_AUTHOR_NAME": "Test",
            "GIT_AUTHOR_EMAIL": "test@example.invalid",
            "GIT_COMMITTER_NAME": "Test",
            "GIT_COMMITTER_EMAIL": "test@example.invalid",
            "LC_ALL": "C",
            # The launcher's `#!/usr/bin/env python3` finds this venv's interpreter.
            "PATH": os.pathsep.join(
                [str(SCRIPTS), str(Path(sys.executable).parent), os.environ["PATH"]]
            ),
        }
        root = base / "srv"
        root.mkdir()
        for name in ("a.git", "b.git"):
            make_repo(root, name, self.env)
        self.server = GitHttpServer(
            root,
            {"a.git": ("alice", ALICE_TOKEN), "b.git": ("bob", BOB_TOKEN)},
            {k: self.env[k] for k in ("PATH", "HOME", "GIT_CONFIG_NOSYSTEM", "LC_ALL")},
        ).start()
        self._clones = 0

    @property
    def host_provider(self) -> str:
        return f"git:http://{self.server.host}"

    def clone(
        self, repo: str, *config: str, env: dict[str, str] | None = None, timeout: float = TIMEOUT
    ) -> tuple[subprocess.CompletedProcess[str], float]:
        self._clones += 1
        target = self.base / f"clone-{self._clones}"
        argv = ["git"]
        for item in config:
            argv += ["-c", item]
        argv += ["clone", "-q", self.server.url(repo), str(target)]
        began = time.monotonic()
        result = subprocess.run(
            argv,
            env={**self.env, "GIT_TRACE": str(self.trace), **(env or {})},
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return result, time.monotonic() - began

    def helper(
        self, *args: str, input: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(HELPER), *args],
            input=input,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )

    def stored(self, provider: str, key: str) -> str | None:
        with AgentClient(self.ws.socket, timeout=10) as client:
            return client.retrieve(provider, key)

    def other_helper(self, username: str, secret: str) -> str:
        """A helper that answers ``get`` with a secret it reads from a file (never argv)."""
        secret_file = self.base / f"secret-{username}"
        secret_file.write_text(secret)
        secret_file.chmod(0o600)
        script = self.base / f"other-helper-{username}"
        script.write_text(
            "#!/bin/sh\n"
            f'echo "$1" >> {self.base}/other-helper-calls\n'
            'test "$1" = get || exit 0\n'
            f"echo username={username}\n"
            f"printf 'password=%s\\n' \"$(cat {secret_file})\"\n"
        )
        script.chmod(0o700)
        return str(script)

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def ws() -> Iterator[AgentWorkspace]:
    workspace = AgentWorkspace(dict(os.environ))
    workspace.env["MODEL_FORGE_BACKEND"] = "encrypted-file"
    try:
        yield workspace
    finally:
        workspace.close()


@pytest.fixture
def setup(ws: AgentWorkspace, tmp_path: Path) -> Iterator[GitSetup]:
    ws.serve("--idle-timeout", "0")
    git_setup = GitSetup(tmp_path, ws)
    try:
        yield git_setup
    finally:
        git_setup.close()


def assert_cloned(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr


def test_clone_uses_the_credential_stored_in_the_agent_without_a_prompt(setup: GitSetup) -> None:
    # Stored by hand, under the documented names: as a user adds a Hugging Face token.
    put = setup.ws.cli("set", setup.host_provider, "user:alice", input=ALICE_TOKEN)
    assert put.returncode == 0, put.stderr
    result, _ = setup.clone("a.git", "credential.helper=modelforge")
    assert_cloned(result)
    assert result.stderr == ""
    attempts = setup.server.attempts
    assert attempts[0].username is None and not attempts[0].accepted  # the 401 that asks
    assert any(a.username == "alice" and a.accepted for a in attempts)
    assert (setup.base / "clone-1" / "README").read_text() == "a.git\n"


def test_a_credential_another_helper_supplied_is_stored_after_the_clone_succeeds(
    setup: GitSetup,
) -> None:
    with AgentClient(setup.ws.socket, timeout=10) as client:
        assert client.list_keys() == []
    other = setup.other_helper("alice", ALICE_TOKEN)
    result, _ = setup.clone("a.git", f"credential.helper={other}", "credential.helper=modelforge")
    assert_cloned(result)
    assert setup.stored(setup.host_provider, "user:alice") == ALICE_TOKEN
    # The next clone needs only this helper.
    again, _ = setup.clone("a.git", "credential.helper=modelforge")
    assert_cloned(again)
    assert (setup.base / "other-helper-calls").read_text().split() == ["get", "store"]


def test_a_rejected_password_is_erased_and_another_one_is_kept(setup: GitSetup) -> None:
    with AgentClient(setup.ws.socket, timeout=10) as client:
        client.store(setup.host_provider, "user:alice", WRONG)
    result, _ = setup.clone("a.git", "credential.helper=modelforge")
    assert result.returncode != 0
    assert "Authentication failed" in result.stderr
    assert any(a.username == "alice" and not a.accepted for a in setup.server.attempts)
    assert setup.stored(setup.host_provider, "user:alice") is None  # git called erase

    # git rejecting a password the agent does not hold leaves the stored one alone.
    with AgentClient(setup.ws.socket, timeout=10) as client:
        client.store(setup.host_provider, "user:alice", ALICE_TOKEN)
    reject = run(
        ["git", "-c", "credential.helper=modelforge", "credential", "reject"],
        setup.env,
        input=f"protocol=http\nhost={setup.server.host}\nusername=alice\npassword={WRONG}\n\n",
    )
    assert reject.stderr == ""
    assert setup.stored(setup.host_provider, "user:alice") == ALICE_TOKEN
    assert_cloned(setup.clone("a.git", "credential.helper=modelforge")[0])


def test_use_http_path_keeps_one_credential_per_repository(setup: GitSetup) -> None:
    with AgentClient(setup.ws.socket, timeout=10) as client:
        client.store(f"{setup.host_provider}/a.git", "user:alice", ALICE_TOKEN)
        client.store(f"{setup.host_provider}/b.git", "user:bob", BOB_TOKEN)
    config = ("credential.helper=modelforge", "credential.useHttpPath=true")
    assert_cloned(setup.clone("a.git", *config)[0])
    assert_cloned(setup.clone("b.git", *config)[0])
    accepted = {(a.repo, a.username) for a in setup.server.attempts if a.accepted}
    assert accepted == {("a.git", "alice"), ("b.git", "bob")}
    # Without useHttpPath git asks for the host, where nothing is stored.
    result, _ = setup.clone("a.git", "credential.helper=modelforge")
    assert result.returncode != 0 and "terminal prompts disabled" in result.stderr


def test_several_accounts_on_one_host_are_told_apart_by_the_user_git_names(
    setup: GitSetup,
) -> None:
    with AgentClient(setup.ws.socket, timeout=10) as client:
        client.store(setup.host_provider, "user:alice", ALICE_TOKEN)
        client.store(setup.host_provider, "user:bob", BOB_TOKEN)
    result, _ = setup.clone("b.git", "credential.helper=modelforge")
    assert result.returncode != 0
    assert "2 accounts" in result.stderr and ".username alice" in result.stderr
    named = f"credential.http://{setup.server.host}.username=bob"
    assert_cloned(setup.clone("b.git", "credential.helper=modelforge", named)[0])


@pytest.mark.parametrize("how", ["--no-start", "MODEL_FORGE_AGENT=off", "untrusted directory"])
def test_without_an_agent_get_answers_nothing_says_why_and_git_fails_at_once(
    ws: AgentWorkspace, tmp_path: Path, how: str
) -> None:
    setup = GitSetup(tmp_path, ws)  # no agent serves on ws.socket
    try:
        helper_config = "credential.helper=modelforge"
        env: dict[str, str] = {}
        socket_dir = ws.socket.parent
        socket_dir.mkdir(mode=0o700)
        if how == "--no-start":
            helper_config = "credential.helper=modelforge --no-start"
            expected = "--no-start"
        elif how == "MODEL_FORGE_AGENT=off":
            env = {"MODEL_FORGE_AGENT": "off"}
            expected = "MODEL_FORGE_AGENT=off"
        else:
            socket_dir.chmod(0o777)  # anyone could have put a socket there: not even tried
            expected = "can be written by others"
        result, took = setup.clone("a.git", helper_config, env=env, timeout=QUICK)
        assert result.returncode != 0
        assert "terminal prompts disabled" in result.stderr
        assert expected in result.stderr
        assert "git will try its next helper or prompt" in result.stderr
        assert took < QUICK
        assert not ws.socket.exists()  # and no agent was started

        direct = setup.helper(
            *helper_config.removeprefix("credential.helper=modelforge").split(),
            "get",
            input=f"protocol=http\nhost={setup.server.host}\n\n",
            env=env,
        )
        assert (direct.returncode, direct.stdout) == (0, "")
        assert expected in direct.stderr
    finally:
        setup.close()


def test_a_locked_agent_is_reported_and_git_does_not_wait(setup: GitSetup) -> None:
    ws = setup.ws
    assert ws.cli("set", setup.host_provider, "user:alice", input=ALICE_TOKEN).returncode == 0
    assert ws.cli("passwd", input="a passphrase\n").returncode == 0
    assert ws.cli("lock").returncode == 0
    result, took = setup.clone("a.git", "credential.helper=modelforge", timeout=QUICK)
    assert result.returncode != 0 and "terminal prompts disabled" in result.stderr
    assert "locked" in result.stderr and "modelforge-agent unlock" in result.stderr
    assert took < QUICK
    assert ALICE_TOKEN not in result.stderr

    stored = setup.helper(
        "store",
        input=f"protocol=http\nhost={setup.server.host}\nusername=bob\npassword={BOB_TOKEN}\n",
    )
    assert stored.returncode == 3
    assert "was not saved" in stored.stderr and "modelforge-agent unlock" in stored.stderr
    assert BOB_TOKEN not in stored.stderr

    assert ws.cli("unlock", input="a passphrase\n").returncode == 0
    assert_cloned(setup.clone("a.git", "credential.helper=modelforge")[0])


def test_get_starts_the_agent_when_none_runs(ws: AgentWorkspace, tmp_path: Path) -> None:
    setup = GitSetup(tmp_path, ws)
    ws.socket.parent.mkdir(mode=0o700)
    pid: int | None = None
    try:
        other = setup.other_helper("alice", ALICE_TOKEN)
        # This helper first: its get starts the (empty) agent, the other one answers,
        # and the approval after the clone lands in the agent it started.
        result, _ = setup.clone(
            "a.git", "credential.helper=modelforge", f"credential.helper={other}"
        )
        assert_cloned(result)
        with AgentClient(ws.socket, timeout=10) as client:
            status = client.status()
            assert status["started_by"] == "auto-start"
            pid = int(str(status["pid"]))
            assert client.retrieve(setup.host_provider, "user:alice") == ALICE_TOKEN
    finally:
        setup.close()
        if pid is not None:  # the agent this test started, by its pid
            os.kill(pid, signal.SIGTERM)
            wait_until(lambda: not alive(pid), TIMEOUT, "the auto-started agent to stop")


def test_a_url_too_long_for_a_name_fails_store_and_answers_nothing(setup: GitSetup) -> None:
    long_path = "org/" + "r" * MAX_NAME_LENGTH + ".git"
    base = f"protocol=http\nhost={setup.server.host}\npath={long_path}\n"
    stored = setup.helper("store", input=base + f"username=alice\npassword={ALICE_TOKEN}\n\n")
    assert stored.returncode == 2
    assert f"the limit is {MAX_NAME_LENGTH}" in stored.stderr
    assert "credential.useHttpPath" in stored.stderr
    assert ALICE_TOKEN not in stored.stderr
    got = setup.helper("get", input=base + "\n")
    assert (got.returncode, got.stdout) == (0, "")
    assert f"the limit is {MAX_NAME_LENGTH}" in got.stderr
    erased = setup.helper("erase", input=base + f"username=alice\npassword={ALICE_TOKEN}\n\n")
    assert erased.returncode == 2 and "modelforge-agent delete" in erased.stderr


def test_a_store_too_long_for_a_name_is_refused_before_any_agent_starts(
    ws: AgentWorkspace, tmp_path: Path
) -> None:
    setup = GitSetup(tmp_path, ws)  # no agent; starting one would be allowed
    try:
        long_host = "h" * MAX_NAME_LENGTH + ".example"
        stored = setup.helper(
            "store",
            input=f"protocol=https\nhost={long_host}\nusername=alice\npassword={ALICE_TOKEN}\n",
        )
        assert stored.returncode == 2
        assert f"the limit is {MAX_NAME_LENGTH}" in stored.stderr and "too long" in stored.stderr
        assert not ws.socket.exists()
    finally:
        setup.close()


class ProcScanner:
    """Reads every process's command line while git runs; keeps those that hold ``needle``."""

    def __init__(self, needle: str) -> None:
        self.needle = needle.encode()
        self.hits: list[str] = []
        self.helpers_seen: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry.name}/cmdline", "rb") as handle:
                        argv = handle.read()
                except OSError:
                    continue
                if self.needle in argv:
                    self.hits.append(argv.decode(errors="replace"))
                if b"credential-modelforge" in argv:
                    self.helpers_seen.add(int(entry.name))

    def __enter__(self) -> ProcScanner:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=TIMEOUT)


def test_the_secret_never_reaches_stderr_argv_traces_or_logs(setup: GitSetup) -> None:
    other = setup.other_helper("alice", ALICE_TOKEN)
    outputs: list[str] = []
    with ProcScanner(ALICE_TOKEN) as scanner:
        first, _ = setup.clone(
            "a.git", f"credential.helper={other}", "credential.helper=modelforge"
        )
        second, _ = setup.clone("a.git", "credential.helper=modelforge")
        for result in (first, second):
            assert_cloned(result)
            outputs += [result.stdout, result.stderr]

    # Blocked on its standard input, the helper's argv and environment can be read at leisure.
    with piped([str(HELPER), "store"], setup.env) as proc:
        assert proc.stdin is not None
        proc.stdin.write(
            f"protocol=http\nhost={setup.server.host}\nusername=bob\npassword={BOB_TOKEN}\n".encode()
        )
        proc.stdin.flush()
        # Past /usr/bin/env: the interpreter runs the launcher and waits for the blank line.
        wait_until(
            lambda: Path(f"/proc/{proc.pid}/cmdline").read_bytes().endswith(b"store\0"),
            TIMEOUT,
            "the helper to run",
        )
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        environ = Path(f"/proc/{proc.pid}/environ").read_bytes()
        out, err = proc.communicate(b"\n", timeout=TIMEOUT)
    assert proc.returncode == 0, err
    assert cmdline.rstrip(b"\0").split(b"\0")[-2:] == [str(HELPER).encode(), b"store"]
    assert BOB_TOKEN.encode() not in cmdline + environ + out + err
    assert setup.stored(setup.host_provider, "user:bob") == BOB_TOKEN

    assert scanner.hits == []
    trace = setup.trace.read_text()
    assert "credential-modelforge get" in trace and "credential-modelforge store" in trace
    basic = base64.b64encode(f"alice:{ALICE_TOKEN}".encode()).decode()
    agent_logs = "".join(agent.log_text() for agent in setup.ws.agents)
    for text in (*outputs, trace, setup.server.log_text(), agent_logs):
        assert ALICE_TOKEN not in text and basic not in text
    print(f"[figure] helper processes seen by the /proc scan: {len(scanner.helpers_seen)}")


def test_the_get_path_imports_only_what_the_thin_client_imports(setup: GitSetup) -> None:
    with AgentClient(setup.ws.socket, timeout=10) as client:
        client.store(setup.host_provider, "user:alice", ALICE_TOKEN)
    listing = "import sys; sys.stderr.write(repr(sorted(sys.modules)))"
    baseline = run(
        [sys.executable, "-c", f"import modelforge_credentials.client.sync; {listing}"],
        setup.env,
    )
    code = (
        "from modelforge_credentials.integrations.git_credential import main\n"
        "status = main(['get'])\n"
        f"{listing}\n"
        "raise SystemExit(status)\n"
    )
    helper = run(
        [sys.executable, "-c", code],
        setup.env,
        input=f"protocol=http\nhost={setup.server.host}\n\n",
    )
    assert helper.stdout == f"username=alice\npassword={ALICE_TOKEN}\n"
    extra = set(eval(helper.stderr)) - set(eval(baseline.stderr))  # noqa: S307 (our own repr)
    assert extra == {
        "modelforge_credentials.integrations",
        "modelforge_credentials.integrations.git_credential",
        "modelforge_credentials.integrations.git_credential_wire",
    }


def test_the_launcher_is_a_plain_executable_script() -> None:
    mode = HELPER.stat().st_mode
    assert mode & stat.S_IXUSR
    text = HELPER.read_text()
    assert text.startswith("#!/usr/bin/env python3\n")
    assert "from modelforge_credentials.integrations.git_credential import main" in text
