"""Growth with the number of credentials, unlocking, start-up and memory."""

from __future__ import annotations

import itertools
import math
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import measure
from context import KEY, PROVIDER, SECRET, Context, make_credentials
from design_storage import DesignEncryptedFileStorage
from measure import Summary
from peers import AgentPeer, environ, private_env
from report import Check, Row, Section, fmt_ns, fmt_ratio

PASSPHRASE = "correct horse battery staple"
STATUS_TARGET_NS = 5e6
STORE_TARGET_NS = 10e6


@dataclass
class GrowthResult:
    section: Section
    ns: list[int]
    curves: dict[str, list[float]]
    memory: dict[int, tuple[int, int]] = field(default_factory=dict)  # N -> RSS KiB


def _crossing(a: float, b: float, limit: float) -> float:
    return (limit - a) / b if b > 0 else math.inf


def growth(ctx: Context) -> GrowthResult:
    from modelforge_credentials import EncryptedFileStorage
    from modelforge_credentials.client.sync import AgentClient

    s = ctx.settings
    ns = list(s.growth_ns)
    agents: dict[int, AgentPeer] = {}
    clients: dict[int, AgentClient] = {}
    directs: dict[int, EncryptedFileStorage] = {}
    designs: dict[int, DesignEncryptedFileStorage] = {}
    populate_ns: dict[int, int] = {}
    memory: dict[int, tuple[int, int]] = {}
    for n in ns:
        peer = AgentPeer(ctx.root / f"growth-{n}")
        credentials = make_credentials(n)
        started = time.perf_counter_ns()
        EncryptedFileStorage(peer.config_dir).store_many(credentials)
        populate_ns[n] = time.perf_counter_ns() - started
        designs[n] = DesignEncryptedFileStorage(peer.root / "design")
        designs[n].store_all(credentials)
        peer.start()
        ctx.stack.callback(peer.stop)
        agents[n], directs[n] = peer, EncryptedFileStorage(peer.config_dir)
        clients[n] = AgentClient(peer.socket, timeout=120)
        # The file backend loads everything at start; one retrieve of each
        # credential shows whether serving them costs more memory.
        before = measure.rss_kib(peer.pid)
        for provider, keys in credentials.items():
            for key in keys:
                clients[n].retrieve(provider, key)
        memory[n] = (before, measure.rss_kib(peer.pid))
        del credentials
    assert all(c.retrieve(PROVIDER, KEY) == SECRET for c in clients.values())

    placement = measure.placements()[0]
    pids = [a.pid for a in agents.values()]
    placement.apply(pids)
    counter = itertools.count()

    def storer(client: AgentClient) -> Callable[[], None]:
        return lambda: client.store("bench", "store-target", f"sk-store-{next(counter)}")

    def bind(fn: Callable[[str, str], object]) -> Callable[[], object]:
        return lambda: fn(PROVIDER, KEY)

    try:
        retrieve = measure.interleaved(
            {str(n): bind(clients[n].retrieve) for n in ns},
            rounds=s.growth_rounds * 2,
            per_round=s.growth_retrieves,
            warmup=200,
        )
        status = measure.interleaved(
            {str(n): clients[n].status for n in ns}, rounds=s.growth_rounds, per_round=50
        )
        calls = {str(n): s.growth_store_calls[n] for n in ns}
        store = measure.interleaved(
            {str(n): storer(clients[n]) for n in ns},
            rounds=s.growth_rounds,
            per_round=calls,
            warmup=2,
        )
        direct = measure.interleaved(
            {str(n): bind(directs[n].retrieve) for n in ns},
            rounds=s.growth_rounds,
            per_round=calls,
            warmup=2,
        )
        design = measure.interleaved(
            {str(n): bind(designs[n].retrieve) for n in ns},
            rounds=s.growth_rounds,
            per_round=calls,
            warmup=2,
        )
    finally:
        measure.unpinned(pids)
        for client in clients.values():
            client.close()

    def stats(samples: dict[str, list[int]]) -> dict[int, Summary]:
        return {n: Summary.of(samples[str(n)]) for n in ns}

    r, st, sv, d, g = stats(retrieve), stats(store), stats(status), stats(direct), stats(design)
    largest = ns[-1]
    section = Section(
        "Growth with the number of stored credentials",
        intro=(
            "One agent per N, all running at once and measured interleaved (client on CPU 0, "
            "agents on CPU 1). Stores were populated with EncryptedFileStorage.store_many "
            "under **key-file protection** (no KDF in these rows). A store replaces one "
            "credential and is durable: the agent rewrites the whole file (read, decrypt, "
            "re-encrypt, write temp + fsync, backup link, rename, fsync dir) on its worker "
            "thread. 'direct' and 'design' retrieves run in this process without an agent: "
            "the design document's storage re-reads and decrypts the whole file per call; "
            "this package's EncryptedFileStorage stats the file and answers from memory "
            "while it is unchanged."
        ),
    )
    ratio = r[largest].p50 / r[ns[0]].p50
    scope = "" if largest == 100_000 else f" (quick run: N={largest:,}; the target is at 100,000)"
    section.rows.append(
        Row(
            f"agent retrieve p50 at N={largest:,}",
            r[largest],
            how="AgentClient.retrieve, cache hit" + scope,
            ratio=f"{fmt_ratio(ratio)} N={ns[0]}",
            checks=[Check(f"≤ 1.2× N={ns[0]}", ratio <= 1.2)],
        )
    )
    if 10_000 in st:
        section.rows.append(
            Row(
                "agent store p50 at N=10,000",
                st[10_000],
                how="AgentClient.store, durable (fsync included)",
                ratio=f"{fmt_ratio(st[10_000].p50 / st[ns[0]].p50)} N={ns[0]}",
                checks=[Check("p50 ≤ 10 ms", st[10_000].p50 <= STORE_TARGET_NS)],
            )
        )
    header = [
        "N",
        "file",
        "agent retrieve p50 / p99",
        "agent store p50 / p99",
        "agent status p50",
        "direct file retrieve p50",
        "design doc file retrieve p50",
        "n (retrieve / store / file)",
        "populate",
    ]
    rows = []
    for n in ns:
        size = os.path.getsize(directs[n].path)
        rows.append(
            [
                f"{n:,}",
                f"{size / 1024:,.0f} KiB",
                f"{fmt_ns(r[n].p50)} / {fmt_ns(r[n].p99)}",
                f"{fmt_ns(st[n].p50)} / {fmt_ns(st[n].p99)}",
                fmt_ns(sv[n].p50),
                fmt_ns(d[n].p50),
                fmt_ns(g[n].p50),
                f"{r[n].n} / {st[n].n} / {d[n].n}",
                fmt_ns(populate_ns[n]),
            ]
        )
    section.table = (header, rows)
    xs = [float(n) for n in ns]
    ys = [st[n].p50 for n in ns]
    a, b, r2 = measure.fit_line(xs, ys)
    top = ns[-2:] if len(ns) >= 2 else ns
    slope = measure.loglog_slope([float(n) for n in top], [st[n].p50 for n in top])
    section.notes.append(
        f"Store p50 fit: {a / 1e6:.2f} ms + {b:,.0f} ns per stored credential (least "
        f"squares over all N, r² = {r2:.3f}); log-log slope between N={top[0]:,} and "
        f"N={top[-1]:,}: {slope:.2f} (1.0 = linear in N)."
    )
    for limit, text in ((10e6, "10 ms"), (100e6, "100 ms")):
        under = [n for n in ns if st[n].p50 <= limit]
        over = [n for n in ns if st[n].p50 > limit]
        if over:
            seen = f"measured: over at N={over[0]:,}" + (
                f", under at N={under[-1]:,}" if under and under[-1] < over[0] else ""
            )
        else:
            seen = f"measured: under at every N up to {ns[-1]:,}"
        section.notes.append(
            f"Store exceeds {text} at N ≈ {_crossing(a, b, limit):,.0f} by the fit ({seen})."
        )
    section.notes.append(
        "Status answers include `cached`, a count over every cache entry: see the status "
        "column for its cost with N."
    )
    curves = {
        "agent retrieve (cached)": [r[n].p50 for n in ns],
        "agent store (durable)": [st[n].p50 for n in ns],
        "agent status": [sv[n].p50 for n in ns],
        "EncryptedFileStorage.retrieve, no agent": [d[n].p50 for n in ns],
        "design doc EncryptedFileStorage.retrieve": [g[n].p50 for n in ns],
    }
    return GrowthResult(section, ns, curves, memory)


