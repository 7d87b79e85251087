"""The ``keyring`` plugin (``AgentKeyring``) against a real agent process.

keyring's Python API runs in this process (the backend set explicitly, as
keyring itself does once it has chosen one); keyring's own CLI and keyring's
backend *selection* run in fresh child processes, so the environment and
keyringrc.cfg are read exactly as a user's program would read them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import keyring
import keyring.errors
import pytest

from agent_harness import AgentWorkspace
from modelforge_credentials.client.sync import AgentClient
from modelforge_credentials.keyring_backend import AgentKeyring

PLUGIN = "modelforge_credentials.keyring_backend.AgentKeyring"
KEYRING_CLI = (sys.executable, "-m", "keyring")
TIMEOUT = 30.0

#: (service, username) pairs a keyring user may pass; each must round-trip on its own.
AWKWARD_NAMES = [
    ("plain-service", "alice"),
    ("сервис-ключ 🔑", "пользователь ✓"),
    ("  leading and trailing  ", " user with spaces "),
    ("punct!@#$^&*()[]{};'\",.<>?|`~=+", "user!@#$^&*()"),
    ("percent%", "%"),
    ("%41%25", "%0A"),
    ("https://example.com/path/to/x", "a/b/c"),
    ("host:443:realm", "user:name:x"),
    ("line\nbreak", "tab\there"),
    ("del\x7fand\x85c1", "nul-free\x01ctl"),
    ("keyring:nested", "user:nested"),
    ("empty-username", ""),
    ("", "empty-service"),
    ("", ""),
]


def strays(marker: str) -> list[int]:
    """Pids (other than ours) whose command line mentions ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry.name))
    return found


@pytest.fixture
def workspace(workspace: AgentWorkspace) -> Iterator[AgentWorkspace]:
    """conftest's workspace; agents started on its socket behind its back die with it."""
    yield workspace
    # An agent that looped into itself may have auto-started another one on the
    # same (unique) socket path: those are ours too, found by that path.
    for pid in strays(str(workspace.socket)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def agent(workspace: AgentWorkspace) -> AgentWorkspace:
    """An agent on the encrypted file, started as a user with the plugin exported would."""
    workspace.serve("--idle-timeout", "0", env={**workspace.env, "PYTHON_KEYRING_BACKEND": PLUGIN})
    return workspace


@pytest.fixture
def plugin(agent: AgentWorkspace, monkeypatch: pytest.MonkeyPatch) -> AgentKeyring:
    """keyring's API in this process, routed to the agent through the plugin."""
    monkeypatch.setenv("MODEL_FORGE_AGENT_SOCK", str(agent.socket))
    monkeypatch.setenv("MODEL_FORGE_CONFIG_DIR", str(agent.config))
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", PLUGIN)
    backend = AgentKeyring()
    keyring.set_keyring(backend)  # conftest puts the previous backend back
    return backend


def agent_items(ws: AgentWorkspace) -> dict[tuple[str, str], str | None]:
    with AgentClient(ws.socket, timeout=TIMEOUT) as client:
        return {(p, k): client.retrieve(p, k) for p, k in client.list_keys()}


def keyring_cli(
    env: dict[str, str], *args: str, input: str = ""
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*KEYRING_CLI, *args],
        input=input,
        capture_output=True,
        text=True,
        env=env,
        timeout=TIMEOUT,
        start_new_session=True,  # no controlling terminal: getpass must not open /dev/tty
    )


def chosen_backend(env: dict[str, str]) -> dict[str, object]:
    """keyring's own choice in a fresh process: the class and, for a chain, its members."""
    probe = (
        "import json, keyring, keyring.util.platform_ as p\n"
        "kr = keyring.get_keyring()\n"
        "name = lambda b: f'{type(b).__module__}.{type(b).__qualname__}'\n"
        "print(json.dumps({'backend': name(kr),\n"
        "  'chain': [name(b) for b in getattr(kr, 'backends', [])],\n"
        "  'config_root': str(p.config_root())}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, timeout=TIMEOUT
    )
    assert result.returncode == 0, result.stderr
    chosen: dict[str, object] = json.loads(result.stdout)
    return chosen


def no_keyring_env(ws: AgentWorkspace) -> dict[str, str]:
    """A session as on a headless box: no keyring choice made, no D-Bus session."""
    env = dict(ws.env)
    for name in (
        "PYTHON_KEYRING_BACKEND",
        "DBUS_SESSION_BUS_ADDRESS",
        "MODEL_FORGE_KEYRING_PREFERRED",
    ):
        env.pop(name, None)
    return env


# -- keyring's Python API ------------------------------------------------------------------


