"""Timing loops, percentiles, CPU time, memory and CPU pinning.

Everything here is independent of the agent: a "call" is any zero-argument
function, a process is a pid. Latencies are nanoseconds from
``time.perf_counter_ns``; every loop is bounded both in count and in time.
"""

from __future__ import annotations

import gc
import math
import multiprocessing
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICK_NS = 1_000_000_000 // os.sysconf("SC_CLK_TCK")
ALL_CPUS: frozenset[int] = frozenset(os.sched_getaffinity(0))

Call = Callable[[], object]


# -- statistics -------------------------------------------------------------------


def percentile(ordered: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks; ``ordered`` must be sorted."""
    if not ordered:
        return math.nan
    position = (len(ordered) - 1) * q / 100.0
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


@dataclass(frozen=True)
class Summary:
    """Percentiles of one sample set, in nanoseconds."""

    n: int
    p50: float
    p99: float
    mean: float
    max: float

    @classmethod
    def of(cls, samples: Iterable[float]) -> Summary:
        ordered = sorted(samples)
        if not ordered:
            return cls(0, math.nan, math.nan, math.nan, math.nan)
        return cls(
            len(ordered),
            percentile(ordered, 50),
            percentile(ordered, 99),
            sum(ordered) / len(ordered),
            ordered[-1],
        )

    def to_dict(self) -> dict[str, float]:
        return {"n": self.n, "p50": self.p50, "p99": self.p99, "mean": self.mean, "max": self.max}


def fit_line(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float, float]:
    """Least squares ``y = a + b*x``: returns (a, b, r squared)."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True))
    b = sxy / sxx if sxx else 0.0
    a = my - b * mx
    ss_tot = sum((y - my) ** 2 for y in ys)
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys, strict=True))
    return a, b, (1.0 - ss_res / ss_tot) if ss_tot else 1.0


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """The exponent k of ``y ~ x**k`` (1.0 means linear in x)."""
    return fit_line([math.log(x) for x in xs], [math.log(y) for y in ys])[1]


# -- timing loops -------------------------------------------------------------------


def time_calls(call: Call, count: int, *, max_seconds: float = 60.0) -> list[int]:
    """Latency of ``count`` sequential calls (stops early after ``max_seconds``)."""
    samples: list[int] = []
    clock = time.perf_counter_ns
    deadline = clock() + int(max_seconds * 1e9)
    for _ in range(count):
        start = clock()
        call()
        end = clock()
        samples.append(end - start)
        if end > deadline:
            break
    return samples


def warm_up(call: Call, count: int, *, max_seconds: float = 10.0) -> None:
    time_calls(call, count, max_seconds=max_seconds)


def interleaved(
    calls: dict[str, Call],
    *,
    rounds: int,
    per_round: int | dict[str, int],
    warmup: int = 200,
    max_seconds: float = 120.0,
) -> dict[str, list[int]]:
    """Time every call in alternating rounds so that drift hits all of them alike.

    The order of the peers rotates each round, so none always runs right
    after another's burst. ``per_round`` may differ per peer (slow peers take
    fewer calls per round). Stops after ``max_seconds`` of rounds.
    """
    names = list(calls)
    counts = {n: per_round if isinstance(per_round, int) else per_round[n] for n in names}
    for name in names:
        warm_up(calls[name], min(warmup, max(1, counts[name])))
    samples: dict[str, list[int]] = {name: [] for name in names}
    deadline = time.monotonic() + max_seconds
    for index in range(rounds):
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            # As timeit does: this process's own garbage collector stays out
            # of the timed calls (it runs between batches instead).
            gc.collect()
            gc.disable()
            try:
                samples[name] += time_calls(calls[name], counts[name], max_seconds=max_seconds)
            finally:
                gc.enable()
        if time.monotonic() > deadline:
            break
    return samples


