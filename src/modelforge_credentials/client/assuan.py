"""The Assuan line codec a pinentry client needs, with no I/O.

Assuan, as far as a pinentry client needs it: the client sends one command
per line and reads until ``OK`` or ``ERR <code> <text>``; on the way come
data (``D``, percent-escaped: ``%25``, ``%0D``, ``%0A``), status (``S``),
comments (``#``) and ``INQUIRE``, which a pinentry client answers with
``CAN`` (we have nothing to give). A line is at most 1000 bytes including its
LF (libassuan's ``ASSUAN_LINELENGTH``); longer data comes in several ``D``
lines.

Nothing here quotes a data line in a message or repr: it may hold part of a
passphrase. The conversation built on this codec is :mod:`.pinentry`.
"""

from __future__ import annotations

from .prompt_errors import PassphrasePromptError

#: libassuan's ASSUAN_LINELENGTH: a line, its LF included, in either direction.
MAX_LINE = 1000
#: The error codes pinentry sends (libgpg-error, low 16 bits; the high bits
#: name the source, 5 = pinentry).
GPG_ERR_TIMEOUT = 62
GPG_ERR_CANCELED = 99
GPG_ERR_ASS_UNKNOWN_CMD = 275


def escape(data: bytes) -> bytes:
    """Percent-escape ``%``, CR, LF and the other C0 controls (a NUL would cut
    a C string short), as Assuan wants them in data and in SET* arguments."""
    out = bytearray()
    for byte in data:
        if byte == 0x25 or byte < 0x20:
            out += b"%%%02X" % byte
        else:
            out.append(byte)
    return bytes(out)


def unescape(data: bytes) -> bytes:
    """Undo :func:`escape` (any ``%XX``); a ``%`` not followed by two hex
    digits is kept as it is, as libassuan does."""
    if b"%" not in data:
        return data
    out = bytearray()
    i = 0
    while i < len(data):
        byte = data[i]
        if byte == 0x25 and _is_hex(data[i + 1 : i + 3]):
            out.append(int(data[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(byte)
            i += 1
    return bytes(out)


def _is_hex(pair: bytes) -> bool:
    return len(pair) == 2 and all(c in b"0123456789abcdefABCDEF" for c in pair)


def command(verb: str, text: str | None = None) -> bytes:
    """One command line, LF included: ``verb`` and ``text`` escaped, the text
    cut at a character boundary so the line stays within :data:`MAX_LINE`."""
    line = verb.encode("ascii")
    if text is None:
        return line + b"\n"
    line += b" "
    room = MAX_LINE - 1 - len(line)
    out = bytearray()
    for char in text:
        piece = escape(char.encode("utf-8", "replace"))
        if len(out) + len(piece) > room:
            break
        out += piece
    return line + bytes(out) + b"\n"


class Response:
    """One line from the pinentry. ``kind`` is ``OK``, ``ERR``, ``D``, ``S``,
    ``INQUIRE`` or ``#``; ``text`` the rest of the line (for ``D``: the
    unescaped bytes, never shown); ``code`` the number of an ``ERR``."""

    __slots__ = ("kind", "text", "code")

    def __init__(self, kind: str, text: bytes = b"", code: int = 0) -> None:
        self.kind = kind
        self.text = text
        self.code = code

    def __repr__(self) -> str:
        shown = "<data>" if self.kind == "D" else self.text.decode("utf-8", "replace")
        return f"Response({self.kind} {shown!r}{f' code={self.code}' if self.code else ''})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Response):
            return NotImplemented
        return (self.kind, self.text, self.code) == (other.kind, other.text, other.code)

    def __hash__(self) -> int:
        return hash((self.kind, self.code))

    @property
    def message(self) -> str:
        """The text of an ``OK``/``ERR``/``S`` line, for messages (not for ``D``)."""
        return "" if self.kind == "D" else self.text.decode("utf-8", "replace")


def parse_response(line: bytes) -> Response:
    """One line (without its LF) from the pinentry; PassphrasePromptError if
    it is none of the kinds above. The error never quotes the line: it could
    be a damaged data line."""
    if line.endswith(b"\r"):
        line = line[:-1]
    if line.startswith(b"#") or not line:
        return Response("#", line[1:])
    verb, _, rest = line.partition(b" ")
    if verb == b"D":
        return Response("D", unescape(rest))
    if verb == b"OK":
        return Response("OK", rest)
    if verb == b"S":
        return Response("S", rest)
    if verb == b"INQUIRE":
        return Response("INQUIRE", rest)
    if verb == b"ERR":
        number, _, text = rest.partition(b" ")
        if number.isdigit():
            return Response("ERR", text, int(number))
        raise PassphrasePromptError("the pinentry sent an ERR line without an error number")
    raise PassphrasePromptError(
        "the pinentry sent a line that is not Assuan (neither OK, ERR, D, S, INQUIRE nor #); "
        "is MODEL_FORGE_PINENTRY a pinentry program?"
    )


class LineReader:
    """Bytes in, complete lines out (without LF); a line longer than
    :data:`MAX_LINE` is an error, so a runaway program cannot fill memory."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        """Take ``data``; return the lines it completed, in order."""
        self._buffer += data
        lines = []
        while True:
            end = self._buffer.find(b"\n")
            if end < 0:
                break
            if end + 1 > MAX_LINE:
                break
            lines.append(bytes(self._buffer[:end]))
            del self._buffer[: end + 1]
        if len(self._buffer) >= MAX_LINE:
            self._buffer.clear()  # it may hold part of a passphrase
            raise PassphrasePromptError(
                f"the pinentry sent a line longer than {MAX_LINE} bytes, which Assuan forbids"
            )
        return lines

    @property
    def pending(self) -> bool:
        """Part of a line is buffered, waiting for its LF."""
        return bool(self._buffer)
