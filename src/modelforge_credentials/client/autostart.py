"""Starting the agent in the background and waiting until it serves.

The child reports readiness on a pipe only after its socket listens (as
rbw-agent does), so "started" always means "answers". It runs in its own
session, without a terminal, its stdio on /dev/null (stderr optionally to a
log file), so closing the terminal that started it does not end it.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from pathlib import Path

from ..errors import CredentialStorageUnavailableError
from .sync import AgentClient, AgentNotRunningError

START_TIMEOUT = 15.0


def agent_command(
    socket: str | Path, started_by: str, ready_fd: int, extra: list[str] | None = None
) -> list[str]:
    return [
        sys.executable,
        "-m",
        "modelforge_credentials.cli",
        "--socket",
        str(socket),
        "serve",
        "--started-by",
        started_by,
        "--ready-fd",
        str(ready_fd),
        *(extra or []),
    ]


def spawn_agent(
    socket: str | Path,
    *,
    started_by: str = "auto-start",
    log_path: Path | None = None,
    extra_args: list[str] | None = None,
    timeout: float = START_TIMEOUT,
) -> int:
    """Start a detached agent on ``socket``; return its pid once it serves.

    If another agent won a start race, its readiness is accepted instead.
    """
    read_end, write_end = os.pipe()
    log = open(log_path, "ab") if log_path is not None else None  # noqa: SIM115
    try:
        proc = subprocess.Popen(
            agent_command(socket, started_by, write_end, extra_args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=log if log is not None else subprocess.DEVNULL,
            pass_fds=(write_end,),
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(write_end)
        if log is not None:
            log.close()
    try:
        message = _read_ready(read_end, timeout)
    finally:
        os.close(read_end)
    if message.startswith("ready"):
        return proc.pid
    # The child failed; another agent may have started first.
    try:
        with AgentClient(socket, timeout=2.0) as client:
            client.hello()
            pid = client.status().get("pid")
            return int(pid) if isinstance(pid, int) else proc.pid
    except AgentNotRunningError:
        pass
    detail = message.removeprefix("error ").strip() or f"exit status {proc.poll()}"
    raise CredentialStorageUnavailableError(
        f"the agent did not start on {socket}: {detail}"
        + (f"; see {log_path}" if log_path else "; run `modelforge-agent serve` to see why")
    )


def _read_ready(fd: int, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "error: no readiness within the start timeout"
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode("utf-8", "replace")
