"""EncryptedFileStorage under real processes: concurrent writers, SIGKILL, full disks.

Children are real ``python -c`` processes on the same files; crashes are real
signals (SIGKILL at random moments, SIGXFSZ at a chosen byte); a full disk is
a real, small tmpfs (skipped when it cannot be mounted).
"""

from __future__ import annotations

import errno
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent_harness import (
    TIMEOUT,
    NewFileWatch,
    is_temp_name,
    mounted_tmpfs,
    read_for,
    temp_files,
)
from modelforge_credentials import (
    CredentialCorruptedError,
    CredentialStorageUnavailableError,
    EncryptedFileStorage,
    KdfParams,
)
from testkit import WriterReport, crash_value, disk_value, store_until_full

PASSPHRASE = "durability-Passphrase-5150"
CRASH_ROUNDS = int(os.environ.get("MODEL_FORGE_CRASH_ROUNDS", "30"))
#: Share of the kills aimed at a temp file's creation that must outlive it
#: (all of them but for a wake-up slower than the rest of the write).
MIN_MID_WRITE_SHARE = 0.5

#: Every child builds its storage the same way: fast KDF, given explicitly.
CHILD_PRELUDE = """
import os, sys
from modelforge_credentials import EncryptedFileStorage, KdfParams
passphrase = os.environ.get("CHILD_PASSPHRASE") or None
storage = EncryptedFileStorage(
    sys.argv[1], passphrase=passphrase, kdf=KdfParams(memory_kib=64, iterations=1, lanes=1)
)
"""

CONCURRENT_WRITER = (
    CHILD_PRELUDE
    + """
tag, count = sys.argv[2], int(sys.argv[3])
print("ready", flush=True)
if sys.stdin.readline().strip() != "go":
    sys.exit(3)
for i in range(count):
    storage.store("race", f"{tag}-{i}", f"value-{tag}-{i}")
print("done", flush=True)
"""
)

#: Says "begin N" before each store and "ack N" once it returned (testkit.WriterReport).
ACKING_WRITER = (
    CHILD_PRELUDE
    + """
i = int(sys.argv[2])
print("ready", flush=True)
while True:
    print(f"begin {i}", flush=True)
    storage.store("crash", f"k{i}", f"v{i}-" + "x" * (i % 97))
    print(f"ack {i}", flush=True)
    i += 1
"""
)

#: Dies by SIGXFSZ (not EFBIG: Python ignores the signal by default) at the
#: first write past ``limit`` bytes: a crash at an exact point of a write.
FILE_SIZE_LIMITED_WRITER = (
    CHILD_PRELUDE
    + """
import resource, signal
limit = int(sys.argv[2])
signal.signal(signal.SIGXFSZ, signal.SIG_DFL)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
storage.store("crash", "never", "never-acknowledged-value")
print("stored", flush=True)
"""
)


def child_env(passphrase: str | None) -> dict[str, str]:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env.pop("CHILD_PASSPHRASE", None)
    if passphrase is not None:
        env["CHILD_PASSPHRASE"] = passphrase
    return env


def spawn(script: str, *args: str, passphrase: str | None = PASSPHRASE) -> subprocess.Popen[bytes]:
    # Unbuffered: a line read must not take later output with it, out of order.
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        bufsize=0,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(passphrase),
    )


def expect_line(proc: subprocess.Popen[bytes], expected: bytes) -> None:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line != expected:
        proc.kill()
        _, err = proc.communicate()
        pytest.fail(f"child said {line!r}, not {expected!r}; stderr:\n{err.decode()}")


@pytest.fixture
def storage_dir(tmp_path: Path) -> Path:
    return tmp_path / "config"


def open_storage(
    directory: Path, fast_kdf: KdfParams, passphrase: str | None = PASSPHRASE
) -> EncryptedFileStorage:
    return EncryptedFileStorage(directory, passphrase=passphrase, kdf=fast_kdf)


# -- concurrent writers -----------------------------------------------------------------


