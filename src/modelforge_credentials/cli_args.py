"""What the user typed: the ``modelforge-agent`` command line, parsed.

``quick_args`` reads the hot ``get``/``exists`` shape by hand; everything else
goes through ``build_parser`` (argparse, imported only then).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from . import settings
from .paths import SOCKET_VARIABLE

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse

    #: ``add(name, help)``: a new subcommand's parser.
    AddCommand = Callable[[str, str], argparse.ArgumentParser]


def build_parser() -> argparse.ArgumentParser:
    """The whole command line: the global options, then the subcommands of
    each of COMMAND_GROUPS and of each EXTENSIONS module."""
    import argparse

    parser = argparse.ArgumentParser(
        prog="modelforge-agent",
        description="Local credential agent for model-forge's LLM provider secrets.",
        epilog="Exit status: 0 ok, 1 not found, 2 usage, 3 locked, 4 agent or backend unavailable.",
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"modelforge-agent {__version__}")
    parser.add_argument(
        "--socket", help=f"agent socket (default: ${SOCKET_VARIABLE} or the runtime dir)"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=settings.DEFAULT_CLIENT_TIMEOUT,
        help="seconds to wait for the agent",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=help)

    # The order of the groups is the order of `--help` and the shell files.
    for add_group in COMMAND_GROUPS:
        add_group(add)
    for module in EXTENSIONS:
        import importlib

        importlib.import_module(f".{module}", __package__).add_commands(add)
    return parser


def _add_serve(add: AddCommand) -> None:
    """``serve``: the agent in the foreground, and every option it takes."""
    import argparse

    serve = add("serve", "run the agent in the foreground (for systemd, launchd, debugging)")
    serve.add_argument(
        "--idle-timeout",
        type=float,
        default=None,
        help="lock after this many idle seconds "
        f"(0: never; default {settings.DEFAULT_IDLE_TIMEOUT:g})",
    )
    serve.add_argument(
        "--max-unlock", type=float, default=None, help="lock this many seconds after an unlock"
    )
    serve.add_argument(
        "--cache-ttl", type=float, default=None, help="seconds a keyring value stays cached"
    )
    serve.add_argument(
        "--exit-when-idle",
        type=float,
        default=None,
        help="socket-activated: exit after this many seconds without clients",
    )
    serve.add_argument(
        "--settings",
        default=None,
        metavar="FILE",
        help="settings file (TOML) for the options above; SIGHUP re-reads it "
        "(default: $MODEL_FORGE_AGENT_SETTINGS or agent.toml in the config directory)",
    )
    serve.add_argument("--started-by", default=None, help=argparse.SUPPRESS)
    serve.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--config-dir", default=None, help="directory of the encrypted file")
    serve.add_argument(
        "--unlock-delay-cap",
        type=float,
        default=None,
        help="longest delay after failed unlocks (default 10)",
    )
    serve.add_argument(
        "--read-deadline",
        type=float,
        default=None,
        help="seconds a client may take to finish a frame (default 10)",
    )
    serve.add_argument(
        "--max-connections",
        type=int,
        default=None,
        help="open connections kept at most, idle ones dropped first (default 256)",
    )
    serve.add_argument(
        "--audit-log",
        nargs="?",
        const="",
        default=None,
        metavar="PATH",
        help="record an access log (default path: the state dir; or MODEL_FORGE_AUDIT_LOG)",
    )


def _add_agent_commands(add: AddCommand) -> None:
    """``start``, ``stop`` and ``status``: the background agent from a shell."""
    start = add(
        "start", "start the agent in the background if needed; print shell commands for eval"
    )
    _add_shell_syntax(start)
    start.add_argument("--idle-timeout", type=float, default=None, help="as for serve")
    start.add_argument("--config-dir", default=None, help="as for serve")
    start.add_argument("--log", default=None, help="append the agent's log to this file")

    stop = add("stop", "stop the running agent; print shell commands that unset its variable")
    _add_shell_syntax(stop)
    status = add("status", "show the agent's state, backend and protection")
    status.add_argument("--json", action="store_true")


def _add_shell_syntax(command: argparse.ArgumentParser) -> None:
    shell = command.add_mutually_exclusive_group()
    shell.add_argument("-c", "--csh", action="store_true", help="print csh commands")
    shell.add_argument("--fish", action="store_true", help="print fish commands")


def _add_store_commands(add: AddCommand) -> None:
    """The store's values and its passphrase: ``unlock`` to ``passwd``."""
    import argparse

    add("unlock", "unlock with the passphrase (prompt, or one line of stdin)")
    add("lock", "lock: forget the passphrase and every cached value")
    for name, help in (
        ("set", "store a value read from a no-echo prompt or stdin"),
        ("get", "print a value"),
        ("delete", "delete a value (exit 1 if there was none)"),
        ("exists", "exit 0 if a value is stored, 1 if not"),
    ):
        cmd = add(name, help)
        cmd.add_argument("provider")
        cmd.add_argument("key")
        if name == "set":
            cmd.add_argument(
                "--allow-empty", action="store_true", help="store an empty value on purpose"
            )
            cmd.add_argument(
                "--team",
                default=None,
                metavar="NAME",
                help="write to team NAME's server (check-and-set) instead of the local store",
            )
            # Caught so that a value typed on the command line gets advice,
            # not argparse's "unrecognized arguments: <the secret>".
            cmd.add_argument("argv_value", nargs="*", help=argparse.SUPPRESS)
        if name == "get":
            cmd.add_argument(
                "--source",
                action="store_true",
                help="print where the value comes from (local or team:NAME), not the value",
            )
    listing = add("list", "list stored names (never values)")
    listing.add_argument("provider", nargs="?")
    listing.add_argument("--json", action="store_true")
    passwd = add("passwd", "set or change the encrypted file's passphrase")
    passwd.add_argument(
        "--config-dir", default=None, help="when no agent runs: the file's directory"
    )


