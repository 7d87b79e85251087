"""Growth with the number of credentials, and unlocking."""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import measure
from context import KEY, PROVIDER, SECRET, Context, Settings, make_credentials
from design_storage import DesignEncryptedFileStorage
from measure import Summary
from peers import AgentPeer
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


@dataclass
class _Fleet:
    """One agent per N, with a client, and the two in-process stores beside it."""

    agents: dict[int, AgentPeer] = field(default_factory=dict)
    clients: dict[int, Any] = field(default_factory=dict)  # AgentClient
    directs: dict[int, Any] = field(default_factory=dict)  # EncryptedFileStorage
    designs: dict[int, DesignEncryptedFileStorage] = field(default_factory=dict)
    populate_ns: dict[int, int] = field(default_factory=dict)
    memory: dict[int, tuple[int, int]] = field(default_factory=dict)


def _start_fleet(ctx: Context, ns: list[int]) -> _Fleet:
    from modelforge_credentials import EncryptedFileStorage
    from modelforge_credentials.client.sync import AgentClient

    fleet = _Fleet()
    for n in ns:
        peer = AgentPeer(ctx.root / f"growth-{n}")
        credentials = make_credentials(n)
        started = time.perf_counter_ns()
        EncryptedFileStorage(peer.config_dir).store_many(credentials)
        fleet.populate_ns[n] = time.perf_counter_ns() - started
        fleet.designs[n] = DesignEncryptedFileStorage(peer.root / "design")
        fleet.designs[n].store_all(credentials)
        peer.start()
        ctx.stack.callback(peer.stop)
        fleet.agents[n], fleet.directs[n] = peer, EncryptedFileStorage(peer.config_dir)
        client = fleet.clients[n] = AgentClient(peer.socket, timeout=120)
        # The file backend loads everything at start; one retrieve of each
        # credential shows whether serving them costs more memory.
        before = measure.rss_kib(peer.pid)
        for provider, keys in credentials.items():
            for key in keys:
                client.retrieve(provider, key)
        fleet.memory[n] = (before, measure.rss_kib(peer.pid))
        del credentials
    assert all(c.retrieve(PROVIDER, KEY) == SECRET for c in fleet.clients.values())
    return fleet


def _measure_fleet(fleet: _Fleet, ns: list[int], s: Settings) -> dict[str, dict[int, Summary]]:
    """Retrieve, status, store, direct and design samples, each interleaved over N."""
    placement = measure.placements()[0]
    pids = [a.pid for a in fleet.agents.values()]
    placement.apply(pids)
    counter = itertools.count()

    def storer(client: Any) -> Callable[[], None]:
        return lambda: client.store("bench", "store-target", f"sk-store-{next(counter)}")

    def bind(fn: Callable[[str, str], object]) -> Callable[[], object]:
        return lambda: fn(PROVIDER, KEY)

    calls = {str(n): s.growth_store_calls[n] for n in ns}
    slow = {"rounds": s.growth_rounds, "per_round": calls, "warmup": 2}
    plans: dict[str, tuple[dict[str, Callable[[], object]], dict[str, Any]]] = {
        "retrieve": (
            {str(n): bind(fleet.clients[n].retrieve) for n in ns},
            {"rounds": s.growth_rounds * 2, "per_round": s.growth_retrieves, "warmup": 200},
        ),
        "status": (
            {str(n): fleet.clients[n].status for n in ns},
            {"rounds": s.growth_rounds, "per_round": 50},
        ),
        "store": ({str(n): storer(fleet.clients[n]) for n in ns}, slow),
        "direct": ({str(n): bind(fleet.directs[n].retrieve) for n in ns}, slow),
        "design": ({str(n): bind(fleet.designs[n].retrieve) for n in ns}, slow),
    }
    try:
        samples = {name: measure.interleaved(c, **kw) for name, (c, kw) in plans.items()}
    finally:
        measure.unpinned(pids)
        for client in fleet.clients.values():
            client.close()
    return {name: {n: Summary.of(by_n[str(n)]) for n in ns} for name, by_n in samples.items()}


def growth(ctx: Context) -> GrowthResult:
    ns = list(ctx.settings.growth_ns)
    fleet = _start_fleet(ctx, ns)
    stats = _measure_fleet(fleet, ns, ctx.settings)
    section = _growth_section(fleet, ns, stats)
    r, st, sv, d, g = (stats[k] for k in ("retrieve", "store", "status", "direct", "design"))
    curves = {
        "agent retrieve (cached)": [r[n].p50 for n in ns],
        "agent store (durable)": [st[n].p50 for n in ns],
        "agent status": [sv[n].p50 for n in ns],
        "EncryptedFileStorage.retrieve, no agent": [d[n].p50 for n in ns],
        "design doc EncryptedFileStorage.retrieve": [g[n].p50 for n in ns],
    }
    return GrowthResult(section, ns, curves, fleet.memory)


def _growth_section(fleet: _Fleet, ns: list[int], stats: dict[str, dict[int, Summary]]) -> Section:
    r, st = stats["retrieve"], stats["store"]
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
    section.table = _growth_table(fleet, ns, stats)
    section.notes += _store_notes(ns, st)
    section.notes.append(
        "Status answers include `cached`, a count of the cache's values: see the status "
        "column for its cost with N."
    )
    return section


GROWTH_HEADER = [
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


def _growth_table(
    fleet: _Fleet, ns: list[int], stats: dict[str, dict[int, Summary]]
) -> tuple[list[str], list[list[str]]]:
    r, st, sv, d, g = (stats[k] for k in ("retrieve", "store", "status", "direct", "design"))
    rows = []
    for n in ns:
        size = os.path.getsize(fleet.directs[n].path)
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
                fmt_ns(fleet.populate_ns[n]),
            ]
        )
    return GROWTH_HEADER, rows


def _store_notes(ns: list[int], st: dict[int, Summary]) -> list[str]:
    """The store-time fit over N, and where it crosses 10 ms and 100 ms."""
    notes: list[str] = []
    xs = [float(n) for n in ns]
    ys = [st[n].p50 for n in ns]
    a, b, r2 = measure.fit_line(xs, ys)
    top = ns[-2:] if len(ns) >= 2 else ns
    slope = measure.loglog_slope([float(n) for n in top], [st[n].p50 for n in top])
    notes.append(
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
        notes.append(
            f"Store exceeds {text} at N ≈ {_crossing(a, b, limit):,.0f} by the fit ({seen})."
        )
    return notes


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
