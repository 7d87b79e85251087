"""Shell completion and the man page: current, and loaded by the real shells."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from modelforge_credentials.shell_files import TARGETS, render_all

REPO = Path(__file__).resolve().parent.parent
SHARE = REPO / "share"


def need(program: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.skip(f"{program} is not installed (.ci/run installs it)")
    return path


def run(argv: list[str], **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30, **kwargs)  # type: ignore[call-overload]


def test_the_shipped_files_are_what_the_parser_generates_now() -> None:
    for kind, text in render_all().items():
        shipped = SHARE / TARGETS[kind]
        assert shipped.read_text(encoding="utf-8") == text, (
            f"{shipped} is stale: run `python -m modelforge_credentials.shell_files share`"
        )


def bash_complete(*words: str) -> list[str]:
    script = (
        f"source {SHARE / TARGETS['bash']}\n"
        f"COMP_WORDS=(modelforge-agent {' '.join(words)})\n"
        f"COMP_CWORD={len(words)}\n"
        "_modelforge_agent\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = run([need("bash"), "--norc", "-c", script])
    assert done.returncode == 0, done.stderr
    return done.stdout.split()


def test_bash_completes_commands_options_and_choices() -> None:
    assert sorted(bash_complete("st")) == ["start", "status", "stop"]
    assert "--mask" in bash_complete("exec", "--m")
    assert "model-forge" in bash_complete("integrate", "")
    assert sorted(bash_complete("--socket", "/tmp/x", "lo")) == ["lock", "log"]


def test_fish_completes_commands_and_options() -> None:
    fish = need("fish")
    source = SHARE / TARGETS["fish"]
    done = run([fish, "--no-config", "-c", f"source {source}; complete -C 'modelforge-agent st'"])
    assert done.returncode == 0, done.stderr
    assert [line.split("\t")[0] for line in done.stdout.splitlines()] == ["start", "status", "stop"]
    done = run(
        [fish, "--no-config", "-c", f"source {source}; complete -C 'modelforge-agent exec --ma'"]
    )
    assert done.stdout.split("\t")[0] == "--mask"


def test_zsh_loads_the_completion_function() -> None:
    zsh = need("zsh")
    source = SHARE / TARGETS["zsh"]
    assert run([zsh, "-n", str(source)]).returncode == 0
    script = (
        f"fpath=({source.parent} $fpath); autoload -Uz compinit; compinit -u -D; "
        "print -r -- ${_comps[modelforge-agent]}"
    )
    done = run([zsh, "-f", "-c", script])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "_modelforge-agent"


def test_the_man_page_renders_every_command_without_warnings() -> None:
    page = SHARE / TARGETS["man"]
    done = run([need("groff"), "-man", "-Tutf8", "-ww", "-z", str(page)])
    assert done.returncode == 0 and done.stderr == "", done.stderr
    text = run(["man", "-l", str(page)], env={"MANWIDTH": "100", "PATH": "/usr/bin:/bin"}).stdout
    for command in ("serve", "start", "integrate", "restore-backup", "completion"):
        assert command in text
    assert "MODEL_FORGE_AGENT_SOCK" in text


@pytest.mark.parametrize("kind", sorted(TARGETS))
def test_completion_prints_each_file(kind: str) -> None:
    import contextlib
    import io

    from modelforge_credentials.cli import main

    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        assert main(["completion", kind]) == 0
    assert buffer.getvalue() == (SHARE / TARGETS[kind]).read_text()
