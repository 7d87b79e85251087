"""git's credential description, and how it maps to the agent's names: no I/O.

git-credential(1) describes a credential as ``key=value`` lines up to a blank
line or end of file; this module reads and writes that format and turns a
description into the agent's ``(provider, key)``:

- provider ``git:<protocol>://<host>``, plus ``/<path>`` when git sends a
  path (``credential.useHttpPath``, or a ``cert://`` file): the URL git
  itself writes in ``~/.git-credentials``, so ``git:https://huggingface.co``
  holds Hugging Face's tokens and ``git:http://127.0.0.1:8080/a.git`` one
  repository's.
- key ``user:<username>`` holds the password (a token: ``hf_...``, a PAT),
  one key per account. The username lives in the key, not beside the
  password, so each credential is one write: no torn pair of a username from
  one account and a password from another, and several accounts on one host
  work.
- ``expiry:<username>`` and ``refresh:<username>``, only when git sends
  ``password_expiry_utc`` or ``oauth_refresh_token`` (git 2.41+, from an
  OAuth helper): kept with the account, given back with it, and removed with
  it.

``%`` and control characters in these names are percent-encoded over UTF-8
(bytes that are not UTF-8 too), so every name passes ``validation`` and reads
back; the one limit left is a name's length, which a long path can pass.

Like the helper, this module imports what the thin client imports and nothing
else: git runs the helper on every authenticated fetch.
"""

from __future__ import annotations

from ..errors import CredentialValidationError

# No typing at run time: its import alone would cost the helper more than the
# thin client's own modules.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

PROG = "git-credential-modelforge"
PROVIDER_PREFIX = "git:"
PASSWORD_PREFIX = "user:"
EXPIRY_PREFIX = "expiry:"
REFRESH_PREFIX = "refresh:"
#: git-credential(1) attribute -> the prefix of the key it is kept under.
EXTRAS = {"password_expiry_utc": EXPIRY_PREFIX, "oauth_refresh_token": REFRESH_PREFIX}

#: Far above anything git sends (a few short lines; wwwauth[] headers at most a
#: few KiB); bounds what a runaway writer can make this process hold.
MAX_INPUT_BYTES = 1 << 20

USAGE = f"usage: {PROG} [--socket PATH] [--no-start] get|store|erase"


class HelperUsageError(CredentialValidationError):
    """The helper's command line or its input is not what git sends.

    Raised for an unknown option, a missing action, or more than
    :data:`MAX_INPUT_BYTES` on standard input. Configure the helper as
    ``credential.helper modelforge`` (options before the action).
    """


# -- names ------------------------------------------------------------------------------

# C0 controls, DEL, C1 controls, "%" and the surrogates that stand for bytes that
# are not UTF-8: each becomes its bytes in %XX form, as in a URL.
_ESCAPED = [0x25, *range(0x20), *range(0x7F, 0xA0), *range(0xDC80, 0xDD00)]
_escapes: dict[int, str] = {}
_HEX = frozenset(b"0123456789abcdefABCDEF")


def encode_name(text: str) -> str:
    """``text`` with ``%``, control characters and undecodable bytes percent-encoded."""
    if text.isascii() and text.isprintable() and "%" not in text:
        return text  # nearly every host, path and user name: no table needed
    if not _escapes:  # built on first use: it would cost every start-up a millisecond
        for code in _ESCAPED:
            raw = chr(code).encode("utf-8", "surrogateescape")
            _escapes[code] = "".join(f"%{byte:02X}" for byte in raw)
    return text.translate(_escapes)


def decode_name(text: str) -> str:
    """The inverse of :func:`encode_name`; a ``%`` without two hex digits stays as it is."""
    if "%" not in text:
        return text
    raw = text.encode("utf-8", "surrogateescape")
    parts = raw.split(b"%")
    out = bytearray(parts[0])
    for part in parts[1:]:
        if len(part) >= 2 and part[0] in _HEX and part[1] in _HEX:
            out.append(int(part[:2], 16))
            out += part[2:]
        else:
            out += b"%" + part
    return out.decode("utf-8", "surrogateescape")


