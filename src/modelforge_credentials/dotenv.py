"""Dotenv files (``exec --env-file``): plain values and secret references.

One ``NAME=VALUE`` per line, optionally ``export NAME=VALUE``; blank lines
and lines starting with ``#`` are skipped; spaces around the name and after
``=`` are ignored. A name is checked as ``exec -e`` checks one (letters,
digits and ``_``, not starting with a digit). A value is unquoted (up to
the end of the line; `` #`` after a space or tab starts a comment; trailing
blanks trimmed), single-quoted (literal, no escapes) or double-quoted
(escapes ``\\n \\r \\t \\\\ \\"``; any other backslash stays as written);
quoted values may span lines, and only a comment may follow the closing
quote. No ``${VAR}`` interpolation: ``$`` is literal. A later line wins over
an earlier one for the same name. A value that starts with ``mf://`` (quoted
or not) is a reference and must be exactly one. Errors give the file and
line number and never quote the line: it may hold a secret. The file is read
whole, up to ``MAX_ENV_FILE_BYTES`` (1 MiB), by
:func:`~.secret_env.env_files_bindings`, which also turns the references into
bindings.
"""

from __future__ import annotations

import re

from .errors import CredentialValidationError

# typing stays out of the import: the
# parser loads the reference commands for --help.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable


class EnvFileError(CredentialValidationError):
    """A line of a dotenv file cannot be read; the message gives the file
    and line number (never the line's text: it may hold a secret)."""


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
