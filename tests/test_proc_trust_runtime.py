"""The socket directory's advice (security review, item 22).

``check_private_dir`` (used by ``serve`` and by ``doctor``) refuses a socket
directory that is not private. Its advice may say ``chmod 700`` or ``rm -r``
only for a directory that is the user's own: never for /tmp, another
system directory (which root owns too) or a directory of another uid. For
those it says to choose a private directory instead.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_harness import AS_NOBODY, NOBODY, SOCK_VAR, TIMEOUT
from modelforge_credentials.daemon.runtime import AgentRuntimeError, check_private_dir

CLI = (sys.executable, "-m", "modelforge_credentials.cli")
SYSTEM_DIRS = [d for d in ("/tmp", "/var/tmp", "/dev/shm", "/run", "/var", "/") if os.path.isdir(d)]


def refusal(directory: Path) -> str:
    with pytest.raises(AgentRuntimeError) as caught:
        check_private_dir(directory, create=False)
    return str(caught.value)


def assert_no_change_advised(message: str, directory: Path) -> None:
    assert "chmod" not in message and "rm " not in message, message
    assert "MODEL_FORGE_AGENT_SOCK=$XDG_RUNTIME_DIR/model-forge/agent.sock" in message, message
    assert "0700 directory of your own" in message, message
    assert f"leave {directory} as it is" in message, message


@pytest.mark.parametrize("system_dir", SYSTEM_DIRS)
def test_a_system_directory_gets_no_chmod_or_rm_advice(system_dir: str) -> None:
    assert_no_change_advised(refusal(Path(system_dir)), Path(system_dir))


@pytest.fixture
def base(tmp_path: Path) -> Path:
    tmp_path.chmod(0o711)
    return tmp_path


def test_a_directory_of_another_uid_gets_no_chmod_or_rm_advice(base: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to give a directory away")
    theirs = base / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, NOBODY, NOBODY)
    message = refusal(theirs)
    assert f"belongs to uid {NOBODY}" in message
    assert_no_change_advised(message, theirs)


@pytest.fixture
def link_of_nobody() -> Iterator[Path]:
    """A symlink in /tmp made by uid 65534, as anyone may make one there."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to act as another uid")
    link = Path(f"/tmp/mft-{secrets.token_hex(6)}")
    subprocess.run([*AS_NOBODY, "ln", "-s", "/", str(link)], check=True, timeout=TIMEOUT)
    yield link
    link.unlink()


def test_a_symlink_of_another_uid_gets_no_rm_advice(link_of_nobody: Path) -> None:
    message = refusal(link_of_nobody)
    assert "symlink" in message
    assert_no_change_advised(message, link_of_nobody)


def test_the_users_own_open_directory_may_be_chmod_ed(base: Path) -> None:
    mine = base / "mine"
    mine.mkdir(mode=0o700)
    mine.chmod(0o755)
    message = refusal(mine)
    assert f"chmod 700 {mine}" in message, message
    assert "MODEL_FORGE_AGENT_SOCK" in message  # choosing another path is always an option


def test_the_users_own_symlink_may_be_removed(base: Path) -> None:
    real = base / "real"
    real.mkdir(mode=0o700)
    (base / "link").symlink_to(real)
    message = refusal(base / "link")
    assert f"rm -r {base / 'link'}" in message, message


def test_the_users_own_directory_in_tmp_may_be_chmod_ed() -> None:
    mine = Path(f"/tmp/mft-{secrets.token_hex(6)}")
    mine.mkdir(mode=0o700)
    try:
        mine.chmod(0o750)
        assert f"chmod 700 {mine}" in refusal(mine)
    finally:
        mine.rmdir()


def run_cli(*args: str, socket_path: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        env={**os.environ, SOCK_VAR: socket_path},
        timeout=TIMEOUT,
    )


def test_serve_on_a_socket_in_tmp_gives_safe_advice() -> None:
    path = f"/tmp/mft-{secrets.token_hex(6)}.sock"
    result = run_cli("serve", "--idle-timeout", "0", socket_path=path)
    assert result.returncode == 4, result
    assert not os.path.lexists(path)
    assert_no_change_advised(result.stderr, Path("/tmp"))


def test_doctor_on_a_socket_in_tmp_gives_safe_advice() -> None:
    result = run_cli("doctor", "--json", socket_path=f"/tmp/mft-{secrets.token_hex(6)}.sock")
    report = json.loads(result.stdout)
    [problem] = [p for p in report["problems"] if "/tmp" in p["problem"]]
    assert "chmod" not in problem["fix"] and "rm " not in problem["fix"], problem
    assert "MODEL_FORGE_AGENT_SOCK=" in problem["fix"], problem
