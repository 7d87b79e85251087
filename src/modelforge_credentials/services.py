"""Service definitions: systemd user units and a launchd user agent.

The files under ``systemd/`` and ``launchd/`` in the source tree are these
renderings with placeholder paths; ``modelforge-agent install-service``
renders them with the real interpreter and paths of the current user.
"""

from __future__ import annotations

import plistlib
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from . import settings

SERVICE_NAME = "modelforge-agent"
LAUNCHD_LABEL = "org.modelforge.agent"
DEFAULT_EXIT_WHEN_IDLE = 600

SOCKET_UNIT = """\
[Unit]
Description=model-forge credential agent socket
Documentation=man:modelforge-agent(1) https://pypi.org/project/model-forge-credentials/

[Socket]
ListenStream=%t/model-forge/agent.sock
SocketMode=0600
DirectoryMode=0700
RemoveOnStop=yes

[Install]
WantedBy=sockets.target
"""

# Sandboxing: only directives an unprivileged user manager can apply. They
# are seccomp filters and process flags, which need no privilege once
# NoNewPrivileges is set. Mount-namespace options (ProtectSystem=,
# ProtectHome=, PrivateTmp=, ...) are left out on purpose: in a user manager
# they need PrivateUsers= and unprivileged user namespaces, which many
# distributions disable. tests/test_proc_systemd.py runs the agent under this
# unit in a real user manager and checks each restriction from outside.
SERVICE_UNIT = """\
[Unit]
Description=model-forge credential agent
Documentation=man:modelforge-agent(1) https://pypi.org/project/model-forge-credentials/
Requires={socket_unit}
After={socket_unit}

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec_start} serve --exit-when-idle {exit_when_idle}
# SIGHUP re-reads the settings file (agent.toml) and reopens the audit log.
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
# The agent holds decrypted secrets: keep every file it makes private.
UMask=0077
NoNewPrivileges=yes
LockPersonality=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
RestrictNamespaces=yes
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
# AF_UNIX for its own socket, D-Bus and the journal; no network at all.
RestrictAddressFamilies=AF_UNIX

[Install]
Also={socket_unit}
"""


@dataclass(frozen=True)
class ServiceFiles:
    files: dict[Path, str | bytes]
    enable_command: str


def agent_command(python: str | None = None) -> list[str]:
    return [python or sys.executable, "-m", "modelforge_credentials.cli"]


def systemd_units(
    exec_start: str | None = None, *, exit_when_idle: int = DEFAULT_EXIT_WHEN_IDLE
) -> dict[str, str]:
    command = exec_start or shlex.join(agent_command())
    return {
        f"{SERVICE_NAME}.socket": SOCKET_UNIT,
        f"{SERVICE_NAME}.service": SERVICE_UNIT.format(
            socket_unit=f"{SERVICE_NAME}.socket",
            exec_start=command,
            exit_when_idle=exit_when_idle,
        ),
    }


def launchd_plist(home: Path, socket_path: Path, program: list[str] | None = None) -> bytes:
    logs = home / "Library" / "Logs"
    plist = {
        "Label": LAUNCHD_LABEL,
        "ProgramArguments": [*(program or agent_command()), "serve"],
        "Sockets": {
            "Listener": {
                "SockPathName": str(socket_path),
                "SockPathMode": 0o600,
                "SockType": "stream",
            }
        },
        "StandardOutPath": str(logs / "model-forge-agent.log"),
        "StandardErrorPath": str(logs / "model-forge-agent.log"),
        "ProcessType": "Background",
        "EnvironmentVariables": {settings.SOCKET: str(socket_path)},
    }
    return plistlib.dumps(plist, sort_keys=False)


def service_files(platform: str, home: Path, config_home: Path, socket_path: Path) -> ServiceFiles:
    if platform == "darwin":
        target = home / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"
        return ServiceFiles(
            {target: launchd_plist(home, socket_path)},
            f"launchctl bootstrap gui/$(id -u) {shlex.quote(str(target))}",
        )
    unit_dir = config_home / "systemd" / "user"
    return ServiceFiles(
        {unit_dir / name: text for name, text in systemd_units().items()},
        f"systemctl --user daemon-reload && systemctl --user enable --now {SERVICE_NAME}.socket",
    )


#: Placeholders used for the copies shipped in the source tree.
SHIPPED_EXEC_START = "%h/.local/bin/modelforge-agent"
SHIPPED_HOME = Path("/Users/YOU")


def shipped_files() -> dict[str, str | bytes]:
    """The files under systemd/ and launchd/ of the source tree."""
    files: dict[str, str | bytes] = {
        f"systemd/{name}": text for name, text in systemd_units(SHIPPED_EXEC_START).items()
    }
    files[f"launchd/{LAUNCHD_LABEL}.plist"] = launchd_plist(
        SHIPPED_HOME,
        SHIPPED_HOME / "Library" / "Caches" / "TemporaryItems" / "model-forge" / "agent.sock",
        program=["/usr/local/bin/modelforge-agent"],
    )
    return files
