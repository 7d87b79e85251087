"""Pinentry over Assuan: the pure codec and conversation against recorded
exchanges, broken programs (real processes that hang, die or speak nonsense),
and the real pinentry-tty and pinentry-curses typed into through tmux, with
the terminal prompt (getpass) beside them."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from modelforge_credentials.client.askpass import (
    PassphraseCancelledError,
    PassphraseMismatchError,
    PassphrasePromptError,
)
from modelforge_credentials.client.assuan import (
    MAX_LINE,
    LineReader,
    Response,
    command,
    escape,
    parse_response,
    unescape,
)
from modelforge_credentials.client.pinentry import (
    PinentryConversation,
    PinentryRequest,
    ask_pinentry,
)

SECRET = "pä ss-wörd 🔑"

# Read at import: the autouse fixture of conftest.py clears MODEL_FORGE_* later.
REQUIRE_VARIABLE = "MODEL_FORGE_REQUIRE_PINENTRY"
REQUIRED = os.environ.get(REQUIRE_VARIABLE) == "1"
TMUX = shutil.which("tmux") or "tmux"  # found on our PATH, not on a test's own


def _request(*, confirm: bool = False, timeout: int = 0) -> PinentryRequest:
    return PinentryRequest(
        description="Unlock the model-forge credential agent\n(encrypted file)",
        prompt="Passphrase:",
        title="modelforge-agent",
        repeat_prompt="Repeat passphrase:" if confirm else None,
        options=(("ttyname", "/dev/pts/4"), ("ttytype", "xterm"), ("lc-ctype", "C.UTF-8")),
        timeout=timeout,
    )


# -- the codec -------------------------------------------------------------------------


def test_escape_percent_cr_lf_and_other_controls_and_back() -> None:
    raw = "100% sure\r\nline\x00two\ttab é".encode()
    escaped = escape(raw)
    assert escaped == b"100%25 sure%0D%0Aline%00two%09tab \xc3\xa9"
    assert b"\n" not in escaped and b"\r" not in escaped
    assert unescape(escaped) == raw


def test_unescape_keeps_a_percent_that_is_not_an_escape() -> None:
    assert unescape(b"50%") == b"50%"
    assert unescape(b"%zz%4") == b"%zz%4"
    assert unescape(b"%41%0a") == b"A\n"


def test_a_command_is_one_line_within_the_limit_cut_at_a_character() -> None:
    assert command("GETPIN") == b"GETPIN\n"
    assert command("SETDESC", "a%b\nc") == b"SETDESC a%25b%0Ac\n"
    long = command("SETDESC", "é" * 600 + "%" * 100)
    assert len(long) <= MAX_LINE and long.endswith(b"\n") and long.count(b"\n") == 1
    text = unescape(long[len(b"SETDESC ") : -1]).decode("utf-8")  # strict: no cut character
    assert set(text) == {"é"}
    percent = command("SETDESC", "%" * 400)
    assert len(percent) <= MAX_LINE and percent[:-1].endswith(b"%25")


def test_responses_parse_into_kinds() -> None:
    assert parse_response(b"OK Pleased to meet you") == Response("OK", b"Pleased to meet you")
    assert parse_response(b"ERR 83886179 Operation cancelled <Pinentry>") == Response(
        "ERR", b"Operation cancelled <Pinentry>", 83886179
    )
    assert parse_response(b"D h%25llo%0A") == Response("D", b"h%llo\n")
    assert parse_response(b"S PIN_REPEATED") == Response("S", b"PIN_REPEATED")
    assert parse_response(b"INQUIRE QUALITY abc") == Response("INQUIRE", b"QUALITY abc")
    assert parse_response(b"# a comment").kind == "#"
    assert parse_response(b"OK\r") == Response("OK", b"")


def test_a_data_line_is_never_shown() -> None:
    response = parse_response(b"D " + escape(SECRET.encode()))
    assert SECRET not in repr(response) and response.message == ""


def test_a_line_that_is_not_assuan_is_an_error_that_does_not_quote_it() -> None:
    with pytest.raises(PassphrasePromptError, match="not Assuan") as caught:
        parse_response(b"hunter2 is my passphrase")
    assert "hunter2" not in str(caught.value)
    with pytest.raises(PassphrasePromptError, match="without an error number"):
        parse_response(b"ERR cancelled")


def test_lines_split_across_reads_and_an_overlong_line_is_refused() -> None:
    reader = LineReader()
    assert reader.feed(b"OK Plea") == []
    assert reader.feed(b"sed\nD a") == [b"OK Pleased"]
    assert reader.feed(b"b\nOK\n") == [b"D ab", b"OK"]
    assert not reader.pending
    with pytest.raises(PassphrasePromptError, match=f"longer than {MAX_LINE}") as caught:
        reader.feed(b"D " + b"s3cr3t" * 200)
    assert "s3cr3t" not in str(caught.value)


# -- the conversation, replayed --------------------------------------------------------------

OPENING = [
    b"OPTION ttyname=/dev/pts/4\n",
    b"OPTION ttytype=xterm\n",
    b"OPTION lc-ctype=C.UTF-8\n",
    b"SETTITLE modelforge-agent\n",
    b"SETDESC Unlock the model-forge credential agent%0A(encrypted file)\n",
    b"SETPROMPT Passphrase:\n",
]


def replay(conversation: PinentryConversation, script: list[bytes]) -> list[bytes]:
    """Feed the pinentry's side; return what the client sent."""
    sent = []
    for line in script:
        reply = conversation.receive(line)
        if reply:
            sent.append(reply)
    return sent


