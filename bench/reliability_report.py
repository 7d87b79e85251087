"""Run the reliability tests and write their figures to docs/RELIABILITY.md.

    python3 bench/reliability_report.py [extra pytest arguments]

Runs ``python -m pytest`` on the reliability and attack suites (TESTS) with this interpreter (so in
its environment), collecting each test's figures through
$MODEL_FORGE_RELIABILITY_REPORT and each outcome through a JUnit XML file,
then writes the report. The report is written whether or not tests fail (a
failing test is a finding, and its figures say how far off it is); the exit
status is pytest's. Heavier runs use the environment variables listed in the
test module's docstring (MODEL_FORGE_CRASH_ROUNDS, MODEL_FORGE_HOSTILE_FRAMES, ...).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The reliability suite and the suites that attack one promise each.
TESTS = (
    "tests/test_proc_reliability.py",
    "tests/test_proc_limits.py",
    "tests/test_inproc_limits.py",
    "tests/test_proc_trust_peer.py",
    "tests/test_proc_trust_runtime.py",
    "tests/test_inproc_two_writers.py",
    "tests/test_pure_protection_change.py",
    "tests/test_proc_audit_integrity.py",
    "tests/test_pure_migrate.py",
    "tests/test_inproc_conversation_attacks.py",
    "tests/test_pure_conversation_attacks.py",
    "tests/test_pure_file_keys_review.py",
    "tests/test_proc_cli_review.py",
    "tests/test_proc_prompt_review.py",
)
OUTPUT = ROOT / "docs" / "RELIABILITY.md"
COMMAND = "python3 bench/reliability_report.py"


def machine() -> list[tuple[str, str]]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        ("CPUs (nproc)", str(usable)),
        ("CPU model", cpu),
        ("memory", memory),
        ("kernel", f"{platform.system()} {platform.release()}"),
        ("Python", f"{platform.python_implementation()} {platform.python_version()}"),
        ("load average before the run (1, 5, 15 min)", load),
    ]


def outcomes(junit: Path) -> dict[str, tuple[str, float, str]]:
    """Test name -> (outcome, seconds, first line of the failure or skip message)."""
    results: dict[str, tuple[str, float, str]] = {}
    if not junit.exists():
        return results
    for case in ET.parse(junit).getroot().iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            element = case.find(tag)
            if element is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = next(iter((element.get("message") or "").strip().splitlines()), "")
                break
        results[case.get("name", "?")] = (outcome, float(case.get("time") or 0), message)
    return results


def cell(value: object) -> str:
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 160 else text[:157] + "..."


def render(
    figures: list[dict[str, object]],
    results: dict[str, tuple[str, float, str]],
    seed: str,
    overrides: dict[str, str],
    elapsed: float,
    exit_status: int,
    started: datetime.datetime,
    host: list[tuple[str, str]],
) -> str:
    tests = list(dict.fromkeys([*results, *(str(f["test"]) for f in figures)]))
    counts: dict[str, int] = {}
    for outcome, _, _ in results.values():
        counts[outcome] = counts.get(outcome, 0) + 1
    summary = ", ".join(f"{n} {outcome}" for outcome, n in sorted(counts.items())) or "no tests"
    lines = [
        "# Reliability figures",
        "",
        "Measured by the reliability and attack suites ("
        + ", ".join(f"`{Path(t).name}`" for t in TESTS)
        + ") on real agent processes (real sockets,",
        "SIGKILL, a real tmpfs, other uids through setpriv). Reproduce with:",
        "",
        "```",
        COMMAND,
        "```",
        "",
        f"- date: {started.strftime('%Y-%m-%d %H:%M:%S %Z').strip()}",
        f"- outcome: {summary} in {elapsed:.0f} s (pytest exit status {exit_status})",
        f"- random seed: `MODEL_FORGE_RELIABILITY_SEED={seed}`",
        "- settings: "
        + (", ".join(f"`{k}={v}`" for k, v in sorted(overrides.items())) or "defaults"),
        "",
        "A failed test is a finding: its figures are recorded before its assertions,",
        "and its docstring in the test module describes the bug it pins down.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *(f"| {name} | {cell(value)} |" for name, value in host),
        "",
        "## Tests",
        "",
        "| test | outcome | time | message |",
        "|---|---|---:|---|",
    ]
    for test in tests:
        outcome, seconds, message = results.get(test, ("not run", 0.0, ""))
        lines.append(f"| `{test}` | {outcome} | {seconds:.1f} s | {cell(message)} |")
    lines += ["", "## Figures", "", "| test | figure | value | unit |", "|---|---|---:|---|"]
    for figure in figures:
        value = figure["value"]
        shown = f"{value:,.3f}".rstrip("0").rstrip(".") if isinstance(value, float) else value
        lines.append(
            f"| `{figure['test']}` | {cell(figure['figure'])} | {cell(shown)} "
            f"| {cell(figure.get('unit') or '')} |"
        )
    return "\n".join(lines) + "\n"


def bootstrap(argv: list[str]) -> None:
    """Re-run under the project's virtual environment, as bench/run.py does."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("mf_bench_run", ROOT / "bench" / "run.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.bootstrap(argv, Path(__file__).resolve())


def main(argv: list[str]) -> int:
    bootstrap(argv)
    seed = os.environ.get("MODEL_FORGE_RELIABILITY_SEED") or str(random.randrange(2**32))
    overrides = {
        k: v
        for k, v in os.environ.items()
        if k.startswith("MODEL_FORGE_")
        and k not in ("MODEL_FORGE_RELIABILITY_SEED", "MODEL_FORGE_BENCH_REEXEC")
    }
    host = machine()
    started = datetime.datetime.now().astimezone()
    with tempfile.TemporaryDirectory(prefix="mf-reliability-") as tmp:
        figures_path = Path(tmp) / "figures.jsonl"
        junit = Path(tmp) / "junit.xml"
        env = {
            **os.environ,
            "MODEL_FORGE_RELIABILITY_REPORT": str(figures_path),
            "MODEL_FORGE_RELIABILITY_SEED": seed,
        }
        command = [
            sys.executable, "-m", "pytest", *TESTS, "-q", "-p", "no:cacheprovider",
            f"--junitxml={junit}", *argv,
        ]  # fmt: skip
        print("running:", " ".join(command), flush=True)
        began = time.monotonic()
        exit_status = subprocess.run(command, cwd=ROOT, env=env, check=False).returncode
        elapsed = time.monotonic() - began
        figures = (
            [json.loads(line) for line in figures_path.read_text().splitlines() if line.strip()]
            if figures_path.exists()
            else []
        )
        results = outcomes(junit)
    overrides.pop("MODEL_FORGE_RELIABILITY_REPORT", None)
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(
        render(figures, results, seed, overrides, elapsed, exit_status, started, host),
        encoding="utf-8",
    )
    print(f"wrote {OUTPUT.relative_to(ROOT)}: {len(figures)} figures, {len(results)} tests")
    return exit_status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