def _add_exec(add: AddCommand) -> None:
    """``exec``: a command run with named secrets in its environment."""
    import argparse

    run = add("exec", "run a command with secrets in its environment only")
    run.add_argument(
        "-p",
        "--provider",
        action="append",
        default=[],
        help="provider whose api_key/access_token to inject (repeatable)",
    )
    run.add_argument(
        "-e",
        "--env",
        action="append",
        default=[],
        metavar="VAR=PROVIDER/KEY",
        help="set VAR from a credential (overrides the built-in names)",
    )
    run.add_argument(
        "--env-file",
        action="append",
        default=[],
        metavar="FILE",
        help="dotenv file; values that are mf://PROVIDER/KEY references come from the agent",
    )
    run.add_argument(
        "--all",
        action="store_true",
        help="inject every stored provider (without it, only what -p/-e/--env-file name)",
    )
    run.add_argument(
        "--skip-missing", action="store_true", help="leave out missing secrets instead of failing"
    )
    run.add_argument(
        "--mask", action="store_true", help="replace secret values in the command's output with ***"
    )
    run.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD [ARGS...]")


def _add_model_forge_commands(add: AddCommand) -> None:
    """``migrate`` and ``integrate``: model-forge's secrets and its link to the agent."""
    migrate = add("migrate", "move secrets out of model-forge config files into the agent")
    migrate.add_argument(
        "--config",
        action="append",
        default=[],
        help="config file (default: the global and the local one)",
    )
    migrate.add_argument(
        "--dry-run", action="store_true", help="show what would move; change nothing"
    )
    migrate.add_argument(
        "--overwrite",
        action="store_true",
        help="let the config's values replace different ones already stored",
    )
    action = migrate.add_mutually_exclusive_group()
    action.add_argument(
        "--rollback", action="store_true", help="restore the config from its backup"
    )
    action.add_argument("--confirm", action="store_true", help="delete the plain-text backup")
    action.add_argument(
        "--from-keyring", action="store_true", help="import model-forge's older keyring layout"
    )
    migrate.add_argument(
        "--provider",
        action="append",
        default=[],
        help="with --from-keyring: provider names to look for",
    )

    integrate = add("integrate", "make a program read and write its secrets through the agent")
    integrate.add_argument("program", choices=["model-forge"], help="the program")
    integrate.add_argument(
        "--python",
        default=None,
        metavar="PATH",
        help="interpreter of model-forge's environment (default: the one running `modelforge`)",
    )
    what = integrate.add_mutually_exclusive_group()
    what.add_argument("--remove", action="store_true", help="undo: remove the integration")
    what.add_argument(
        "--print", action="store_true", help="show what would be written where; change nothing"
    )


