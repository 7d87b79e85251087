"""Asking a pinentry for a passphrase over the Assuan protocol, as gpg-agent does.

Two layers, as in the agent's own protocol package: an I/O-free core (the
line codec of :mod:`.assuan`, and :class:`PinentryConversation`, a state
machine that takes pinentry's lines and says what to send next) and one
adapter, :func:`ask_pinentry`, that runs the program and moves bytes with
timeouts (:mod:`.prompt_process`). The core never sees a clock or a pipe, so
every exchange can be replayed from a recording (tests/test_proc_pinentry.py).

The passphrase exists only in the conversation's buffer and in the returned
string: no message, log line or exception built here contains a data line.
Neither SETKEYINFO nor ``OPTION allow-external-password-cache`` is sent, so
a pinentry never offers to keep the passphrase in a desktop keyring.
"""

from __future__ import annotations

from ..validation import MAX_VALUE_BYTES
from .assuan import GPG_ERR_CANCELED, GPG_ERR_TIMEOUT, LineReader, Response, command, parse_response
from .prompt_errors import PassphraseCancelledError, PassphraseMismatchError, PassphrasePromptError
from .prompt_process import OutputPipe, deadline_after, start_program, stop_program

TYPE_CHECKING = False
if TYPE_CHECKING:
    import subprocess
    from collections.abc import Mapping

#: How long a pinentry may take to answer anything but GETPIN (start-up,
#: OPTION, SET*): a healthy one answers in milliseconds, a GUI one in a second.
ANSWER_TIMEOUT = 15.0


class PinentryRequest:
    """What to ask: the texts shown, the repeat prompt (``None``: ask once),
    ``options`` (``OPTION name=value``: ttyname, ttytype, lc-ctype, ...) and
    ``timeout``, pinentry's own SETTIMEOUT in seconds (0: none)."""

    __slots__ = ("description", "prompt", "title", "repeat_prompt", "options", "timeout")

    def __init__(
        self,
        *,
        description: str,
        prompt: str,
        title: str,
        repeat_prompt: str | None = None,
        options: tuple[tuple[str, str], ...] = (),
        timeout: int = 0,
    ) -> None:
        self.description = description
        self.prompt = prompt
        self.title = title
        self.repeat_prompt = repeat_prompt
        self.options = options
        self.timeout = timeout


_GREETING = "greeting"
_SETUP = "setup"  # waiting for the OK/ERR of a command before GETPIN
_PIN = "pin"  # waiting for GETPIN's answer: a human is typing
_BYE = "bye"
_DONE = "done"