def unlock(ctx: Context) -> Section:
    """The KDF's cost, and whether the event loop stays free while it runs."""
    from modelforge_credentials import EncryptedFileStorage, KdfParams
    from modelforge_credentials.client.sync import AgentClient

    s = ctx.settings
    kdf = KdfParams()
    derive = [
        measure.time_calls(lambda: kdf.derive(PASSPHRASE.encode(), os.urandom(16)), 1)[0]
        for _ in range(s.kdf_runs)
    ]
    peer = AgentPeer(ctx.root / "unlock")
    EncryptedFileStorage(peer.config_dir, passphrase=PASSPHRASE).store_many(make_credentials(10))
    peer.start()
    ctx.stack.callback(peer.stop)
    measure.unpinned([peer.pid])
    unlocker = AgentClient(peer.socket, timeout=120)
    watcher = AgentClient(peer.socket)
    assert watcher.status()["locked"] is True
    during: list[int] = []
    unlocks: list[int] = []
    idle: list[int] = []
    for _ in range(s.unlock_rounds):
        records: list[tuple[int, int]] = []
        stop = threading.Event()

        def watch(records: list[tuple[int, int]] = records, stop: threading.Event = stop) -> None:
            clock = time.perf_counter_ns
            deadline = time.monotonic() + 60
            while not stop.is_set() and time.monotonic() < deadline and len(records) < 2_000_000:
                started = clock()
                watcher.status()
                records.append((started, clock() - started))

        thread = threading.Thread(target=watch, daemon=True)
        thread.start()
        time.sleep(0.1)
        began = time.perf_counter_ns()
        unlocker.unlock(PASSPHRASE)
        ended = time.perf_counter_ns()
        time.sleep(0.1)
        stop.set()
        thread.join(30)
        during += [lat for t, lat in records if t >= began and t + lat <= ended]
        idle += [lat for t, lat in records if t + lat < began or t > ended]
        unlocks.append(ended - began)
        unlocker.lock()
    unlocker.close()
    watcher.close()
    status = Summary.of(during)
    section = Section(
        "Unlock: key derivation and a free event loop",
        intro=(
            f"Passphrase store with the default KDF (Argon2id, m=64 MiB, t=3, p=4). One "
            f"client thread sends `unlock` while another loops `status` on its own "
            f"connection; only status calls that start and end inside the unlock window "
            f"count. {s.unlock_rounds} unlock/lock rounds; nothing pinned."
        ),
    )
    section.rows.append(
        Row(
            "KDF alone: KdfParams().derive",
            Summary.of(derive),
            how="in this process, random salt per run",
        )
    )
    section.rows.append(
        Row(
            "agent unlock (client-visible, status loop running)",
            Summary.of(unlocks),
            how=(
                "AgentClient.unlock: KDF + unwrap + load on the agent's worker thread, "
                "sharing the 2 CPUs with the status loop (client and agent)"
            ),
            ratio=f"{fmt_ratio(Summary.of(unlocks).p50 / Summary.of(derive).p50)} KDF alone",
        )
    )
    section.rows.append(
        Row(
            "status during unlock",
            status,
            how="second connection, back-to-back status calls inside the unlock windows",
            ratio=f"max {fmt_ns(status.max)}; idle status p99 {fmt_ns(Summary.of(idle).p99)}",
            checks=[Check("p99 ≤ 5 ms", status.n > 0 and status.p99 <= STATUS_TARGET_NS)],
        )
    )
    return section


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


