"""Secret references: ``mf://PROVIDER/KEY``, in templates and dotenv files.

A reference names one stored credential; it is not a secret, so messages
may quote it. Grammar::

    reference = "mf://" name "/" name
    name      = 1*( safe / pct-escape / non-ASCII printable character )
    safe      = ALPHA / DIGIT / "-" / "." / "_" / "~" / ":" / "@"
    pct-escape = "%" HEXDIG HEXDIG          ; bytes of UTF-8, as RFC 3986

``format_ref`` writes every character outside ``safe`` as the ``%XX``
escapes of its UTF-8 bytes, upper-case hex: ``/`` is ``%2F``, ``%`` is
``%25``, a space ``%20``, ``é`` ``%C3%A9``; its output is plain ASCII, safe
unquoted in a shell word, a dotenv value and a template. ``parse_ref`` also
takes lower-case hex, escapes of safe characters and printable non-ASCII
characters written as they are (``mf://café/api_key``); any other literal
character (space, quote, ``#``, ``{``, ``}``, ``?``, ``+``...) is refused
with the escape to write instead. The scheme is exactly ``mf://``, lower
case. Decoded names follow the storage limits (validation.validate_name):
non-empty, at most 255 characters, no control characters.

Templates (``inject``): ``{{ mf://PROVIDER/KEY }}``, spaces or tabs inside
the braces optional, on one line, is replaced by the value as it is (no
quoting for the target format). A ``{{`` followed by anything else
(``{{ .Values }}``, ``{{ op://... }}``) is left alone, and so is a bare
reference outside braces; but ``{{ mf://`` that does not continue as one
valid reference and ``}}`` is an error with its line number, so a
placeholder meant for us is never left unrendered. Replacement is one pass:
a value holding ``{{ mf://... }}`` is not expanded again. Templates are
bytes: any ASCII-compatible encoding and any line ending pass through.

Dotenv files (``exec --env-file``): one ``NAME=VALUE`` per line, optionally
``export NAME=VALUE``; blank lines and lines starting with ``#`` are
skipped; spaces around the name and after ``=`` are ignored. A name is
checked as ``exec -e`` checks one (letters, digits and ``_``, not starting
with a digit). A value is
unquoted (up to the end of the line; `` #`` after a space or tab starts a
comment; trailing blanks trimmed), single-quoted (literal, no escapes) or
double-quoted (escapes ``\\n \\r \\t \\\\ \\"``; any other backslash stays
as written); quoted values may span lines, and only a comment may follow
the closing quote. No ``${VAR}`` interpolation: ``$`` is literal. A later
line wins over an earlier one for the same name. A value that starts with
``mf://`` (quoted or not) is a reference and must be exactly one. Errors
give the file and line number and never quote the line: it may hold a
secret. Both kinds of file are read whole, up to 1 MiB (the caps below).
"""

from __future__ import annotations

import re

from .errors import (
    CredentialNotFoundError,
    CredentialStorageUnavailableError,
    CredentialTooLargeError,
    CredentialValidationError,
)
from .validation import validate_name

# typing, dataclasses and secret_env (subprocess, threading) stay out of the
# import: the parser loads this module's commands for --help.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from .secret_env import Binding

    Fetch = Callable[[str, str], str | None]

SCHEME = "mf://"
SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:@")
_HEX = frozenset("0123456789abcdefABCDEF")
#: Size caps of the files read here: a template or dotenv file is a small
#: config, and the whole of it is held in memory with its values.
MAX_TEMPLATE_BYTES = 1 << 20
MAX_ENV_FILE_BYTES = 1 << 20
#: A reference quoted in a message is cut here.
_SHOWN_CHARS = 200


def _shown(text: str) -> str:
    cut = text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."
    return repr(cut)


class MalformedReferenceError(CredentialValidationError):
    """A text meant as a secret reference does not follow ``mf://PROVIDER/KEY``
    (see this module's grammar). The message quotes it and says what to
    write instead; nothing was read or written."""


