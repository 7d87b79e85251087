"""The keyring backend against a real Secret Service (a private gnome-keyring).

Agents here are real processes whose backend is the keyring; values are
checked from the other side with ``secret-tool``, gnome-keyring's own client.
The locked-collection test runs its own gnome-keyring, so locking it never
touches the session-wide one the other tests share.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keyring
import keyring.backend
import keyring.core
import pytest
from keyring.backends import SecretService

from agent_harness import started_secret_service, stop_process
from modelforge_credentials import (
    AutoStorage,
    CredentialLockedError,
    CredentialStorageError,
    EncryptedFileStorage,
    KeyringStorage,
)
from modelforge_credentials.client import AgentClient
from realpeers import REQUIRE_VARIABLE, SecretServiceSession

pytestmark = pytest.mark.secret_service

CLI = [sys.executable, "-m", "modelforge_credentials.cli"]
TTL = 1.0
#: Longest a keyring call may take when the collection is locked.
LOCKED_BOUND = 15.0
PROVIDER = "sstest"


def need_secret_tool() -> None:
    if shutil.which("secret-tool") is None:
        if os.environ.get(REQUIRE_VARIABLE) == "1":
            pytest.fail(f"secret-tool is required here ({REQUIRE_VARIABLE}=1)")
        pytest.skip("secret-tool is not installed (Debian package: libsecret-tools)")


def secret_tool_lookup(provider: str, key: str) -> str:
    result = subprocess.run(
        ["secret-tool", "lookup", "service", f"model-forge.{provider}.{key}"]
        + ["username", "credential"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def secret_tool_store(provider: str, key: str, value: str) -> None:
    subprocess.run(
        ["secret-tool", "store", "--label=x", "service", f"model-forge.{provider}.{key}"]
        + ["username", "credential"],
        input=value,
        text=True,
        check=True,
        timeout=30,
    )


@dataclass
class RunningAgent:
    proc: subprocess.Popen[bytes]
    socket: Path
    log: Path

    def client(self) -> AgentClient:
        return AgentClient(self.socket, timeout=LOCKED_BOUND)

    def cli(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, "--socket", str(self.socket), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=LOCKED_BOUND + 15,
        )


@pytest.fixture
def start_agent(tmp_path: Path) -> Iterator[Callable[..., RunningAgent]]:
    """Start agent processes in the current environment; readiness by pipe."""
    started: list[subprocess.Popen[bytes]] = []
    run_dir = Path(os.environ["XDG_RUNTIME_DIR"])

    def start(*serve_args: str, env: dict[str, str] | None = None) -> RunningAgent:
        number = len(started)
        sock_dir = run_dir / f"agent{number}"
        sock_dir.mkdir(mode=0o700)
        sock = sock_dir / "agent.sock"
        log = tmp_path / f"agent{number}.log"
        read_end, write_end = os.pipe()
        argv = [*CLI, "--socket", str(sock), "serve", "--ready-fd", str(write_end), *serve_args]
        with open(log, "wb") as log_file:
            proc = subprocess.Popen(
                argv,
                env={**os.environ, **(env or {})},
                pass_fds=(write_end,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log_file,
            )
        started.append(proc)
        os.close(write_end)
        try:
            readable = select.select([read_end], [], [], 20)[0]
            line = os.read(read_end, 4096) if readable else b""
        finally:
            os.close(read_end)
        assert line == b"ready\n", f"the agent did not start ({line!r}): {log.read_text()}"
        return RunningAgent(proc, sock, log)

    yield start
    for proc in started:
        stop_process(proc)


@pytest.fixture
def keyring_cleanup(secret_service: dict[str, str]) -> Iterator[list[tuple[str, str]]]:
    """Pairs a test stored: deleted from the shared keyring afterwards."""
    pairs: list[tuple[str, str]] = []
    yield pairs
    storage = KeyringStorage()
    for provider, key in pairs:
        storage.delete(provider, key)


# -- an agent whose backend is the keyring -------------------------------------------


def test_agent_values_are_secret_service_items_and_outside_changes_show_after_the_ttl(
    secret_service: dict[str, str],
    start_agent: Callable[..., RunningAgent],
    keyring_cleanup: list[tuple[str, str]],
) -> None:
    need_secret_tool()
    agent = start_agent("--cache-ttl", str(TTL), env={"MODEL_FORGE_BACKEND": "keyring"})
    key = "api_key"
    keyring_cleanup.append((PROVIDER, key))

    with agent.client() as client:
        client.store(PROVIDER, key, "sk-through-the-agent")
        assert secret_tool_lookup(PROVIDER, key) == "sk-through-the-agent"

        for attempt in range(3):
            old, new = f"sk-old-{attempt}", f"sk-changed-outside-{attempt}"
            client.store(PROVIDER, key, old)  # caches `old`: the TTL counts from here
            cached_at = time.monotonic()
            secret_tool_store(PROVIDER, key, new)
            immediately = client.retrieve(PROVIDER, key)
            if time.monotonic() - cached_at < TTL:
                break  # else this machine was too slow to look within the TTL: again
        else:
            pytest.fail(f"could not read back within the {TTL:g} s cache TTL in 3 attempts")
        assert immediately == old, "the agent did not serve its cached value within the TTL"

        deadline = time.monotonic() + 10
        while (value := client.retrieve(PROVIDER, key)) != new:
            assert value == old
            assert time.monotonic() < deadline, "the outside change never showed"
            time.sleep(0.05)


def test_status_names_the_keyring_and_why(
    secret_service: dict[str, str], start_agent: Callable[..., RunningAgent]
) -> None:
    forced = start_agent("--cache-ttl", str(TTL), env={"MODEL_FORGE_BACKEND": "keyring"})
    automatic = start_agent()

    with forced.client() as client:
        status = client.status()
    assert status["backend"] == "keyring"
    assert status["protection"] == "keyring"
    assert "MODEL_FORGE_BACKEND=keyring" in str(status["reason"])
    assert status["cache_ttl"] == TTL

    with automatic.client() as client:
        status = client.status()
    assert status["backend"] == "keyring"
    assert str(status["reason"]).startswith("auto:")
    assert "SecretService" in str(status["reason"])


# -- automatic selection -----------------------------------------------------------------


@pytest.fixture
def fresh_keyring_detection(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Make ``keyring`` detect its backend again, as a new process would.

    ``keyring.core`` keeps the chosen backend in ``_keyring_backend`` (None
    means "detect on next use"), and ``keyring.backend.get_all_keyring``
    caches the viable backends found the first time (``jaraco.functools.once``,
    undone by its ``reset``). Both are reset; monkeypatch puts the chosen
    backend back afterwards, and the cache is dropped again.
    """

    def forget_viable_backends() -> None:
        with contextlib.suppress(AttributeError, KeyError):
            keyring.backend.get_all_keyring.reset()  # type: ignore[attr-defined]

    monkeypatch.setattr(keyring.core, "_keyring_backend", None)
    forget_viable_backends()
    yield
    forget_viable_backends()


