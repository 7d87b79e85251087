"""``git-credential-modelforge``: git's credential helper, over the agent.

Configure it with ``git config --global credential.helper modelforge``; git
then runs ``git-credential-modelforge get|store|erase`` and speaks the
protocol of gitcredentials(7) and git-credential(1): ``key=value`` lines on
standard input up to a blank line or end of file, the answer to ``get`` on
standard output. Options go before the action, as for git's own helpers:
``credential.helper "modelforge --no-start"`` or ``--socket PATH``.

How a description maps to the agent's ``(provider, key)`` (``git:<url>`` and
``user:<username>``, plus ``expiry:`` and ``refresh:`` keys for an OAuth
helper's attributes) is :mod:`.git_credential_wire`'s, with the wire format
itself; this module holds the three actions and the command. A ``get`` that
names no user answers with the host's only account; with several it answers
nothing and says how to choose one (``credential.<url>.username``, or the
user in the URL). An expired password is withheld (also from a git too old
to know the attribute), its refresh token is not, so an OAuth helper after
this one can renew it. A name too long for the agent makes ``get`` answer
nothing and ``store`` fail, both saying why.

``get`` prints ``username=`` and ``password=`` or nothing at all (exit 0):
git then asks its next helper or prompts. It starts the agent when none runs,
as ``CredentialManager()`` does, unless ``--no-start`` or
``MODEL_FORGE_AGENT=off``; a locked agent answers at once and this helper
says to run ``modelforge-agent unlock``, prompting for nothing: git owns the
terminal. ``store`` saves (and writes nothing when the agent already holds the
same values: git calls it after every successful authentication). ``erase``,
git's answer to a rejected credential, deletes an account only when its
stored password is the one git rejected, as git's credential-store and
credential-cache match it; an ``erase`` without a password forgets the
account (or, without a username, every account of that URL), as theirs do.
Every failure goes to standard error with what to do; a secret never does,
nor into any command line.

The ``get`` path imports what the thin client imports and nothing else: git
runs this on every authenticated fetch.
"""

from __future__ import annotations

import os
import sys
import time

from ..client.sync import AgentClient, AgentNotRunningError
from ..errors import (
    CredentialLockedError,
    CredentialStorageError,
    CredentialValidationError,
)
from .git_credential_wire import (
    EXTRAS,
    PASSWORD_PREFIX,
    PROG,
    PROVIDER_PREFIX,
    USAGE,
    HelperUsageError,
    decode_name,
    encode_name,
    format_attributes,
    provider_for,
    read_description,
    safe_value,
    shown,
    store_plan,
)

# No typing at run time: its import alone would cost this helper more than the
# thin client's own modules.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO, TextIO

EXIT_OK = 0
EXIT_USAGE = 2


# -- the three actions ------------------------------------------------------------------