class UnknownReferencesError(CredentialNotFoundError):
    """References that name no stored credential; all of them are listed
    at once (``references``). Store each with ``modelforge-agent set
    PROVIDER KEY``; nothing was written or run."""

    def __init__(self, references: Sequence[tuple[str, str, str]], consequence: str) -> None:
        import shlex

        self.references = [shown for shown, _, _ in references]
        _, provider, key = references[0]
        command = f"modelforge-agent set {shlex.quote(provider)} {shlex.quote(key)}"
        if len(references) == 1:
            message = (
                f"unknown reference {self.references[0]}: no credential {key!r} for provider "
                f"{provider!r}; {consequence}. Store it with `{command}`"
            )
        else:
            message = (
                f"{len(references)} unknown references: {', '.join(self.references)}; "
                f"{consequence}. Store each with `modelforge-agent set PROVIDER KEY` "
                f"(e.g. `{command}`); `modelforge-agent list` shows the stored names"
            )
        super().__init__(message)


class InputTooLargeError(CredentialTooLargeError):
    """A template or dotenv file is over its cap (MAX_TEMPLATE_BYTES,
    MAX_ENV_FILE_BYTES): these are small config files, read whole."""


class TemplateError(CredentialValidationError):
    """A ``{{ mf://`` placeholder of a template is malformed; the message
    gives its line. Nothing was written."""


class EnvFileError(CredentialValidationError):
    """A line of a dotenv file cannot be read; the message gives the file
    and line number (never the line's text: it may hold a secret)."""


# -- references ---------------------------------------------------------------------