def test_recorded_pinentry_tty_with_setrepeat() -> None:
    # Recorded from pinentry-tty 1.2.1 (Debian 12), passphrase "héllo".
    conversation = PinentryConversation(_request(confirm=True))
    sent = replay(
        conversation,
        [b"OK Pleased to meet you"]
        + [b"OK"] * 7
        + [b"S PIN_REPEATED", "D héllo".encode(), b"OK", b"OK closing connection"],
    )
    assert sent == [*OPENING, b"SETREPEAT Repeat passphrase:\n", b"GETPIN\n", b"BYE\n"]
    assert conversation.done and conversation.passphrase() == "héllo"


def test_recorded_pinentry_curses_which_ignores_setrepeat_gets_a_second_getpin() -> None:
    # pinentry-curses 1.2.1 answers OK to SETREPEAT, then asks once only.
    conversation = PinentryConversation(_request(confirm=True))
    sent = replay(
        conversation,
        [b"OK Pleased to meet you"] + [b"OK"] * 7 + ["D héllo".encode(), b"OK"],
    )
    assert sent[-2:] == [b"GETPIN\n", b"SETPROMPT Repeat passphrase:\n"]
    assert not conversation.waiting_for_human
    assert replay(conversation, [b"OK"]) == [b"GETPIN\n"]
    assert conversation.waiting_for_human
    assert replay(conversation, ["D héllo".encode(), b"OK"]) == [b"BYE\n"]
    assert conversation.passphrase() == "héllo"


def test_a_pinentry_that_refuses_setrepeat_gets_a_second_getpin_too() -> None:
    conversation = PinentryConversation(_request(confirm=True))
    replay(conversation, [b"OK Pleased to meet you"] + [b"OK"] * 6)
    assert replay(conversation, [b"ERR 536871187 Unknown IPC command <User defined source 1>"]) == [
        b"GETPIN\n"
    ]
    with pytest.raises(PassphraseMismatchError) as caught:
        replay(conversation, [b"D first", b"OK", b"OK", b"D second", b"OK"])
    assert "first" not in str(caught.value) and "second" not in str(caught.value)


def test_recorded_cancel_is_the_typed_cancel_error() -> None:
    conversation = PinentryConversation(_request())
    with pytest.raises(PassphraseCancelledError, match="cancelled"):
        replay(
            conversation,
            [b"OK Pleased to meet you"]
            + [b"OK"] * 6
            + [b"ERR 83886179 Operation cancelled <Pinentry>"],
        )


