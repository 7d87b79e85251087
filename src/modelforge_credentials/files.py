"""Crash-safe file primitives: private directories, atomic replace, locks.

A crash at any instant leaves either the old or the new file, never a broken
one: data goes to a fresh temp file in the same directory (created 0600 in
one step, never chmod-ed afterwards), is fsync-ed, renamed over the target,
and the directory is fsync-ed so the rename itself survives power loss.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from .errors import CredentialStorageUnavailableError

TEMP_SUFFIX = ".tmp"


def _unavailable(action: str, path: Path, err: OSError) -> CredentialStorageUnavailableError:
    if err.errno == errno.ENOSPC or err.errno == errno.EDQUOT:
        hint = "the disk is full: free some space and retry"
    elif err.errno in (errno.EACCES, errno.EPERM):
        hint = f"check the ownership and permissions of {path.parent}"
    elif err.errno == errno.EROFS:
        hint = "the file system is read-only: set MODEL_FORGE_CONFIG_DIR to a writable directory"
    else:
        hint = "check the path and retry"
    return CredentialStorageUnavailableError(
        f"cannot {action} {path}: {err.strerror or err}; {hint}"
    )


class UnsafeDirectoryError(CredentialStorageUnavailableError):
    """A directory that holds secrets belongs to another user or is writable
    by others: whoever can write it can swap the files in it.

    The message says what to do, and never advises changing a directory
    that belongs to someone else.
    """


def check_own_directory(path: Path, setting: str) -> None:
    """Refuse ``path`` unless it is a directory of this user, not writable by
    group or others. Absent is fine (it will be created 0700). ``setting``
    names the variable that chooses another directory."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        return
    except OSError as err:
        raise _unavailable("use directory", path, err) from err
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeDirectoryError(
            f"{path} is not a directory; set {setting} to a directory of your own"
        )
    if info.st_uid != os.geteuid():
        raise UnsafeDirectoryError(
            f"{path} belongs to uid {info.st_uid}, not to you (uid {os.geteuid()}): whoever "
            f"owns it can replace what is stored there. Use a directory of your own: set "
            f"{setting} to one (it is created 0700)"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & 0o022:
        raise UnsafeDirectoryError(
            f"{path} is writable by group or others (mode {mode:o}): they could replace "
            f"what is stored there. Make it private: chmod 700 {path}"
        )


def make_private_dir(path: Path) -> None:
    """Create ``path`` and any missing parents with mode 0700.

    Each missing component is created with the mode in the mkdir call itself,
    so there is no window in which it is group- or world-readable.
    """
    missing: list[Path] = []
    probe = path
    while not probe.exists():
        missing.append(probe)
        if probe.parent == probe:
            break
        probe = probe.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass
        except OSError as err:
            raise _unavailable("create directory", directory, err) from err


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_new_private(path: Path, data: bytes, mode: int = 0o600) -> tuple[int, int, int]:
    """Write a file that must not exist yet, with ``mode`` (0600), durably.

    Returns the new file's (inode, mtime in ns, size), which a rename keeps.
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(path, flags, mode)
    try:
        if mode != 0o600:
            # The umask trimmed the requested mode; nobody can see this new
            # file yet, so setting it now opens no window.
            os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
        info = os.fstat(fd)
    finally:
        os.close(fd)
    return (info.st_ino, info.st_mtime_ns, info.st_size)


class NotRegularFileError(CredentialStorageUnavailableError):
    """A path that should be a regular file is a FIFO, device, socket or directory."""


def open_regular(path: Path) -> BinaryIO:
    """Open ``path`` for reading, refusing anything but a regular file.

    O_NONBLOCK keeps a FIFO planted at the path from blocking the open
    forever; the type is checked on the opened descriptor, so a swap after
    a stat cannot pass. Raises FileNotFoundError when absent.
    """
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise NotRegularFileError(
                f"{path} is not a regular file (a FIFO, device, socket or directory); "
                "move it away and try again"
            )
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def temp_path_for(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}{TEMP_SUFFIX}")


def write_atomic(
    path: Path, data: bytes, *, backup: Path | None = None, mode: int = 0o600
) -> tuple[int, int, int]:
    """Replace ``path`` with ``data`` atomically (``mode``, 0600 unless told).

    When ``backup`` is given and ``path`` exists, the current generation is
    hard-linked to ``backup`` first (also atomically), so the previous good
    file survives the replace. Returns the new file's (inode, mtime, size).
    """
    temp = temp_path_for(path)
    try:
        stamp = write_new_private(temp, data, mode)
        if backup is not None and path.exists():
            _link_backup(path, backup)
        os.replace(temp, path)
        fsync_dir(path.parent)
        return stamp
    except BaseException as err:
        with contextlib.suppress(OSError):
            temp.unlink()
        if isinstance(err, OSError):
            raise _unavailable("write", path, err) from err
        raise


def _link_backup(path: Path, backup: Path) -> None:
    # A writer killed between linking the backup and replacing the file
    # leaves both names on one inode; rename(2) between two links of the
    # same file is a no-op that would strand the staged link.
    with contextlib.suppress(FileNotFoundError):
        if os.path.samefile(path, backup):
            return
    staged = temp_path_for(backup)
    try:
        os.link(path, staged)
    except OSError:
        # File systems without hard links: copy the bytes instead.
        write_new_private(staged, path.read_bytes())
    try:
        os.replace(staged, backup)
    except OSError as err:
        with contextlib.suppress(OSError):
            staged.unlink()
        if os.path.isdir(backup) and not os.path.islink(backup):
            raise CredentialStorageUnavailableError(
                f"cannot keep the previous generation: {backup} is a directory; move it away "
                "and retry (nothing was written)"
            ) from err
        raise _unavailable("write the backup", backup, err) from err


def remove_stale_temps(path: Path) -> list[Path]:
    """Delete temp files a crashed writer of ``path`` left behind.

    Call only while holding the writer lock, so no live writer's temp is hit.
    The pattern (``.STEM.*.tmp``) also covers the backup's staging links and
    the key file's temp beside ``STEM.enc``.
    """
    removed = []
    for candidate in path.parent.glob(f".{path.stem}.*{TEMP_SUFFIX}"):
        with contextlib.suppress(FileNotFoundError):
            candidate.unlink()
            removed.append(candidate)
    return removed


@contextlib.contextmanager
def exclusive_lock(lock_path: Path, *, blocking: bool = True) -> Iterator[bool]:
    """Hold ``flock(LOCK_EX)`` on ``lock_path`` (created 0600) for the block.

    flock locks belong to the open file description, so two threads of one
    process that each enter this context exclude each other too. Yields
    ``False`` instead of waiting when ``blocking`` is false and the lock is
    taken.
    """
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(lock_path, flags, 0o600)
    except OSError as err:
        raise _unavailable("open lock file", lock_path, err) from err
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)
