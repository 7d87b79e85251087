"""Asking for a passphrase with or without a terminal, as ssh-add and gpg do.

:func:`read_passphrase` is what the CLI calls when it needs a passphrase
(unlock, passwd, restore-backup, a locked agent). The agent never prompts:
the daemon has no terminal and no business opening windows.

The rule, first match wins:

1. Standard input is a terminal: the no-echo prompt on it (``getpass``).
   Exception, as in OpenSSH: ``SSH_ASKPASS_REQUIRE=prefer`` (with a display)
   or ``force`` uses ``SSH_ASKPASS`` even then.
2. Standard input is not a terminal and gives a line: that line. A pipe or a
   file is the caller's explicit answer, so ``printf 'pass\\n' | modelforge-agent
   unlock`` works whatever askpass or display is configured. The line is
   waited for (``gpg -d pass.gpg | modelforge-agent unlock`` may take a while);
   only an input that ends without one (``< /dev/null``, an empty pipe, a
   closed stdin: a desktop launcher, an IDE, a service) goes on to 3-5.
3. ``MODEL_FORGE_ASKPASS`` names a program: it runs with the prompt as its
   only argument and prints the passphrase on one line (ssh-askpass's
   convention; no display needed). A non-zero exit means cancelled.
4. ``SSH_ASKPASS`` with ``DISPLAY`` or ``WAYLAND_DISPLAY`` set (``force``:
   without a display too; ``SSH_ASKPASS_REQUIRE=never``: not at all).
5. A pinentry, spoken to over Assuan (:mod:`.pinentry`): ``MODEL_FORGE_PINENTRY``,
   else the first of :data:`PINENTRY_NAMES` on ``PATH``, when it has somewhere
   to show itself (a display, or a terminal: ``GPG_TTY``, a terminal on
   stdout/stderr, or ``/dev/tty``). With ``SETREPEAT`` for a confirmation.
6. Nothing: the same error as before, "expected a line on standard input".

``MODEL_FORGE_ASKPASS=off`` turns 3-5 off (standard input only, as before this
module existed); ``MODEL_FORGE_PINENTRY=off`` turns off 5. A program never
gets the passphrase in its argv or environment, its stderr is left to the
terminal (askpass) or discarded (pinentry), and no message here quotes what
it printed. A program that hangs is killed after :data:`PROMPT_TIMEOUT`.
"""

from __future__ import annotations

import os

from ..errors import (
    CredentialLockedError,
    CredentialStorageUnavailableError,
    CredentialTooLargeError,
    CredentialValidationError,
)
from ..validation import MAX_VALUE_BYTES

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from collections.abc import Mapping
    from typing import TextIO

    from .pinentry import PinentryRequest

from ..settings import ASKPASS, PINENTRY  # noqa: E402 - the one owner of the names

#: Searched on PATH in this order: the system's choice (Debian's alternative,
#: a GUI one falling back to curses without a display), then GUI, then text.
PINENTRY_NAMES = (
    "pinentry",
    "pinentry-mac",
    "pinentry-gnome3",
    "pinentry-qt",
    "pinentry-gtk-2",
    "pinentry-curses",
    "pinentry-tty",
)

#: How long a person gets to type into an askpass dialog or a pinentry; a
#: program still silent then is killed. Pinentry is told the same number
#: (SETTIMEOUT) so it normally gives up by itself, tidily.
PROMPT_TIMEOUT = 300
#: What askpass dialogs and pinentry windows show as their title.
TITLE = "modelforge-agent"


class PassphraseCancelledError(CredentialLockedError):
    """No passphrase was given: the prompt was cancelled (Cancel, Escape, Ctrl-D,
    an askpass program that exited non-zero or printed nothing) or nobody
    answered before it timed out.

    Nothing was sent or changed, and a locked store stays locked (exit status
    3, as for any locked store). Run the command again and enter it, or pipe it
    in: ``printf '%s\\n' "$PASSPHRASE" | modelforge-agent unlock``.
    """


class PassphrasePromptError(CredentialStorageUnavailableError):
    """The program that should ask for the passphrase could not: it cannot be
    run, it died, it hung (and was killed after a timeout), or it does not
    speak its protocol.

    The message names the program and the variable that chose it
    (MODEL_FORGE_ASKPASS, SSH_ASKPASS, MODEL_FORGE_PINENTRY): fix or unset it,
    install a pinentry, or pipe the passphrase in on standard input.
    """