def test_recorded_timeout_is_cancelled_and_says_how_long() -> None:
    conversation = PinentryConversation(_request(timeout=2))
    with pytest.raises(PassphraseCancelledError, match="within 2 s"):
        replay(
            conversation,
            [b"OK Pleased to meet you"] + [b"OK"] * 7 + [b"ERR 83886142 Timeout <Pinentry>"],
        )


def test_recorded_curses_without_a_terminal_is_a_prompt_error_quoting_pinentry() -> None:
    conversation = PinentryConversation(_request(), "pinentry-curses")
    with pytest.raises(PassphrasePromptError, match="Inappropriate ioctl.*GPG_TTY"):
        replay(
            conversation,
            [b"OK Pleased to meet you"]
            + [b"OK"] * 6
            + [b"S ERROR curses.isatty 83918950 ", b"ERR 83918950 Inappropriate ioctl for device"],
        )


def test_inquire_is_answered_with_can_comments_and_status_are_skipped_data_is_joined() -> None:
    conversation = PinentryConversation(_request())
    sent = replay(
        conversation,
        [b"# hello", b"OK Pleased to meet you", b"ERR 83886254 Unknown option <Pinentry>"]
        + [b"OK"] * 5
        + [
            b"INQUIRE QUALITY x",
            b"S SOMETHING",
            b"# progress",
            b"D 100%25%0A",
            "D  pässe".encode(),
            b"OK",
        ],
    )
    assert b"CAN\n" in sent and sent[-1] == b"BYE\n"
    assert conversation.passphrase() == "100%\n pässe"


def test_a_pinentry_that_ends_early_is_a_prompt_error_and_after_bye_it_is_fine() -> None:
    early = PinentryConversation(_request(), "pinentry-x")
    replay(early, [b"OK Pleased to meet you", b"OK"])
    with pytest.raises(PassphrasePromptError, match="pinentry-x exited before"):
        early.closed()
    late = PinentryConversation(_request())
    replay(late, [b"OK Pleased to meet you"] + [b"OK"] * 6 + [b"D x", b"OK"])
    late.closed()
    assert late.done and late.passphrase() == "x"


def test_a_passphrase_over_the_limit_is_refused() -> None:
    conversation = PinentryConversation(_request())
    replay(conversation, [b"OK Pleased to meet you"] + [b"OK"] * 6)
    with pytest.raises(PassphrasePromptError, match="over 65536 bytes"):
        replay(conversation, [b"D " + b"a" * 900] * 80)


def test_options_with_a_line_end_are_not_sent() -> None:
    request = PinentryRequest(
        description="d", prompt="p", title="t", options=(("ttyname", "/dev/x\nGETPIN"),)
    )
    sent = replay(PinentryConversation(request), [b"OK Pleased to meet you"])
    assert sent == [b"SETTITLE t\n"]


# -- broken pinentry programs (real processes) ------------------------------------------------

FAKE_PINENTRY = """\
#!{python}
import os, sys, time
mode = os.environ["FAKE_MODE"]
open(os.environ["FAKE_PID"], "w").write(str(os.getpid()))
out = sys.stdout
if mode == "silent":
    time.sleep(60)
if mode == "nonsense":
    out.write("Hello, I am not a pinentry\\n"); out.flush(); time.sleep(60)
out.write("OK Pleased to meet you\\n"); out.flush()
for line in sys.stdin:
    if line.startswith("GETPIN"):
        if mode == "die":
            sys.exit(3)
        if mode == "hang":
            time.sleep(60)
        out.write("D %s\\n" % os.environ.get("FAKE_PIN", "")); out.write("OK\\n"); out.flush()
    elif line.startswith("BYE"):
        out.write("OK closing connection\\n"); out.flush(); break
    else:
        out.write("OK\\n"); out.flush()
"""


