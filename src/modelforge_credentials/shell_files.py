"""Shell completion (bash, zsh, fish) and the man page, generated from the parser.

Static files: a TAB never runs ``modelforge-agent``, so completion costs
nothing at start-up. They are generated from ``cli_args.build_parser()`` into
``share/`` of the source tree (``python -m modelforge_credentials.shell_files
share``), installed with the package under ``<prefix>/share`` (where
bash-completion, fish and man look beside ``<prefix>/bin``), and a test
regenerates them to prove they are current. ``modelforge-agent completion
SHELL`` prints one, for installs whose prefix the shell does not search.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path

PROG = "modelforge-agent"

#: Where each file goes under a prefix (share/...), by kind.
TARGETS = {
    "bash": Path("bash-completion/completions") / PROG,
    "zsh": Path("zsh/site-functions") / f"_{PROG}",
    "fish": Path("fish/vendor_completions.d") / f"{PROG}.fish",
    "man": Path("man/man1") / f"{PROG}.1",
}


@dataclass
class Option:
    flags: list[str]
    help: str
    takes_value: bool
    choices: list[str] = field(default_factory=list)
    metavar: str = ""
    remainder: bool = False  # exec's "-- CMD ARGS...": a command line follows

    @property
    def is_path(self) -> bool:
        words = (self.metavar + " " + " ".join(self.flags)).lower()
        return any(w in words for w in ("path", "dir", "file", "config", "log", "python", "socket"))


@dataclass
class Command:
    name: str
    help: str
    options: list[Option]
    positionals: list[Option]


def _options(parser: argparse.ArgumentParser) -> tuple[list[Option], list[Option]]:
    options: list[Option] = []
    positionals: list[Option] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) or action.help == argparse.SUPPRESS:
            continue
        takes = action.nargs != 0
        metavar = action.metavar if isinstance(action.metavar, str) else ""
        item = Option(
            flags=list(action.option_strings),
            help=(action.help or "").replace("%(default)s", str(action.default)),
            takes_value=takes,
            choices=[str(c) for c in action.choices] if action.choices else [],
            metavar=metavar or (action.dest.upper() if takes else ""),
            remainder=action.nargs == argparse.REMAINDER,
        )
        (options if action.option_strings else positionals).append(item)
    return options, positionals


def describe(parser: argparse.ArgumentParser) -> tuple[list[Option], list[Command]]:
    """The global options and every command, from the parser itself."""
    global_options, _ = _options(parser)
    commands = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                options, positionals = _options(sub)
                commands.append(Command(name, helps.get(name, ""), options, positionals))
    return global_options, commands


# -- bash -------------------------------------------------------------------------------


def bash(parser: argparse.ArgumentParser) -> str:
    global_options, commands = describe(parser)
    valued = [f for o in global_options if o.takes_value for f in o.flags]
    words = " ".join([c.name for c in commands] + [f for o in global_options for f in o.flags])
    cases = []
    for command in commands:
        flags = [f for o in command.options for f in o.flags]
        choices = [c for p in command.positionals for c in p.choices]
        cases.append(f'        {command.name}) words="{" ".join(flags + choices)}" ;;')
    return "\n".join(
        [
            f"# bash completion for {PROG} (generated from its parser; do not edit)",
            "_modelforge_agent() {",
            '    local cur="${COMP_WORDS[COMP_CWORD]}" cmd="" words i',
            "    for ((i = 1; i < COMP_CWORD; i++)); do",
            '        case "${COMP_WORDS[i]}" in',
            f"            {'|'.join(valued)}) ((i++)) ;;",
            "            -*) ;;",
            '            *) cmd="${COMP_WORDS[i]}"; break ;;',
            "        esac",
            "    done",
            '    case "$cmd" in',
            f'        "") words="{words}" ;;',
            *cases,
            '        *) words="" ;;',
            "    esac",
            '    COMPREPLY=($(compgen -W "$words" -- "$cur"))',
            "}",
            f"complete -o default -F _modelforge_agent {PROG}",
            "",
        ]
    )


# -- zsh --------------------------------------------------------------------------------


def _zsh_text(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "'\\''").replace("[", "\\[").replace("]", "\\]")


def _zsh_option(option: Option) -> str:
    names = option.flags
    spec = "{" + ",".join(names) + "}" if len(names) > 1 else names[0]
    exclusive = f"'({' '.join(names)})'" if len(names) > 1 else ""
    value = ""
    if option.takes_value:
        if option.choices:
            action = f"({' '.join(option.choices)})"
        else:
            action = "_files" if option.is_path else " "
        value = f":{option.metavar.lower() or 'value'}:{action}"
    return f"{exclusive}{spec}'[{_zsh_text(option.help)}]{value}'"


def zsh(parser: argparse.ArgumentParser) -> str:
    global_options, commands = describe(parser)
    described = " ".join(
        f"'{c.name}:{_zsh_text(c.help).replace(':', chr(92) + ':')}'" for c in commands
    )
    lines = [
        f"#compdef {PROG}",
        f"# zsh completion for {PROG} (generated from its parser; do not edit)",
        "_modelforge_agent() {",
        "    local curcontext=$curcontext state line",
        f"    local -a commands=({described})",
        "    _arguments -C \\",
        *[f"        {_zsh_option(o)} \\" for o in global_options if o.flags != ["-h", "--help"]],
        "        '1: :->command' '*:: :->args'",
        "    case $state in",
        "    command) _describe -t commands command commands ;;",
        "    args)",
        "        case $line[1] in",
    ]
    for command in commands:
        specs = [_zsh_option(o) for o in command.options]
        for index, positional in enumerate(command.positionals, start=1):
            if positional.remainder:
                specs.append("'*::command:_normal'")
                continue
            action = f"({' '.join(positional.choices)})" if positional.choices else " "
            specs.append(f"'{index}:{positional.metavar.lower()}:{action}'")
        lines.append(f"        {command.name}) _arguments {' '.join(specs)} ;;")
    lines += ["        esac ;;", "    esac", "}", '_modelforge_agent "$@"', ""]
    return "\n".join(lines)


# -- fish -------------------------------------------------------------------------------


def _fish_text(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fish_option(option: Option, condition: str) -> str:
    parts = [f"complete -c {PROG} -n {_fish_text(condition)}"]
    for flag in option.flags:
        parts.append(f"-l {flag[2:]}" if flag.startswith("--") else f"-s {flag[1:]}")
    if option.takes_value:
        if option.choices:
            parts.append(f"-xa {_fish_text(' '.join(option.choices))}")
        else:
            parts.append("-rF" if option.is_path else "-x")
    parts.append(f"-d {_fish_text(option.help)}")
    return " ".join(parts)


def fish(parser: argparse.ArgumentParser) -> str:
    global_options, commands = describe(parser)
    names = " ".join(c.name for c in commands)
    lines = [
        f"# fish completion for {PROG} (generated from its parser; do not edit)",
        f"complete -c {PROG} -f",
    ]
    for option in global_options:
        lines.append(_fish_option(option, "__fish_use_subcommand"))
    for command in commands:
        lines.append(
            f"complete -c {PROG} -n __fish_use_subcommand -a {command.name} "
            f"-d {_fish_text(command.help)}"
        )
    for command in commands:
        seen = f"__fish_seen_subcommand_from {command.name}"
        for option in command.options:
            lines.append(_fish_option(option, seen))
        for positional in command.positionals:
            if positional.choices:
                lines.append(
                    f"complete -c {PROG} -n {_fish_text(seen)} -xa "
                    f"{_fish_text(' '.join(positional.choices))}"
                )
    lines.append(f"# commands: {names}")
    return "\n".join(lines) + "\n"


# -- man page ---------------------------------------------------------------------------


def _roff(text: str) -> str:
    escaped = text.replace("\\", "\\e").replace("-", "\\-")
    return "\\&" + escaped if escaped.startswith((".", "'")) else escaped


def _roff_option(option: Option) -> str:
    flags = ", ".join(f"\\fB{_roff(f)}\\fR" for f in option.flags)
    value = f" \\fI{_roff(option.metavar)}\\fR" if option.takes_value and option.metavar else ""
    return f".TP\n{flags}{value}\n{_roff(option.help)}"


def man(parser: argparse.ArgumentParser) -> str:
    from . import __version__, settings

    global_options, commands = describe(parser)
    lines = [
        f'.TH MODELFORGE\\-AGENT 1 "" "model-forge-credentials {__version__}" "User Commands"',
        ".SH NAME",
        f"{PROG} \\- {_roff(parser.description or '')}",
        ".SH SYNOPSIS",
        f".B {PROG}",
        "[\\fIoptions\\fR] \\fIcommand\\fR [\\fIargs\\fR]",
        ".SH DESCRIPTION",
        _roff(
            "A local credential agent in the spirit of ssh-agent: it holds the selected "
            "backend (system keyring, encrypted file or environment variables) and a "
            "decrypted in-memory cache, and serves secrets over a private Unix socket. "
            "Secret values are read from a no-echo prompt or standard input, never from "
            "the command line."
        ),
        ".SH OPTIONS",
        *[_roff_option(o) for o in global_options],
        ".SH COMMANDS",
    ]
    for command in commands:
        args = " ".join(f"\\fI{_roff(p.metavar)}\\fR" for p in command.positionals)
        lines += [".TP", f"\\fB{command.name}\\fR {args}".rstrip(), _roff(command.help)]
        if command.options:
            lines.append(".RS")
            lines += [_roff_option(o) for o in command.options if o.flags != ["-h", "--help"]]
            lines.append(".RE")
    lines += [".SH ENVIRONMENT"]
    for name, meaning in settings.DOCUMENTED.items():
        lines += [".TP", f"\\fB{_roff(name)}\\fR", _roff(meaning)]
    lines += [
        ".SH EXIT STATUS",
        _roff(
            "0 ok, 1 not found, 2 usage or invalid input, 3 locked or wrong passphrase, "
            "4 agent or backend unavailable; exec: 126 and 127 as env(1)."
        ),
        ".SH SEE ALSO",
        "\\fBssh-agent\\fR(1), \\fBgit-credential\\fR(1), \\fBsystemctl\\fR(1)",
        "",
    ]
    return "\n".join(lines)


RENDER = {"bash": bash, "zsh": zsh, "fish": fish, "man": man}


def render_all() -> dict[str, str]:
    from .cli_args import build_parser

    parser = build_parser()
    return {kind: render(parser) for kind, render in RENDER.items()}


def write(share: Path) -> list[Path]:
    """Write every file under ``share``; the paths written."""
    written = []
    for kind, text in render_all().items():
        path = share / TARGETS[kind]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for written_path in write(Path(sys.argv[1] if len(sys.argv) > 1 else "share")):
        print(written_path)
