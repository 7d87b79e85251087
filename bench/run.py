#!/usr/bin/env python3
"""Benchmark the credential agent against its floors and today's alternatives.

    python3 bench/run.py [--quick] [--install-peers] [--out docs]

Sets up the project's virtual environment the way tests/run.py does and
re-runs itself there, installs matplotlib for the plot if missing, starts
every peer in private temporary directories (never the real home, runtime
directory or keyring), measures, and writes BENCHMARKS.md and
bench-latency.png to ``--out``. Peers that are not installed are measured
as "not measured: why" unless ``--install-peers`` (or CI=true) lets the run
install them with apt-get.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib.util
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
REEXEC_VARIABLE = "MODEL_FORGE_BENCH_REEXEC"
STAGES_REPORT = "BENCHMARKS-stages.md"  # bench/diagnose.py's output, beside BENCHMARKS.md


def _load_tests_run():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("mf_tests_run", ROOT / "tests" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bootstrap(argv: list[str], script: Path | None = None) -> None:
    """Re-exec ``script`` (this file) under the project's venv python unless
    already running there."""
    python = _load_tests_run().ensure_venv()
    venv = python.parent.parent
    if Path(sys.prefix).resolve() == venv.resolve():
        return
    if os.environ.get(REEXEC_VARIABLE):
        print(f"warning: still not inside {venv} after re-exec; going on", file=sys.stderr)
        return
    os.environ[REEXEC_VARIABLE] = "1"
    target = script or Path(__file__).resolve()
    os.execv(str(python), [str(python), str(target), *argv])


def ensure_bench_deps() -> str | None:
    """pip install what only the benchmarks need; the problem text, or None."""
    if importlib.util.find_spec("matplotlib") is not None:
        return None
    print("installing matplotlib into the venv (for the plot)", flush=True)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "matplotlib",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    importlib.invalidate_caches()
    if result.returncode != 0:
        return f"pip install matplotlib failed: {result.stderr.strip()[-300:]}"
    return None


def _versions() -> list[str]:
    from importlib.metadata import version

    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ssh = "absent"
    if shutil.which("ssh"):
        probe = subprocess.run(["ssh", "-V"], capture_output=True, text=True)
        ssh = (probe.stderr or probe.stdout).strip()
    packages = ", ".join(
        f"{name} {version(name)}" for name in ("msgpack", "cryptography", "keyring")
    )
    return [
        f"{cpu}, {os.cpu_count()} CPUs; Linux {platform.release()}",
        f"Python {platform.python_version()}; {packages}; {ssh}",
    ]


def _source_state() -> str:
    """The commit measured, whether src/ had uncommitted changes (read-only git),
    and a digest of src/'s contents to tell whether it changed during the run."""
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")  # never refresh the index

    def git(*args: str) -> str:
        result = subprocess.run(
            ["git", "-C", str(ROOT), *args], env=env, capture_output=True, text=True
        )
        return result.stdout.strip() if result.returncode == 0 else ""

    digest = hashlib.sha256()
    for path in sorted((ROOT / "src").rglob("*.py")):
        digest.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    head = git("rev-parse", "--short", "HEAD")
    state = f"commit {head}" if head else "not a git checkout"
    if head and git("status", "--porcelain", "--", "src"):
        state += " with uncommitted changes in src/"
    return f"{state} (src digest {digest.hexdigest()[:12]})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke test")
    parser.add_argument(
        "--install-peers", action="store_true", help="apt-get install missing peers"
    )
    parser.add_argument("--out", default=str(ROOT / "docs"), help="where the report goes")
    args = parser.parse_args()
    bootstrap(sys.argv[1:])
    if not sys.platform.startswith("linux"):
        print("the benchmarks need Linux (/proc, sched_setaffinity)", file=sys.stderr)
        return 2

    sys.path.insert(0, str(BENCH))
    plot_problem = ensure_bench_deps()

    import peers

    if args.install_peers or os.environ.get("CI") == "true":
        problem = peers.install_missing()
        if problem:
            print(problem, file=sys.stderr)

    record = RunRecord()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="mf-bench-"))
    # This process never talks to the user's agent, session bus or keyring either.
    peers.use_bytecode_cache(scratch / "pycache")
    env = peers.private_env(scratch / "self", MPLCONFIGDIR=str(scratch / "matplotlib"))
    os.environ.clear()
    os.environ.update(env)
    try:
        sections, growth = run_suites(scratch, args.quick)
        return write_report(out, sections, growth, args.quick, record, plot_problem)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def run_suites(scratch: Path, quick: bool):  # type: ignore[no-untyped-def]
    import suite_clients
    import suite_latency
    import suite_start
    import suite_store
    from context import Context, Settings
    from report import Row, Section

    settings = Settings.choose(quick)
    sections: list[Section] = []
    growth = None
    with contextlib.ExitStack() as stack:
        ctx = Context(scratch, settings, stack)

        def attempt(title: str, suite: Callable[[], Section]) -> None:
            print(f"-- {title}", flush=True)
            started = time.monotonic()
            try:
                sections.append(suite())
            except Exception as err:
                traceback.print_exc()
                sections.append(
                    Section(title, rows=[Row(title, not_measured=f"{type(err).__name__}: {err}")])
                )
            print(f"   {time.monotonic() - started:.1f} s", flush=True)

        attempt("floors", lambda: suite_latency.floors(ctx))
        attempt("throughput", lambda: suite_latency.throughput(ctx))
        attempt("cli", lambda: suite_clients.cli(ctx))
        attempt("today", lambda: suite_clients.today(ctx))

        def growth_suite() -> Section:
            nonlocal growth
            growth = suite_store.growth(ctx)
            return growth.section

        attempt("growth", growth_suite)
        attempt("unlock", lambda: suite_store.unlock(ctx))
        memory = growth.memory if growth is not None else {}
        attempt("start", lambda: suite_start.start_and_memory(ctx, memory))
    return sections, growth


