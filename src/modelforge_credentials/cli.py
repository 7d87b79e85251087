"""``modelforge-agent``: run the credential agent and talk to it from a shell.

Exit status: 0 ok, 1 not found, 2 usage or invalid input, 3 locked (or wrong
passphrase), 4 agent or backend unavailable. Secret values are read from a
no-echo prompt or standard input, never from the command line.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence

from .cli_args import build_parser, quick_args
from .errors import (
    CredentialBadPassphraseError,
    CredentialLockedError,
    CredentialNotFoundError,
    CredentialStorageError,
    CredentialValidationError,
)
from .paths import socket_path

# Start-up time is part of every `get`: typing, pathlib, json and shlex are
# imported by the commands that need them, not here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import Any, TextIO

    from .client.sync import AgentClient

EXIT_OK = 0
EXIT_NOT_FOUND = 1
EXIT_USAGE = 2
EXIT_LOCKED = 3
EXIT_UNAVAILABLE = 4

#: Commands whose code lives in a module of its own, imported only when the
#: command runs: name -> (module, function(cli) -> exit status). The rest
#: are the ``cmd_`` methods of :class:`Cli`; cli_args.EXTENSIONS modules
#: set ``run`` on their parsers instead.
COMMAND_MODULES: dict[str, tuple[str, str]] = {
    "serve": ("cli_agent", "serve"),
    "start": ("cli_agent", "start"),
    "stop": ("cli_agent", "stop"),
    "status": ("cli_agent", "show_status"),
    "install-service": ("cli_agent", "install_service"),
    "exec": ("cli_exec", "run_with_secrets"),
    "passwd": ("cli_file", "passwd"),
    "restore-backup": ("cli_file", "restore_backup"),
    "migrate": ("cli_model_forge", "migrate"),
    "integrate": ("cli_model_forge", "integrate"),
    "doctor": ("cli_diagnostics", "doctor"),
    "log": ("cli_diagnostics", "show_log"),
}


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
    """One command's run: its arguments and streams, and what every command
    shares (the agent client, secret prompts, unlock-and-retry)."""

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
            return self._set_in_team(value)
        with self.client() as client:
            self._with_unlock(
                client, lambda: client.store(self.args.provider, self.args.key, value)
            )
        return EXIT_OK

    def cmd_get(self) -> int:
        if getattr(self.args, "source", False):  # quick_args never sets it
            return self._print_source()
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

    def _set_in_team(self, value: str) -> int:
        """``set --team NAME``: a check-and-set write of the version the agent last saw."""
        a = self.args
        with self.client() as client:
            result = self._with_unlock(
                client, lambda: client.team_store(a.team, a.provider, a.key, value)
            )
        self.stderr.write(f"wrote {result['path']} version {result['version']} (team {a.team})\n")
        if result.get("shadowed"):
            import shlex

            self.stderr.write(
                f"warning: a local value of the same name wins over the team's; delete it "
                f"with `modelforge-agent delete {shlex.quote(a.provider)} {shlex.quote(a.key)}` "
                "to use the team's\n"
            )
        return EXIT_OK

    def _print_source(self) -> int:
        """``get --source``: where the value comes from, never the value."""
        a = self.args
        with self.client() as client:
            found = self._with_unlock(client, lambda: client.locate(a.provider, a.key))
        source = found.get("source")
        if source is None:
            raise CredentialNotFoundError(
                f"no credential {a.key!r} for provider {a.provider!r}, neither local nor in a team"
            )
        where = f" {found['path']} version {found['version']}" if found.get("path") else ""
        self.stdout.write(f"{source}{where}\n")
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

        with self.client() as client:
            items = self._with_unlock(client, lambda: client.list_sourced(self.args.provider))
        if self.args.json:
            json.dump([list(i) for i in items], self.stdout)
            self.stdout.write("\n")
        else:
            for item in items:  # a third column, the source, once a team is configured
                self.stdout.write("\t".join(item) + "\n")
        return EXIT_OK

    def cmd_completion(self) -> int:
        from .shell_files import RENDER

        self.stdout.write(RENDER[self.args.shell](build_parser()))
        return EXIT_OK

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


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{provider} ({n})" for provider, n in counts.items())


def _duration(seconds: object) -> str:
    if not isinstance(seconds, int | float):
        return "?"
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def _handler(args: argparse.Namespace) -> Callable[[Cli], int]:
    """The function that runs ``args.command``."""
    run: Callable[[Cli], int] | None = getattr(args, "run", None)  # an EXTENSIONS command
    if run is not None:
        return run
    if args.command in COMMAND_MODULES:
        import importlib

        module, function = COMMAND_MODULES[args.command]
        found: Callable[[Cli], int] = getattr(
            importlib.import_module(f".{module}", __package__), function
        )
        return found
    method: Callable[[Cli], int] = getattr(Cli, "cmd_" + args.command.replace("-", "_"))
    return method


def main(argv: Sequence[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else list(argv)
    args = quick_args(arguments)
    if args is None:
        args = build_parser().parse_args(arguments)
    cli = Cli(args, sys.stdin, sys.stdout, sys.stderr)
    try:
        return int(_handler(args)(cli))
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