class PinentryConversation:
    """The client side of one pinentry session, with no I/O.

    Feed every line the pinentry sends to :meth:`receive`; it returns the
    bytes to send next (maybe none) and raises the typed error that ends the
    session (cancelled, mismatch, a pinentry failure). :attr:`waiting_for_human`
    tells the adapter which timeout applies; :meth:`passphrase` is the answer
    once :attr:`done`.

    Confirmation: ``SETREPEAT`` asks the pinentry to take the passphrase
    twice and compare (it answers ``S PIN_REPEATED``); a pinentry that does
    not (pinentry-curses 1.2 accepts the command and ignores it, older ones
    refuse it) gets a second GETPIN with the repeat prompt, compared here.
    """

    def __init__(self, request: PinentryRequest, program: str = "pinentry") -> None:
        self._request = request
        self._program = program
        self._state = _GREETING
        self._queue: list[bytes] = []
        self._sent: bytes = b""
        self._settled = False
        self._data = bytearray()
        self._pins: list[bytes] = []
        self._repeated = False
        self._result: str | None = None
        confirm = request.repeat_prompt is not None
        for name, value in request.options:
            if "\n" not in value and "\r" not in value:
                self._queue.append(f"OPTION {name}={value}\n".encode())
        self._queue += [
            command("SETTITLE", request.title),
            command("SETDESC", request.description),
            command("SETPROMPT", request.prompt),
        ]
        if request.timeout > 0:
            self._queue.append(command("SETTIMEOUT", str(request.timeout)))
        if confirm:
            self._queue.append(command("SETREPEAT", request.repeat_prompt))
        self._queue.append(command("GETPIN"))

    @property
    def done(self) -> bool:
        return self._state == _DONE

    @property
    def program(self) -> str:
        """The pinentry, as messages name it."""
        return self._program

    @property
    def waiting_for_human(self) -> bool:
        return self._state == _PIN

    def passphrase(self) -> str:
        if self._result is None:
            raise RuntimeError("the conversation has not produced a passphrase")
        return self._result

    def receive(self, line: bytes) -> bytes:
        """Take one line (without LF); return what to send next."""
        response = parse_response(line)
        if response.kind == "#":
            return b""
        if response.kind == "INQUIRE":
            # Pinentry asks its client for something only in extensions we
            # never enable; CAN makes it go on without.
            return b"CAN\n"
        if self._state == _GREETING:
            return self._on_greeting(response)
        if self._state == _SETUP:
            return self._on_setup(response)
        if self._state == _PIN:
            return self._on_pin(response)
        if self._state == _BYE:
            if response.kind in ("OK", "ERR"):
                self._state = _DONE
            return b""
        raise PassphrasePromptError(f"{self._program} kept talking after the end of the session")

    def closed(self) -> None:
        """The pinentry's output ended; an error unless the session was over."""
        if self._state in (_BYE, _DONE):
            self._state = _DONE
            return
        self._wipe()
        raise PassphrasePromptError(
            f"{self._program} exited before it gave a passphrase; check that it works "
            f"(`{self._program} --version`), choose another with MODEL_FORGE_PINENTRY=PATH, "
            "or pipe the passphrase in on standard input"
        )

    def abandon(self) -> None:
        """Forget whatever part of a passphrase was received."""
        self._wipe()

    @property
    def settled(self) -> bool:
        """The pinentry answered everything sent so far and waits for a
        command: it can be told BYE (and restore its terminal) rather than
        killed."""
        return self._settled

    def _send_next(self) -> bytes:
        self._settled = False
        self._sent = self._queue.pop(0)
        self._state = _PIN if self._sent == b"GETPIN\n" else _SETUP
        return self._sent

    def _on_greeting(self, response: Response) -> bytes:
        if response.kind == "OK":
            return self._send_next()
        if response.kind == "ERR":
            self._settled = True
            raise PassphrasePromptError(
                f"{self._program} refused to start: {response.message}; "
                "choose another pinentry with MODEL_FORGE_PINENTRY=PATH"
            )
        return b""  # S lines before the greeting: nothing we need

    def _on_setup(self, response: Response) -> bytes:
        if response.kind not in ("OK", "ERR"):
            return b""
        # A refusal (an OPTION this pinentry does not know, SETTIMEOUT on one
        # without timers, SETREPEAT on an old one: the second GETPIN then does
        # the repeat) costs only a nicety: go on, as gpg-agent does.
        self._settled = True
        return self._send_next()

    def _on_pin(self, response: Response) -> bytes:
        if response.kind == "D":
            if len(self._data) + len(response.text) > MAX_VALUE_BYTES:
                self._wipe()
                raise PassphrasePromptError(
                    f"{self._program} sent a passphrase over {MAX_VALUE_BYTES} bytes"
                )
            self._data += response.text
            return b""
        if response.kind == "S":
            if response.text.split(b" ", 1)[0] == b"PIN_REPEATED":
                self._repeated = True
            return b""
        if response.kind == "ERR":
            self._settled = True
            self._wipe()
            code = response.code & 0xFFFF
            if code == GPG_ERR_CANCELED:
                raise PassphraseCancelledError(
                    "the passphrase prompt was cancelled; nothing was changed"
                )
            if code == GPG_ERR_TIMEOUT:
                raise PassphraseCancelledError(
                    f"no passphrase was entered within {self._request.timeout} s; "
                    "nothing was changed"
                )
            raise PassphrasePromptError(
                f"{self._program} could not ask for the passphrase: {response.message}; "
                "check GPG_TTY, TERM and DISPLAY, choose another pinentry with "
                "MODEL_FORGE_PINENTRY=PATH, or pipe the passphrase in on standard input"
            )
        # OK: the pin is complete.
        self._settled = True
        self._pins.append(bytes(self._data))
        self._data.clear()
        confirm = self._request.repeat_prompt is not None
        if confirm and not self._repeated and len(self._pins) == 1:
            self._queue = [command("SETPROMPT", self._request.repeat_prompt), command("GETPIN")]
            return self._send_next()
        if len(self._pins) == 2 and self._pins[0] != self._pins[1]:
            self._wipe()
            raise PassphraseMismatchError()
        try:
            self._result = self._pins[0].decode("utf-8")
        except UnicodeDecodeError:
            self._wipe()
            raise PassphrasePromptError(
                f"{self._program} sent a passphrase that is not UTF-8; set LC_CTYPE (or LANG) "
                "to a UTF-8 locale"
            ) from None
        self._wipe()
        self._state = _BYE
        return b"BYE\n"

    def _wipe(self) -> None:
        # Best effort: bytes objects are immutable, but the buffers we own
        # need not outlive the answer.
        for index in range(len(self._data)):
            self._data[index] = 0
        self._data.clear()
        self._pins.clear()