def test_set_get_delete_round_trip_lands_in_the_agent(
    plugin: AgentKeyring, agent: AgentWorkspace
) -> None:
    keyring.set_password("pypi.org", "alice", "pw-roundtrip-81f3")
    assert keyring.get_password("pypi.org", "alice") == "pw-roundtrip-81f3"
    assert agent_items(agent) == {("keyring:pypi.org", "user:alice"): "pw-roundtrip-81f3"}
    keyring.set_password("pypi.org", "alice", "pw-replaced-2c9d")
    assert keyring.get_password("pypi.org", "alice") == "pw-replaced-2c9d"
    keyring.delete_password("pypi.org", "alice")
    assert keyring.get_password("pypi.org", "alice") is None
    assert agent_items(agent) == {}


@pytest.mark.filterwarnings("ignore:Empty usernames are deprecated")
@pytest.mark.parametrize(("service", "username"), AWKWARD_NAMES)
def test_any_service_and_username_round_trip(
    plugin: AgentKeyring, agent: AgentWorkspace, service: str, username: str
) -> None:
    value = f"pw<{service}|{username}>\n\t%41 ✓"
    keyring.set_password(service, username, value)
    assert keyring.get_password(service, username) == value
    credential = keyring.get_credential(service, username)
    assert credential is not None
    assert (credential.username, credential.password) == (username, value)
    anyone = keyring.get_credential(service, None)
    assert anyone is not None and (anyone.username, anyone.password) == (username, value)
    keyring.delete_password(service, username)
    assert keyring.get_password(service, username) is None
    assert agent_items(agent) == {}


@pytest.mark.filterwarnings("ignore:Empty usernames are deprecated")
def test_awkward_names_stay_distinct_side_by_side(
    plugin: AgentKeyring, agent: AgentWorkspace
) -> None:
    """Escaping must not make two names collide: '%0A' and a newline, '%' and '%25'."""
    for number, (service, username) in enumerate(AWKWARD_NAMES):
        keyring.set_password(service, username, f"value-{number}")
    for service, username in [("s", "%0A"), ("s", "\n"), ("s", "%"), ("s", "%25")]:
        keyring.set_password(service, username, f"{username!r}")
    for number, (service, username) in enumerate(AWKWARD_NAMES):
        assert keyring.get_password(service, username) == f"value-{number}", (service, username)
    for username in ("%0A", "\n", "%", "%25"):
        assert keyring.get_password("s", username) == f"{username!r}"
    assert len(agent_items(agent)) == len(AWKWARD_NAMES) + 4


def test_empty_password_round_trips_as_empty_not_none(plugin: AgentKeyring) -> None:
    keyring.set_password("svc-empty", "bob", "")
    assert keyring.get_password("svc-empty", "bob") == ""
    credential = keyring.get_credential("svc-empty", "bob")
    assert credential is not None and credential.password == ""
    anyone = keyring.get_credential("svc-empty", None)
    assert anyone is not None and (anyone.username, anyone.password) == ("bob", "")
    keyring.delete_password("svc-empty", "bob")
    assert keyring.get_password("svc-empty", "bob") is None


def test_deleting_what_is_not_there_raises_password_delete_error(plugin: AgentKeyring) -> None:
    with pytest.raises(keyring.errors.PasswordDeleteError):
        keyring.delete_password("never-set", "nobody")
    keyring.set_password("svc", "u1", "pw-delete-twice")
    keyring.delete_password("svc", "u1")
    with pytest.raises(keyring.errors.PasswordDeleteError):
        keyring.delete_password("svc", "u1")


def test_usernames_of_one_service_are_independent(plugin: AgentKeyring) -> None:
    users = {"u1": "pw-one-1a", "u2": "pw-two-2b", "u3": "pw-three-3c"}
    for user, password in users.items():
        keyring.set_password("shared-svc", user, password)
    keyring.set_password("other-svc", "u1", "pw-other-4d")
    keyring.delete_password("shared-svc", "u2")
    assert keyring.get_password("shared-svc", "u1") == "pw-one-1a"
    assert keyring.get_password("shared-svc", "u2") is None
    assert keyring.get_password("shared-svc", "u3") == "pw-three-3c"
    assert keyring.get_password("other-svc", "u1") == "pw-other-4d"
    anyone = keyring.get_credential("shared-svc", None)
    assert anyone is not None
    assert (anyone.username, anyone.password) in {("u1", "pw-one-1a"), ("u3", "pw-three-3c")}
    exact = keyring.get_credential("shared-svc", "u3")
    assert exact is not None and (exact.username, exact.password) == ("u3", "pw-three-3c")
    assert keyring.get_credential("shared-svc", "u2") is None
    assert keyring.get_credential("no-such-svc", None) is None