def _loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


class RunRecord:
    """What a generated report's header says about its run.

    Started before measuring, so the source digest and load average at the
    start can be set against those at the end.
    """

    def __init__(self) -> None:
        self.began = time.monotonic()
        self.load_before = _loadavg()
        self.source_before = _source_state()

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.began

    def header(self, command: str, quick: bool) -> list[str]:
        """Generated-by line, source, load average and machine, as Markdown lines."""
        facts = [f"source: {self.source_before}"]
        source_after = _source_state()
        if source_after.rsplit("digest ", 1)[-1] != self.source_before.rsplit("digest ", 1)[-1]:
            facts.append(
                f"**src/ changed during the run** (now {source_after}): results mix versions"
            )
        facts.append(f"load average {self.load_before} at the start, {_loadavg()} at the end")
        return [
            f"Generated by `{command}` on {time.strftime('%Y-%m-%d %H:%M %Z')} in "
            f"{self.elapsed / 60:.1f} min ({'quick: reduced counts' if quick else 'full run'}).",
            "",
            *(f"- {line}" for line in [*facts, *_versions()]),
        ]


def write_report(out, sections, growth, quick, record, plot_problem) -> int:  # type: ignore[no-untyped-def]
    import report

    plot_path = out / "bench-latency.png"
    if growth is not None and plot_problem is None:
        try:
            report.plot_growth(
                plot_path,
                growth.ns,
                growth.curves,
                "Latency per call vs stored credentials (p50, log-log)",
            )
        except Exception as err:
            plot_problem = f"plot failed: {type(err).__name__}: {err}"
    command = "python3 bench/run.py" + (" --quick" if quick else "")
    preamble = [
        *record.header(command, quick),
        "",
        "The machine is small and shared (2 CPUs, noisy): compare the **ratios**, which "
        "are measured against baselines in the same run and interleaved with them; "
        "absolute times are context only. p50 and p99 are over all samples of a row; "
        "n is the number of samples. Latencies are `time.perf_counter_ns` around each "
        "call, after warm-up calls; the measuring process's garbage collector is paused "
        "during each timed batch (as timeit does). p99 is sensitive to other load on "
        "the machine (see the load average).",
    ]
    if plot_problem:
        preamble += ["", f"No plot: {plot_problem}"]
    elif growth is not None:
        preamble += ["", "![latency vs N](bench-latency.png)"]
    preamble += [
        "",
        "Where the time goes (per-stage costs of the server path, the client, CLI "
        f"imports, status and store): [{STAGES_REPORT}]({STAGES_REPORT}), written by "
        "`python3 bench/diagnose.py`.",
    ]
    sections = [_targets(sections), *sections]
    text = report.markdown("Benchmarks: model-forge credential agent", preamble, sections)
    (out / "BENCHMARKS.md").write_text(text + "\n")
    results = BENCH / "results"
    results.mkdir(exist_ok=True)
    (results / ("quick.json" if quick else "full.json")).write_text(
        json.dumps(_raw(sections), indent=1, default=str)
    )
    print(report.terminal(sections))
    print(f"\nwrote {out / 'BENCHMARKS.md'}" + ("" if plot_problem else f" and {plot_path}"))
    print(f"took {record.elapsed:.0f} s")
    return 0


def _targets(sections):  # type: ignore[no-untyped-def]
    """Every target of every row, in one table."""
    from report import Section

    rows = [
        [row.name, check.text, {True: "met", False: "**not met**", None: "not measured"}[check.met]]
        for section in sections
        for row in section.rows
        for check in row.checks
    ]
    return Section("Targets at a glance", table=(["row", "target", "result"], rows))


def _raw(sections):  # type: ignore[no-untyped-def]
    return [
        {
            "title": s.title,
            "rows": [
                {
                    "name": r.name,
                    "latency_ns": r.latency.to_dict() if r.latency else None,
                    "rps": r.rps,
                    "ratio": r.ratio,
                    "extra": r.extra,
                    "checks": [(c.text, c.met) for c in r.checks],
                    "not_measured": r.not_measured,
                }
                for r in s.rows
            ],
            "table": s.table,
            "notes": s.notes,
        }
        for s in sections
    ]


if __name__ == "__main__":
    sys.exit(main())