# -- the adapter --------------------------------------------------------------------


def ask_pinentry(
    program: str,
    request: PinentryRequest,
    *,
    environ: Mapping[str, str] | None = None,
    answer_timeout: float = ANSWER_TIMEOUT,
    prompt_timeout: float = 0.0,
) -> str:
    """Run ``program`` and hold the conversation; return the passphrase.

    ``answer_timeout`` bounds each answer but GETPIN's, ``prompt_timeout``
    (default: the request's own SETTIMEOUT plus ``answer_timeout``) GETPIN's:
    a pinentry silent for longer is killed and PassphrasePromptError says so.
    Its stderr is discarded: a curses pinentry shares the terminal, and what
    it reports comes back on ERR lines.
    """
    human = prompt_timeout or (request.timeout + answer_timeout if request.timeout else 0.0)
    try:
        proc = start_program([program], environ=environ, talk=True)
    except OSError as err:
        raise PassphrasePromptError(
            f"cannot run the pinentry {program!r} ({err.strerror or err}); install one "
            "(Debian: pinentry-curses or pinentry-tty) or set MODEL_FORGE_PINENTRY to its path"
        ) from None
    assert proc.stdout is not None
    conversation = PinentryConversation(request, program)
    output = OutputPipe(proc.stdout)
    try:
        _converse(proc, output, conversation, answer_timeout, human)
        return conversation.passphrase()
    finally:
        output.close()
        _stop(proc, conversation)


def _converse(
    proc: subprocess.Popen[bytes],
    output: OutputPipe,
    conversation: PinentryConversation,
    answer_timeout: float,
    human_timeout: float,
) -> None:
    """Move lines between the pinentry and ``conversation`` until it is done."""
    reader = LineReader()
    while not conversation.done:
        limit = human_timeout if conversation.waiting_for_human else answer_timeout
        chunk = output.read(deadline_after(limit))
        if chunk is None:
            conversation.abandon()
            raise PassphrasePromptError(
                f"{conversation.program} did not answer within {limit:g} s and was stopped; "
                "check that it can show its prompt (GPG_TTY, TERM, DISPLAY), choose another "
                "with MODEL_FORGE_PINENTRY=PATH, or pipe the passphrase in on standard input"
            )
        if not chunk:
            conversation.closed()
            return
        for line in reader.feed(chunk):
            reply = conversation.receive(line)
            if reply:
                _write(proc, reply, conversation)
            if conversation.done:
                return


def _write(proc: subprocess.Popen[bytes], data: bytes, conversation: PinentryConversation) -> None:
    assert proc.stdin is not None
    try:
        proc.stdin.write(data)
        proc.stdin.flush()
    except (BrokenPipeError, ConnectionResetError):
        conversation.closed()


def _stop(proc: subprocess.Popen[bytes], conversation: PinentryConversation) -> None:
    """End the pinentry: after a finished dialogue give it a moment to exit
    (it restores the terminal); a hung or broken one is killed at once."""
    polite = conversation.done or conversation.settled
    if polite and not conversation.done and proc.poll() is None:
        try:
            assert proc.stdin is not None
            proc.stdin.write(b"BYE\n")
            proc.stdin.flush()
        except (OSError, ValueError):
            pass
    stop_program(proc, grace=2.0 if polite else 0.0)
