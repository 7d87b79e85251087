#!/usr/bin/env python3
"""What living beside model-forge-llm costs us: one environment with it, one without.

    python3 bench/model_forge.py [--rounds N] [--keep DIR] [--out docs]

Builds two virtual environments from this checkout's wheel (tests/
model_forge_venv.py): "beside", with model-forge-llm 2.3.0 and the
integration's .pth hook, and "alone", with this package only. Then, in
interleaved rounds, whole processes in each: ``modelforge-agent get`` and
``status`` against one running agent, an agent's start to ready and its RSS,
and ``keyring.get_keyring()`` (which loads every keyring plugin, ours among
them). The hook's start-up cost is ``python -c pass`` in the "beside"
environment with the .pth against without it, and the hook line alone,
executed in-process. Writes BENCHMARKS-model-forge.md to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import select
import subprocess
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(BENCH), str(ROOT / "tests")]

from run import bootstrap  # noqa: E402

if __name__ == "__main__":
    bootstrap(sys.argv[1:], Path(__file__).resolve())

from measure import Summary, rss_kib, run_process  # noqa: E402
from peers import private_env  # noqa: E402

from model_forge_venv import model_forge_venv, site_packages  # noqa: E402

TARGET = 1.25
PTH = "modelforge_credentials_model_forge.pth"


def timed(command: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter_ns()
    status, _, err = run_process(command, env)
    elapsed = time.perf_counter_ns() - began
    if status != 0:
        raise RuntimeError(f"{command[:3]} exited {status}: {err[-300:]!r}")
    return float(elapsed)


def start_agent(venv: Path, env: dict[str, str], socket: Path) -> tuple[float, int, int]:
    """(ns to ready, RSS KiB once ready, pid); the agent is left running."""
    read_end, write_end = os.pipe()
    began = time.perf_counter_ns()
    proc = subprocess.Popen(
        [
            str(venv / "bin" / "modelforge-agent"),
            "--socket",
            str(socket),
            "serve",
            "--ready-fd",
            str(write_end),
            "--idle-timeout",
            "0",
        ],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        pass_fds=(write_end,),
    )
    os.close(write_end)
    ready, _, _ = select.select([read_end], [], [], 60)
    message = os.read(read_end, 64) if ready else b""
    elapsed = time.perf_counter_ns() - began
    os.close(read_end)
    if not message.startswith(b"ready"):
        proc.kill()
        raise RuntimeError(f"agent in {venv} did not start: {message!r}")
    time.sleep(0.2)  # let start-up allocations settle before reading RSS
    return float(elapsed), rss_kib(proc.pid), proc.pid


def stop(pid: int) -> None:
    import signal

    os.kill(pid, signal.SIGTERM)
    os.waitpid(pid, 0)


def interleave(rounds: int, cases: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    samples: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for i in range(rounds):
        for name in names if i % 2 == 0 else reversed(names):
            samples[name].append(cases[name]())
    return samples


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--keep", default=None, help="keep the two venvs in this directory")
    parser.add_argument("--out", default=str(ROOT / "docs"))
    args = parser.parse_args(argv)

    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="mfbench-"))
    base.mkdir(parents=True, exist_ok=True)
    print("building the two environments (model-forge-llm is ~360 MB)", flush=True)
    beside = model_forge_venv(base, "wheel")
    alone = model_forge_venv(base, "ours")
    work = Path(tempfile.mkdtemp(prefix="mfb-", dir="/tmp"))
    env = private_env(
        work, MODEL_FORGE_BACKEND="encrypted-file", MODEL_FORGE_CONFIG_DIR=str(work / "store")
    )
    env.pop("PYTHONPATH", None)
    socket = work / "s" / "agent.sock"
    env["MODEL_FORGE_AGENT_SOCK"] = str(socket)
    pth = site_packages(beside) / PTH
    status, _, err = run_process(
        [str(beside / "bin" / "modelforge-agent"), "integrate", "model-forge"], env
    )
    assert status == 0 and pth.exists(), err

    _, _, agent = start_agent(alone, env, socket)
    try:
        subprocess.run(
            [str(alone / "bin" / "modelforge-agent"), "set", "openai", "api_key"],
            input=b"sk-bench-value\n",
            env=env,
            check=True,
        )

        def cli(venv: Path, *cmd: str) -> Callable[[], float]:
            return lambda: timed([str(venv / "bin" / "modelforge-agent"), *cmd], env)

        keyring_env = {k: v for k, v in env.items() if k != "PYTHON_KEYRING_BACKEND"}
        probe = (
            "import keyring, keyring.backend; keyring.backend.get_all_keyring(); "
            "keyring.get_keyring()"
        )

        def kr(venv: Path) -> Callable[[], float]:
            return lambda: timed([str(venv / "bin" / "python"), "-c", probe], keyring_env)

        samples = interleave(
            args.rounds,
            {
                "get beside": cli(beside, "get", "openai", "api_key"),
                "get alone": cli(alone, "get", "openai", "api_key"),
                "status beside": cli(beside, "status"),
                "status alone": cli(alone, "status"),
                "keyring beside": kr(beside),
                "keyring alone": kr(alone),
            },
        )
    finally:
        stop(agent)

    starts: dict[str, list[float]] = {"beside": [], "alone": []}
    rss: dict[str, list[int]] = {"beside": [], "alone": []}
    for i in range(max(5, args.rounds // 4)):
        for name, venv in (("beside", beside), ("alone", alone))[:: 1 if i % 2 == 0 else -1]:
            own = work / f"start-{name}-{i}" / "agent.sock"
            ns, kib, pid = start_agent(venv, env, own)
            stop(pid)
            starts[name].append(ns)
            rss[name].append(kib)

    python = str(beside / "bin" / "python")
    hidden = pth.with_suffix(".off")

    def bare_start(with_hook: bool) -> Callable[[], float]:
        def run() -> float:
            if with_hook and hidden.exists():
                hidden.rename(pth)
            elif not with_hook and pth.exists():
                pth.rename(hidden)
            return timed([python, "-c", "pass"], env)

        return run

    hook = interleave(args.rounds * 4, {"hook": bare_start(True), "plain": bare_start(False)})
    if hidden.exists():
        hidden.rename(pth)
    line = pth.read_text()
    namespace: dict[str, object] = {"sys": sys}
    saved = list(sys.meta_path)
    in_process = timeit.repeat(lambda: exec(line, namespace), number=1, repeat=200)
    sys.meta_path[:] = saved
    subprocess.run(
        [str(beside / "bin" / "modelforge-agent"), "integrate", "model-forge", "--remove"],
        env=env,
        capture_output=True,
        check=False,
    )

    rows = []

    def ratio(what: str, a: list[float], b: list[float], unit: str = "ms") -> None:
        sa, sb = Summary.of(a), Summary.of(b)
        scale = 1e6 if unit == "ms" else 1024.0 * 1024.0
        r = sa.p50 / sb.p50
        verdict = "met" if r <= TARGET else "NOT met"
        rows.append(
            f"| {what} | {sa.p50 / scale:.1f} {unit} | {sb.p50 / scale:.1f} {unit} | "
            f"{r:.2f}x | {verdict} |"
        )

    ratio("`modelforge-agent get P K`", samples["get beside"], samples["get alone"])
    ratio("`modelforge-agent status`", samples["status beside"], samples["status alone"])
    ratio("agent start to ready", starts["beside"], starts["alone"])
    ratio(
        "agent RSS once ready",
        [x * 1024.0 for x in rss["beside"]],
        [x * 1024.0 for x in rss["alone"]],
        unit="MiB",
    )
    ratio(
        "`keyring.get_keyring()` (all plugins loaded)",
        samples["keyring beside"],
        samples["keyring alone"],
    )
    hook_ms = (Summary.of(hook["hook"]).p50 - Summary.of(hook["plain"]).p50) / 1e6
    hook_ratio = Summary.of(hook["hook"]).p50 / Summary.of(hook["plain"]).p50
    line_us = sorted(in_process)[len(in_process) // 2] * 1e6

    text = f"""# Beside model-forge-llm

Generated by `python3 bench/model_forge.py` ({args.rounds} interleaved rounds, whole
processes, p50). "beside": a virtual environment with model-forge-llm 2.3.0 and
this package (its integration hook installed); "alone": this package only. Both
from the same wheel, on the same machine, in the same run. Target: each ratio
at most {TARGET}x.

| what | beside | alone | ratio | target {TARGET}x |
|---|---|---|---|---|
{chr(10).join(rows)}

The integration's `.pth` hook at interpreter start (a Python that does not
import model-forge): `python -c pass` beside, with the hook
{Summary.of(hook["hook"]).p50 / 1e6:.2f} ms against {Summary.of(hook["plain"]).p50 / 1e6:.2f} ms
without it ({hook_ratio:.3f}x, {hook_ms:+.2f} ms, {len(hook["hook"])} runs each: a whole
process carries its own noise); the hook line itself, executed in-process,
{line_us:.0f} µs p50 (target: under 1 ms). It imports nothing until
`modelforge.auth` is imported.
"""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "BENCHMARKS-model-forge.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
