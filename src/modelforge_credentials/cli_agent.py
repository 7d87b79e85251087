"""The agent process from a shell: ``serve``, ``start``, ``stop``, ``status``
and ``install-service`` (the Cli's commands, kept apart).

``start`` and ``stop`` print shell commands for ``eval``, as ssh-agent does:
the socket variable set or unset, in sh, csh or fish syntax.
"""

from __future__ import annotations

import os
import sys
import time

from .cli import EXIT_OK, EXIT_UNAVAILABLE, _duration
from .paths import SOCKET_VARIABLE

TYPE_CHECKING = False
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any

    from .cli import Cli


def serve(cli: Cli) -> int:
    from pathlib import Path

    from .daemon.service import ServeOptions, run

    a = cli.args
    options = ServeOptions(
        socket=Path(a.socket) if a.socket else None,
        cache_ttl=a.cache_ttl,
        started_by=a.started_by,
        ready_fd=a.ready_fd,
        config_dir=Path(a.config_dir) if a.config_dir else None,
        audit_log=audit_path(a.audit_log),
        settings_file=Path(a.settings) if a.settings else None,
        explicit={
            name: getattr(a, name)
            for name in (
                "idle_timeout",
                "max_unlock",
                "unlock_delay_cap",
                "read_deadline",
                "max_connections",
                "exit_when_idle",
            )
        },
    )
    return run(options)


def audit_path(option: str | None) -> Path | None:
    """``--audit-log [PATH]`` (no PATH: the default file), else
    ``MODEL_FORGE_AUDIT_LOG``: on (the default file), off, or a path."""
    from pathlib import Path

    from . import settings

    if option is not None:
        chosen: bool | str = option or True
    else:
        chosen = settings.flag_or_path(settings.AUDIT_LOG)
    if chosen is False:
        return None
    if chosen is True:
        from .daemon.audit import default_audit_path

        return default_audit_path()
    return Path(chosen)


def start(cli: Cli) -> int:
    import shlex
    from pathlib import Path

    from .client.autostart import spawn_agent
    from .client.sync import AgentNotRunningError

    try:
        with cli.client() as client:
            client.hello()
            status = client.status()
        pid = status.get("pid")
        note = "already running"
        warn_other_backend(cli, status)
    except AgentNotRunningError:
        extra = []
        if cli.args.idle_timeout is not None:
            extra += ["--idle-timeout", str(cli.args.idle_timeout)]
        if cli.args.config_dir:
            extra += ["--config-dir", cli.args.config_dir]
        log_path = Path(cli.args.log) if cli.args.log else None
        pid = spawn_agent(cli.socket, started_by="manual", log_path=log_path, extra_args=extra)
        note = "started"
    cli.stdout.write(_shell_line(cli, shlex.quote(str(cli.socket))))
    cli.stdout.write(f"echo Agent pid {pid} {note};\n")
    return EXIT_OK


def stop(cli: Cli) -> int:
    from .client.sync import AgentNotRunningError

    try:
        with cli.client() as client:
            pid = client.status().get("pid")
    except AgentNotRunningError:
        cli.stderr.write(f"no agent is running at {cli.socket}; nothing to stop\n")
        _print_unset(cli, None)
        return EXIT_OK
    from .client.peer import agent_pid_to_signal

    # The pid is the agent's own claim: signal it only if that process is
    # ours and holds the listening socket (else UntrustedAgentError, exit 4).
    pid = agent_pid_to_signal(cli.socket, pid)
    import signal

    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + cli.args.timeout
    while time.monotonic() < deadline:
        if not _process_running(pid):
            break
        time.sleep(0.02)
    else:
        cli.stderr.write(f"the agent (pid {pid}) did not stop; try `kill {pid}`\n")
        return EXIT_UNAVAILABLE
    cli.stderr.write(f"stopped the agent (pid {pid})\n")
    _print_unset(cli, pid)
    return EXIT_OK