def _add_repair_commands(add: AddCommand) -> None:
    """``restore-backup``, ``doctor`` and ``log``: after damage, and to find out why."""
    restore = add(
        "restore-backup",
        "put the encrypted file's previous generation back (after damage); shows it first",
    )
    restore.add_argument(
        "--dry-run", action="store_true", help="show what it holds; change nothing"
    )
    restore.add_argument("--yes", action="store_true", help="do not ask before restoring")
    restore.add_argument(
        "--config-dir", default=None, help="when no agent runs: the file's directory"
    )

    doctor = add("doctor", "check backends, socket and agent; say how to fix each problem")
    doctor.add_argument("--json", action="store_true")

    audit = add("log", "show the agent's access log (names only, never values)")
    audit.add_argument("-n", "--lines", type=int, default=50, help="last N entries (0: all)")
    audit.add_argument("--file", default=None, help="log file (default: the running agent's)")
    audit.add_argument("--json", action="store_true", help="raw JSON lines")


def _add_setup_commands(add: AddCommand) -> None:
    """``completion`` and ``install-service``: files for the shell and the service manager."""
    import argparse

    completion = add(
        "completion", "print the shell completion script (or the man page) for this command"
    )
    completion.add_argument("shell", choices=["bash", "zsh", "fish", "man"])

    install = add(
        "install-service", "write the systemd user units (or launchd plist) for this user"
    )
    install.add_argument(
        "--print", action="store_true", help="print the files instead of writing them"
    )
    install.add_argument(
        "--platform", choices=["linux", "darwin"], default=None, help=argparse.SUPPRESS
    )


#: Each adds one group of subcommands, in this order.
COMMAND_GROUPS: tuple[Callable[[AddCommand], None], ...] = (
    _add_serve,
    _add_agent_commands,
    _add_store_commands,
    _add_exec,
    _add_model_forge_commands,
    _add_repair_commands,
    _add_setup_commands,
)


#: Modules that add commands of their own: each has ``add_commands(add)``,
#: which creates its subparsers with ``add(name, help)`` and sets
#: ``run=function`` on each (``function(cli) -> exit status``). They must be
#: light to import: the parser imports them for --help.
EXTENSIONS: tuple[str, ...] = ("cli_refs", "cli_team")


def quick_args(argv: Sequence[str]) -> argparse.Namespace | None:
    """``[--socket S] [--timeout T] get|exists PROVIDER KEY`` without argparse.

    These run inside scripts and prompts many times a second, and building
    the full parser costs more than the whole client: the common shape is
    read by hand, everything else (options, help, errors) goes to argparse.
    """
    from types import SimpleNamespace

    options: dict[str, str] = {}
    rest = list(argv)
    while rest and rest[0].startswith("--"):
        name, eq, value = rest.pop(0).partition("=")
        if name not in ("--socket", "--timeout") or name in options:
            return None
        if not eq:
            if not rest:
                return None
            value = rest.pop(0)
        options[name] = value
    if (
        len(rest) != 3
        or rest[0] not in ("get", "exists")
        or rest[1][:1] == "-"
        or rest[2][:1] == "-"
    ):
        return None
    try:
        raw = options.get("--timeout")
        timeout = settings.DEFAULT_CLIENT_TIMEOUT if raw is None else float(raw)
    except ValueError:
        return None
    namespace: argparse.Namespace = SimpleNamespace(  # type: ignore[assignment]
        command=rest[0],
        provider=rest[1],
        key=rest[2],
        socket=options.get("--socket"),
        timeout=timeout,
    )
    return namespace