def _escape(char: str) -> str:
    return "".join(f"%{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))


def _encode(name: str) -> str:
    return "".join(char if char in SAFE else _escape(char) for char in name)


def format_ref(provider: str, key: str) -> str:
    """The canonical reference of ``provider``/``key`` (checked names)."""
    validate_name("provider", provider)
    validate_name("key", key)
    return f"{SCHEME}{_encode(provider)}/{_encode(key)}"


def parse_ref(text: str) -> tuple[str, str]:
    """``(provider, key)`` of ``mf://PROVIDER/KEY``; raises
    :class:`MalformedReferenceError` (a CredentialValidationError)."""
    if not text.startswith(SCHEME):
        raise MalformedReferenceError(
            f"{_shown(text)} is not a secret reference: one starts with {SCHEME}, "
            f"as {SCHEME}PROVIDER/KEY"
        )
    parts = text[len(SCHEME) :].split("/")
    if len(parts) != 2:
        raise MalformedReferenceError(
            f"malformed secret reference {_shown(text)}: expected {SCHEME}PROVIDER/KEY with "
            f"one / between the names (a / inside a name is written %2F)"
        )
    return _decode(parts[0], "provider", text), _decode(parts[1], "key", text)


def _decode(part: str, field: str, text: str) -> str:
    def malformed(problem: str) -> MalformedReferenceError:
        return MalformedReferenceError(f"malformed secret reference {_shown(text)}: {problem}")

    out: list[str] = []
    pending = bytearray()
    index = 0
    while index < len(part):
        char = part[index]
        if char == "%":
            digits = part[index + 1 : index + 3]
            if len(digits) != 2 or not _HEX.issuperset(digits):
                raise malformed(
                    f"a % in the {field} must start an escape of two hex digits "
                    "(a literal % is written %25)"
                )
            pending.append(int(digits, 16))
            index += 3
            continue
        if pending:
            out.append(_utf8(pending, field, malformed))
        if not (char in SAFE or (char > "\x7f" and char.isprintable())):
            raise malformed(
                f"the character {char!r} in the {field} must be written {_escape(char)}"
            )
        out.append(char)
        index += 1
    if pending:
        out.append(_utf8(pending, field, malformed))
    name = "".join(out)
    try:
        return validate_name(field, name)
    except CredentialValidationError as err:
        raise malformed(str(err)) from None


def _utf8(
    pending: bytearray, field: str, malformed: Callable[[str], MalformedReferenceError]
) -> str:
    try:
        text = pending.decode("utf-8")
    except UnicodeDecodeError:
        raise malformed(f"the % escapes in the {field} are not UTF-8") from None
    pending.clear()
    return text


def fetch_references(
    references: Iterable[tuple[str, str, str]], fetch: Fetch, *, consequence: str
) -> dict[tuple[str, str], str]:
    """Values of ``(shown, provider, key)`` references, each fetched once.

    Raises :class:`UnknownReferencesError` naming every unknown one (by its
    ``shown`` text) after asking for all of them, so one run reports all.
    """
    fetched: dict[tuple[str, str], str | None] = {}
    missing: dict[str, tuple[str, str, str]] = {}
    for shown, provider, key in references:
        if (provider, key) not in fetched:
            fetched[provider, key] = fetch(provider, key)
        if fetched[provider, key] is None:
            missing.setdefault(shown, (shown, provider, key))
    if missing:
        raise UnknownReferencesError(list(missing.values()), consequence)
    return {name: value for name, value in fetched.items() if value is not None}


# -- templates ------------------------------------------------------------------------

_OPENING = re.compile(rb"\{\{[ \t]*mf://")
_PLACEHOLDER = re.compile(rb"\{\{[ \t]*(mf://[^\s{}]*)[ \t]*\}\}")
_TOKEN = re.compile(rb"mf://[^\s{}]*")


def _line(data: bytes, offset: int) -> int:
    """For messages only: counting at every placeholder would be quadratic."""
    return data.count(b"\n", 0, offset) + 1


class Template:
    """A template split into literal bytes and ``(provider, key)`` slots."""

    __slots__ = ("pieces",)

    def __init__(self, data: bytes) -> None:
        """Raises :class:`TemplateError` for a malformed ``{{ mf://`` placeholder."""
        self.pieces: list[bytes | tuple[str, str, str]] = []
        done = 0
        for opening in _OPENING.finditer(data):
            start = opening.start()
            match = _PLACEHOLDER.match(data, start)
            token = _TOKEN.match(data, opening.end() - len(SCHEME))
            assert token is not None  # the opening ends with the scheme
            try:
                text = token.group().decode("utf-8")
            except UnicodeDecodeError:
                raise TemplateError(
                    f"line {_line(data, start)}: a {SCHEME} reference is not UTF-8"
                ) from None
            if match is None:
                raise TemplateError(
                    f"line {_line(data, start)}: the placeholder of {_shown(text)} does not "
                    f"end with }}}} on its line; write {{{{ {SCHEME}PROVIDER/KEY }}}} (a space, "
                    "brace or other character in a name is written %XX)"
                )
            try:
                provider, key = parse_ref(text)
            except MalformedReferenceError as err:
                raise TemplateError(f"line {_line(data, start)}: {err}") from None
            self.pieces += [data[done:start], (text, provider, key)]
            done = match.end()
        self.pieces.append(data[done:])

    @property
    def references(self) -> list[tuple[str, str, str]]:
        """``(as written, provider, key)`` of each placeholder, in order."""
        return [piece for piece in self.pieces if isinstance(piece, tuple)]

    def render(self, values: Mapping[tuple[str, str], str]) -> bytes:
        return b"".join(
            piece if isinstance(piece, bytes) else values[piece[1], piece[2]].encode("utf-8")
            for piece in self.pieces
        )


def read_capped(path: str | os.PathLike[str], limit: int, what: str) -> bytes:
    """The bytes of the regular file ``path``, refusing more than ``limit``."""
    from pathlib import Path

    from .files import open_regular

    try:
        with open_regular(Path(path)) as handle:
            data = handle.read(limit + 1)
    except FileNotFoundError:
        raise CredentialValidationError(f"{what} {path} does not exist; check the path") from None
    except OSError as err:
        raise CredentialStorageUnavailableError(
            f"cannot read {what} {path}: {err.strerror or err}"
        ) from err
    if len(data) > limit:
        raise InputTooLargeError(
            f"{what} {path} is over the limit of {limit:,} bytes; nothing was read from it"
        )
    return data


# -- dotenv files -----------------------------------------------------------------------

_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "\\": "\\", '"': '"'}
_COMMENT = re.compile(r"[ \t]#")


def valid_variable(name: str) -> bool:
    """secret_env.parse_env_option's test of an environment variable name."""
    return name.replace("_", "").isalnum() and not name[0].isdigit()


def parse_dotenv(text: str, source: str) -> list[tuple[int, str, str]]:
    """``(line number, name, value)`` of each assignment, in file order."""
    entries: list[tuple[int, str, str]] = []
    lines = text.removeprefix("\ufeff").replace("\r\n", "\n").split("\n")
    index = 0
    while index < len(lines):
        number = index + 1
        line = lines[index].strip(" \t")
        index += 1
        if not line or line.startswith("#"):
            continue

        def error(problem: str, at: int = number) -> EnvFileError:
            return EnvFileError(f"{source}, line {at}: {problem}")

        if line.startswith("export") and line[6:7] in (" ", "\t"):
            line = line[7:].lstrip(" \t")
        name, equals, raw = line.partition("=")
        name = name.rstrip(" \t")
        if not equals:
            raise error("expected NAME=VALUE (or export NAME=VALUE)")
        if not valid_variable(name):
            raise error(
                "the name before = is not a valid environment variable name (letters, "
                "digits and _, not starting with a digit)"
            )
        rest = raw.lstrip(" \t")
        if rest[:1] in ("'", '"'):
            value, after, index = _quoted(rest, lines, index, error)
            if after.strip(" \t")[:1] not in ("", "#"):
                raise error("only a # comment may follow the closing quote", index)
        else:
            comment = _COMMENT.search(raw)
            value = (raw[: comment.start()] if comment else raw).strip(" \t")
        if "\0" in value:
            raise error("the value contains a NUL character, which no variable can hold")
        entries.append((number, name, value))
    return entries