def test_values_never_appear_in_errors(plugin: AgentKeyring, agent: AgentWorkspace) -> None:
    secret = "pw-too-large-" + "S3cr3t" * 12_000  # past the agent's 64 KiB value limit
    with pytest.raises(keyring.errors.PasswordSetError) as caught:
        keyring.set_password("svc-big", "u", secret)
    message = str(caught.value) + repr(caught.value)
    assert "S3cr3t" not in message
    assert "65536" in message or "limit" in message
    keyring.set_password("svc-log", "u", "pw-not-in-the-log-77e1")
    keyring.get_password("svc-log", "u")
    with pytest.raises(keyring.errors.PasswordDeleteError) as missing:
        keyring.delete_password("svc-log", "nobody")
    assert "pw-not-in-the-log" not in str(missing.value)
    assert "pw-not-in-the-log" not in agent.agents[0].log_text()
    assert "S3cr3t" not in agent.agents[0].log_text()


def test_names_past_the_agents_limit_fail_clearly(plugin: AgentKeyring) -> None:
    """The agent's names hold 255 characters: the prefix and escaping eat into that.

    A longer service is refused with a keyring error that names the limit (never the
    value), and nothing is stored.
    """
    service = "https://example.com/" + "x" * 240
    with pytest.raises(keyring.errors.KeyringError) as caught:
        keyring.set_password(service, "u", "pw-long-name-9a")
    assert "255" in str(caught.value)
    assert "pw-long-name" not in str(caught.value)


# -- keyring's CLI -------------------------------------------------------------------------


def test_keyring_cli_set_get_del_through_the_agent(agent: AgentWorkspace) -> None:
    env = {**agent.env, "PYTHON_KEYRING_BACKEND": PLUGIN}
    result = keyring_cli(env, "set", "cli service", "cli:user", input="pw-from-cli-5e2a\n")
    assert result.returncode == 0, result.stderr
    assert agent_items(agent) == {("keyring:cli service", "user:cli:user"): "pw-from-cli-5e2a"}
    result = keyring_cli(env, "get", "cli service", "cli:user")
    assert (result.returncode, result.stdout) == (0, "pw-from-cli-5e2a\n"), result.stderr
    result = keyring_cli(env, "--mode", "creds", "get", "cli service")
    assert (result.returncode, result.stdout) == (0, "cli:user\npw-from-cli-5e2a\n"), result.stderr
    result = keyring_cli(env, "del", "cli service", "cli:user")
    assert result.returncode == 0, result.stderr
    assert agent_items(agent) == {}
    result = keyring_cli(env, "get", "cli service", "cli:user")
    assert (result.returncode, result.stdout) == (1, "")
    result = keyring_cli(env, "del", "cli service", "cli:user")
    assert result.returncode != 0
    assert "pw-from-cli" not in result.stdout + result.stderr


def test_keyring_cli_lists_the_plugin_and_diagnoses(agent: AgentWorkspace) -> None:
    env = {**agent.env, "PYTHON_KEYRING_BACKEND": PLUGIN}
    result = keyring_cli(env, "--list-backends")
    assert result.returncode == 0, result.stderr
    assert PLUGIN in result.stdout
    result = keyring_cli(env, "diagnose")
    assert result.returncode == 0, result.stderr
    assert "config path" in result.stdout


# -- chosen only when asked for ------------------------------------------------------------


def test_not_selected_without_being_asked(workspace: AgentWorkspace) -> None:
    env = no_keyring_env(workspace)
    chosen = chosen_backend(env)
    assert chosen["backend"] != PLUGIN
    assert PLUGIN not in chosen["chain"]  # type: ignore[operator]
    listing = keyring_cli(env, "--list-backends")
    assert listing.returncode == 0, listing.stderr
    assert PLUGIN not in listing.stdout
    with pytest.raises(RuntimeError, match="PYTHON_KEYRING_BACKEND"):
        AgentKeyring.priority  # noqa: B018 - the viability check itself


def test_not_selected_beside_a_real_secret_service(
    secret_service: dict[str, str], workspace: AgentWorkspace
) -> None:
    env = dict(workspace.env)
    env.pop("PYTHON_KEYRING_BACKEND", None)
    env["DBUS_SESSION_BUS_ADDRESS"] = secret_service["DBUS_SESSION_BUS_ADDRESS"]
    chosen = chosen_backend(env)
    assert PLUGIN != chosen["backend"]
    assert PLUGIN not in chosen["chain"]  # type: ignore[operator]
    assert "SecretService" in json.dumps(chosen)


def test_preferred_variable_selects_it(workspace: AgentWorkspace) -> None:
    env = {**no_keyring_env(workspace), "MODEL_FORGE_KEYRING_PREFERRED": "1"}
    assert chosen_backend(env)["backend"] == PLUGIN


