"""Asking for a passphrase without a terminal: askpass programs (real
processes: a small script), SSH_ASKPASS's display rule, and the order of the
sources (client/askpass.py's docstring)."""

from __future__ import annotations

import io
import json
import os
import sys
import traceback
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelforge_credentials.cli import EXIT_LOCKED, EXIT_UNAVAILABLE, EXIT_USAGE, exit_code_for
from modelforge_credentials.client import askpass, prompters
from modelforge_credentials.client.askpass import (
    ASKPASS,
    PINENTRY,
    PassphraseCancelledError,
    PassphraseMismatchError,
    PassphrasePromptError,
    Prompter,
    find_prompter,
    read_passphrase,
    run_askpass,
)
from modelforge_credentials.errors import (
    CredentialLockedError,
    CredentialStorageError,
    CredentialTooLargeError,
    CredentialValidationError,
)

SECRET = "pässwörd-🔑-42 with spaces"

# The program under test: each call takes the next answer from ANSWERS and
# records its argv and environment in CALLS.
ASKPASS_SCRIPT = """\
#!{python}
import json, os, sys, time
calls = os.environ["CALLS"]
with open(calls, "a", encoding="utf-8") as handle:
    handle.write(json.dumps({{"argv": sys.argv[1:], "env": dict(os.environ),
                             "pid": os.getpid()}}) + "\\n")
with open(os.environ["ANSWERS"], encoding="utf-8") as handle:
    answers = json.load(handle)
with open(calls, encoding="utf-8") as handle:
    answer = answers[min(len(handle.readlines()), len(answers)) - 1]
time.sleep(answer.get("sleep", 0))
sys.stdout.buffer.write(bytes.fromhex(answer.get("hex", "")) or answer.get("out", "").encode())
sys.stdout.flush()
sys.stderr.write("askpass stderr is not ours to log\\n")
sys.exit(answer.get("exit", 0))
"""


class AskpassProgram:
    def __init__(self, directory: Path) -> None:
        self.path = directory / "askpass"
        self.path.write_text(ASKPASS_SCRIPT.format(python=sys.executable))
        self.path.chmod(0o700)
        self.answers = directory / "answers.json"
        self.calls_file = directory / "calls.jsonl"
        self.answer()

    def answer(self, *answers: dict[str, object]) -> None:
        self.answers.write_text(json.dumps(list(answers) or [{"out": "unused\n"}]))

    @property
    def calls(self) -> list[dict[str, object]]:
        if not self.calls_file.exists():
            return []
        return [json.loads(line) for line in self.calls_file.read_text().splitlines()]

    def env(self, **extra: str) -> dict[str, str]:
        """A minimal environment: no display, no terminal program, no pinentry."""
        return {
            "PATH": os.environ.get("PATH", os.defpath),
            "CALLS": str(self.calls_file),
            "ANSWERS": str(self.answers),
            PINENTRY: "off",
            **extra,
        }


@pytest.fixture
def program(tmp_path: Path) -> Iterator[AskpassProgram]:
    yield AskpassProgram(tmp_path)


def _no_line() -> io.StringIO:
    return io.StringIO("")  # not a terminal, and it ends without a line


def assert_secret_absent(err: BaseException, *secrets: str) -> None:
    shown = "".join(traceback.format_exception(err)) + repr(err) + repr(err.args)
    for secret in secrets:
        assert secret not in shown
        assert secret.encode().hex() not in shown


# -- MODEL_FORGE_ASKPASS -------------------------------------------------------------


def test_askpass_passphrase_comes_back_exactly_with_unicode(program: AskpassProgram) -> None:
    program.answer({"out": SECRET + "\n"})
    got = read_passphrase(
        "Passphrase: ",
        description="unlock",
        stdin=_no_line(),
        environ=program.env(**{ASKPASS: str(program.path)}),
    )
    assert got == SECRET