@pytest.fixture
def fake_pinentry(tmp_path: Path) -> Callable[[str], tuple[str, dict[str, str], Path]]:
    program = tmp_path / "pinentry-fake"
    program.write_text(FAKE_PINENTRY.format(python=sys.executable))
    program.chmod(0o700)
    pid_file = tmp_path / "pid"

    def make(mode: str) -> tuple[str, dict[str, str], Path]:
        env = {"PATH": os.environ.get("PATH", ""), "FAKE_MODE": mode, "FAKE_PID": str(pid_file)}
        return str(program), env, pid_file

    return make


def _assert_gone(pid_file: Path) -> None:
    pid = int(pid_file.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_a_working_fake_pinentry_end_to_end(
    fake_pinentry: Callable[[str], tuple[str, dict[str, str], Path]],
) -> None:
    program, env, pid_file = fake_pinentry("ok")
    env["FAKE_PIN"] = escape(SECRET.encode()).decode()
    assert ask_pinentry(program, _request(), environ=env) == SECRET
    _assert_gone(pid_file)


@pytest.mark.parametrize("mode", ["silent", "hang"])
def test_a_pinentry_that_hangs_is_killed_with_a_typed_error(
    fake_pinentry: Callable[[str], tuple[str, dict[str, str], Path]], mode: str
) -> None:
    program, env, pid_file = fake_pinentry(mode)
    started = time.monotonic()
    with pytest.raises(PassphrasePromptError, match="did not answer within 0.5 s and was stopped"):
        ask_pinentry(program, _request(), environ=env, answer_timeout=0.5, prompt_timeout=0.5)
    assert time.monotonic() - started < 10
    _assert_gone(pid_file)


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("die", "exited before.*MODEL_FORGE_PINENTRY"),  # a pinentry that dies
        ("nonsense", "not Assuan"),  # a program that is not a pinentry
    ],
)
def test_a_pinentry_that_dies_or_speaks_nonsense_is_a_typed_error_saying_what_to_do(
    fake_pinentry: Callable[[str], tuple[str, dict[str, str], Path]], mode: str, message: str
) -> None:
    program, env, pid_file = fake_pinentry(mode)
    with pytest.raises(PassphrasePromptError, match=message):
        ask_pinentry(program, _request(), environ=env, answer_timeout=5)
    _assert_gone(pid_file)


def test_a_pinentry_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(
        PassphrasePromptError, match="cannot run the pinentry.*MODEL_FORGE_PINENTRY"
    ):
        ask_pinentry(str(tmp_path / "nope"), _request(), environ={})


# -- the real pinentry-tty and pinentry-curses, typed into through tmux ---------------------------

DRIVER = """\
import json, os, sys
from modelforge_credentials.client.askpass import read_passphrase
out, confirm = sys.argv[1], sys.argv[2] == "1"
try:
    result = {"ok": read_passphrase("Passphrase: ", description="Unlock the test store",
                                    confirm=confirm, stdin=sys.stdin)}
except BaseException as err:
    result = {"error": type(err).__name__, "message": str(err)}
with open(out + ".tmp", "w", encoding="utf-8") as handle:
    json.dump(result, handle)
os.rename(out + ".tmp", out)
"""


def _missing(*programs: str) -> list[str]:
    return [p for p in programs if shutil.which(p) is None]


def _skip_or_fail(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason}, and {REQUIRE_VARIABLE}=1 requires it")
    pytest.skip(reason)


