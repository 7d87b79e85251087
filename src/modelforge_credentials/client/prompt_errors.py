"""The errors of asking a person for a passphrase, whichever program asks.

Their own module so the I/O-free Assuan codec (:mod:`.assuan`) and the
pinentry conversation can raise them without importing the prompt rule
(:mod:`.askpass`), which re-exports them for its callers.
"""

from __future__ import annotations

from ..errors import (
    CredentialLockedError,
    CredentialStorageUnavailableError,
    CredentialValidationError,
)


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

    def __init__(self, message: str = "the two passphrases differ; nothing was changed") -> None:
        # One message wherever the two were typed: terminal, askpass or pinentry.
        super().__init__(message)
