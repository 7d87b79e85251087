"""Which program asks for a passphrase when standard input cannot.

Rules 3-5 of :mod:`.askpass`, in that order: ``MODEL_FORGE_ASKPASS``, then
``SSH_ASKPASS`` by OpenSSH's display rule, then a pinentry
(``MODEL_FORGE_PINENTRY``, else the first of :data:`PINENTRY_NAMES` on
``PATH`` when it has somewhere to show itself). Choosing runs nothing: it
reads the environment and ``PATH`` only, so a caller can learn whether
anything would ask before it needs a passphrase.
"""

from __future__ import annotations

import os

from ..settings import ASKPASS, PINENTRY

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping

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


def find_prompter(environ: Mapping[str, str] | None = None) -> Prompter | None:
    """The program that would ask when standard input is not a terminal and
    gives no line (rules 3-5), or ``None``: then only standard input can."""
    env = os.environ if environ is None else environ
    askpass = _program_setting(ASKPASS, env)
    if askpass is False:
        return None
    if isinstance(askpass, str):
        return Prompter("askpass", askpass, ASKPASS)
    ssh = ssh_askpass(env, terminal=False)
    if ssh is not None:
        return ssh
    return _find_pinentry(env)


def _program_setting(name: str, env: Mapping[str, str]) -> str | bool | None:
    """A program setting: ``None`` unset (automatic), ``False`` off, ``True``
    on (automatic too), else the program."""
    from .. import settings

    if not settings.text(name, env):
        return None
    return settings.flag_or_path(name, env)


def _has_display(env: Mapping[str, str]) -> bool:
    return bool(env.get("DISPLAY") or env.get("WAYLAND_DISPLAY"))


def ssh_askpass(env: Mapping[str, str], *, terminal: bool) -> Prompter | None:
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