def test_environment_variable_selects_it(workspace: AgentWorkspace) -> None:
    env = {**no_keyring_env(workspace), "PYTHON_KEYRING_BACKEND": PLUGIN}
    assert chosen_backend(env)["backend"] == PLUGIN


def test_keyringrc_naming_it_selects_it(workspace: AgentWorkspace) -> None:
    env = no_keyring_env(workspace)
    root = Path(env["XDG_CONFIG_HOME"]) / "python_keyring"
    assert chosen_backend(env)["config_root"] == str(root)
    root.mkdir(parents=True)
    (root / "keyringrc.cfg").write_text(f"[backend]\ndefault-keyring = {PLUGIN}\n")
    assert chosen_backend(env)["backend"] == PLUGIN
    (root / "keyringrc.cfg").write_text(
        "[backend]\ndefault-keyring = keyring.backends.fail.Keyring\n"
    )
    assert chosen_backend(env)["backend"] == "keyring.backends.fail.Keyring"


def test_keyringrc_selection_reaches_the_agent(agent: AgentWorkspace) -> None:
    env = no_keyring_env(agent)
    root = Path(env["XDG_CONFIG_HOME"]) / "python_keyring"
    root.mkdir(parents=True)
    (root / "keyringrc.cfg").write_text(f"[backend]\ndefault-keyring = {PLUGIN}\n")
    result = keyring_cli(env, "set", "rc-svc", "rc-user", input="pw-via-keyringrc-3b\n")
    assert result.returncode == 0, result.stderr
    assert agent_items(agent) == {("keyring:rc-svc", "user:rc-user"): "pw-via-keyringrc-3b"}


# -- the agent never stores into itself ----------------------------------------------------


def agent_status(ws: AgentWorkspace) -> dict[str, object]:
    result = ws.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    status: dict[str, object] = json.loads(result.stdout)
    return status


def assert_round_trip_through(ws: AgentWorkspace) -> None:
    """A store, a read and a miss answer promptly (a loop would hang until a timeout)."""
    result = ws.cli("--timeout", "8", "set", "loopcheck", "api_key", input="sk-loopcheck-61d0")
    assert result.returncode == 0, result.stderr
    result = ws.cli("--timeout", "8", "get", "loopcheck", "api_key")
    assert (result.returncode, result.stdout) == (0, "sk-loopcheck-61d0\n"), result.stderr
    result = ws.cli("--timeout", "8", "get", "loopcheck", "missing")
    assert result.returncode == 1, result.stderr
    result = ws.cli("--timeout", "8", "delete", "loopcheck", "api_key")
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "asked", [{"PYTHON_KEYRING_BACKEND": PLUGIN}, {"MODEL_FORGE_KEYRING_PREFERRED": "1"}]
)
def test_agent_asked_for_the_plugin_uses_the_encrypted_file(
    workspace: AgentWorkspace, asked: dict[str, str]
) -> None:
    env = {**no_keyring_env(workspace), **asked}
    workspace.serve("--idle-timeout", "0", env=env)
    status = agent_status(workspace)
    assert status["backend"] == "encrypted-file", status
    assert "keyring_backend" not in str(status["reason"])
    assert_round_trip_through(workspace)
    # The plugin, used by a client at the same time, reaches that same agent.
    result = keyring_cli(env, "set", "svc", "u", input="pw-beside-the-agent-0c\n")
    assert result.returncode == 0, result.stderr
    assert agent_items(workspace)[("keyring:svc", "user:u")] == "pw-beside-the-agent-0c"


@pytest.mark.parametrize(
    "asked", [{"PYTHON_KEYRING_BACKEND": PLUGIN}, {"MODEL_FORGE_KEYRING_PREFERRED": "1"}]
)
def test_agent_asked_for_the_plugin_uses_the_real_secret_service(
    secret_service: dict[str, str], workspace: AgentWorkspace, asked: dict[str, str]
) -> None:
    """With a Secret Service up, keyring's choice is a chain of it *and* the plugin:
    the agent must take the Secret Service alone, never a chain that loops back."""
    env = {**workspace.env, **asked}
    env.pop("PYTHON_KEYRING_BACKEND", None)
    env.update(asked)
    env["DBUS_SESSION_BUS_ADDRESS"] = secret_service["DBUS_SESSION_BUS_ADDRESS"]
    workspace.serve("--idle-timeout", "0", env=env)
    status = agent_status(workspace)
    assert status["backend"] == "keyring", status
    assert "SecretService" in str(status["reason"]), status["reason"]
    assert "keyring_backend" not in str(status["reason"]), status["reason"]
    assert_round_trip_through(workspace)