def test_two_processes_storing_200_keys_each_lose_nothing(
    storage_dir: Path, fast_kdf: KdfParams
) -> None:
    count = 200
    children = {tag: spawn(CONCURRENT_WRITER, str(storage_dir), tag, str(count)) for tag in "ab"}
    try:
        for proc in children.values():
            expect_line(proc, b"ready\n")
        # Both are past start-up: release them together. Neither file exists
        # yet, so they also race to create it.
        for proc in children.values():
            assert proc.stdin is not None
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
        for tag, proc in children.items():
            out, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, f"writer {tag} failed:\n{err.decode()}"
            assert out == b"done\n"
    finally:
        for proc in children.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    stored = open_storage(storage_dir, fast_kdf).load()
    expected = {f"{tag}-{i}": f"value-{tag}-{i}" for tag in "ab" for i in range(count)}
    missing = sorted(set(expected) - set(stored.get("race", {})))
    assert not missing, f"{len(missing)} of {len(expected)} stores lost, e.g. {missing[:5]}"
    assert stored == {"race": expected}
    assert temp_files(storage_dir) == []


# -- SIGKILL at random moments ------------------------------------------------------------


def _read_until(proc: subprocess.Popen[bytes], deadline: float) -> bytes:
    """What the child writes to stdout until ``deadline`` (or its exit)."""
    assert proc.stdout is not None
    return read_for(proc.stdout.fileno(), deadline - time.monotonic())


def _kill_round(
    proc: subprocess.Popen[bytes], delay: float, watch: NewFileWatch | None
) -> tuple[bytes, str]:
    """SIGKILL ``proc`` after ``delay`` seconds or, with a ``watch``, at the first
    temp file it creates after them. Its output and its standard error."""
    early = _read_until(proc, time.monotonic() + delay)
    if watch is not None:
        watch.drain()
        watch.wait(is_temp_name, TIMEOUT)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=TIMEOUT)
    assert proc.stdout is not None and proc.stderr is not None
    return early + proc.stdout.read(), proc.stderr.read().decode()


def test_sigkill_at_random_moments_never_loses_an_acknowledged_store(
    storage_dir: Path, fast_kdf: KdfParams
) -> None:
    """Rounds of: a child stores and acknowledges in a loop, SIGKILL at a random moment.

    Every other round the kill waits, after its random delay, for the child's
    next temp file (inotify), so some kills surely land inside the atomic
    write. A kill landed mid-write when the child's temp file outlived it; the
    child's own report (begin/ack) must then show a store in flight, and at
    least MIN_MID_WRITE_SHARE of the aimed kills must land so.

    Data checks fail the round at once; a temp file surviving the parent's
    next store is collected and reported after all rounds, so one bug does
    not hide the others.
    """
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    parent = open_storage(storage_dir, fast_kdf)
    parent.store("crash", "seed", "seed-value")
    acknowledged: dict[str, str] = {"seed": "seed-value"}
    next_index = 0
    in_store = mid_write = aimed_mid_write = completed_unacked = 0
    stale_after_store: list[str] = []
    watch = NewFileWatch(storage_dir)

    for round_number in range(CRASH_ROUNDS):
        where = f"round {round_number} (seed {seed})"
        aimed = round_number % 2 == 1
        leftovers = set(temp_files(storage_dir))
        proc = spawn(ACKING_WRITER, str(storage_dir), str(next_index))
        try:
            expect_line(proc, b"ready\n")
            output, errors = _kill_round(proc, rng.uniform(0.0, 0.03), watch if aimed else None)
            temps_at_kill = set(temp_files(storage_dir))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for stream in (proc.stdin, proc.stdout, proc.stderr):
                if stream is not None:
                    stream.close()
        assert proc.returncode == -signal.SIGKILL, f"{where}: child died early:\n{errors}"
        report = WriterReport.parse(output)
        # A temp the child created (not one left from before) means mid-write.
        landed_mid_write = bool(temps_at_kill - leftovers)
        assert report.in_store is not None or not landed_mid_write, (
            f"{where}: a temp file survived a writer that had no store in flight"
        )
        in_store += report.in_store is not None
        mid_write += landed_mid_write
        aimed_mid_write += aimed and landed_mid_write

        # Every ack printed before the kill is an acknowledged store.
        for index in report.acks:
            acknowledged[f"k{index}"] = crash_value(index)
        last = max(report.acks, default=next_index - 1)

        try:
            stored = open_storage(storage_dir, fast_kdf).load()["crash"]
        except CredentialCorruptedError as err:
            pytest.fail(f"{where}: the file is damaged after SIGKILL: {err}")
        lost = sorted(k for k, v in acknowledged.items() if stored.get(k) != v)
        assert not lost, f"{where}: acknowledged stores lost: {lost}"
        # At most the store in flight at the kill made it without its ack.
        unacked = set(stored) - set(acknowledged)
        assert unacked <= {f"k{last + 1}"}, f"{where}: unexpected keys {sorted(unacked)}"
        assert stored.get(f"k{last + 1}", crash_value(last + 1)) == crash_value(last + 1)
        completed_unacked += len(unacked)
        acknowledged = dict(stored)
        next_index = last + 2

        parent.store("crash", f"parent-{round_number}", "parent-value")
        acknowledged[f"parent-{round_number}"] = "parent-value"
        stale_after_store += [f"{where}: {p.name}" for p in temp_files(storage_dir)]
    watch.close()

    aimed_rounds = CRASH_ROUNDS // 2
    print(
        f"\ncrash rounds: {CRASH_ROUNDS}, kills inside a store (the writer's report): "
        f"{in_store}, kills mid-write (child's temp present): {mid_write} "
        f"({aimed_mid_write} of {aimed_rounds} aimed), "
        f"stores done but not acknowledged: {completed_unacked}, "
        f"temps left by the next store: {len(stale_after_store)}, seed {seed}"
    )
    assert open_storage(storage_dir, fast_kdf).load()["crash"] == acknowledged
    assert not stale_after_store, (
        f"a store after a crash left temp files in {len(stale_after_store)} of "
        f"{CRASH_ROUNDS} rounds: {stale_after_store[:3]}"
    )
    assert aimed_mid_write >= max(1, int(aimed_rounds * MIN_MID_WRITE_SHARE)), (
        f"only {aimed_mid_write} of {aimed_rounds} aimed kills landed mid-write (seed {seed})"
    )