def run_process(
    command: Sequence[str], env: dict[str, str], limit: float = 60.0
) -> tuple[int, bytes, bytes]:
    """Run a process to completion: (status, stdout, stderr).

    Waits with a blocking waitpid, not ``subprocess.run(timeout=...)``, whose
    wait polls with growing sleeps and would round timings up by
    milliseconds; a timer kills a child that hangs past ``limit``.
    """
    proc = subprocess.Popen(list(command), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    watchdog = threading.Timer(limit, proc.kill)
    watchdog.start()
    try:
        out, err = proc.communicate()
    finally:
        watchdog.cancel()
    return proc.returncode, out, err


# -- processes: CPU time, memory, pinning -----------------------------------------------


def cpu_ns(pid: int) -> int:
    """utime + stime of the whole process (all threads), from /proc/<pid>/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name may hold spaces or parentheses: fields follow the last ")".
    fields = text.rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) * CLOCK_TICK_NS


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise ValueError(f"no VmRSS for pid {pid}")


def pin(pid: int, cpus: Iterable[int]) -> None:
    """Pin every thread of ``pid`` (sched_setaffinity acts on one thread only)."""
    wanted = set(cpus)
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except FileNotFoundError:
        tids = [pid]
    for tid in tids:
        try:
            os.sched_setaffinity(tid, wanted)
        except (ProcessLookupError, FileNotFoundError):
            pass  # a thread that ended meanwhile


def pin_self(cpus: Iterable[int]) -> None:
    """Pin the calling thread (children started afterwards inherit this)."""
    os.sched_setaffinity(0, set(cpus))


@dataclass(frozen=True)
class Placement:
    """Where the client (this process) and the servers run."""

    name: str
    client: frozenset[int]
    server: frozenset[int]

    def apply(self, server_pids: Iterable[int]) -> None:
        pin_self(self.client)
        for pid in server_pids:
            pin(pid, self.server)


def placements() -> list[Placement]:
    cpus = sorted(ALL_CPUS)
    if len(cpus) < 2:
        only = frozenset(cpus)
        return [Placement("same CPU", only, only)]
    first, second = frozenset({cpus[0]}), frozenset({cpus[1]})
    return [Placement("split CPUs", first, second), Placement("same CPU", first, first)]


def unpinned(server_pids: Iterable[int] = ()) -> None:
    Placement("unpinned", ALL_CPUS, ALL_CPUS).apply(server_pids)


# -- closed-loop load from many processes ---------------------------------------------------

SSH_REQUEST_IDENTITIES = b"\x00\x00\x00\x01\x0b"
SSH_IDENTITIES_ANSWER = 12


class SshAgentClient:
    """A raw blocking client for ssh-agent, shaped like AgentClient's I/O.

    Same socket kind, same timeout (so the same poll-then-recv path inside
    CPython), one ``sendall`` and a ``recv`` loop until the frame is whole.
    """

    def __init__(self, path: str | os.PathLike[str], timeout: float = 10.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(os.fspath(path))

    def request_identities(self) -> int:
        self.sock.sendall(SSH_REQUEST_IDENTITIES)
        buf = b""
        while True:
            if len(buf) >= 4:
                length = int.from_bytes(buf[:4], "big")
                if len(buf) >= 4 + length:
                    break
            chunk = self.sock.recv(65_536)
            if not chunk:
                raise ConnectionError("ssh-agent closed the connection")
            buf += chunk
        if buf[4] != SSH_IDENTITIES_ANSWER:
            raise ConnectionError(f"ssh-agent answered message {buf[4]}, expected 12")
        return int.from_bytes(buf[5:9], "big")

    def close(self) -> None:
        self.sock.close()


def make_call(kind: str, path: str) -> tuple[Call, Callable[[], None]]:
    """A request function for one peer kind over a new connection, and its closer."""
    if kind == "ssh":
        ssh = SshAgentClient(path)
        return ssh.request_identities, ssh.close
    from modelforge_credentials.client.sync import AgentClient

    client = AgentClient(path)
    provider, key = kind.split("/", 1)
    return (lambda: client.retrieve(provider, key)), client.close


@dataclass(frozen=True)
class LoadResult:
    requests: int
    seconds: float
    server_cpu_ns: int
    sample_skew_ms: float
    errors: int

    @property
    def rps(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_per_request_ns(self) -> float:
        return self.server_cpu_ns / self.requests if self.requests else math.nan

    @property
    def server_utilisation(self) -> float:
        return self.server_cpu_ns / (self.seconds * 1e9)


def _load_worker(kind, path, cpus, times, go, results):  # type: ignore[no-untyped-def]
    """One closed-loop client: one connection, one request in flight."""
    pin_self(cpus)
    errors = 0
    count = 0
    try:
        call, close = make_call(kind, path)
        call()
    except Exception:
        results.put((0, 1))
        return
    results.put(("ready", 0))
    go.wait(30)
    t_begin, t_end, t_stop = times[0], times[1], times[2]
    clock = time.monotonic
    try:
        while True:
            now = clock()
            if now >= t_stop:
                break
            try:
                call()
            except Exception:
                errors += 1
                if errors > 100:
                    break
                continue
            done = clock()
            if t_begin <= done < t_end:
                count += 1
    finally:
        close()
    results.put((count, errors))


def closed_loop(
    kind: str,
    path: str,
    server_pid: int,
    *,
    workers: int,
    client_cpus: Iterable[int],
    warmup_s: float,
    window_s: float,
    tail_s: float = 0.3,
) -> LoadResult:
    """``workers`` processes, each with its own connection, in a closed loop.

    Requests completing inside the window are counted; the server's CPU time
    is read from /proc at the window's edges while every client still runs,
    so the figures describe saturation, not the ramp-up or the tail.
    """
    ctx = multiprocessing.get_context("spawn")
    times = ctx.Array("d", 3)
    go = ctx.Event()
    results = ctx.Queue()
    cpus = sorted(client_cpus)
    procs = [
        ctx.Process(target=_load_worker, args=(kind, path, cpus, times, go, results), daemon=True)
        for _ in range(workers)
    ]
    for proc in procs:
        proc.start()
    failed = 0
    for _ in procs:
        tag, _value = results.get(timeout=60)
        if tag != "ready":
            failed += 1
    if failed:
        for proc in procs:
            proc.terminate()
        raise RuntimeError(f"{failed} of {workers} load clients could not connect to {path}")
    start = time.monotonic() + 0.1
    t_begin, t_end = start + warmup_s, start + warmup_s + window_s
    times[0], times[1], times[2] = t_begin, t_end, t_end + tail_s
    go.set()
    time.sleep(max(0.0, t_begin - time.monotonic()))
    cpu_a, at_a = cpu_ns(server_pid), time.monotonic()
    time.sleep(max(0.0, t_end - time.monotonic()))
    cpu_b, at_b = cpu_ns(server_pid), time.monotonic()
    total = errors = 0
    for _ in procs:
        count, errs = results.get(timeout=60 + tail_s)
        total += count
        errors += errs
    for proc in procs:
        proc.join(10)
    skew = max(abs(at_a - t_begin), abs(at_b - t_end)) * 1e3
    return LoadResult(total, window_s, cpu_b - cpu_a, skew, errors)
