"""Running the agent: hardening, backend, socket, signals, readiness, exit."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .. import settings
from ..errors import CredentialStorageError
from ..paths import socket_path as default_socket_path
from ..storage import CredentialStorage
from .activation import launchd_sockets, sd_notify, systemd_sockets
from .hardening import harden_process
from .runtime import RuntimeDir
from .server import AgentServer
from .state import Agent, AgentConfig

log = logging.getLogger("modelforge_credentials.agent")


@dataclass
class ServeOptions:
    socket: Path | None = None
    idle_timeout: float | None = 15 * 60.0
    max_unlock: float | None = None
    cache_ttl: float | None = None
    exit_when_idle: float | None = None  # socket-activated: exit after this long unused
    started_by: str | None = None
    ready_fd: int | None = None
    config_dir: Path | None = None
    unlock_delay_cap: float = 10.0
    read_deadline: float = 10.0
    max_connections: int = 256
    audit_log: Path | None = None
    extra_env: dict[str, str] = field(default_factory=dict)
    #: The serve settings given on the command line (None: not given); with
    #: ``settings_file`` they decide the fields above (settings.serve_settings).
    explicit: dict[str, float | int | None] | None = None
    settings_file: Path | None = None

    def settings_path(self) -> Path:
        from ..backends.encrypted_file import default_config_dir

        if self.settings_file is not None:
            return self.settings_file
        directory = self.config_dir or default_config_dir()
        return Path(settings.serve_settings_path(str(directory)))

    def resolve(self) -> list[str]:
        """Apply command line > settings file > defaults; the names that changed.

        Raises SettingError (the caller keeps the settings it has).
        """
        if self.explicit is None:
            return []
        values = settings.serve_settings(
            self.explicit, settings.read_serve_settings(str(self.settings_path()))
        )
        if not values["idle_timeout"]:
            values["idle_timeout"] = None  # 0: never
        changed = [name for name, value in values.items() if getattr(self, name) != value]
        for name, value in values.items():
            setattr(self, name, value)
        return changed


def setup_logging(level: int = logging.INFO) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(f"modelforge-agent[{os.getpid()}]: %(levelname)s %(message)s")
    )
    root = logging.getLogger("modelforge_credentials")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


def select_agent_backend(config_dir: Path | None) -> tuple[CredentialStorage, str]:
    """The agent's own backend: never the agent itself."""
    from ..backends.auto import select_backend

    selection = select_backend(config_dir=config_dir, prompt=False)
    return selection.storage, selection.reason


def _started_by(explicit: str | None, activated: str | None) -> str:
    if activated:
        return activated
    if explicit:
        return explicit
    if os.environ.get("INVOCATION_ID"):
        return "systemd"
    return "manual"


async def serve(options: ServeOptions) -> int:
    harden_process()
    loop = asyncio.get_running_loop()
    activated: str | None = None
    handed = systemd_sockets()
    if handed:
        activated = "systemd"
    else:
        handed = launchd_sockets()
        activated = "launchd" if handed else None

    path = Path(options.socket or default_socket_path())
    runtime = RuntimeDir(path)
    sock: socket.socket
    if handed:
        sock = handed[0]
        runtime.adopt(sock)
        try:
            path = Path(sock.getsockname())
        except (OSError, TypeError):
            pass
    else:
        runtime.acquire()
        sock = runtime.bind()

    try:
        options.resolve()
        backend, reason = select_agent_backend(options.config_dir)
        from ..backends.encrypted_file import default_config_dir

        config = AgentConfig(
            idle_timeout=options.idle_timeout,
            max_unlock=options.max_unlock,
            cache_ttl=options.cache_ttl,
            unlock_delay_cap=options.unlock_delay_cap,
            started_by=_started_by(options.started_by, activated),
            reason=reason,
            socket=str(path),
            team_dir=str(options.config_dir or default_config_dir()),
        )
        agent = Agent(backend, config)
        await agent.start()
        audit = None
        if options.audit_log is not None:
            from .audit import AuditLog

            audit = AuditLog(options.audit_log)
            config.audit_log = str(options.audit_log)
        server = AgentServer(
            agent,
            read_deadline=options.read_deadline,
            max_connections=options.max_connections,
            audit=audit,
        )
        await server.start(sock)
    except BaseException:
        runtime.release()
        raise

    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    def reload() -> None:
        """SIGHUP (systemd's ExecReload): re-read the settings file, reopen the
        audit log (after rotation). A closing terminal's SIGHUP lands here
        too, harmlessly: it never stops the agent."""
        try:
            changed = options.resolve()
        except CredentialStorageError as err:
            log.error("settings not reloaded, keeping the current ones: %s", err)
            changed = []
        config.idle_timeout = options.idle_timeout
        config.max_unlock = options.max_unlock
        config.unlock_delay_cap = options.unlock_delay_cap
        server.read_deadline = options.read_deadline
        server.max_connections = options.max_connections
        if server.audit is not None:
            server.audit.reopen()
        server.wake_timers()
        if agent.teams is not None and not agent.locked:
            # Team settings re-read and every team refreshed now (also after `team add`).
            task = loop.create_task(agent.teams.refresh_now(None))
            server.tasks.add(task)
            task.add_done_callback(server.tasks.discard)
        log.info(
            "reloaded: %s",
            ", ".join(f"{n}={getattr(options, n)}" for n in changed) or "no setting changed",
        )

    loop.add_signal_handler(signal.SIGHUP, reload)

    idle_exit: asyncio.TimerHandle | None = None

    def activity() -> None:
        nonlocal idle_exit
        if options.exit_when_idle is None or not activated:
            return
        if idle_exit is not None:
            idle_exit.cancel()
            idle_exit = None
        if not server.connections:
            idle_exit = loop.call_later(options.exit_when_idle, idle_exit_due)

    def idle_exit_due() -> None:
        # The service manager restarts the agent on the next connection, but
        # a restart forgets an unlocked passphrase: keep that session alive.
        if agent.protection == "passphrase" and not agent.locked:
            activity()
        else:
            log.info(
                "no clients for %.0f s: exiting until the next connection", options.exit_when_idle
            )
            stop.set()

    server.on_activity = activity
    activity()

    log.info(
        "serving on %s (backend %s, %s; %s)",
        path,
        agent.backend_name,
        agent.protection,
        "locked" if agent.locked else "unlocked",
    )
    sd_notify(f"READY=1\nSTATUS=serving on {path}\nMAINPID={os.getpid()}")
    if options.ready_fd is not None:
        try:
            os.write(options.ready_fd, b"ready\n")
        finally:
            os.close(options.ready_fd)

    await stop.wait()
    log.info("stopping")
    sd_notify("STOPPING=1")
    await server.close()
    runtime.release()
    return 0


def run(options: ServeOptions) -> int:
    setup_logging()
    try:
        return asyncio.run(serve(options))
    except CredentialStorageError as err:
        log.error("%s", err)
        if options.ready_fd is not None:
            try:
                os.write(options.ready_fd, f"error {err.code}: {err}\n".encode())
            except OSError:
                pass

        return 4
