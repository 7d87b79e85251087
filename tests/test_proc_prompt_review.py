"""Prompt programs as real processes after the split of askpass/pinentry into
assuan, prompt_errors, prompt_process and prompters: hostile texts stay one
escaped Assuan line, hung or half-answering programs are killed, buffers are
wiped, and a cancelled pinentry is exit 3 through the real CLI."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from agent_harness import AgentWorkspace
from modelforge_credentials.cli import EXIT_LOCKED, exit_code_for
from modelforge_credentials.client import askpass
from modelforge_credentials.client.askpass import (
    PassphraseCancelledError,
    PassphrasePromptError,
    read_passphrase,
    run_askpass,
)
from modelforge_credentials.client.assuan import escape, unescape
from modelforge_credentials.client.pinentry import ask_pinentry
from test_proc_pinentry import SECRET, _assert_gone, _request, fake_pinentry  # noqa: F401

#: A pinentry that logs every line it is sent, then answers by PIN_MODE:
#: "ok" (D PIN_HEX's bytes), "cancel" (ERR 83886179), "data-then-hang".
RECORDING_PINENTRY = """\
#!{python}
import os, sys, time
log = open(os.environ["PIN_LOG"], "ab")
open(os.environ["PIN_PID"], "w").write(str(os.getpid()))
mode = os.environ["PIN_MODE"]
out = sys.stdout.buffer
out.write(b"OK Pleased to meet you\\n"); out.flush()
for line in sys.stdin.buffer:
    log.write(line); log.flush()
    if line.startswith(b"GETPIN"):
        if mode == "cancel":
            out.write(b"ERR 83886179 Operation cancelled <Pinentry>\\n"); out.flush(); continue
        out.write(b"D " + os.environ["PIN_DATA"].encode() + b"\\n"); out.flush()
        if mode == "data-then-hang":
            time.sleep(60)
        out.write(b"OK\\n"); out.flush()
    elif line.startswith(b"BYE"):
        out.write(b"OK closing connection\\n"); out.flush(); break
    else:
        out.write(b"OK\\n"); out.flush()
"""


class RecordingPinentry:
    def __init__(self, directory: Path) -> None:
        self.path = directory / "pinentry-recording"
        self.path.write_text(RECORDING_PINENTRY.format(python=sys.executable))
        self.path.chmod(0o700)
        self.log = directory / "pinentry.log"
        self.pid_file = directory / "pinentry.pid"

    def env(self, mode: str, **extra: str) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", os.defpath),
            "PIN_LOG": str(self.log),
            "PIN_PID": str(self.pid_file),
            "PIN_MODE": mode,
            "PIN_DATA": escape(SECRET.encode()).decode(),
            "MODEL_FORGE_PINENTRY": str(self.path),
            **extra,
        }

    def lines(self) -> list[bytes]:
        return self.log.read_bytes().splitlines(keepends=True)


@pytest.fixture
def recording(tmp_path: Path) -> RecordingPinentry:
    return RecordingPinentry(tmp_path)


def _askpass_script(directory: Path, body: str) -> Path:
    path = directory / "askpass"
    path.write_text(f"#!{sys.executable}\nimport os, sys, time\n{body}\n")
    path.chmod(0o700)
    return path


# -- pinentry: hostile texts --------------------------------------------------------------

HOSTILE = "Unlock /home/x\nGETPIN\nD stolen\r\nBYE %0A %25 \x00\x1b[2J end"


def test_a_hostile_description_and_prompt_stay_one_escaped_line_each(
    recording: RecordingPinentry,
) -> None:
    """LF, CR, %, NUL and ESC in SETDESC/SETPROMPT are escaped: no command can be injected."""
    got = read_passphrase(
        "Pass\nGETPIN: ",
        description=HOSTILE,
        stdin=None,
        environ=recording.env("ok", MODEL_FORGE_ASKPASS="on"),
    )
    assert got == SECRET
    lines = recording.lines()
    verbs = [line.split(b" ", 1)[0].strip() for line in lines]
    assert verbs.count(b"GETPIN") == 1 and verbs.count(b"SETDESC") == 1
    assert b"D" not in verbs and verbs.count(b"BYE") == 1
    desc = next(line for line in lines if line.startswith(b"SETDESC "))
    assert unescape(desc[len(b"SETDESC ") : -1]).decode() == HOSTILE
    for line in lines:
        assert line.endswith(b"\n") and line.count(b"\n") == 1
        assert not any(byte < 0x20 for byte in line[:-1])
    prompt = next(line for line in lines if line.startswith(b"SETPROMPT "))
    assert unescape(prompt[len(b"SETPROMPT ") : -1]).decode() == "Pass\nGETPIN:"
    _assert_gone(recording.pid_file)


def test_a_pinentry_that_sends_part_of_a_passphrase_then_hangs_is_killed(
    recording: RecordingPinentry,
) -> None:
    """A D line then silence: killed at the timeout, a prompt error that quotes nothing."""
    started = time.monotonic()
    with pytest.raises(PassphrasePromptError, match="did not answer within 0.5 s") as caught:
        ask_pinentry(
            str(recording.path),
            _request(),
            environ=recording.env("data-then-hang"),
            answer_timeout=0.5,
            prompt_timeout=0.5,
        )
    assert time.monotonic() - started < 10
    assert SECRET not in str(caught.value) and escape(SECRET.encode()).decode() not in str(
        caught.value
    )
    _assert_gone(recording.pid_file)


def test_a_hung_fake_pinentry_from_the_shared_fixture_is_reaped(
    fake_pinentry: Callable[[str], tuple[str, dict[str, str], Path]],  # noqa: F811
) -> None:
    """The shared fake's "silent" mode (prints nothing at all) is killed at the answer timeout."""
    program, env, pid_file = fake_pinentry("silent")
    with pytest.raises(PassphrasePromptError, match="MODEL_FORGE_PINENTRY=PATH"):
        ask_pinentry(program, _request(), environ=env, answer_timeout=0.5)
    _assert_gone(pid_file)