def start_and_memory(ctx: Context, memory: dict[int, tuple[int, int]]) -> Section:
    from modelforge_credentials import EncryptedFileStorage
    from modelforge_credentials.client.autostart import spawn_agent

    s = ctx.settings
    root = ctx.root / "start"
    config = root / "config"
    EncryptedFileStorage(config).store_many(make_credentials(10))
    env = private_env(root, MODEL_FORGE_CONFIG_DIR=str(config))
    sock = root / "run" / "model-forge" / "agent.sock"
    measure.unpinned()
    times: list[int] = []
    rss: list[int] = []
    with environ(env):
        for index in range(s.start_runs + 1):
            started = time.perf_counter_ns()
            pid = spawn_agent(sock)
            elapsed = time.perf_counter_ns() - started
            if index:  # the first run warms the page cache
                times.append(elapsed)
                rss.append(measure.rss_kib(pid))
            _stop_pid(pid)
    section = Section(
        "Agent start and memory",
        intro=(
            f"`client.autostart.spawn_agent` until it returns (the agent reports ready only "
            f"once its socket listens), {s.start_runs} runs after one warm-up, 10 stored "
            "credentials, encrypted file with key-file protection. Resident memory is VmRSS "
            "from /proc/<pid>/status."
        ),
    )
    section.rows.append(
        Row(
            "agent start to ready (auto-start)",
            Summary.of(times),
            how="fork + exec of `python -m modelforge_credentials.cli serve`, imports, "
            "backend selection, file load, bind, readiness pipe",
        )
    )
    rss_sorted = sorted(rss)
    section.rows.append(
        Row(
            "agent RSS, idle (10 credentials)",
            extra=f"{rss_sorted[len(rss_sorted) // 2] / 1024:.1f} MiB (median of {len(rss)})",
            how="right after readiness",
        )
    )
    for n, (before, after) in sorted(memory.items()):
        if n < 10_000:
            continue
        section.rows.append(
            Row(
                f"agent RSS, {n:,} credentials",
                extra=f"{before / 1024:.1f} MiB after start; {after / 1024:.1f} MiB after "
                "retrieving each once",
                how="the encrypted-file backend loads every credential at start",
            )
        )
    return section