def provider_for(attributes: dict[str, str]) -> str | None:
    """The agent's provider for what git described, or None without protocol and host or path."""
    protocol = attributes.get("protocol")
    host = attributes.get("host")
    path = attributes.get("path")
    if not protocol or (host is None and not path):
        return None  # no URL to file it under (git's credential-store refuses these too)
    provider = f"{PROVIDER_PREFIX}{encode_name(protocol)}://{encode_name(host or '')}"
    if path:
        provider += "/" + encode_name(path)
    return provider


def shown(provider: str) -> str:
    """The URL of a provider for a message: control characters stay encoded; kept short."""
    url = provider.removeprefix(PROVIDER_PREFIX)
    return url if len(url) <= 80 else url[:60] + "..." + url[-12:]


# -- input and output --------------------------------------------------------------------


def parse_attributes(data: bytes) -> dict[str, str]:
    """git's credential description: ``key=value`` lines up to a blank line or the end.

    A later value replaces an earlier one, as in git. Multi-valued ``key[]``
    attributes (``capability[]``, ``wwwauth[]``, ``state[]``) and lines
    without ``=`` are dropped: this helper announces no capability, so it
    needs none of them. A trailing CR is dropped, as git's own reader does.
    Bytes that are not UTF-8 survive as surrogate escapes.
    """
    attributes: dict[str, str] = {}
    for raw in data.split(b"\n"):
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if not line:
            break
        key, sep, value = line.partition(b"=")
        if not sep or key.endswith(b"[]") or b"\0" in line:
            continue
        attributes[key.decode("utf-8", "surrogateescape")] = value.decode(
            "utf-8", "surrogateescape"
        )
    return attributes


def read_description(stream: BinaryIO) -> dict[str, str]:
    """The description on ``stream``, read line by line: git may keep the pipe open
    after the blank line, so nothing past it is waited for."""
    lines: list[bytes] = []
    total = 0
    while True:
        line = stream.readline(MAX_INPUT_BYTES + 1 - total)
        total += len(line)
        if total > MAX_INPUT_BYTES:
            raise HelperUsageError(
                f"more than {MAX_INPUT_BYTES} bytes on standard input, which is not a "
                "credential description from git; nothing was done"
            )
        if not line or line in (b"\n", b"\r\n"):
            break
        lines.append(line)
    return parse_attributes(b"".join(lines))


def safe_value(value: str) -> bool:
    """A value git's protocol can carry: no newline (it would start a new attribute), no NUL."""
    return "\n" not in value and "\0" not in value


def format_attributes(pairs: list[tuple[str, str]]) -> bytes:
    """``key=value`` lines for git, in the order given."""
    return "".join(f"{key}={value}\n" for key, value in pairs).encode("utf-8", "surrogateescape")


# -- what a store writes ----------------------------------------------------------------


def store_plan(attributes: dict[str, str]) -> tuple[str, list[tuple[str, str | None]]] | None:
    """What a ``store`` writes: the provider and ``(key, value)`` pairs, ``None`` for a
    key to delete; ``None`` without a URL, user and password (nothing to save, as for
    git's credential-store). Validated before the agent is asked (or started)."""
    provider = provider_for(attributes)
    username = attributes.get("username")
    password = attributes.get("password")
    if provider is None or username is None or password is None:
        return None
    # Imported here, not at the top: validation loads `re`, which the get path must not pay.
    from ..validation import validate_name, validate_pair, validate_value

    account = encode_name(username)
    key = PASSWORD_PREFIX + account
    validate_pair(provider, key)
    validate_value(password)
    # The password first: a store cut short leaves the new password with the old
    # extras, which at worst withholds it as expired (git then prompts).
    writes: list[tuple[str, str | None]] = [(key, password)]
    for attribute, prefix in EXTRAS.items():
        value = attributes.get(attribute)
        if attribute == "password_expiry_utc" and value is not None and not value.isdigit():
            value = None  # not a Unix time: git would not have sent it
        if value is not None:
            validate_name("key", prefix + account)
            validate_value(value)
        writes.append((prefix + account, value))
    return provider, writes