class Pane:
    """One tmux server on its own socket and empty config, one window running
    ``command``."""

    def __init__(self, command: str, env: dict[str, str], config: Path) -> None:
        self.server = f"mf-pinentry-{uuid.uuid4().hex[:8]}"
        # The server's socket in a directory of its own, removed afterwards
        # (tmux leaves sockets behind); short, for sun_path's 108 bytes.
        self.socket_dir = tempfile.mkdtemp(prefix="mf-tmux-")
        self.env = {**env, "TMUX_TMPDIR": self.socket_dir}
        self.config = config
        self._tmux("new-session", "-d", "-s", "t", "-x", "120", "-y", "40", command)

    def _tmux(self, *args: str) -> str:
        result = subprocess.run(
            [TMUX, "-u", "-L", self.server, "-f", str(self.config), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=10,
        )
        if result.returncode != 0 and args[0] != "kill-server":
            raise AssertionError(f"tmux {args[0]} failed: {result.stderr.strip()}")
        return result.stdout

    def screen(self) -> str:
        try:
            return self._tmux("capture-pane", "-p", "-t", "t")
        except AssertionError:
            return ""  # the window is gone: its program ended

    def wait_for(self, what: str, condition: Callable[[str], bool], timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if condition(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"no {what} on the pane within {timeout} s:\n{screen}")
            time.sleep(0.05)

    def wait_text(self, text: str, count: int = 1) -> str:
        return self.wait_for(repr(text), lambda screen: screen.count(text) >= count)

    def type(self, text: str) -> None:
        self._tmux("send-keys", "-t", "t", "-l", text)

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", "-t", "t", *keys)

    def enter(self, text: str) -> None:
        """Type ``text`` and press Enter, as a person answers a prompt."""
        self.type(text)
        self.keys("Enter")

    def close(self) -> None:
        self._tmux("kill-server")
        shutil.rmtree(self.socket_dir, ignore_errors=True)


class Session:
    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.driver = tmp_path / "driver.py"
        self.driver.write_text(DRIVER)
        self.result = tmp_path / "result.json"
        self.empty = tmp_path / "empty"
        self.empty.write_bytes(b"")
        self.panes: list[Pane] = []

    def start(self, *, confirm: bool = False, stdin_terminal: bool = False, **env: str) -> Pane:
        base = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("MODEL_FORGE_", "TMUX", "SSH_ASKPASS", "GPG_TTY"))
            and key not in ("DISPLAY", "WAYLAND_DISPLAY")
        }
        base.update({"LC_ALL": "C.UTF-8", "LANG": "C.UTF-8", **env})
        redirect = "" if stdin_terminal else f" < {self.empty}"  # not a terminal, no line
        command = (
            f"exec {sys.executable} {self.driver} {self.result} {int(confirm)}{redirect}"
            f" 2> {self.tmp_path / 'stderr.txt'}"
        )
        pane = Pane(command, base, self.empty)
        self.panes.append(pane)
        return pane

    def outcome(self, pane: Pane, timeout: float = 20) -> dict[str, str]:
        deadline = time.monotonic() + timeout
        while not self.result.exists():
            if time.monotonic() > deadline:
                stderr = self.tmp_path / "stderr.txt"
                raise AssertionError(
                    f"no result within {timeout} s; pane:\n{pane.screen()}\nstderr:\n"
                    + (stderr.read_text() if stderr.exists() else "")
                )
            time.sleep(0.05)
        outcome: dict[str, str] = json.loads(self.result.read_text(encoding="utf-8"))
        return outcome


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    if _missing("tmux"):
        _skip_or_fail("tmux is not installed (Debian: apt-get install tmux)")
    if not stat.S_ISCHR(os.stat("/dev/null").st_mode):
        # tmux's daemon() refuses to start then ("No such device").
        pytest.fail("/dev/null is not a character device: something replaced it with a file")
    made = Session(tmp_path)
    yield made
    for pane in made.panes:
        pane.close()


