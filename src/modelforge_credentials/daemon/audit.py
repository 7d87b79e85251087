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
from ..protocol import Op, Request

log = logging.getLogger("modelforge_credentials.agent")

NOT_AUDITED = frozenset({Op.HELLO, Op.STATUS})
DEFAULT_MAX_BYTES = 1_048_576


def default_audit_path() -> Path:
    import platformdirs

    return platformdirs.user_state_path("model-forge", appauthor=False) / "audit.log"


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
        if request.op in NOT_AUDITED:
            return
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
        line = (json.dumps(entry, ensure_ascii=False) + "\n").encode("utf-8")
        try:
            if os.fstat(self._fd).st_size + len(line) > self.max_bytes:
                self._rotate()
            os.write(self._fd, line)
        except OSError as err:
            log.warning("cannot write the audit log %s: %s", self.path, err.strerror)

    def _rotate(self) -> None:
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))
        os.close(self._fd)
        self._fd = self._open()

    def close(self) -> None:
        os.close(self._fd)
