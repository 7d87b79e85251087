"""Opt-in access log: who asked for what, and what they got. Never a value.

JSON lines, one per request (hello and status excluded), in a 0600 file
that is rotated to ``<name>.1`` when it passes ``max_bytes``.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from ..files import make_private_dir
from ..protocol import Request

log = logging.getLogger("modelforge_credentials.agent")

DEFAULT_MAX_BYTES = 1_048_576


def default_audit_path() -> Path:
    import platformdirs

    return platformdirs.user_state_path("model-forge", appauthor=False) / "audit.log"


def text_view(text: str) -> str:
    """``text`` safe for one terminal line: control and line-separator
    characters (C0, DEL, C1, U+2028/U+2029, ...) and lone surrogates as
    escapes, so a crafted name cannot forge lines or terminal sequences."""
    out = []
    for char in text:
        code = ord(char)
        if char == "\\":
            out.append("\\\\")
        elif code < 0x20 or 0x7F <= code <= 0x9F or code in (0x2028, 0x2029, 0x85):
            out.append(f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}")
        elif 0xD800 <= code <= 0xDFFF or not char.isprintable() and not char.isspace():
            out.append(f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def read_entries(path: Path) -> list[str]:
    """The log's lines: split on ``\\n`` only (``splitlines`` would also split
    inside an entry at U+2028 and friends)."""
    text = path.read_bytes().decode("utf-8", "replace")
    return [line for line in text.split("\n") if line]


def render_entry(line: str) -> str | None:
    """One entry as a line of text, every field escaped; None if not JSON."""
    try:
        e = json.loads(line)
    except ValueError:
        return None
    if not isinstance(e, dict):
        return None

    def field(name: str, empty: str = "") -> str:
        value = e.get(name)
        return text_view(str(value)) if value is not None else empty

    return (
        f"{field('time')} pid={field('pid')} uid={field('uid')} {field('exe', '-')} "
        f"{field('op')} {field('provider')}/{field('key')} {field('result')}"
    )


def peer_exe(pid: int | None) -> str | None:
    if pid is None or pid <= 0:
        return None
    try:
        return os.readlink(f"/proc/{pid}/exe")
    except OSError:
        return None


class AuditLog:
    def __init__(self, path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes
        make_private_dir(path.parent)
        self._fd = self._open()

    def _open(self) -> int:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        return os.open(self.path, flags, 0o600)

    def record(
        self,
        request: Request,
        reply: dict[str, object],
        pid: int | None,
        uid: int | None,
        exe: str | None,
    ) -> None:
        if not request.op.audited:
            return  # the ops table: hello and status are not recorded
        error = reply.get("error")
        result = (
            "ok" if reply.get("ok") else (error.get("code") if isinstance(error, dict) else "error")
        )
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "pid": pid,
            "uid": uid,
            "exe": exe,
            "op": request.op.value,
            "provider": request.provider,
            "key": request.key,
            "result": result,
        }
        # ASCII JSON: any name or path, even one that is not valid UTF-8 (a
        # surrogate-escaped executable path), becomes one line that encodes.
        line = (json.dumps(entry) + "\n").encode("ascii")
        try:
            if os.fstat(self._fd).st_size + len(line) > self.max_bytes:
                self._rotate()
            os.write(self._fd, line)
        except Exception as err:  # noqa: BLE001 - an audit failure must not lose the reply
            # The operation is done: record it in the agent's own log instead.
            log.error(
                "cannot write the audit log %s (%s); unrecorded: %s %s/%s by pid %s uid %s -> %s",
                self.path,
                getattr(err, "strerror", None) or type(err).__name__,
                entry["op"],
                text_view(str(entry["provider"])),
                text_view(str(entry["key"])),
                pid,
                uid,
                result,
            )

    def reopen(self) -> None:
        """Open the path anew (after an outside rotation moved the file)."""
        fd = self._open()
        os.close(self._fd)
        self._fd = fd

    def _rotate(self) -> None:
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        os.close(self._fd)
        self._fd = self._open()

    def close(self) -> None:
        os.close(self._fd)