def _pinentry(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        _skip_or_fail(
            f"{name} is not installed (Debian: apt-get install {name}; .ci/run installs it)"
        )
    assert path is not None
    return path


def test_pinentry_tty_returns_what_was_typed_without_echo(session: Session) -> None:
    pane = session.start(MODEL_FORGE_PINENTRY=_pinentry("pinentry-tty"))
    pane.wait_text("Passphrase:")
    assert "Unlock the test store" in pane.screen()
    pane.type(SECRET)
    assert SECRET not in pane.screen()
    pane.keys("Enter")
    assert session.outcome(pane) == {"ok": SECRET}


def test_pinentry_tty_is_found_on_path_with_the_controlling_terminal(session: Session) -> None:
    directory = session.tmp_path / "bin"
    directory.mkdir()
    (directory / "pinentry-tty").symlink_to(_pinentry("pinentry-tty"))
    path = f"{directory}:/nonexistent"
    pane = session.start(PATH=path)
    pane.wait_text("Passphrase:")
    pane.enter(SECRET)
    assert session.outcome(pane) == {"ok": SECRET}


def test_pinentry_tty_ctrl_d_is_the_typed_cancel_error(session: Session) -> None:
    pane = session.start(MODEL_FORGE_PINENTRY=_pinentry("pinentry-tty"))
    pane.wait_text("Passphrase:")
    pane.keys("C-d")
    outcome = session.outcome(pane)
    assert outcome["error"] == "PassphraseCancelledError"
    assert "cancelled" in outcome["message"]


def test_pinentry_tty_repeat_asks_again_after_a_mismatch(session: Session) -> None:
    pane = session.start(confirm=True, MODEL_FORGE_PINENTRY=_pinentry("pinentry-tty"))
    pane.wait_text("Passphrase:")
    pane.enter(SECRET)
    pane.wait_text("Repeat passphrase:")
    pane.enter("something else")
    pane.wait_text("Passphrase:", count=2)  # pinentry-tty itself says they differ and asks again
    pane.enter(SECRET)
    pane.wait_text("Repeat passphrase:", count=2)
    pane.enter(SECRET)
    assert session.outcome(pane) == {"ok": SECRET}
    assert SECRET not in pane.screen()


def test_pinentry_curses_returns_what_was_typed(session: Session) -> None:
    pane = session.start(MODEL_FORGE_PINENTRY=_pinentry("pinentry-curses"))
    pane.wait_text("<Cancel>")
    assert "Unlock the test store" in pane.screen()
    pane.enter(SECRET)
    assert session.outcome(pane) == {"ok": SECRET}


def test_pinentry_curses_cancel_button_is_the_typed_cancel_error(session: Session) -> None:
    pane = session.start(MODEL_FORGE_PINENTRY=_pinentry("pinentry-curses"))
    pane.wait_text("<Cancel>")
    pane.keys("Tab", "Tab", "Enter")  # entry -> OK -> Cancel
    assert session.outcome(pane)["error"] == "PassphraseCancelledError"


def test_pinentry_curses_confirm_asks_in_a_second_dialog_and_compares(session: Session) -> None:
    pane = session.start(confirm=True, MODEL_FORGE_PINENTRY=_pinentry("pinentry-curses"))
    pane.wait_text("<Cancel>")
    pane.enter(SECRET)
    screen = pane.wait_text("Repeat passphrase:")
    assert SECRET not in screen
    pane.enter(SECRET + "typo")
    outcome = session.outcome(pane)
    assert outcome["error"] == "PassphraseMismatchError"
    assert SECRET not in outcome["message"]


def test_a_terminal_on_stdin_gets_the_getpass_prompt_before_any_program(session: Session) -> None:
    marker = session.tmp_path / "askpass-ran"
    askpass = session.tmp_path / "askpass"
    askpass.write_text(f"#!/bin/sh\ntouch {marker}\necho wrong\n")
    askpass.chmod(0o700)
    pane = session.start(
        confirm=True,
        stdin_terminal=True,
        MODEL_FORGE_ASKPASS=str(askpass),
        MODEL_FORGE_PINENTRY=_pinentry("pinentry-tty"),
    )
    pane.wait_text("Passphrase:")
    pane.enter(SECRET)
    screen = pane.wait_text("Repeat passphrase:")
    assert "Unlock the test store" not in screen  # getpass shows the prompt only
    pane.enter(SECRET)
    assert session.outcome(pane) == {"ok": SECRET}
    assert not marker.exists()
    assert SECRET not in pane.screen()