def _quoted(
    rest: str, lines: list[str], index: int, error: Callable[..., EnvFileError]
) -> tuple[str, str, int]:
    """The value opened by ``rest[0]``, the text after its closing quote, and
    the index of the line after it."""
    quote, text = rest[0], rest[1:]
    parts: list[str] = []
    while True:
        if quote == "'":
            end = text.find("'")
            if end >= 0:
                return "".join(parts) + text[:end], text[end + 1 :], index
            parts.append(text)
        else:
            position = 0
            while position < len(text):
                char = text[position]
                if char == "\\" and position + 1 < len(text):
                    follower = text[position + 1]
                    parts.append(_ESCAPES.get(follower, "\\" + follower))
                    position += 2
                    continue
                if char == '"':
                    return "".join(parts), text[position + 1 :], index
                parts.append(char)
                position += 1
        if index >= len(lines):
            raise error(f"the value's opening {quote} is never closed")
        parts.append("\n")
        text = lines[index]
        index += 1


def env_file_bindings(path: str | os.PathLike[str]) -> tuple[dict[str, str], list[Binding]]:
    """Plain values, and a required Binding per reference value, of a dotenv file.

    Raises :class:`EnvFileError` (file and line) for a malformed line or
    reference, :class:`InputTooLargeError` beyond MAX_ENV_FILE_BYTES,
    NotRegularFileError for a FIFO or device. Resolves nothing.
    """
    return env_files_bindings([path])


def env_files_bindings(
    paths: Iterable[str | os.PathLike[str]],
) -> tuple[dict[str, str], list[Binding]]:
    """As :func:`env_file_bindings` for several files: a later file, like a
    later line, wins a name, whichever of plain or reference each is."""
    from .secret_env import Binding

    chosen: dict[str, str | Binding] = {}
    for path in paths:
        data = read_capped(path, MAX_ENV_FILE_BYTES, "env file")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as err:
            line = data.count(b"\n", 0, err.start) + 1
            raise EnvFileError(f"{path}, line {line}: not valid UTF-8") from None
        for number, name, value in parse_dotenv(text, str(path)):
            if value.startswith(SCHEME):
                try:
                    provider, key = parse_ref(value)
                except MalformedReferenceError as err:
                    raise EnvFileError(f"{path}, line {number}: {name}: {err}") from None
                chosen.pop(name, None)  # keep file order: a redefinition moves to the end
                chosen[name] = Binding(name, provider, key, required=True)
            else:
                chosen.pop(name, None)
                chosen[name] = value
    plain = {name: value for name, value in chosen.items() if isinstance(value, str)}
    bindings = [value for value in chosen.values() if not isinstance(value, str)]
    return plain, bindings


def resolve_all(
    bindings: Iterable[Binding], fetch: Fetch, *, consequence: str = "nothing was run"
) -> dict[str, str]:
    """``{variable: value}`` for every binding, all fetched before any is used.

    Raises :class:`UnknownReferencesError` (CredentialNotFoundError) naming
    every unknown reference at once, and CredentialValidationError for a
    value with a NUL (no environment variable can hold one).
    """
    bindings = list(bindings)
    values = fetch_references(
        ((f"{b.variable}={format_ref(b.provider, b.key)}", b.provider, b.key) for b in bindings),
        fetch,
        consequence=consequence,
    )
    resolved: dict[str, str] = {}
    for binding in bindings:
        value = values[binding.provider, binding.key]
        if "\0" in value:
            reference = format_ref(binding.provider, binding.key)
            raise CredentialValidationError(
                f"{binding.variable}: the stored value of {reference} contains a NUL "
                f"character, which an environment variable cannot hold; {consequence}"
            )
        resolved[binding.variable] = value
    return resolved