def _shell_line(cli: Cli, value: str | None) -> str:
    """The line that sets (``value``, quoted) or unsets (``None``) the
    socket variable in the user's shell, for eval (--csh, --fish)."""
    name = SOCKET_VARIABLE
    if cli.args.csh:
        return f"setenv {name} {value};\n" if value else f"unsetenv {name};\n"
    if cli.args.fish:
        return f"set -gx {name} {value};\n" if value else f"set -e {name};\n"
    return f"{name}={value}; export {name};\n" if value else f"unset {name};\n"


def _print_unset(cli: Cli, pid: int | None) -> None:
    """For ``eval "$(modelforge-agent stop)"``, as ``ssh-agent -k`` prints."""
    cli.stdout.write(_shell_line(cli, None))
    if pid is not None:
        cli.stdout.write(f"echo Agent pid {pid} stopped;\n")


def _process_running(pid: int) -> bool:
    """False once ``pid`` is gone or a zombie (exited, waiting to be reaped
    by a parent that may be slow: pid 1 of a container, say)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            state = handle.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return True
    return state not in (b"Z", b"X")


def show_status(cli: Cli) -> int:
    import json

    with cli.client() as client:
        status = client.status()
    warn_other_backend(cli, status)
    if cli.args.json:
        json.dump(status, cli.stdout, indent=2, sort_keys=True)
        cli.stdout.write("\n")
        return EXIT_OK
    idle = status.get("idle_timeout")
    lines = [
        f"agent:       running, pid {status.get('pid')}, version {status.get('version')}, "
        f"up {_duration(status.get('uptime'))}",
        f"socket:      {status.get('socket') or cli.socket}",
        f"started by:  {status.get('started_by')}",
        f"backend:     {status.get('backend')} ({status.get('reason')})",
        f"protection:  {status.get('protection')}"
        + (f", file {status['path']}" if status.get("path") else ""),
        f"state:       {'locked' if status.get('locked') else 'unlocked'}, "
        f"{status.get('cached')} cached",
        f"idle lock:   {_duration(idle) if idle else 'never'}",
    ]
    if status.get("protection") == "keyfile":
        lines.append(
            "warning:     key-file protection only stops casual reading; "
            "set a passphrase with `modelforge-agent passwd`"
        )
    cli.stdout.write("\n".join(lines) + "\n")
    return EXIT_OK


def warn_other_backend(cli: Cli, status: dict[str, Any]) -> None:
    """MODEL_FORGE_BACKEND asks for one backend, the running agent has another."""
    from . import settings

    wanted = settings.backend()
    running = status.get("backend")
    if wanted and running and wanted != running:
        cli.stderr.write(
            f"warning: {settings.BACKEND} asks for the {wanted} backend, but the running "
            f"agent (pid {status.get('pid')}) uses {running}, chosen when it started. "
            "To switch: `modelforge-agent stop`, then start it again with "
            f"{settings.BACKEND} set\n"
        )


def install_service(cli: Cli) -> int:
    from pathlib import Path

    from .files import make_private_dir, write_atomic
    from .services import service_files

    platform = cli.args.platform or sys.platform
    home = Path.home()
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
    files = service_files(platform, home, config_home, Path(cli.socket))
    for path, content in files.files.items():
        if cli.args.print:
            text = content.decode() if isinstance(content, bytes) else content
            cli.stdout.write(f"# {path}\n{text}\n")
            continue
        make_private_dir(path.parent)
        data = content if isinstance(content, bytes) else content.encode()
        write_atomic(path, data, mode=0o644)
        cli.stderr.write(f"wrote {path}\n")
    if not cli.args.print:
        if platform != "darwin":
            # The config dir exists before the sandboxed service first runs.
            from .backends.encrypted_file import default_config_dir

            make_private_dir(default_config_dir())
        cli.stderr.write(f"enable it with:\n  {files.enable_command}\n")
    return EXIT_OK
