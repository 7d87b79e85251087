"""Test isolation: no test sees the real home, keyring, config or agent."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import keyring
import pytest
from keyring.backends import fail

sys.path.insert(0, str(Path(__file__).parent))

from agent_harness import AgentWorkspace, Figures, started_secret_service  # noqa: E402
from modelforge_credentials import EncryptedFileStorage, KdfParams, settings  # noqa: E402
from modelforge_credentials.daemon.loop import ASYNCIO_LOOP, LoopFactory  # noqa: E402
from realpeers import SecretServiceSession  # noqa: E402

#: Argon2id at its minimum: tests exercise the format, not the KDF's cost.
FAST_KDF = KdfParams(memory_kib=64, iterations=1, lanes=1)

_ISOLATED_VARS = (
    "MODEL_FORGE_BACKEND",
    "MODEL_FORGE_AGENT",
    "MODEL_FORGE_AGENT_SOCK",
    "MODEL_FORGE_CONFIG_DIR",
    "DBUS_SESSION_BUS_ADDRESS",
    "PYTHON_KEYRING_BACKEND",
    "NOTIFY_SOCKET",
    "LISTEN_FDS",
    "LISTEN_PID",
)


def pytest_asyncio_loop_factories(
    config: pytest.Config, item: pytest.Item
) -> dict[str, LoopFactory]:
    """Every asyncio test runs on each event loop the agent may serve on
    (daemon/loop.py): asyncio's, and uvloop's where it is installed. Agent
    processes take MODEL_FORGE_EVENT_LOOP, which isolation keeps."""
    factories: dict[str, LoopFactory] = {"asyncio": ASYNCIO_LOOP}
    try:
        import uvloop
    except ImportError:
        return factories
    factories["uvloop"] = uvloop.new_event_loop
    return factories


@pytest.fixture(autouse=True)
def isolated_environment(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("home")
    runtime = tmp_path_factory.mktemp("run")
    runtime.chmod(0o700)
    for name in _ISOLATED_VARS:
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.startswith(("MODEL_FORGE_", "MODELFORGE_")) and name != settings.EVENT_LOOP:
            monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / ".local" / "share"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    # Nor a prompt of the developer's desktop or terminal (askpass, pinentry).
    monkeypatch.setenv("MODEL_FORGE_ASKPASS", "off")
    for name in ("SSH_ASKPASS", "SSH_ASKPASS_REQUIRE", "GPG_TTY", "DISPLAY", "WAYLAND_DISPLAY"):
        monkeypatch.delenv(name, raising=False)
    # Child processes (CLI, agent) must not find the machine's keyring either.
    monkeypatch.setenv("PYTHON_KEYRING_BACKEND", "keyring.backends.fail.Keyring")
    previous = keyring.get_keyring()
    keyring.set_keyring(fail.Keyring())
    yield home
    keyring.set_keyring(previous)


@pytest.fixture
def workspace(isolated_environment: Path) -> Iterator[AgentWorkspace]:
    """A private socket path and config dir for real agent processes, cleaned up."""
    ws = AgentWorkspace(dict(os.environ))
    try:
        yield ws
    finally:
        ws.close()


@pytest.fixture
def agents(workspace: AgentWorkspace) -> AgentWorkspace:
    """The workspace, under the name the real-process suites use for it."""
    return workspace


@pytest.fixture
def figures(request: pytest.FixtureRequest) -> Figures:
    """This test's figures (JSON lines in $MODEL_FORGE_RELIABILITY_REPORT)."""
    return Figures(request.node.name)


@pytest.fixture
def fast_kdf() -> KdfParams:
    return FAST_KDF


@pytest.fixture
def sock_dir() -> Iterator[str]:
    """A short private directory for in-process agents' sockets (AF_UNIX paths
    are limited to 107 bytes; pytest's tmp_path can be longer)."""
    directory = tempfile.mkdtemp(prefix="mfs-", dir="/tmp")
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def keyfile_store(tmp_path: Path, fast_kdf: KdfParams) -> EncryptedFileStorage:
    """A key-file encrypted store in this test's own directory."""
    return EncryptedFileStorage(tmp_path / "cfg", kdf=fast_kdf)


@pytest.fixture(scope="session")
def secret_service_session() -> Iterator[dict[str, str]]:
    """A private, unlocked gnome-keyring; skips (or fails in CI) when absent."""
    session = SecretServiceSession()
    env = started_secret_service(session)
    yield env
    session.stop()


@pytest.fixture
def secret_service(
    secret_service_session: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """Point this test (and its children) at the private Secret Service."""
    monkeypatch.setenv(
        "DBUS_SESSION_BUS_ADDRESS", secret_service_session["DBUS_SESSION_BUS_ADDRESS"]
    )
    monkeypatch.delenv("PYTHON_KEYRING_BACKEND", raising=False)
    from keyring.backends import SecretService

    keyring.set_keyring(SecretService.Keyring())
    return secret_service_session
