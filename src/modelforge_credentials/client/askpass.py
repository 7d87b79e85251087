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

This module holds the rule and runs its sources; which program rules 3-5
choose is :mod:`.prompters`, the pinentry conversation :mod:`.pinentry`.
"""

from __future__ import annotations

import os

from ..errors import CredentialTooLargeError, CredentialValidationError
from ..settings import ASKPASS, PINENTRY
from ..validation import MAX_VALUE_BYTES
from .prompt_errors import PassphraseCancelledError, PassphraseMismatchError, PassphrasePromptError
from .prompters import PINENTRY_NAMES, Prompter, find_prompter, ssh_askpass, terminal_name

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from collections.abc import Mapping
    from typing import TextIO

    from .pinentry import PinentryRequest
    from .prompt_process import OutputPipe

__all__ = [
    "ASKPASS",
    "PINENTRY",
    "PINENTRY_NAMES",
    "PROMPT_TIMEOUT",
    "TITLE",
    "PassphraseCancelledError",
    "PassphraseMismatchError",
    "PassphrasePromptError",
    "Prompter",
    "find_prompter",
    "pinentry_request",
    "read_passphrase",
    "run_askpass",
    "terminal_name",
]

#: How long a person gets to type into an askpass dialog or a pinentry; a
#: program still silent then is killed. Pinentry is told the same number
#: (SETTIMEOUT) so it normally gives up by itself, tidily.
PROMPT_TIMEOUT = 300
#: What askpass dialogs and pinentry windows show as their title.
TITLE = "modelforge-agent"


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
        ssh = ssh_askpass(env, terminal=True)
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
    return _same_twice(first, second)


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


def _same_twice(first: str, second: str) -> str:
    if first != second:
        raise PassphraseMismatchError()
    return first


# -- running the program that asks ----------------------------------------------------


def _ask_program(
    prompter: Prompter,
    prompt: str,
    description: str,
    repeat_prompt: str | None,
    env: Mapping[str, str],
) -> str:
    if prompter.kind == "pinentry":
        from .pinentry import ask_pinentry

        request = pinentry_request(prompt, description, repeat_prompt, env)
        return ask_pinentry(prompter.program, request, environ=env)
    first = run_askpass(prompter.program, prompt, environ=env, setting=prompter.setting)
    if repeat_prompt is None:
        return first
    second = run_askpass(prompter.program, repeat_prompt, environ=env, setting=prompter.setting)
    return _same_twice(first, second)


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
    from .prompt_process import start_program

    where = f"{setting}={program!r}"
    try:
        proc = start_program([program, prompt], environ=environ, talk=False)
    except OSError as err:
        raise PassphrasePromptError(
            f"{where} cannot be run ({err.strerror or err}); point {setting} to a program "
            "that prints the passphrase, or unset it"
        ) from None
    output = bytearray()
    try:
        status = _collect_askpass_output(proc, output, where, timeout)
        return _askpass_answer(output, status, where)
    finally:
        output[:] = bytes(len(output))


def _collect_askpass_output(
    proc: subprocess.Popen[bytes], output: bytearray, where: str, timeout: float
) -> int:
    """Read the program's first line into ``output``, stop the program and
    return its exit status; PassphrasePromptError if it hung or ran away."""
    import time

    from .prompt_process import OutputPipe, stop_program

    assert proc.stdout is not None
    pipe = OutputPipe(proc.stdout)
    problem = None
    finished = False
    try:
        problem = _read_first_line(pipe, output, time.monotonic() + timeout)
        finished = True
    finally:
        pipe.close()
        # A dialog still open after its line gets a short grace; a hung or
        # runaway program, or one whose reading we abandoned, is killed now.
        status = stop_program(proc, grace=5.0 if finished and problem is None else 0.0)
    if problem == "timeout":
        raise PassphrasePromptError(
            f"{where} did not answer within {timeout:g} s and was stopped; check that "
            "it can show its dialog (DISPLAY, WAYLAND_DISPLAY), or pipe the "
            "passphrase in on standard input"
        )
    if problem == "runaway":
        raise PassphrasePromptError(
            f"{where} printed more than {MAX_VALUE_BYTES} bytes without a line end"
        )
    return status


def _read_first_line(pipe: OutputPipe, output: bytearray, deadline: float) -> str | None:
    """Read into ``output`` until a line end or the end of output (``None``),
    ``"timeout"`` at ``deadline``, or ``"runaway"`` past MAX_VALUE_BYTES."""
    while True:
        chunk = pipe.read(deadline, 65536)
        if chunk is None:
            return "timeout"
        if not chunk:
            return None
        output += chunk
        # One line is all we take: stop reading at its end, as ssh does.
        if b"\n" in output or b"\r" in output:
            return None
        if len(output) > MAX_VALUE_BYTES:
            return "runaway"


def _askpass_answer(output: bytearray, status: int, where: str) -> str:
    """The passphrase in what the program printed, by its exit status."""
    if status != 0:
        how = f"was stopped by signal {-status}" if status < 0 else f"exited with {status}"
        raise PassphraseCancelledError(
            f"{where} {how}: the passphrase prompt was cancelled; nothing was changed"
        )
    if not output:
        raise PassphraseCancelledError(
            f"{where} printed no passphrase (it exited with 0 and no output); nothing was changed"
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
