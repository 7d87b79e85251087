#!/usr/bin/env python3
"""The agent on uvloop against the agent on asyncio's own event loop.

    python3 bench/loop.py [--rounds 8] [--quick]

Each round starts two real agents (``modelforge-agent serve``, as bench/run.py
does: encrypted file, key-file protection, 10 credentials), one with
MODEL_FORGE_EVENT_LOOP=asyncio and one with =uvloop, in alternating order,
and measures both: idle RSS, cached-retrieve round trip p50 on one
connection (split CPUs: client on CPU 0, agent on CPU 1; same CPU: both on
CPU 0), and agent CPU per request with 16 closed-loop client connections
(clients on CPU 0, agent alone on CPU 1). Prints a markdown table of
uvloop/asyncio ratios: the median over rounds and the rounds' range.
uvloop must be importable by the agent (pip install uvloop).
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import run  # noqa: E402  (bench/run.py: bootstrap, load average)

LOOPS = ("asyncio", "uvloop")


@dataclass(frozen=True)
class Counts:
    rounds: int
    latency_rounds: int
    latency_per_round: int
    load_workers: int
    load_warmup_s: float
    load_window_s: float

    @classmethod
    def choose(cls, quick: bool, rounds: int | None) -> Counts:
        if quick:
            return cls(rounds or 2, 2, 500, 16, 0.3, 1.0)
        return cls(rounds or 8, 4, 1500, 16, 0.5, 2.0)


#: metric -> (unit, how to print a value); lower is better for all of them.
METRICS: dict[str, tuple[str, Callable[[float], str]]] = {
    "retrieve p50 [split CPUs]": ("µs", lambda ns: f"{ns / 1e3:.1f}"),
    "retrieve p50 [same CPU]": ("µs", lambda ns: f"{ns / 1e3:.1f}"),
    "agent CPU per request, 16 connections": ("µs", lambda ns: f"{ns / 1e3:.1f}"),
    "16 connections: time per request (1/throughput)": ("µs", lambda ns: f"{ns / 1e3:.1f}"),
    "idle RSS": ("MiB", lambda kib: f"{kib / 1024:.1f}"),
}


def start_agent(root: Path, loop: str):  # type: ignore[no-untyped-def]
    """An agent on ``loop`` in ``root``; checks its log names that loop."""
    from context import make_credentials
    from peers import AgentPeer

    from modelforge_credentials import EncryptedFileStorage

    peer = AgentPeer(root, MODEL_FORGE_EVENT_LOOP=loop)
    EncryptedFileStorage(peer.config_dir).store_many(make_credentials(10))
    peer.start()
    log = (root / "agent.log").read_text(errors="replace")
    if f"{loop} event loop" not in log:
        peer.stop()
        raise RuntimeError(f"the agent did not say it runs on {loop}: {log[-300:]}")
    return peer


def measure_round(scratch: Path, index: int, counts: Counts) -> dict[str, dict[str, float]]:
    """One round: both agents started, measured side by side, stopped."""
    import measure
    from context import KEY, PROVIDER, SECRET

    from modelforge_credentials.client.sync import AgentClient

    order = LOOPS if index % 2 == 0 else LOOPS[::-1]
    agents = {}
    try:
        for loop in order:
            agents[loop] = start_agent(scratch / f"r{index}-{loop}", loop)
        clients = {loop: AgentClient(peer.socket) for loop, peer in agents.items()}
        for client in clients.values():
            assert client.retrieve(PROVIDER, KEY) == SECRET
        time.sleep(0.2)
        values: dict[str, dict[str, float]] = {loop: {} for loop in LOOPS}
        for loop, peer in agents.items():
            values[loop]["idle RSS"] = measure.rss_kib(peer.pid)
        pids = [peer.pid for peer in agents.values()]
        calls = {
            loop: (lambda c=client: c.retrieve(PROVIDER, KEY)) for loop, client in clients.items()
        }
        try:
            for placement in measure.placements():
                placement.apply(pids)
                samples = measure.interleaved(
                    calls,
                    rounds=counts.latency_rounds,
                    per_round=counts.latency_per_round,
                    warmup=300,
                )
                for loop in LOOPS:
                    p50 = measure.Summary.of(samples[loop]).p50
                    values[loop][f"retrieve p50 [{placement.name}]"] = p50
            split = measure.placements()[0]
            split.apply(pids)
            for loop in order:
                load = measure.closed_loop(
                    f"{PROVIDER}/{KEY}",
                    str(agents[loop].socket),
                    agents[loop].pid,
                    workers=counts.load_workers,
                    client_cpus=split.client,
                    warmup_s=counts.load_warmup_s,
                    window_s=counts.load_window_s,
                )
                values[loop]["agent CPU per request, 16 connections"] = load.cpu_per_request_ns
                values[loop]["16 connections: time per request (1/throughput)"] = 1e9 / load.rps
        finally:
            measure.unpinned(pids)
            for client in clients.values():
                client.close()
        return values
    finally:
        for peer in agents.values():
            peer.stop()


def table(rounds: list[dict[str, dict[str, float]]]) -> str:
    """Markdown: each metric's medians, and the ratio's median and range over rounds."""
    lines = [
        "| metric | asyncio (median) | uvloop (median) | uvloop/asyncio | rounds' ratios |",
        "|---|---:|---:|---:|---|",
    ]
    for metric, (unit, show) in METRICS.items():
        a = [r["asyncio"][metric] for r in rounds]
        u = [r["uvloop"][metric] for r in rounds]
        ratios = sorted(x / y for x, y in zip(u, a, strict=True))
        lines.append(
            f"| {metric} | {show(statistics.median(a))} {unit} | "
            f"{show(statistics.median(u))} {unit} | **{statistics.median(ratios):.2f}** | "
            f"{ratios[0]:.2f}–{ratios[-1]:.2f} (n={len(ratios)}) |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=None, help="rounds (default 8; quick 2)")
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke test")
    args = parser.parse_args()
    run.bootstrap(sys.argv[1:], Path(__file__).resolve())
    if not sys.platform.startswith("linux"):
        print("the benchmarks need Linux (/proc, sched_setaffinity)", file=sys.stderr)
        return 2
    if importlib.util.find_spec("uvloop") is None:
        print("uvloop is not installed: pip install uvloop", file=sys.stderr)
        return 2
    import os

    import peers

    counts = Counts.choose(args.quick, args.rounds)
    scratch = Path(tempfile.mkdtemp(prefix="mf-bench-loop-"))
    peers.use_bytecode_cache(scratch / "pycache")
    env = peers.private_env(scratch / "self")
    os.environ.clear()
    os.environ.update(env)
    load_before = run._loadavg()
    results = []
    try:
        for index in range(counts.rounds):
            began = time.monotonic()
            results.append(measure_round(scratch, index, counts))
            print(
                f"round {index + 1}/{counts.rounds}: {time.monotonic() - began:.1f} s", flush=True
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print()
    print(table(results))
    print()
    print(f"load average {load_before} at the start, {run._loadavg()} at the end")
    return 0


if __name__ == "__main__":
    sys.exit(main())
