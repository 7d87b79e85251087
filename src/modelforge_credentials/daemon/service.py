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
from .loop import loop_factory, loop_name
from .runtime import RuntimeDir
from .server import AgentServer
from .state import Agent, AgentConfig

log = logging.getLogger("modelforge_credentials.agent")


@dataclass
class ServeOptions:
    socket: Path | None = None
    idle_timeout: float | None = settings.DEFAULT_IDLE_TIMEOUT
    max_unlock: float | None = None
    cache_ttl: float | None = None
    exit_when_idle: float | None = None  # socket-activated: exit after this long unused
    started_by: str | None = None
    ready_fd: int | None = None
    config_dir: Path | None = None
    unlock_delay_cap: float = settings.DEFAULT_UNLOCK_DELAY_CAP
    read_deadline: float = settings.DEFAULT_READ_DEADLINE
    max_connections: int = settings.DEFAULT_MAX_CONNECTIONS
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


@dataclass
class Listener:
    """The listening socket, where it is, the runtime directory that holds it,
    and which service manager handed it over (None: bound here)."""

    sock: socket.socket
    path: Path
    runtime: RuntimeDir
    activated: str | None


def open_listener(options: ServeOptions) -> Listener:
    """The socket systemd or launchd handed over, else one bound here."""
    activated: str | None = None
    handed = systemd_sockets()
    if handed:
        activated = "systemd"
    else:
        handed = launchd_sockets()
        activated = "launchd" if handed else None
    path = Path(options.socket or default_socket_path())
    runtime = RuntimeDir(path)
    if not handed:
        runtime.acquire()
        return Listener(runtime.bind(), path, runtime, None)
    sock = handed[0]
    runtime.adopt(sock)
    try:
        path = Path(sock.getsockname())
    except (OSError, TypeError):
        pass
    return Listener(sock, path, runtime, activated)


def agent_config(options: ServeOptions, listener: Listener, reason: str) -> AgentConfig:
    """The agent's settings from the (resolved) serve options."""
    from ..backends.encrypted_file import default_config_dir

    return AgentConfig(
        idle_timeout=options.idle_timeout,
        max_unlock=options.max_unlock,
        cache_ttl=options.cache_ttl,
        unlock_delay_cap=options.unlock_delay_cap,
        started_by=_started_by(options.started_by, listener.activated),
        reason=reason,
        socket=str(listener.path),
        team_dir=str(options.config_dir or default_config_dir()),
        event_loop=loop_name(asyncio.get_running_loop()),
    )


async def start_server(options: ServeOptions, listener: Listener) -> AgentServer:
    """Settings, backend, agent and server, serving on ``listener``."""
    options.resolve()
    backend, reason = select_agent_backend(options.config_dir)
    config = agent_config(options, listener, reason)
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
    await server.start(listener.sock)
    return server


class Serving:
    """A started agent and what the process's signals and idleness do to it."""

    def __init__(self, options: ServeOptions, listener: Listener, server: AgentServer) -> None:
        self.options = options
        self.listener = listener
        self.server = server
        self.agent = server.agent
        self.loop = asyncio.get_running_loop()
        self.stop = asyncio.Event()
        self._idle_exit: asyncio.TimerHandle | None = None

    def handle_signals(self) -> None:
        """SIGTERM and SIGINT stop the agent; SIGHUP reloads its settings."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            self.loop.add_signal_handler(signum, self.stop.set)
        self.loop.add_signal_handler(signal.SIGHUP, self.reload)

    def reload(self) -> None:
        """SIGHUP (systemd's ExecReload): re-read the settings file, reopen the
        audit log (after rotation). A closing terminal's SIGHUP lands here
        too, harmlessly: it never stops the agent."""
        options, server, agent = self.options, self.server, self.agent
        try:
            changed = options.resolve()
        except CredentialStorageError as err:
            log.error("settings not reloaded, keeping the current ones: %s", err)
            changed = []
        agent.config.idle_timeout = options.idle_timeout
        agent.config.max_unlock = options.max_unlock
        agent.config.unlock_delay_cap = options.unlock_delay_cap
        server.read_deadline = options.read_deadline
        server.max_connections = options.max_connections
        if server.audit is not None:
            server.audit.reopen()
        server.wake_timers()
        if agent.teams is not None and not agent.locked:
            # Team settings re-read and every team refreshed now (also after `team add`).
            task = self.loop.create_task(agent.teams.refresh_now(None))
            server.tasks.add(task)
            task.add_done_callback(server.tasks.discard)
        log.info(
            "reloaded: %s",
            ", ".join(f"{n}={getattr(options, n)}" for n in changed) or "no setting changed",
        )

    def activity(self) -> None:
        """A connection came or went: (re)arm the socket-activated idle exit."""
        if self.options.exit_when_idle is None or not self.listener.activated:
            return
        if self._idle_exit is not None:
            self._idle_exit.cancel()
            self._idle_exit = None
        if not self.server.connections:
            self._idle_exit = self.loop.call_later(self.options.exit_when_idle, self._idle_exit_due)

    def _idle_exit_due(self) -> None:
        # The service manager restarts the agent on the next connection, but
        # a restart forgets an unlocked passphrase: keep that session alive.
        if self.agent.protection == "passphrase" and not self.agent.locked:
            self.activity()
        else:
            log.info(
                "no clients for %.0f s: exiting until the next connection",
                self.options.exit_when_idle,
            )
            self.stop.set()

    def announce_ready(self) -> None:
        """Log, tell the service manager, and write the --ready-fd line."""
        agent, path = self.agent, self.listener.path
        log.info(
            "serving on %s (backend %s, %s; %s; %s event loop)",
            path,
            agent.backend_name,
            agent.protection,
            "locked" if agent.locked else "unlocked",
            loop_name(self.loop),
        )
        sd_notify(f"READY=1\nSTATUS=serving on {path}\nMAINPID={os.getpid()}")
        if self.options.ready_fd is not None:
            try:
                os.write(self.options.ready_fd, b"ready\n")
            finally:
                os.close(self.options.ready_fd)


async def serve(options: ServeOptions) -> int:
    """Serve until SIGTERM, SIGINT or the socket-activated idle exit; 0."""
    harden_process()
    listener = open_listener(options)
    try:
        server = await start_server(options, listener)
    except BaseException:
        listener.runtime.release()
        raise
    serving = Serving(options, listener, server)
    serving.handle_signals()
    server.on_activity = serving.activity
    serving.activity()
    serving.announce_ready()
    await serving.stop.wait()
    log.info("stopping")
    sd_notify("STOPPING=1")
    await server.close()
    listener.runtime.release()
    return 0


def run(options: ServeOptions) -> int:
    """``modelforge-agent serve``: the exit status (4: agent or backend unavailable)."""
    setup_logging()
    try:
        with asyncio.Runner(loop_factory=loop_factory()) as runner:
            return runner.run(serve(options))
    except CredentialStorageError as err:
        log.error("%s", err)
        if options.ready_fd is not None:
            try:
                os.write(options.ready_fd, f"error {err.code}: {err}\n".encode())
            except OSError:
                pass

        return 4
