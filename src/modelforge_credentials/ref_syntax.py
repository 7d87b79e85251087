"""The grammar of secret references: ``mf://PROVIDER/KEY``.

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
"""

from __future__ import annotations

from .errors import CredentialValidationError
from .validation import validate_name

# typing stays out of the import: the parser loads the reference commands for --help.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

SCHEME = "mf://"
SAFE = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:@")
_HEX = frozenset("0123456789abcdefABCDEF")
#: A reference quoted in a message is cut here.
_SHOWN_CHARS = 200


def shown_ref(text: str) -> str:
    """``text`` quoted for a message, cut at a length a terminal shows."""
    cut = text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."
    return repr(cut)


class MalformedReferenceError(CredentialValidationError):
    """A text meant as a secret reference does not follow ``mf://PROVIDER/KEY``
    (see this module's grammar). The message quotes it and says what to
    write instead; nothing was read or written."""


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
            f"{shown_ref(text)} is not a secret reference: one starts with {SCHEME}, "
            f"as {SCHEME}PROVIDER/KEY"
        )
    parts = text[len(SCHEME) :].split("/")
    if len(parts) != 2:
        raise MalformedReferenceError(
            f"malformed secret reference {shown_ref(text)}: expected {SCHEME}PROVIDER/KEY with "
            f"one / between the names (a / inside a name is written %2F)"
        )
    return _decode(parts[0], "provider", text), _decode(parts[1], "key", text)


def _decode(part: str, field: str, text: str) -> str:
    def malformed(problem: str) -> MalformedReferenceError:
        return MalformedReferenceError(f"malformed secret reference {shown_ref(text)}: {problem}")

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