class GitCredentialHelper:
    """``get``, ``store`` and ``erase`` over one agent connection.

    ``client`` needs ``store``, ``retrieve``, ``delete`` and ``list_keys`` as
    :class:`AgentClient` has them; ``now`` (Unix time) decides expiry; ``note``
    receives messages for standard error, none holding a secret.
    """

    def __init__(self, client: AgentClient, now: float, note: TextIO) -> None:
        self.client = client
        self.now = now
        self.note = note

    def _say(self, message: str) -> None:
        self.note.write(f"{PROG}: {message}\n")

    def _names(self, provider: str) -> set[str]:
        return {key for _, key in self.client.list_keys(provider)}

    def get(self, attributes: dict[str, str]) -> list[tuple[str, str]]:
        """The attributes to print: username and password (and extras), or none."""
        provider = provider_for(attributes)
        if provider is None:
            return []
        names = self._names(provider)
        username = attributes.get("username")
        if username is not None:
            key = PASSWORD_PREFIX + encode_name(username)
            if key not in names:
                return []
        else:
            accounts = sorted(k for k in names if k.startswith(PASSWORD_PREFIX))
            if not accounts:
                return []
            if len(accounts) > 1:
                users = [decode_name(k.removeprefix(PASSWORD_PREFIX)) for k in accounts]
                url = shown(provider)
                self._say(
                    f"{len(accounts)} accounts are stored for {url} "
                    f"({', '.join(encode_name(u) for u in users)}) and git named none; "
                    f"choose one with `git config --global credential.{url}.username "
                    f"{encode_name(users[0])}`, or put the user in the remote URL"
                )
                return []
            key = accounts[0]
            username = decode_name(key.removeprefix(PASSWORD_PREFIX))
        password = self.client.retrieve(provider, key)
        if password is None:
            return []  # deleted since the list
        account = key.removeprefix(PASSWORD_PREFIX)
        extras = {
            attribute: self.client.retrieve(provider, prefix + account)
            if prefix + account in names
            else None
            for attribute, prefix in EXTRAS.items()
        }
        values = [username, password, *(v for v in extras.values() if v is not None)]
        if not all(safe_value(v) for v in values):
            self._say(
                f"the account stored for {shown(provider)} ({key}) holds a newline or NUL, "
                "which git's credential protocol cannot carry; store it again with "
                f"`modelforge-agent set {_quote(provider)} {_quote(key)}`"
            )
            return []
        answer = [("username", username)]
        expiry = extras["password_expiry_utc"]
        if expiry is None or not expiry.isdigit() or int(expiry) > self.now:
            answer.append(("password", password))
            if expiry is not None:
                answer.append(("password_expiry_utc", expiry))
        refresh = extras["oauth_refresh_token"]
        if refresh is not None:
            answer.append(("oauth_refresh_token", refresh))
        return answer

    def store(self, attributes: dict[str, str]) -> None:
        """Save what git approved (see :func:`store_plan`)."""
        plan = store_plan(attributes)
        if plan is None:
            return
        provider, writes = plan
        names = self._names(provider)
        for name, value in writes:
            if value is None:
                if name in names:
                    self.client.delete(provider, name)
            elif name not in names or self.client.retrieve(provider, name) != value:
                self.client.store(provider, name, value)

    def erase(self, attributes: dict[str, str]) -> int:
        """Forget the accounts git rejected; returns how many were erased."""
        provider = provider_for(attributes)
        if provider is None:
            return 0
        names = self._names(provider)
        username = attributes.get("username")
        if username is not None:
            accounts = [PASSWORD_PREFIX + encode_name(username)]
        else:
            accounts = sorted(k for k in names if k.startswith(PASSWORD_PREFIX))
        rejected = attributes.get("password")
        erased = 0
        for key in accounts:
            if key not in names:
                continue
            if rejected is not None and self.client.retrieve(provider, key) != rejected:
                continue  # git rejected another password than the one stored: keep this one
            account = key.removeprefix(PASSWORD_PREFIX)
            # The password first: extras left behind by an erase cut short are
            # never answered without it, and the next store replaces them.
            self.client.delete(provider, key)
            for prefix in EXTRAS.values():
                if prefix + account in names:
                    self.client.delete(provider, prefix + account)
            erased += 1
        return erased


def _quote(text: str) -> str:
    """Single-quoted for a POSIX shell (shlex would load `re`)."""
    return "'" + text.replace("'", "'\\''") + "'"


# -- the command ------------------------------------------------------------------------


def open_client(path: str | None, no_start: bool) -> AgentClient:
    """A connection to the agent, started first when none runs and starting is allowed."""
    client = AgentClient(path)
    try:
        client.connect()
    except AgentNotRunningError as err:
        allowed, why_not = _autostart_allowed(no_start)
        if not allowed:
            raise AgentNotRunningError(f"{err}; {why_not}") from None
        from ..client.autostart import spawn_agent

        spawn_agent(client.path)
        client.connect()
    client.hello()
    return client


def _autostart_allowed(no_start: bool) -> tuple[bool, str]:
    """Whether the agent may be started here, and, when not, the reason for a message.

    Asked only when no agent runs: settings is not part of the thin client's imports."""
    if no_start:
        return False, "this helper runs with --no-start"
    from .. import settings

    try:
        wanted = settings.flag(settings.AGENT, default=True)
    except settings.SettingError as err:
        return False, f"none is started while {err}"
    if not wanted:
        return False, f"{settings.AGENT}=off asks not to start one"
    return True, ""