def test_the_prompt_is_the_programs_only_argument_and_the_secret_is_in_no_argv_or_env(
    program: AskpassProgram,
) -> None:
    program.answer({"out": SECRET + "\n"}, {"out": SECRET + "\n"})
    got = read_passphrase(
        "New passphrase: ",
        description="set the passphrase",
        confirm=True,
        stdin=_no_line(),
        environ=program.env(**{ASKPASS: str(program.path)}),
    )
    assert got == SECRET
    calls = program.calls
    assert [c["argv"] for c in calls] == [["New passphrase: "], ["Repeat new passphrase: "]]
    # The second run must not have been handed the first answer.
    assert SECRET not in json.dumps(calls[1], ensure_ascii=False)


@pytest.mark.parametrize(
    ("printed", "expected"),
    [
        (SECRET, SECRET),  # no line end at all
        (SECRET + "\r\n", SECRET),
        (SECRET + "\nsecond line\n", SECRET),
        ("\n", ""),  # an empty passphrase typed on purpose: the caller decides
    ],
)
def test_one_line_is_taken_without_its_line_end(
    program: AskpassProgram, printed: str, expected: str
) -> None:
    program.answer({"out": printed})
    assert run_askpass(str(program.path), "P: ", environ=program.env()) == expected


def test_a_non_zero_exit_is_cancelled_and_says_so_without_the_secret(
    program: AskpassProgram,
) -> None:
    program.answer({"out": SECRET + "\n", "exit": 1})
    with pytest.raises(PassphraseCancelledError, match="exited with 1.*cancelled") as caught:
        read_passphrase(
            "Passphrase: ",
            description="unlock",
            stdin=_no_line(),
            environ=program.env(**{ASKPASS: str(program.path)}),
        )
    assert ASKPASS in str(caught.value)
    assert_secret_absent(caught.value, SECRET)
    assert isinstance(caught.value, CredentialLockedError)
    assert exit_code_for(caught.value) == EXIT_LOCKED


def test_printing_nothing_is_cancelled_not_an_empty_passphrase(program: AskpassProgram) -> None:
    program.answer({"out": ""})
    with pytest.raises(PassphraseCancelledError, match="printed no passphrase"):
        run_askpass(str(program.path), "P: ", environ=program.env())


def test_a_confirmation_that_differs_is_a_typed_error_without_either_secret(
    program: AskpassProgram,
) -> None:
    program.answer({"out": SECRET + "\n"}, {"out": SECRET + "x\n"})
    with pytest.raises(PassphraseMismatchError, match="differ; nothing was changed") as caught:
        read_passphrase(
            "New passphrase: ",
            description="passwd",
            confirm=True,
            stdin=_no_line(),
            environ=program.env(**{ASKPASS: str(program.path)}),
        )
    assert_secret_absent(caught.value, SECRET, SECRET + "x")
    assert exit_code_for(caught.value) == EXIT_USAGE


def test_output_that_is_not_utf8_is_refused_without_quoting_it(program: AskpassProgram) -> None:
    raw = b"\xff\xfesecret-bytes"
    program.answer({"hex": (raw + b"\n").hex()})
    with pytest.raises(PassphrasePromptError, match="not UTF-8") as caught:
        run_askpass(str(program.path), "P: ", environ=program.env())
    assert_secret_absent(caught.value, "secret-bytes")


def test_a_program_that_hangs_is_killed_after_the_timeout(program: AskpassProgram) -> None:
    program.answer({"out": SECRET + "\n", "sleep": 60})
    with pytest.raises(PassphrasePromptError, match="did not answer within 0.5 s") as caught:
        run_askpass(str(program.path), "P: ", environ=program.env(), timeout=0.5)
    assert_secret_absent(caught.value, SECRET)
    pid = program.calls[0]["pid"]
    assert isinstance(pid, int)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # killed and reaped
    assert exit_code_for(caught.value) == EXIT_UNAVAILABLE


