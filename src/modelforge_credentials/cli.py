"""``modelforge-agent``: run the credential agent and talk to it from a shell.

Exit status: 0 ok, 1 not found, 2 usage or invalid input, 3 locked (or wrong
passphrase), 4 agent or backend unavailable. Secret values are read from a
no-echo prompt or standard input, never from the command line.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence

from .cli_args import build_parser, quick_args
from .errors import (
    CredentialBadPassphraseError,
    CredentialLockedError,
    CredentialNotFoundError,
    CredentialStorageError,
    CredentialValidationError,
)
from .paths import SOCKET_VARIABLE, socket_path

# Start-up time is part of every `get`: typing, pathlib, json and shlex are
# imported by the commands that need them, not here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from pathlib import Path
    from typing import Any, TextIO

    from .client.sync import AgentClient

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3
EXIT_UNAVAILABLE = 4


def exit_code_for(err: CredentialStorageError) -> int:
    status = getattr(err, "exit_status", None)
    if isinstance(status, int):
        return status  # exec's 126/127, as env(1)
    if isinstance(err, CredentialNotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(err, CredentialValidationError):
        return EXIT_USAGE
    if isinstance(err, CredentialLockedError | CredentialBadPassphraseError):
        return EXIT_LOCKED
    return EXIT_UNAVAILABLE


class Cli:
    def __init__(
        self, args: argparse.Namespace, stdin: TextIO, stdout: TextIO, stderr: TextIO
    ) -> None:
        self.args = args
        self.stdin = stdin
        self.stdout = stdout
        self.stderr = stderr
        self.socket: str = args.socket or socket_path()

    def client(self) -> AgentClient:
        from .client.sync import AgentClient

        return AgentClient(self.socket, timeout=self.args.timeout)

    # -- reading secrets -----------------------------------------------------------

    def _interactive(self) -> bool:
        return self.stdin.isatty()

    def read_secret(
        self,
        prompt: str,
        *,
        description: str = "Passphrase of the model-forge credential store",
        confirm: bool = False,
        read_stdin: bool = True,
    ) -> str:
        """A no-echo prompt on a terminal, else a line of standard input, else an
        askpass program or a pinentry (the rule: client/askpass.py)."""
        from .client.askpass import read_passphrase

        return read_passphrase(
            prompt,
            description=description,
            confirm=confirm,
            stdin=self.stdin if read_stdin else None,
        )

    def read_value(self) -> str:
        if self._interactive():
            import getpass

            # Never an askpass dialog: this is a secret value, not a passphrase.
            return getpass.getpass("Value (not echoed): ")
        data = self.stdin.read()
        return data[:-1] if data.endswith("\n") else data

    # -- commands --------------------------------------------------------------------

    def cmd_serve(self) -> int:
        from pathlib import Path

        from .daemon.service import ServeOptions, run

        a = self.args
        options = ServeOptions(
            socket=Path(a.socket) if a.socket else None,
            cache_ttl=a.cache_ttl,
            started_by=a.started_by,
            ready_fd=a.ready_fd,
            config_dir=Path(a.config_dir) if a.config_dir else None,
            audit_log=_audit_path(a.audit_log),
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

    def cmd_start(self) -> int:
        import shlex
        from pathlib import Path

        from .client.autostart import spawn_agent
        from .client.sync import AgentNotRunningError

        try:
            with self.client() as client:
                client.hello()
                status = client.status()
            pid = status.get("pid")
            note = "already running"
            self._warn_other_backend(status)
        except AgentNotRunningError:
            extra = []
            if self.args.idle_timeout is not None:
                extra += ["--idle-timeout", str(self.args.idle_timeout)]
            if self.args.config_dir:
                extra += ["--config-dir", self.args.config_dir]
            log_path = Path(self.args.log) if self.args.log else None
            pid = spawn_agent(self.socket, started_by="manual", log_path=log_path, extra_args=extra)
            note = "started"
        self.stdout.write(self._shell_line(shlex.quote(str(self.socket))))
        self.stdout.write(f"echo Agent pid {pid} {note};\n")
        return EXIT_OK

    def cmd_stop(self) -> int:
        from .client.sync import AgentNotRunningError

        try:
            with self.client() as client:
                pid = client.status().get("pid")
        except AgentNotRunningError:
            self.stderr.write(f"no agent is running at {self.socket}; nothing to stop\n")
            self._print_unset(None)
            return EXIT_OK
        from .client.peer import agent_pid_to_signal

        # The pid is the agent's own claim: signal it only if that process is
        # ours and holds the listening socket (else UntrustedAgentError, exit 4).
        pid = agent_pid_to_signal(self.socket, pid)
        import signal

        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + self.args.timeout
        while time.monotonic() < deadline:
            if not _process_running(pid):
                break
            time.sleep(0.02)
        else:
            self.stderr.write(f"the agent (pid {pid}) did not stop; try `kill {pid}`\n")
            return EXIT_UNAVAILABLE
        self.stderr.write(f"stopped the agent (pid {pid})\n")
        self._print_unset(pid)
        return EXIT_OK

    def _shell_line(self, value: str | None) -> str:
        """The line that sets (``value``, quoted) or unsets (``None``) the
        socket variable in the user's shell, for eval (--csh, --fish)."""
        name = SOCKET_VARIABLE
        if self.args.csh:
            return f"setenv {name} {value};\n" if value else f"unsetenv {name};\n"
        if self.args.fish:
            return f"set -gx {name} {value};\n" if value else f"set -e {name};\n"
        return f"{name}={value}; export {name};\n" if value else f"unset {name};\n"

    def _print_unset(self, pid: int | None) -> None:
        """For ``eval "$(modelforge-agent stop)"``, as ``ssh-agent -k`` prints."""
        self.stdout.write(self._shell_line(None))
        if pid is not None:
            self.stdout.write(f"echo Agent pid {pid} stopped;\n")

    def cmd_status(self) -> int:
        import json

        with self.client() as client:
            status = client.status()
        self._warn_other_backend(status)
        if self.args.json:
            json.dump(status, self.stdout, indent=2, sort_keys=True)
            self.stdout.write("\n")
            return EXIT_OK
        idle = status.get("idle_timeout")
        lines = [
            f"agent:       running, pid {status.get('pid')}, version {status.get('version')}, "
            f"up {_duration(status.get('uptime'))}",
            f"socket:      {status.get('socket') or self.socket}",
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
        self.stdout.write("\n".join(lines) + "\n")
        return EXIT_OK

    def cmd_unlock(self) -> int:
        passphrase = self.read_secret(
            "Passphrase: ", description="Unlock the model-forge credential agent"
        )
        with self.client() as client:
            client.unlock(passphrase)
        return EXIT_OK

    def cmd_lock(self) -> int:
        with self.client() as client:
            client.lock()
            protection = client.status().get("protection")
        if protection == "keyfile":
            self.stderr.write(
                "the store has no passphrase (key-file protection): lock dropped the cached "
                "values, but anyone who can read the file and its key file beside it can "
                "still read them. Set a passphrase with `modelforge-agent passwd`\n"
            )
        return EXIT_OK

    def cmd_set(self) -> int:
        import shlex

        where = f"{shlex.quote(self.args.provider)} {shlex.quote(self.args.key)}"
        if self.args.argv_value:
            raise CredentialValidationError(
                "set takes the value from a no-echo prompt or standard input, never from the "
                "command line (it would stay in your shell history and show in ps); nothing "
                f"was stored. Run `modelforge-agent set {where}` and type it, or "
                f'`printf %s "$VALUE" | modelforge-agent set {where}`'
            )
        value = self.read_value()
        if not value and not self.args.allow_empty:
            raise CredentialValidationError(
                "the value is empty (standard input was empty or closed); nothing was stored. "
                f"Type it at the prompt of `modelforge-agent set {where}`, pipe it in, or pass "
                "--allow-empty to store an empty value on purpose"
            )
        if self.args.team:
            from .cli_team import set_in_team

            return set_in_team(self, value)
        with self.client() as client:
            self._with_unlock(
                client, lambda: client.store(self.args.provider, self.args.key, value)
            )
        return EXIT_OK

    def cmd_get(self) -> int:
        if getattr(self.args, "source", False):  # quick_args never sets it
            from .cli_team import print_source

            return print_source(self)
        with self.client() as client:
            value = self._with_unlock(
                client, lambda: client.retrieve(self.args.provider, self.args.key)
            )
        if value is None:
            import shlex  # only for the message: not on the path of every get

            raise CredentialNotFoundError(
                f"no credential {self.args.key!r} for provider {self.args.provider!r}; "
                f"store one with `modelforge-agent set {shlex.quote(self.args.provider)} "
                f"{shlex.quote(self.args.key)}`"
            )
        self.stdout.write(value + "\n")
        return EXIT_OK

    def cmd_delete(self) -> int:
        with self.client() as client:
            deleted = self._with_unlock(
                client, lambda: client.delete(self.args.provider, self.args.key)
            )
        return EXIT_OK if deleted else EXIT_NOT_FOUND

    def cmd_exists(self) -> int:
        with self.client() as client:
            found = self._with_unlock(
                client, lambda: client.exists(self.args.provider, self.args.key)
            )
        return EXIT_OK if found else EXIT_NOT_FOUND

    def cmd_list(self) -> int:
        import json

        from .cli_team import list_with_sources

        with self.client() as client:
            items = self._with_unlock(client, lambda: list_with_sources(client, self.args.provider))
        if self.args.json:
            json.dump([list(i) for i in items], self.stdout)
            self.stdout.write("\n")
        else:
            for item in items:  # a third column, the source, once a team is configured
                self.stdout.write("\t".join(item) + "\n")
        return EXIT_OK

    def cmd_passwd(self) -> int:
        from .cli_file import passwd

        return passwd(self)

    def cmd_restore_backup(self) -> int:
        from .cli_file import restore_backup

        return restore_backup(self)

    def cmd_completion(self) -> int:
        from .shell_files import RENDER

        self.stdout.write(RENDER[self.args.shell](build_parser()))
        return EXIT_OK

    def cmd_install_service(self) -> int:
        from pathlib import Path

        from .services import service_files

        platform = self.args.platform or sys.platform
        home = Path.home()
        config_home = Path(os.environ.get("XDG_CONFIG_HOME") or home / ".config")
        files = service_files(platform, home, config_home, Path(self.socket))
        for path, content in files.files.items():
            if self.args.print:
                text = content.decode() if isinstance(content, bytes) else content
                self.stdout.write(f"# {path}\n{text}\n")
                continue
            from .files import make_private_dir, write_atomic

            make_private_dir(path.parent)
            data = content if isinstance(content, bytes) else content.encode()
            write_atomic(path, data, mode=0o644)
            self.stderr.write(f"wrote {path}\n")
        if not self.args.print:
            if platform != "darwin":
                # The config dir exists before the sandboxed service first runs.
                from .backends.encrypted_file import default_config_dir
                from .files import make_private_dir

                make_private_dir(default_config_dir())
            self.stderr.write(f"enable it with:\n  {files.enable_command}\n")
        return EXIT_OK

    def cmd_exec(self) -> int:
        from . import secret_env

        argv = list(self.args.argv)
        if argv and argv[0] == "--":
            argv = argv[1:]
        if not argv:
            raise CredentialValidationError(
                "exec needs a command: modelforge-agent exec -- CMD [ARGS...]"
            )
        from . import refs

        overrides = [secret_env.parse_env_option(option) for option in self.args.env]
        # Read before the agent is asked anything: a bad file is exit 2, nothing run.
        plain, from_files = refs.env_files_bindings(self.args.env_file)
        if not (self.args.provider or overrides or self.args.env_file or self.args.all):
            # Least privilege, as op run and aws-vault: only what is named.
            raise CredentialValidationError(
                "exec injects only the secrets you name; nothing was run. Name them: "
                "-p PROVIDER (its api_key or access_token, as model-forge and the SDKs read "
                "them), -e VAR=PROVIDER/KEY, --env-file FILE, or pass --all to inject every "
                "stored provider"
            )
        with self.client() as client:
            values: dict[str, str] = {}
            if self.args.provider or overrides or self.args.all:
                names = self._with_unlock(client, lambda: client.list_keys())
                providers = None if self.args.all else self.args.provider
                bindings = secret_env.plan(
                    names, providers, overrides, skip_missing=self.args.skip_missing
                )
                values = secret_env.resolve(
                    bindings, client.retrieve, skip_missing=self.args.skip_missing
                )
            # Every reference in the files must exist: all unknown ones named at once.
            resolved = self._with_unlock(
                client, lambda: refs.resolve_all(from_files, client.retrieve)
            )
        env = dict(os.environ)
        env.update(plain)
        env.update(resolved)
        env.update(values)  # -p and -e win over a file, as on op run's command line
        if self.args.mask:
            return secret_env.run_masked(argv, env, [*values.values(), *resolved.values()])
        self.stdout.flush()
        self.stderr.flush()
        secret_env.exec_replace(argv, env)
        return EXIT_UNAVAILABLE  # pragma: no cover - exec does not return

    def cmd_migrate(self) -> int:
        from .cli_model_forge import migrate

        return migrate(self)

    def cmd_integrate(self) -> int:
        from .cli_model_forge import integrate

        return integrate(self)

    def cmd_doctor(self) -> int:
        import json
        from pathlib import Path

        from .doctor import diagnose, render

        report = diagnose(Path(self.socket), timeout=min(self.args.timeout, 3.0))
        if self.args.json:
            json.dump(report, self.stdout, indent=2, sort_keys=True)
            self.stdout.write("\n")
        else:
            self.stdout.write(render(report))
        return EXIT_OK if not report["problems"] else EXIT_UNAVAILABLE

    def cmd_log(self) -> int:
        from pathlib import Path

        from .daemon.audit import default_audit_path, read_entries, render_entry, text_view

        path = Path(self.args.file) if self.args.file else None
        if path is None:
            try:
                with self.client() as client:
                    configured = client.status().get("audit_log")
                path = Path(str(configured)) if configured else None
            except CredentialStorageError:
                path = None
        path = path or default_audit_path()
        try:
            lines = read_entries(path)
        except FileNotFoundError:
            self.stderr.write(
                f"no audit log at {path}; start the agent with `serve --audit-log` "
                "(or MODEL_FORGE_AUDIT_LOG=1) to record one\n"
            )
            return EXIT_NOT_FOUND
        for line in lines[-self.args.lines :] if self.args.lines else lines:
            if self.args.json:
                self.stdout.write(line + "\n")  # ASCII JSON: escaped already
                continue
            shown = render_entry(line)
            if shown is None:
                shown = f"(not an entry: {text_view(line[:200])})"
            self.stdout.write(shown + "\n")
        return EXIT_OK

    def _warn_other_backend(self, status: dict[str, Any]) -> None:
        """MODEL_FORGE_BACKEND asks for one backend, the running agent has another."""
        from . import settings

        wanted = settings.backend()
        running = status.get("backend")
        if wanted and running and wanted != running:
            self.stderr.write(
                f"warning: {settings.BACKEND} asks for the {wanted} backend, but the running "
                f"agent (pid {status.get('pid')}) uses {running}, chosen when it started. "
                "To switch: `modelforge-agent stop`, then start it again with "
                f"{settings.BACKEND} set\n"
            )

    def _with_unlock(self, client: AgentClient, action: Callable[[], Any]) -> Any:
        try:
            return action()
        except CredentialLockedError:
            if self._interactive() and self.stderr.isatty():
                read_stdin = True
            else:
                from .client.askpass import find_prompter

                if find_prompter() is None:
                    raise
                read_stdin = False  # stdin carries the command's data (set's value)
            self.stderr.write("The agent is locked.\n")
            client.unlock(
                self.read_secret(
                    "Passphrase: ",
                    description="Unlock the model-forge credential agent",
                    read_stdin=read_stdin,
                )
            )
            return action()


def _audit_path(option: str | None) -> Path | None:
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


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{provider} ({n})" for provider, n in counts.items())


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


def _duration(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "?"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    args = quick_args(arguments)
    if args is None:
        args = build_parser().parse_args(arguments)
    cli = Cli(args, sys.stdin, sys.stdout, sys.stderr)
    run = getattr(args, "run", None)  # a command of a cli_args.EXTENSIONS module
    handler = (
        (lambda: run(cli))
        if run is not None
        else getattr(cli, "cmd_" + args.command.replace("-", "_"))
    )
    try:
        return int(handler())
    except CredentialStorageError as err:
        sys.stderr.write(f"modelforge-agent {args.command}: {err}\n")
        return exit_code_for(err)
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")
        return 130
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