class PassphraseMismatchError(CredentialValidationError):
    """A passphrase and its repetition differ; nothing was changed. Run the
    command again and type the same passphrase twice."""


class Prompter:
    """The program that asks when there is no terminal: ``kind`` is
    ``askpass`` or ``pinentry``, ``setting`` the variable that chose it
    (MODEL_FORGE_ASKPASS, SSH_ASKPASS, MODEL_FORGE_PINENTRY, or ``PATH`` for a
    pinentry found there)."""

    __slots__ = ("kind", "program", "setting")

    def __init__(self, kind: str, program: str, setting: str) -> None:
        self.kind = kind
        self.program = program
        self.setting = setting

    def __repr__(self) -> str:
        return f"Prompter({self.kind!r}, {self.program!r}, {self.setting!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Prompter):
            return NotImplemented
        return (self.kind, self.program, self.setting) == (
            other.kind,
            other.program,
            other.setting,
        )

    def __hash__(self) -> int:
        return hash((self.kind, self.program, self.setting))


def read_passphrase(
    prompt: str,
    *,
    description: str,
    confirm: bool = False,
    stdin: TextIO | None,
    environ: Mapping[str, str] | None = None,
    repeat_prompt: str | None = None,
) -> str:
    """Ask for a passphrase by the rule in this module's docstring.

    ``prompt`` is the short label (``"Passphrase: "``); ``description`` says
    what it is for and is shown by pinentry (askpass programs get the prompt
    only, their one argument). ``confirm`` asks twice and compares, wherever a
    person types (terminal, askpass, pinentry), never for a line of standard
    input; ``repeat_prompt`` defaults to "Repeat " + the prompt. ``stdin=None``
    means: never read standard input (a caller whose stdin carries other
    data). Raises PassphraseCancelledError, PassphraseMismatchError,
    PassphrasePromptError, or CredentialValidationError when nothing can ask.
    """
    env = os.environ if environ is None else environ
    again = repeat_prompt or _repeat_prompt(prompt)
    if _is_terminal(stdin):
        ssh = _ssh_askpass(env, terminal=True)
        if ssh is not None:
            return _ask_program(ssh, prompt, description, again if confirm else None, env)
        return _ask_terminal(prompt, again if confirm else None)
    line = _stdin_line(stdin)
    if line is not None:
        return line
    prompter = find_prompter(env)
    if prompter is None:
        raise CredentialValidationError(
            f"expected a line on standard input ({prompt.strip(': ')}); run the command in a "
            f"terminal, pipe the passphrase in, or set {ASKPASS} to a program that prints it"
        )
    return _ask_program(prompter, prompt, description, again if confirm else None, env)


def find_prompter(environ: Mapping[str, str] | None = None) -> Prompter | None:
    """The program that would ask when standard input is not a terminal and
    gives no line (rules 3-5), or ``None``: then only standard input can."""
    env = os.environ if environ is None else environ
    askpass = _program_setting(ASKPASS, env)
    if askpass is False:
        return None
    if isinstance(askpass, str):
        return Prompter("askpass", askpass, ASKPASS)
    ssh = _ssh_askpass(env, terminal=False)
    if ssh is not None:
        return ssh
    return _find_pinentry(env)


# -- the terminal and standard input ----------------------------------------------


def _is_terminal(stdin: TextIO | None) -> bool:
    if stdin is None:
        return False
    try:
        return stdin.isatty()
    except (OSError, ValueError):  # closed
        return False


def _ask_terminal(prompt: str, repeat_prompt: str | None) -> str:
    import getpass

    try:
        first = getpass.getpass(prompt)
        if repeat_prompt is None:
            return first
        second = getpass.getpass(repeat_prompt)
    except EOFError:
        raise PassphraseCancelledError(
            "no passphrase was typed (end of input); nothing was changed"
        ) from None
    if first != second:
        raise PassphraseMismatchError("the two passphrases differ; nothing was changed")
    return first