def test_a_program_that_cannot_run_names_the_variable(tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-askpass")
    with pytest.raises(PassphrasePromptError, match=f"{ASKPASS}=.*cannot be run"):
        read_passphrase(
            "Passphrase: ",
            description="unlock",
            stdin=_no_line(),
            environ={ASKPASS: missing, PINENTRY: "off"},
        )


def test_an_endless_line_is_cut_off_with_a_typed_error(program: AskpassProgram) -> None:
    program.answer({"out": "x" * (200_000)})
    with pytest.raises(PassphrasePromptError, match="more than 65536 bytes"):
        run_askpass(str(program.path), "P: ", environ=program.env())


# -- SSH_ASKPASS and its display rule --------------------------------------------------


@pytest.mark.parametrize("display", ["DISPLAY", "WAYLAND_DISPLAY"])
def test_ssh_askpass_is_used_with_a_display(program: AskpassProgram, display: str) -> None:
    program.answer({"out": SECRET + "\n"})
    env = program.env(SSH_ASKPASS=str(program.path), **{display: ":0"})
    got = read_passphrase("Passphrase: ", description="unlock", stdin=_no_line(), environ=env)
    assert got == SECRET
    assert program.calls[0]["argv"] == ["Passphrase: "]


def test_ssh_askpass_is_not_used_without_a_display(program: AskpassProgram) -> None:
    env = program.env(SSH_ASKPASS=str(program.path))
    with pytest.raises(CredentialValidationError, match="expected a line on standard input"):
        read_passphrase("Passphrase: ", description="unlock", stdin=_no_line(), environ=env)
    assert program.calls == []


def test_ssh_askpass_require_never_and_force(program: AskpassProgram) -> None:
    program.answer({"out": SECRET + "\n"})
    never = program.env(SSH_ASKPASS=str(program.path), DISPLAY=":0", SSH_ASKPASS_REQUIRE="never")
    with pytest.raises(CredentialValidationError, match="expected a line"):
        read_passphrase("P: ", description="d", stdin=_no_line(), environ=never)
    assert program.calls == []
    force = program.env(SSH_ASKPASS=str(program.path), SSH_ASKPASS_REQUIRE="force")
    assert read_passphrase("P: ", description="d", stdin=_no_line(), environ=force) == SECRET


class _TerminalLike(io.StringIO):
    """Claims to be a terminal; read_passphrase must then not read it."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("require", "display"), [("prefer", {"DISPLAY": ":0"}), ("force", {})], ids=["prefer", "force"]
)
def test_ssh_askpass_require_prefer_and_force_win_over_the_terminal(
    program: AskpassProgram, require: str, display: dict[str, str]
) -> None:
    program.answer({"out": SECRET + "\n"})
    env = program.env(SSH_ASKPASS=str(program.path), SSH_ASKPASS_REQUIRE=require, **display)
    stdin = _TerminalLike("not to be read\n")
    assert read_passphrase("P: ", description="d", stdin=stdin, environ=env) == SECRET
    assert stdin.tell() == 0


def test_model_forge_askpass_wins_over_ssh_askpass(program: AskpassProgram, tmp_path: Path) -> None:
    program.answer({"out": SECRET + "\n"})
    other = tmp_path / "ssh-askpass-not-to-run"
    env = program.env(SSH_ASKPASS=str(other), DISPLAY=":0", **{ASKPASS: str(program.path)})
    assert read_passphrase("P: ", description="d", stdin=_no_line(), environ=env) == SECRET
    assert find_prompter(env) == Prompter("askpass", str(program.path), ASKPASS)


# -- the order: stdin's line, then the programs ------------------------------------------


def test_a_line_on_stdin_wins_over_every_program(program: AskpassProgram) -> None:
    env = program.env(**{ASKPASS: str(program.path)}, SSH_ASKPASS=str(program.path), DISPLAY=":0")
    got = read_passphrase(
        "Passphrase: ", description="unlock", stdin=io.StringIO("piped\nnext\n"), environ=env
    )
    assert got == "piped"
    assert program.calls == []


def test_a_line_on_stdin_is_not_confirmed(program: AskpassProgram) -> None:
    stdin = io.StringIO("new\n")
    env = program.env(**{ASKPASS: str(program.path)})
    assert read_passphrase("N: ", description="d", confirm=True, stdin=stdin, environ=env) == "new"
    assert program.calls == []


def test_stdin_none_is_never_read_and_goes_to_the_program(program: AskpassProgram) -> None:
    program.answer({"out": SECRET + "\n"})
    env = program.env(**{ASKPASS: str(program.path)})
    assert read_passphrase("P: ", description="d", stdin=None, environ=env) == SECRET


def test_a_closed_stdin_goes_to_the_program(program: AskpassProgram) -> None:
    program.answer({"out": SECRET + "\n"})
    closed = io.StringIO("never read")
    closed.close()
    env = program.env(**{ASKPASS: str(program.path)})
    assert read_passphrase("P: ", description="d", stdin=closed, environ=env) == SECRET


def test_askpass_off_means_standard_input_only(program: AskpassProgram) -> None:
    env = program.env(
        **{ASKPASS: "off"}, SSH_ASKPASS=str(program.path), DISPLAY=":0", SSH_ASKPASS_REQUIRE="force"
    )
    assert find_prompter(env) is None
    with pytest.raises(CredentialValidationError, match="expected a line on standard input"):
        read_passphrase("Passphrase: ", description="unlock", stdin=_no_line(), environ=env)
    assert program.calls == []


def test_with_nothing_to_ask_the_error_is_todays_and_says_what_to_do() -> None:
    with pytest.raises(CredentialValidationError) as caught:
        read_passphrase(
            "Passphrase: ", description="unlock", stdin=_no_line(), environ={PINENTRY: "off"}
        )
    message = str(caught.value)
    assert message.startswith("expected a line on standard input (Passphrase)")
    assert ASKPASS in message and "terminal" in message
    assert not isinstance(caught.value, PassphraseCancelledError)
    assert exit_code_for(caught.value) == EXIT_USAGE


def test_an_endless_stdin_line_is_refused() -> None:
    with pytest.raises(CredentialTooLargeError, match="longer than 65536"):
        read_passphrase("P: ", description="d", stdin=io.StringIO("y" * 70_000), environ={})


def test_the_error_classes_fit_the_one_tree() -> None:
    assert issubclass(PassphraseCancelledError, CredentialLockedError)
    assert issubclass(PassphrasePromptError, CredentialStorageError)
    assert issubclass(PassphraseMismatchError, CredentialValidationError)


# -- finding a pinentry ---------------------------------------------------------------------


def _fake_programs(directory: Path, *names: str) -> str:
    directory.mkdir()
    for name in names:
        path = directory / name
        path.write_text("#!/bin/sh\nexit 1\n")
        path.chmod(0o755)
    return str(directory)


def test_pinentry_is_searched_in_order_when_there_is_a_terminal(tmp_path: Path) -> None:
    path = _fake_programs(tmp_path / "bin", "pinentry-tty", "pinentry-curses", "pinentry-qt")
    env = {"PATH": path, "GPG_TTY": "/dev/pts/7"}
    assert find_prompter(env) == Prompter("pinentry", f"{path}/pinentry-qt", "PATH")
    (tmp_path / "bin" / "pinentry-qt").unlink()
    assert find_prompter(env) == Prompter("pinentry", f"{path}/pinentry-curses", "PATH")


def test_no_pinentry_without_a_terminal_or_display_unless_chosen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prompters, "terminal_name", lambda env: None)
    path = _fake_programs(tmp_path / "bin", "pinentry-tty")
    assert find_prompter({"PATH": path}) is None
    assert find_prompter({"PATH": path, "DISPLAY": ":1"}) == Prompter(
        "pinentry", f"{path}/pinentry-tty", "PATH"
    )
    chosen = {"PATH": path, PINENTRY: "pinentry-tty"}
    assert find_prompter(chosen) == Prompter("pinentry", f"{path}/pinentry-tty", PINENTRY)
    assert find_prompter({"PATH": path, "DISPLAY": ":1", PINENTRY: "off"}) is None


def test_the_pinentry_request_carries_terminal_and_locale_from_the_environment() -> None:
    request = askpass.pinentry_request(
        "Passphrase: ",
        "Unlock",
        "Repeat passphrase: ",
        {"GPG_TTY": "/dev/pts/3", "TERM": "xterm-256color", "LANG": "C.UTF-8"},
    )
    assert dict(request.options) == {
        "ttyname": "/dev/pts/3",
        "ttytype": "xterm-256color",
        "lc-ctype": "C.UTF-8",
        "lc-messages": "C.UTF-8",
    }
    assert (request.prompt, request.repeat_prompt) == ("Passphrase:", "Repeat passphrase:")
    assert request.timeout == askpass.PROMPT_TIMEOUT