def test_store_after_a_crash_between_backup_and_replace_leaves_no_temp(
    storage_dir: Path, fast_kdf: KdfParams
) -> None:
    """The state SIGKILL leaves between ``_link_backup`` and ``os.replace``.

    There ``credentials.enc.bak`` is a hard link to ``credentials.enc``. The
    next store links the current file to ``.credentials.enc.bak.*.tmp`` and
    renames that over the backup; rename(2) between two links of one inode
    does nothing, so the staging link used to stay behind.
    """
    storage = open_storage(storage_dir, fast_kdf)
    storage.store("crash", "one", "value-one")
    storage.store("crash", "two", "value-two")
    storage.backup_path.unlink()
    os.link(storage.path, storage.backup_path)
    (storage_dir / ".credentials.enc.0123456789ab.tmp").write_bytes(b"half a write")

    storage.store("crash", "three", "value-three")
    assert temp_files(storage_dir) == []
    assert open_storage(storage_dir, fast_kdf).load() == {
        "crash": {"one": "value-one", "two": "value-two", "three": "value-three"}
    }


def test_crash_mid_write_leaves_the_previous_file(storage_dir: Path, fast_kdf: KdfParams) -> None:
    parent = open_storage(storage_dir, fast_kdf)
    parent.store_many({"crash": {f"k{i}": crash_value(i) for i in range(20)}})
    before = parent.path.read_bytes()
    backup_before = parent.backup_path.read_bytes() if parent.backup_path.exists() else None

    proc = spawn(FILE_SIZE_LIMITED_WRITER, str(storage_dir), str(len(before) // 2))
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGXFSZ, err.decode()
    assert out == b""
    [temp] = temp_files(storage_dir)
    assert 0 < temp.stat().st_size < len(before)  # killed half-way through the write

    assert parent.path.read_bytes() == before
    assert (parent.backup_path.read_bytes() if parent.backup_path.exists() else None) == (
        backup_before
    )
    assert open_storage(storage_dir, fast_kdf).load() == {
        "crash": {f"k{i}": crash_value(i) for i in range(20)}
    }
    parent.store("crash", "after", "after-value")
    assert temp_files(storage_dir) == []
    assert open_storage(storage_dir, fast_kdf).retrieve("crash", "after") == "after-value"


def test_crash_while_creating_the_key_file_leaves_a_usable_store(
    storage_dir: Path, fast_kdf: KdfParams
) -> None:
    """A first store killed while writing ``credentials.key`` must not brick the store.

    Regression: the key file used to be written in place (O_EXCL, then
    write), so a crash (or ENOSPC) between create and write left an empty key
    file; every later store then raised CredentialCorruptedError ("the key
    file has the wrong size"), although no credentials file was ever written.
    """
    proc = spawn(FILE_SIZE_LIMITED_WRITER, str(storage_dir), "0", passphrase=None)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGXFSZ, err.decode()
    storage = EncryptedFileStorage(storage_dir, kdf=fast_kdf)
    assert not storage.path.exists()

    storage.store("openai", "api_key", "after-crash-value")
    assert EncryptedFileStorage(storage_dir).retrieve("openai", "api_key") == "after-crash-value"
    assert storage.key_path.stat().st_size == 32


# -- a full disk ----------------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs, unmounted afterwards; skips where mounting is not allowed."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    with mounted_tmpfs(tmp_path / "tmpfs", "256k") as mount_point:
        yield mount_point


def fill(path: Path) -> None:
    """Write zeros to ``path`` until the file system says it is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while True:
            try:
                os.write(fd, bytes(4096))
            except OSError as err:
                assert err.errno == errno.ENOSPC
                return
    finally:
        os.close(fd)


def test_disk_full_fails_cleanly_and_recovers(small_tmpfs: Path, fast_kdf: KdfParams) -> None:
    storage = open_storage(small_tmpfs / "config", fast_kdf)
    storage.store("disk", "seed", "seed-value")
    filler = small_tmpfs / "filler"
    filler.write_bytes(bytes(96 * 1024))

    def snapshot() -> tuple[bytes, bytes | None]:
        backup = storage.backup_path
        return storage.path.read_bytes(), backup.read_bytes() if backup.exists() else None

    full = store_until_full(
        lambda key, value: storage.store("disk", key, value),
        CredentialStorageUnavailableError,
        snapshot,
    )
    stored = {"seed": "seed-value", **full.stored}
    failure, failed_index, (before, backup_before) = full.failure, full.index, full.before
    assert not isinstance(failure, CredentialCorruptedError)
    assert "disk is full" in str(failure)
    assert "disk-SECRET" not in str(failure) and PASSPHRASE not in str(failure)
    assert storage.path.read_bytes() == before
    if backup_before is not None:
        assert storage.backup_path.read_bytes() == backup_before
    assert temp_files(storage.config_dir) == []
    assert storage.load() == {"disk": stored}
    assert open_storage(storage.config_dir, fast_kdf).load() == {"disk": stored}

    filler.unlink()
    storage.store("disk", f"k{failed_index}", disk_value(failed_index))
    stored[f"k{failed_index}"] = disk_value(failed_index)
    assert open_storage(storage.config_dir, fast_kdf).load() == {"disk": stored}
    assert temp_files(storage.config_dir) == []


def test_disk_full_on_the_first_keyfile_store_leaves_a_usable_store(
    small_tmpfs: Path, fast_kdf: KdfParams
) -> None:
    """Same root cause as the key-file crash test, reached through ENOSPC.

    Regression: the failed first store used to leave a 0-byte credentials.key,
    so after space was freed every store raised CredentialCorruptedError.
    """
    directory = small_tmpfs / "config"
    directory.mkdir(mode=0o700)
    filler = small_tmpfs / "filler"
    fill(filler)
    storage = EncryptedFileStorage(directory, kdf=fast_kdf)
    with pytest.raises(CredentialStorageUnavailableError) as err:
        storage.store("openai", "api_key", "first-SECRET-value")
    assert not isinstance(err.value, CredentialCorruptedError)
    assert "first-SECRET-value" not in str(err.value)
    assert not storage.path.exists()

    filler.unlink()
    storage.store("openai", "api_key", "first-SECRET-value")
    assert EncryptedFileStorage(directory).retrieve("openai", "api_key") == "first-SECRET-value"