# -- askpass: hung, half, and too much --------------------------------------------------------


def test_askpass_that_prints_half_a_line_then_hangs_is_killed(tmp_path: Path) -> None:
    """Part of a line, no LF, then silence: PassphrasePromptError (exit 4), program gone."""
    script = _askpass_script(
        tmp_path,
        "open(sys.argv[0] + '.pid', 'w').write(str(os.getpid()))\n"
        "sys.stdout.write('half-a-secret'); sys.stdout.flush(); time.sleep(60)",
    )
    with pytest.raises(PassphrasePromptError, match="did not answer within 0.5 s") as caught:
        run_askpass(str(script), "P: ", environ={"PATH": os.defpath}, timeout=0.5)
    assert "half-a-secret" not in str(caught.value)
    assert exit_code_for(caught.value) == 4
    pid = int(Path(str(script) + ".pid").read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_askpass_output_after_the_first_line_is_ignored_not_runaway(tmp_path: Path) -> None:
    """A line, then more lines (a `pass show` entry): the first line is the passphrase."""
    script = _askpass_script(
        tmp_path,
        f"sys.stdout.write({SECRET!r} + '\\n' + 'url: x\\nuser: y\\n' * 200); sys.stdout.flush()",
    )
    assert run_askpass(str(script), "P: ", environ={"PATH": os.defpath}) == SECRET


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (f"sys.stdout.write({SECRET!r} + '\\n')", None),
        ("sys.stdout.write('partial'); sys.stdout.flush(); time.sleep(60)", PassphrasePromptError),
        (
            "sys.stdout.write('x' * 70000); sys.stdout.flush(); time.sleep(60)",
            PassphrasePromptError,
        ),
        ("sys.stdout.write('typed-then-cancel\\n'); sys.exit(1)", PassphraseCancelledError),
    ],
)
def test_the_askpass_buffer_is_wiped_whatever_the_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str, error: type[Exception] | None
) -> None:
    """The bytearray that held the program's output is all zeros afterwards."""
    seen: list[bytearray] = []
    collect = askpass._collect_askpass_output

    def spying(proc, output, where, timeout):  # type: ignore[no-untyped-def]
        seen.append(output)
        return collect(proc, output, where, timeout)

    monkeypatch.setattr(askpass, "_collect_askpass_output", spying)
    script = _askpass_script(tmp_path, body)
    if error is None:
        assert run_askpass(str(script), "P: ", environ={"PATH": os.defpath}) == SECRET
    else:
        with pytest.raises(error):
            run_askpass(str(script), "P: ", environ={"PATH": os.defpath}, timeout=1.0)
    assert seen and len(seen[0]) > 0
    assert not any(seen[0]), "the output buffer still holds what the program printed"


# -- through the real CLI --------------------------------------------------------------------


def _locked(workspace: AgentWorkspace) -> None:
    workspace.serve()
    workspace.ok("set", "openai", "api_key", input="sk-value")
    workspace.ok("passwd", input=SECRET + "\n")
    workspace.ok("lock")


def _cli_env(workspace: AgentWorkspace, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in workspace.env.items() if k != "MODEL_FORGE_ASKPASS"}
    env.update({k: v for k, v in extra.items() if k != "PATH"})
    return env


def test_a_cancelled_pinentry_is_exit_3_through_the_cli(
    workspace: AgentWorkspace, recording: RecordingPinentry
) -> None:
    """unlock with no stdin line, no askpass, and a pinentry that answers Cancel: exit 3."""
    _locked(workspace)
    result = workspace.cli("unlock", env=_cli_env(workspace, recording.env("cancel")))
    assert result.returncode == EXIT_LOCKED, result.stderr
    assert "cancelled" in result.stderr
    assert workspace.status()["locked"] is True
    _assert_gone(recording.pid_file)


def test_a_pinentry_answer_unlocks_through_the_cli_with_the_description(
    workspace: AgentWorkspace, recording: RecordingPinentry
) -> None:
    """The pinentry is the last source: it gets the unlock description and its answer unlocks."""
    _locked(workspace)
    result = workspace.cli("unlock", env=_cli_env(workspace, recording.env("ok")))
    assert result.returncode == 0, result.stderr
    assert SECRET not in result.stderr + result.stdout
    assert b"SETDESC Unlock the model-forge credential agent\n" in recording.lines()
    assert workspace.status()["locked"] is False
