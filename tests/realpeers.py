"""Real peers started privately for tests and benchmarks.

``SecretServiceSession`` runs a private D-Bus session bus and a
gnome-keyring-daemon with an unlocked login collection, both in a throw-away
directory: nothing of the machine's own session or keyring is touched.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

REQUIRE_VARIABLE = "MODEL_FORGE_REQUIRE_SECRET_SERVICE"
KEYRING_PASSWORD = b"model-forge-test-login"


class PeerUnavailable(RuntimeError):
    """The peer's programs are not installed here."""


class SecretServiceSession:
    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(root) if root is not None else Path(tempfile.mkdtemp(prefix="mf-ss-"))
        self.env: dict[str, str] = {}
        self._procs: list[subprocess.Popen[bytes]] = []

    @staticmethod
    def missing() -> str | None:
        for program in ("dbus-daemon", "gnome-keyring-daemon"):
            if shutil.which(program) is None:
                return f"{program} is not installed (Debian: dbus-daemon, gnome-keyring)"
        return None

    def start(self, timeout: float = 15.0) -> dict[str, str]:
        why = self.missing()
        if why:
            raise PeerUnavailable(why)
        home = self.root / "home"
        runtime = self.root / "run"
        for directory in (home, runtime):
            directory.mkdir(parents=True, exist_ok=True)
            directory.chmod(0o700)
        bus = self.root / "bus"
        env = dict(os.environ)
        env.update(
            HOME=str(home),
            XDG_RUNTIME_DIR=str(runtime),
            XDG_DATA_HOME=str(home / ".local" / "share"),
            XDG_CONFIG_HOME=str(home / ".config"),
            DBUS_SESSION_BUS_ADDRESS=f"unix:path={bus}",
        )
        env.pop("GNOME_KEYRING_CONTROL", None)
        dbus = subprocess.Popen(
            ["dbus-daemon", "--session", "--nofork", "--nopidfile", f"--address=unix:path={bus}"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._procs.append(dbus)
        _wait_for(lambda: bus.exists(), timeout, "the private D-Bus session bus")
        keyring = subprocess.Popen(
            ["gnome-keyring-daemon", "--foreground", "--unlock", "--components=secrets"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._procs.append(keyring)
        assert keyring.stdin is not None
        keyring.stdin.write(KEYRING_PASSWORD)
        keyring.stdin.close()
        self.env = {
            k: env[k]
            for k in (
                "HOME",
                "XDG_RUNTIME_DIR",
                "XDG_DATA_HOME",
                "XDG_CONFIG_HOME",
                "DBUS_SESSION_BUS_ADDRESS",
            )
        }
        _wait_for(self._service_ready, timeout, "gnome-keyring's Secret Service")
        return self.env

    def _service_ready(self) -> bool:
        probe = (
            "import secretstorage, sys\n"
            "c = secretstorage.dbus_init()\n"
            "ok = secretstorage.check_service_availability(c)\n"
            "col = secretstorage.get_default_collection(c) if ok else None\n"
            "sys.exit(0 if ok and not col.is_locked() else 1)\n"
        )
        env = dict(os.environ)
        env.update(self.env)
        result = subprocess.run(
            [_python(), "-c", probe],
            env=env,
            capture_output=True,
            timeout=10,
        )
        return result.returncode == 0

    def stop(self) -> None:
        for proc in reversed(self._procs):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._procs.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> SecretServiceSession:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _python() -> str:
    import sys

    return sys.executable


def _wait_for(condition, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise TimeoutError(f"{what} did not come up within {timeout:.0f} s")
