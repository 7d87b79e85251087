"""Agent start-up and resident memory, against ssh-agent and an idle python.

Each run starts the default agent (``MODEL_FORGE_EVENT_LOOP=auto``), one on
asyncio's own loop and an idle ``python -c`` in turn, so drift on the shared
machine hits all three alike.
"""

from __future__ import annotations

import os
import signal
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import measure
from context import Context, make_credentials
from measure import Summary
from peers import IdlePythonPeer, PeerUnavailable, environ, private_env
from report import Row, Section, fmt_ns, fmt_ratio

from modelforge_credentials.settings import EVENT_LOOP


def _stop_pid(pid: int, timeout: float = 10.0) -> None:
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
        except ChildProcessError:
            if not os.path.exists(f"/proc/{pid}"):
                return
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)


@dataclass
class StartRuns:
    """Start times and idle resident sets (KiB) of interleaved start runs."""

    times: list[int] = field(default_factory=list)  # the default agent's, ns
    asyncio_times: list[int] = field(default_factory=list)
    rss: dict[str, list[int]] = field(
        default_factory=lambda: {"agent": [], "asyncio": [], "python": []}
    )


def _spawn_and_stop(env: dict[str, str], sock: Path) -> tuple[int, int]:
    """(ns to ready, RSS KiB right after readiness) of one auto-started agent."""
    from modelforge_credentials.client.autostart import spawn_agent

    with environ(env):
        started = time.perf_counter_ns()
        pid = spawn_agent(sock)
        elapsed = time.perf_counter_ns() - started
        rss = measure.rss_kib(pid)
        _stop_pid(pid)
    return elapsed, rss


def _start_runs(env: dict[str, str], sock: Path, runs: int) -> StartRuns:
    """The default agent, an asyncio-loop agent and an idle python, in turn."""
    result = StartRuns()
    asyncio_env = dict(env, **{EVENT_LOOP: "asyncio"})
    for index in range(runs + 1):
        elapsed, agent_rss = _spawn_and_stop(env, sock)
        asyncio_elapsed, asyncio_rss = _spawn_and_stop(asyncio_env, sock)
        idle = IdlePythonPeer(env).start()
        try:
            python_rss = measure.rss_kib(idle.pid)
        finally:
            idle.stop()
        if index:  # the first run warms the page cache
            result.times.append(elapsed)
            result.asyncio_times.append(asyncio_elapsed)
            for name, value in (("agent", agent_rss), ("asyncio", asyncio_rss)):
                result.rss[name].append(value)
            result.rss["python"].append(python_rss)
    return result


def _mib(kib: float) -> str:
    return f"{kib / 1024:.1f} MiB"


def _memory_rows(ctx: Context, runs: StartRuns) -> list[Row]:
    """Idle RSS of the agent (both event loops) against ssh-agent and a bare python."""
    median = {name: statistics.median(values) for name, values in runs.rss.items()}
    count = f"median of {len(runs.rss['agent'])}"
    rows = []
    ratios = []
    try:
        ssh_rss = measure.rss_kib(ctx.ssh_agent().pid)
        rows.append(
            Row(
                "ssh-agent RSS, idle (no keys)",
                extra=f"{_mib(ssh_rss)}; baseline",
                how="the OpenSSH ssh-agent the latency rows used, read after them",
            )
        )
        ratios.append(f"{fmt_ratio(median['agent'] / ssh_rss)} ssh-agent")
    except PeerUnavailable as err:
        rows.append(Row("ssh-agent RSS, idle (no keys)", not_measured=str(err)))
    rows.append(
        Row(
            "python -c, idle",
            extra=f"{_mib(median['python'])} ({count}); baseline",
            how=f"the venv's python running `{IdlePythonPeer.CODE}`, read once it printed ready",
        )
    )
    ratios.append(f"{fmt_ratio(median['agent'] / median['python'])} python -c")
    rows.append(
        Row(
            "agent RSS, idle (10 credentials)",
            extra=f"{_mib(median['agent'])} ({count}); " + "; ".join(ratios),
            how=f"right after readiness; {EVENT_LOOP}=auto ({_auto_loop()})",
        )
    )
    rows.append(
        Row(
            f"agent RSS, idle, {EVENT_LOOP}=asyncio",
            extra=(
                f"{_mib(median['asyncio'])} ({count}); the default loop adds "
                f"{_mib(median['agent'] - median['asyncio'])}; start to ready p50 "
                f"{fmt_ns(Summary.of(runs.asyncio_times).p50)}"
            ),
            how="right after readiness; started in turn with the default agent",
        )
    )
    return rows


def _auto_loop() -> str:
    """What ``EVENT_LOOP=auto`` picks in this venv, by the agent's own rule."""
    from modelforge_credentials.daemon.loop import loop_factory, loop_name

    loop = loop_factory({EVENT_LOOP: "auto"})()
    try:
        return loop_name(loop)
    finally:
        loop.close()


def start_and_memory(ctx: Context, memory: dict[int, tuple[int, int]]) -> Section:
    from modelforge_credentials import EncryptedFileStorage

    s = ctx.settings
    root = ctx.root / "start"
    config = root / "config"
    EncryptedFileStorage(config).store_many(make_credentials(10))
    env = private_env(root, MODEL_FORGE_CONFIG_DIR=str(config), **{EVENT_LOOP: "auto"})
    sock = root / "run" / "model-forge" / "agent.sock"
    measure.unpinned()
    runs = _start_runs(env, sock, s.start_runs)
    section = Section(
        "Agent start and memory",
        intro=(
            f"`client.autostart.spawn_agent` until it returns (the agent reports ready only "
            f"once its socket listens), {s.start_runs} runs after one warm-up, 10 stored "
            "credentials, encrypted file with key-file protection; each run also starts an "
            "agent on asyncio's own loop and an idle `python -c`, in turn. Resident memory "
            "is VmRSS from /proc/<pid>/status."
        ),
    )
    section.rows.append(
        Row(
            "agent start to ready (auto-start)",
            Summary.of(runs.times),
            how="fork + exec of `python -m modelforge_credentials.cli serve`, imports, "
            "backend selection, file load, bind, readiness pipe",
        )
    )
    section.rows += _memory_rows(ctx, runs)
    for n, (before, after) in sorted(memory.items()):
        if n < 10_000:
            continue
        section.rows.append(
            Row(
                f"agent RSS, {n:,} credentials",
                extra=f"{_mib(before)} after start; {_mib(after)} after retrieving each once",
                how="the encrypted-file backend loads every credential at start",
            )
        )
    return section