def parse_command(argv: list[str]) -> tuple[str, str | None, bool]:
    """(action, socket path or None, no_start) from the helper's arguments."""
    socket: str | None = None
    no_start = False
    rest = list(argv)
    while rest and rest[0].startswith("--"):
        option = rest.pop(0)
        if option == "--no-start":
            no_start = True
        elif option == "--socket" and rest:
            socket = rest.pop(0)
        elif option.startswith("--socket="):
            socket = option.removeprefix("--socket=")
        else:
            raise HelperUsageError(f"unknown option {option!r}; {USAGE}")
    if len(rest) != 1:
        raise HelperUsageError(USAGE)
    return rest[0], socket, no_start


def _failure(action: str, attributes: dict[str, str], err: CredentialStorageError) -> str:
    """What went wrong, for standard error: the error's own words, then the way on."""
    provider = provider_for(attributes) or PROVIDER_PREFIX + "?"
    url = shown(provider)
    username = attributes.get("username")
    what = str(err)
    if isinstance(err, CredentialLockedError):
        what = "the credential agent is locked; run `modelforge-agent unlock`"
    elif isinstance(err, CredentialValidationError):
        # An error path: validation (and its `re`) may load here.
        from ..validation import MAX_NAME_LENGTH

        account = encode_name(username) if username is not None else ""
        prefixes = (PASSWORD_PREFIX, *EXTRAS.values())
        if len(provider) > MAX_NAME_LENGTH and attributes.get("path"):
            what += (
                "; this URL is too long for a credential name: turn credential.useHttpPath "
                "off for it, or use a shorter URL"
            )
        elif max(len(provider), *(len(p + account) for p in prefixes)) > MAX_NAME_LENGTH:
            what += "; this URL or user name is too long for a credential name"
    if action == "get":
        return f"no credential for {url}: {what}; git will try its next helper or prompt"
    if action == "store":
        retry = (
            ""
            if isinstance(err, CredentialValidationError)
            else "; git saves it after its next successful login"
        )
        return f"the credential for {url} was not saved: {what}{retry}"
    key = PASSWORD_PREFIX + encode_name(username) if username is not None else "KEY"
    command = f"modelforge-agent delete {_quote(provider)} {_quote(key)}"
    return f"the rejected credential for {url} was not erased: {what}; then run `{command}`"


def main(
    argv: list[str] | None = None,
    stdin: BinaryIO | None = None,
    stdout: BinaryIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run one helper action; the exit status is 0 for ``get`` whatever happened."""
    args = sys.argv[1:] if argv is None else argv
    stdin = sys.stdin.buffer if stdin is None else stdin
    stdout = sys.stdout.buffer if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    try:
        action, socket, no_start = parse_command(args)
    except HelperUsageError as err:
        stderr.write(f"{PROG}: {err}\n")
        return EXIT_USAGE
    if action not in ("get", "store", "erase"):
        return EXIT_OK  # an action of a later git: nothing to do, as git's own helpers
    attributes: dict[str, str] = {}
    try:
        attributes = read_description(stdin)
        if provider_for(attributes) is None:
            return EXIT_OK  # no URL: nothing to look up, store or erase
        if action == "store" and store_plan(attributes) is None:
            return EXIT_OK
        with open_client(socket, no_start) as client:
            helper = GitCredentialHelper(client, time.time(), stderr)
            if action == "get":
                answer = helper.get(attributes)
                if answer:
                    stdout.write(format_attributes(answer))
                    stdout.flush()
            elif action == "store":
                helper.store(attributes)
            else:
                helper.erase(attributes)
    except CredentialStorageError as err:
        stderr.write(f"{PROG} {action}: {_failure(action, attributes, err)}\n")
        if action == "get":
            return EXIT_OK
        from ..cli import exit_code_for

        return exit_code_for(err)
    except BrokenPipeError:
        # git went away; do not let the interpreter complain about stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
