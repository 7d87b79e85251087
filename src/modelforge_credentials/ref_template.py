"""Templates (``inject``) holding secret references as placeholders.

A placeholder ``{{ mf://PROVIDER/KEY }}``, spaces or tabs inside
the braces optional, on one line, is replaced by the value as it is (no
quoting for the target format). A ``{{`` followed by anything else
(``{{ .Values }}``, ``{{ op://... }}``) is left alone, and so is a bare
reference outside braces; but ``{{ mf://`` that does not continue as one
valid reference and ``}}`` is an error with its line number, so a
placeholder meant for us is never left unrendered. Replacement is one pass:
a value holding ``{{ mf://... }}`` is not expanded again. Templates are
bytes: any ASCII-compatible encoding and any line ending pass through.
"""

from __future__ import annotations

import re

from .errors import CredentialValidationError
from .ref_syntax import SCHEME, MalformedReferenceError, parse_ref, shown_ref

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping


class TemplateError(CredentialValidationError):
    """A ``{{ mf://`` placeholder of a template is malformed; the message
    gives its line. Nothing was written."""


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
                    f"line {_line(data, start)}: the placeholder of {shown_ref(text)} does not "
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