def test_auto_storage_picks_the_keyring_when_the_secret_service_is_up(
    secret_service: dict[str, str], fresh_keyring_detection: None, tmp_path: Path
) -> None:
    auto = AutoStorage(tmp_path / "config")

    assert isinstance(auto.backend, KeyringStorage)
    assert "SecretService" in auto.reason
    assert isinstance(keyring.get_keyring(), SecretService.Keyring)


def test_auto_storage_picks_the_encrypted_file_when_the_bus_is_dead(
    secret_service: dict[str, str],
    fresh_keyring_detection: None,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", "unix:path=/nonexistent")

    auto = AutoStorage(tmp_path / "config")

    assert isinstance(auto.backend, EncryptedFileStorage)
    assert "no system keyring" in auto.reason
    assert auto.backend.config_dir == tmp_path / "config"
    assert not (tmp_path / "config").exists(), "choosing must not write anything"


# -- a locked collection -------------------------------------------------------------------


@pytest.fixture
def private_secret_service(monkeypatch: pytest.MonkeyPatch) -> Iterator[SecretServiceSession]:
    """A gnome-keyring of this test's own, free to be locked."""
    session = SecretServiceSession()
    env = started_secret_service(session)
    monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", env["DBUS_SESSION_BUS_ADDRESS"])
    monkeypatch.delenv("PYTHON_KEYRING_BACKEND", raising=False)
    keyring.set_keyring(SecretService.Keyring())
    yield session
    session.stop()


def lock_login_collection() -> None:
    import secretstorage

    connection = secretstorage.dbus_init()
    try:
        collection = secretstorage.get_default_collection(connection)
        collection.lock()
        assert collection.is_locked()
    finally:
        connection.close()


def within_bound(call: Callable[[], Any], bound: float = LOCKED_BOUND) -> dict[str, Any]:
    """Run ``call`` on a thread; fail with its stack if it is still blocked at ``bound``."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        started = time.monotonic()
        try:
            outcome["value"] = call()
        except BaseException as err:  # noqa: B036 - handed back to the test
            outcome["error"] = err
        outcome["seconds"] = time.monotonic() - started

    thread = threading.Thread(target=target, name="bounded-keyring-call", daemon=True)
    thread.start()
    thread.join(bound)
    if thread.is_alive():
        assert thread.ident is not None
        stack = "".join(traceback.format_stack(sys._current_frames()[thread.ident]))
        pytest.fail(f"still blocked after {bound:g} s (no answer from the keyring):\n{stack}")
    return outcome


def test_locked_collection_gives_a_clear_error_in_bounded_time(
    private_secret_service: SecretServiceSession,
) -> None:
    storage = KeyringStorage()
    storage.store(PROVIDER, "api_key", "sk-before-locking")
    lock_login_collection()

    for operation in (
        lambda: storage.retrieve(PROVIDER, "api_key"),
        lambda: storage.store(PROVIDER, "api_key", "sk-while-locked"),
        lambda: storage.exists(PROVIDER, "api_key"),
    ):
        outcome = within_bound(operation)
        error = outcome.get("error")
        assert isinstance(error, CredentialStorageError), outcome
        assert isinstance(error, CredentialLockedError), repr(error)
        assert "locked" in str(error) and "unlock" in str(error)
        assert "sk-" not in str(error)


def test_agent_reports_a_locked_collection_as_locked(
    private_secret_service: SecretServiceSession, start_agent: Callable[..., RunningAgent]
) -> None:
    KeyringStorage().store(PROVIDER, "api_key", "sk-before-locking")
    agent = start_agent(env={"MODEL_FORGE_BACKEND": "keyring"})
    lock_login_collection()

    get = agent.cli("get", PROVIDER, "api_key")

    assert get.returncode == 3, get.stderr  # the CLI's "locked" status
    assert "locked" in get.stderr
    assert "sk-before-locking" not in get.stdout + get.stderr
    with agent.client() as client:
        assert client.status()["backend"] == "keyring"  # still answering


@pytest.fixture
def silent_prompter(private_secret_service: SecretServiceSession) -> Iterator[None]:
    """A desktop prompter that never answers: the user is away from the screen.

    It owns gnome-keyring's prompter name on the private bus and reads
    nothing, so an unlock prompt raised through it waits forever.
    """
    from jeepney.bus_messages import message_bus
    from jeepney.io.blocking import open_dbus_connection

    connection = open_dbus_connection(bus="SESSION")
    reply = connection.send_and_get_reply(
        message_bus.RequestName("org.gnome.keyring.SystemPrompter")
    )
    assert reply.body[0] == 1, "could not take the prompter's name"
    yield
    connection.close()


def test_agent_keyring_never_waits_on_an_unanswered_unlock_prompt(
    silent_prompter: None, start_agent: Callable[..., RunningAgent]
) -> None:
    KeyringStorage().store(PROVIDER, "api_key", "sk-before-locking")
    lock_login_collection()

    outcome = within_bound(
        lambda: KeyringStorage(prompt=False).retrieve(PROVIDER, "api_key"), bound=10
    )
    assert isinstance(outcome.get("error"), CredentialLockedError), outcome

    agent = start_agent(env={"MODEL_FORGE_BACKEND": "keyring"})
    began = time.monotonic()
    get = agent.cli("get", PROVIDER, "api_key")
    assert time.monotonic() - began < 10
    assert get.returncode == 3, get.stderr
    with agent.client() as client:
        assert client.status()["backend"] == "keyring"
