"""Running a program that asks a person: an askpass dialog or a pinentry.

What both need from the child process, written once: start it in our own
session and process group (a terminal prompt needs our controlling terminal,
and Ctrl-C must reach it too), read its standard output without ever
blocking past a deadline, and stop it, with a grace period for one that is
tidying up (restoring the terminal, closing its dialog) and none for one
that hung. Nothing here reads what the program printed: the callers own the
bytes, which may be a passphrase.
"""

from __future__ import annotations

import os
import selectors
import subprocess
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import IO


def start_program(
    argv: list[str], *, environ: Mapping[str, str] | None, talk: bool
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with its standard output on a pipe. ``talk``: its
    standard input is a pipe too and its stderr is discarded (a pinentry,
    which shares the terminal and reports on ERR lines); else stdin is
    ``/dev/null`` and stderr is ours (an askpass program). OSError when it
    cannot run: the caller says which setting chose it."""
    return subprocess.Popen(
        argv,
        stdin=subprocess.PIPE if talk else subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL if talk else None,
        env=None if environ is None else dict(environ),
    )


def deadline_after(seconds: float) -> float | None:
    """The monotonic time ``seconds`` from now; ``None`` (no deadline) for 0."""
    return time.monotonic() + seconds if seconds > 0 else None


class OutputPipe:
    """A child's standard output, read without blocking: each :meth:`read`
    returns what is there or gives up at its deadline."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._fd = stream.fileno()
        os.set_blocking(self._fd, False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._fd, selectors.EVENT_READ)

    def read(self, deadline: float | None, size: int = 4096) -> bytes | None:
        """Up to ``size`` bytes (``b""`` at end of output), or ``None`` once
        ``deadline`` (monotonic; ``None``: wait for ever) has passed."""
        while True:
            timeout = None if deadline is None else max(0.0, deadline - time.monotonic())
            if self._selector.select(timeout):
                try:
                    return os.read(self._fd, size)
                except BlockingIOError:
                    continue
            if deadline is not None and time.monotonic() >= deadline:
                return None

    def close(self) -> None:
        """Stop watching the pipe (the stream itself is closed by :func:`stop_program`)."""
        self._selector.close()


def stop_program(proc: subprocess.Popen[bytes], *, grace: float) -> int:
    """Close our ends of its pipes and return its exit status: it gets
    ``grace`` seconds to exit by itself, then is killed; ``grace=0`` kills a
    program still running at once."""
    for stream in (proc.stdin, proc.stdout):
        try:
            if stream is not None:
                stream.close()
        except OSError:
            pass
    if grace > 0:
        try:
            return proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    if proc.poll() is None:
        proc.kill()
    return proc.wait()