def _stdin_line(stdin: TextIO | None) -> str | None:
    """One line of ``stdin`` without its LF, or ``None`` when it ends first."""
    if stdin is None:
        return None
    try:
        line = stdin.readline(MAX_VALUE_BYTES + 1)
    except (OSError, ValueError):  # closed, or not readable
        return None
    if not line:
        return None
    if len(line) > MAX_VALUE_BYTES and not line.endswith("\n"):
        raise CredentialTooLargeError(
            f"the line on standard input is longer than {MAX_VALUE_BYTES} characters; "
            "a passphrase is one line"
        )
    return line[:-1] if line.endswith("\n") else line


def _repeat_prompt(prompt: str) -> str:
    return "Repeat " + prompt[:1].lower() + prompt[1:] if prompt else "Repeat: "


# -- which program ----------------------------------------------------------------


def _program_setting(name: str, env: Mapping[str, str]) -> str | bool | None:
    """A program setting: ``None`` unset (automatic), ``False`` off, ``True``
    on (automatic too), else the program."""
    from .. import settings

    if not settings.text(name, env):
        return None
    return settings.flag_or_path(name, env)


def _has_display(env: Mapping[str, str]) -> bool:
    return bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


def _ssh_askpass(env: Mapping[str, str], *, terminal: bool) -> Prompter | None:
    """SSH_ASKPASS as OpenSSH uses it (readpass.c): with a display and no
    terminal; ``SSH_ASKPASS_REQUIRE`` never/prefer/force as there."""
    program = env.get("SSH_ASKPASS")
    if not program:
        return None
    require = env.get("SSH_ASKPASS_REQUIRE", "").strip().lower()
    if require == "never":
        return None
    if require == "force":
        return Prompter("askpass", program, "SSH_ASKPASS")
    if not _has_display(env):
        return None
    if terminal and require != "prefer":
        return None
    return Prompter("askpass", program, "SSH_ASKPASS")


def _find_pinentry(env: Mapping[str, str]) -> Prompter | None:
    import shutil

    chosen = _program_setting(PINENTRY, env)
    if chosen is False:
        return None
    path = env.get("PATH", os.defpath)
    if isinstance(chosen, str):
        # Chosen on purpose: tried even with no terminal or display in sight.
        return Prompter("pinentry", shutil.which(chosen, path=path) or chosen, PINENTRY)
    if not (_has_display(env) or terminal_name(env)):
        return None  # a text pinentry would only fail, a GUI one has nowhere to go
    for name in PINENTRY_NAMES:
        found = shutil.which(name, path=path)
        if found:
            return Prompter("pinentry", found, "PATH")
    return None


def terminal_name(env: Mapping[str, str]) -> str | None:
    """The terminal a text pinentry should use: ``GPG_TTY`` (gpg's variable),
    else a terminal on stdin/stdout/stderr, else ``/dev/tty`` if this process
    has a controlling terminal; ``None`` without one."""
    named = env.get("GPG_TTY")
    if named:
        return named
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd):
                return os.ttyname(fd)
        except OSError:
            continue
    try:
        fd = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:
        return None
    os.close(fd)
    return "/dev/tty"  # ttyname() of it says /dev/tty too; pinentry opens it fine


def _ask_program(
    prompter: Prompter,
    prompt: str,
    description: str,
    repeat_prompt: str | None,
    env: Mapping[str, str],
) -> str:
    if prompter.kind == "pinentry":
        return _ask_pinentry(prompter, prompt, description, repeat_prompt, env)
    first = run_askpass(prompter.program, prompt, environ=env, setting=prompter.setting)
    if repeat_prompt is None:
        return first
    second = run_askpass(prompter.program, repeat_prompt, environ=env, setting=prompter.setting)
    if first != second:
        raise PassphraseMismatchError("the two passphrases differ; nothing was changed")
    return first


# -- askpass ------------------------------------------------------------------------


