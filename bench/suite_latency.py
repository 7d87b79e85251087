"""The agent against its floors: one connection, and many under load.

Each suite returns a report :class:`Section`. Peers that cannot run give
"not measured" rows, never a crash.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable

import measure
from context import KEY, PROVIDER, SECRET, Context
from measure import Summary
from peers import PeerUnavailable
from report import Check, Row, Section, fmt_ratio


def _round_ratios(a: list[int], b: list[int], per_round: int) -> list[float]:
    """p50(a) / p50(b) in each interleaved round."""
    ratios = []
    for start in range(0, min(len(a), len(b)), per_round):
        ra, rb = a[start : start + per_round], b[start : start + per_round]
        if ra and rb:
            ratios.append(statistics.median(ra) / statistics.median(rb))
    return ratios


def _ratio_text(value: float, name: str, rounds: list[float]) -> str:
    spread = f" (rounds {min(rounds):.2f}–{max(rounds):.2f})" if len(rounds) > 1 else ""
    return f"{fmt_ratio(value)} {name}{spread}"


def _check(value: float | None, limit: float, text: str) -> Check:
    return Check(text, None if value is None else value <= limit)


def floors(ctx: Context) -> Section:
    """One connection, cached retrieve, against the asyncio floor and ssh-agent."""
    from modelforge_credentials.client.sync import AgentClient

    s = ctx.settings
    agent, floor = ctx.agent(), ctx.floor()
    try:
        ssh = ctx.ssh_agent()
        ssh_client: measure.SshAgentClient | None = measure.SshAgentClient(ssh.socket)
        servers = [agent.pid, floor.pid, ssh.pid]
    except PeerUnavailable:
        ssh_client, servers = None, [agent.pid, floor.pid]
    agent_client, floor_client = AgentClient(agent.socket), AgentClient(floor.socket)
    assert agent_client.retrieve(PROVIDER, KEY) == SECRET
    assert floor_client.retrieve(PROVIDER, KEY) == SECRET
    calls: dict[str, Callable[[], object]] = {
        "floor": lambda: floor_client.retrieve(PROVIDER, KEY),
        "agent": lambda: agent_client.retrieve(PROVIDER, KEY),
    }
    if ssh_client is not None:
        calls["ssh-agent"] = ssh_client.request_identities
    section = Section(
        "Agent retrieve against its floors (one connection, cached)",
        intro=(
            "Sequential round trips on one persistent connection; the three peers are "
            f"measured in {s.latency_rounds} interleaved rounds of {s.latency_per_round} "
            "calls each (order rotating), after a warm-up. *split CPUs*: this client on "
            "CPU 0, every server on CPU 1; *same CPU*: all on CPU 0."
        ),
    )
    try:
        for placement in measure.placements():
            placement.apply(servers)
            samples = measure.interleaved(
                calls, rounds=s.latency_rounds, per_round=s.latency_per_round, warmup=500
            )
            stats = {name: Summary.of(v) for name, v in samples.items()}
            tag = f" [{placement.name}]"
            section.rows.append(
                Row(
                    "floor: asyncio.Protocol server, same framing" + tag,
                    stats["floor"],
                    how="AgentClient.retrieve against bench/floor_server.py",
                    ratio="baseline",
                )
            )
            if ssh_client is not None:
                section.rows.append(
                    Row(
                        "floor: OpenSSH ssh-agent, REQUEST_IDENTITIES" + tag,
                        stats["ssh-agent"],
                        how="raw blocking socket: sendall + recv loop, 9-byte answer (no keys)",
                        ratio="baseline",
                    )
                )
            else:
                section.rows.append(
                    Row(
                        "floor: OpenSSH ssh-agent" + tag,
                        not_measured=ctx.why_unavailable("ssh-agent"),
                    )
                )
            a50 = stats["agent"].p50
            vs_floor = a50 / stats["floor"].p50
            ratio = [
                _ratio_text(
                    vs_floor,
                    "floor",
                    _round_ratios(samples["agent"], samples["floor"], s.latency_per_round),
                )
            ]
            vs_ssh = None
            if ssh_client is not None:
                vs_ssh = a50 / stats["ssh-agent"].p50
                ratio.append(
                    _ratio_text(
                        vs_ssh,
                        "ssh-agent",
                        _round_ratios(samples["agent"], samples["ssh-agent"], s.latency_per_round),
                    )
                )
            section.rows.append(
                Row(
                    "agent: AgentClient.retrieve" + tag,
                    stats["agent"],
                    how="encrypted-file backend, key-file protection, 10 credentials, cache hit",
                    ratio="; ".join(ratio),
                    checks=[
                        _check(vs_floor, 1.25, "p50 ≤ 1.25× floor server"),
                        _check(vs_ssh, 1.25, "p50 ≤ 1.25× ssh-agent"),
                    ],
                )
            )
    finally:
        measure.unpinned(servers)
        agent_client.close()
        floor_client.close()
        if ssh_client is not None:
            ssh_client.close()
    return section


def _load_placements() -> list[measure.Placement]:
    """Server alone on one CPU with the clients on the other, then all sharing both."""
    split = measure.placements()[0]
    shared = measure.Placement("shared CPUs", measure.ALL_CPUS, measure.ALL_CPUS)
    return [split, shared] if split.client != split.server else [shared]


def throughput(ctx: Context) -> Section:
    """16 closed-loop client processes; server CPU time per request from /proc."""
    s = ctx.settings
    agent, floor = ctx.agent(), ctx.floor()
    targets: list[tuple[str, str, int, str]] = [
        ("floor server", f"{PROVIDER}/{KEY}", floor.pid, str(floor.socket)),
        ("agent", f"{PROVIDER}/{KEY}", agent.pid, str(agent.socket)),
    ]
    missing = None
    try:
        ssh = ctx.ssh_agent()
        targets.insert(1, ("ssh-agent", "ssh", ssh.pid, str(ssh.socket)))
    except PeerUnavailable as err:
        missing = str(err)
    pids = [pid for _, _, pid, _ in targets]
    section = Section(
        f"Throughput and server CPU per request ({s.load_workers} connections)",
        intro=(
            f"{s.load_workers} client processes (multiprocessing, spawn), each with its own "
            "connection and one request in flight (closed loop). *split CPUs*: clients on "
            "CPU 0, the server alone on CPU 1; *shared CPUs*: nothing pinned. Requests are "
            f"counted in a {s.load_window_s:g} s window after a {s.load_warmup_s:g} s "
            f"warm-up, {s.load_passes} pass(es) per peer in alternating order; the server's "
            "utime+stime (/proc/<pid>/stat, all threads) is read at the window's edges. "
            "'server busy' is that CPU time over the window: near 100% means the server "
            "was the bottleneck (saturated); lower means the Python clients were."
        ),
    )
    for placement in _load_placements():
        totals: dict[str, list[measure.LoadResult]] = {name: [] for name, *_ in targets}
        placement.apply(pids)
        try:
            for index in range(s.load_passes):
                order = targets if index % 2 == 0 else list(reversed(targets))
                for name, kind, pid, path in order:
                    totals[name].append(
                        measure.closed_loop(
                            kind,
                            path,
                            pid,
                            workers=s.load_workers,
                            client_cpus=placement.client,
                            warmup_s=s.load_warmup_s,
                            window_s=s.load_window_s,
                        )
                    )
        finally:
            measure.unpinned(pids)
        section.rows += _load_rows(totals, f" [{placement.name}]", missing)
    return section


def _load_rows(
    totals: dict[str, list[measure.LoadResult]], tag: str, missing: str | None
) -> list[Row]:
    rows = []
    cpu: dict[str, float] = {}
    for name, runs in totals.items():
        requests = sum(r.requests for r in runs)
        seconds = sum(r.seconds for r in runs)
        cpu_ns = sum(r.server_cpu_ns for r in runs)
        cpu[name] = cpu_ns / requests if requests else float("nan")
        skew = max(r.sample_skew_ms for r in runs)
        errors = sum(r.errors for r in runs)
        rows.append(
            Row(
                name + tag,
                rps=requests / seconds,
                extra=(
                    f"server CPU {cpu[name] / 1e3:.1f} µs/request, server busy "
                    f"{cpu_ns / seconds / 1e7:.0f}%"
                ),
                how=(
                    f"{requests:,} requests; /proc sampling skew ≤ {skew:.1f} ms"
                    + (f"; {errors} errors" if errors else "")
                ),
                ratio="baseline" if name != "agent" else "",
            )
        )
    agent_row = rows[-1]
    vs_floor = cpu["agent"] / cpu["floor server"]
    if "ssh-agent" in cpu:
        ratio = cpu["agent"] / cpu["ssh-agent"]
        agent_row.ratio = f"CPU/request {fmt_ratio(ratio)} ssh-agent, {fmt_ratio(vs_floor)} floor"
        agent_row.checks = [Check("server CPU/request ≤ 1.0× ssh-agent", ratio <= 1.0)]
    else:
        agent_row.ratio = f"CPU/request {fmt_ratio(vs_floor)} floor"
        agent_row.checks = [Check("server CPU/request ≤ 1.0× ssh-agent", None)]
        rows.insert(1, Row("ssh-agent" + tag, not_measured=missing or "unavailable"))
    return rows