def run_askpass(
    program: str,
    prompt: str,
    *,
    environ: Mapping[str, str] | None = None,
    setting: str = ASKPASS,
    timeout: float = PROMPT_TIMEOUT,
) -> str:
    """Run an ssh-askpass style ``program`` with ``prompt`` as its argument;
    return the first line it prints, without the line end.

    A non-zero exit, or no output at all, is PassphraseCancelledError; a
    program that cannot run, prints something that is not a UTF-8 line of at
    most MAX_VALUE_BYTES, or is still running after ``timeout`` seconds (it is
    killed) is PassphrasePromptError. Its stderr goes where ours goes.
    """
    import selectors
    import subprocess
    import time

    where = f"{setting}={program!r}"
    try:
        proc = subprocess.Popen(
            [program, prompt],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            env=None if environ is None else dict(environ),
        )
    except OSError as err:
        raise PassphrasePromptError(
            f"{where} cannot be run ({err.strerror or err}); point {setting} to a program "
            "that prints the passphrase, or unset it"
        ) from None
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    output = bytearray()
    deadline = time.monotonic() + timeout
    selector = selectors.DefaultSelector()
    selector.register(fd, selectors.EVENT_READ)
    problem = None
    finished = False
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                problem = (
                    f"{where} did not answer within {timeout:g} s and was stopped; check that "
                    "it can show its dialog (DISPLAY, WAYLAND_DISPLAY), or pipe the "
                    "passphrase in on standard input"
                )
                break
            if not selector.select(left):
                continue
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                continue
            if not chunk:
                break
            output += chunk
            # One line is all we take: stop reading at its end, as ssh does.
            if b"\n" in output or b"\r" in output:
                break
            if len(output) > MAX_VALUE_BYTES:
                problem = f"{where} printed more than {MAX_VALUE_BYTES} bytes without a line end"
                break
        finished = True
    finally:
        selector.close()
        proc.stdout.close()
        if problem is not None or not finished:  # hung, runaway, or we were interrupted
            proc.kill()
        status = _wait(proc)
    try:
        if problem is not None:
            raise PassphrasePromptError(problem)
        if status != 0:
            how = f"was stopped by signal {-status}" if status < 0 else f"exited with {status}"
            raise PassphraseCancelledError(
                f"{where} {how}: the passphrase prompt was cancelled; nothing was changed"
            )
        if not output:
            raise PassphraseCancelledError(
                f"{where} printed no passphrase (it exited with 0 and no output); "
                "nothing was changed"
            )
        end = len(output)
        for mark in (b"\n", b"\r"):
            found = output.find(mark)
            if 0 <= found < end:
                end = found
        if end > MAX_VALUE_BYTES:
            raise PassphrasePromptError(f"{where} printed a line over {MAX_VALUE_BYTES} bytes")
        try:
            return output[:end].decode("utf-8")
        except UnicodeDecodeError:
            raise PassphrasePromptError(
                f"{where} printed a passphrase that is not UTF-8; it was not used"
            ) from None
    finally:
        output[:] = bytes(len(output))


def _wait(proc: subprocess.Popen[bytes]) -> int:
    """The exit status; a program that keeps running after its line (a dialog
    that does not exit) gets a short grace, then is killed."""
    import subprocess

    try:
        return proc.wait(timeout=5.0)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


# -- pinentry -----------------------------------------------------------------------


def _ask_pinentry(
    prompter: Prompter,
    prompt: str,
    description: str,
    repeat_prompt: str | None,
    env: Mapping[str, str],
) -> str:
    from .pinentry import ask_pinentry

    return ask_pinentry(
        prompter.program,
        pinentry_request(prompt, description, repeat_prompt, env),
        environ=env,
    )


def pinentry_request(
    prompt: str, description: str, repeat_prompt: str | None, env: Mapping[str, str]
) -> PinentryRequest:
    """The request for ``env``: the terminal and locale pinentry should use
    (``OPTION ttyname``/``ttytype``/``lc-ctype``/``lc-messages``), our timeout."""
    from .pinentry import PinentryRequest

    options: list[tuple[str, str]] = []
    tty = terminal_name(env)
    if tty:
        options.append(("ttyname", tty))
        if env.get("TERM"):
            options.append(("ttytype", env["TERM"]))
    for option, variable in (("lc-ctype", "LC_CTYPE"), ("lc-messages", "LC_MESSAGES")):
        locale = env.get("LC_ALL") or env.get(variable) or env.get("LANG")
        if locale:
            options.append((option, locale))
    return PinentryRequest(
        description=description,
        prompt=prompt.rstrip(),
        title=TITLE,
        repeat_prompt=None if repeat_prompt is None else repeat_prompt.rstrip(),
        options=tuple(options),
        timeout=PROMPT_TIMEOUT,
    )
