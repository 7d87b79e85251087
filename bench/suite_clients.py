"""The agent from a shell and against the keyring paths users take today.

Each suite returns a report :class:`Section`; a missing Secret Service gives
"not measured" rows.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import measure
from context import KEY, PROVIDER, SECRET, Context, make_credentials
from design_storage import DesignEncryptedFileStorage
from measure import Summary
from peers import PeerUnavailable, environ, missing_program
from report import Check, Row, Section, fmt_ratio

KEYRING_SERVICE = f"model-forge.{PROVIDER}.{KEY}"
KEYRING_USER = "credential"
# An item of secret-tool's own, apart from the one keyring stores.
SECRET_TOOL_ATTRIBUTES = ["service", "model-forge-bench", "account", f"{PROVIDER}/{KEY}"]

BASELINE_IMPORTS = "import msgpack, socket"
BASELINE_ROW = f'python -c "{BASELINE_IMPORTS}"'
CLI_TARGET = 1.0  # `get` p50 over the baseline's: no slower than its own two imports

# The Secret Service CLIs: row name, short name in ratios, how measured.
CLI_PEERS = {
    "keyring": (
        "keyring get SERVICE USER (Secret Service)",
        "keyring get",
        "the venv's keyring script, gnome-keyring on a private D-Bus session",
    ),
    "secret-tool": (
        "secret-tool lookup ATTRIBUTE VALUE (Secret Service)",
        "secret-tool lookup",
        "libsecret-tools' CLI (C, libsecret), the same gnome-keyring session; item stored "
        "beforehand with `secret-tool store`",
    ),
}


def _speedup(other_ns: float, agent_ns: float) -> str:
    factor = other_ns / agent_ns
    if factor >= 1:
        return f"agent is {fmt_ratio(factor)} faster"
    return f"agent is {fmt_ratio(1 / factor)} slower"


def _run_quiet(command: list[str], env: dict[str, str], expect: str) -> Callable[[], None]:
    def run() -> None:
        status, out, err = measure.run_process(command, env)
        if status != 0 or expect not in out.decode():
            raise RuntimeError(f"{' '.join(command)} failed ({status}): {err[-300:]!r}")

    return run


def cli(ctx: Context) -> Section:
    """Whole-process cold start of ``modelforge-agent get`` against a running agent."""
    s = ctx.settings
    agent = ctx.agent()
    scripts = Path(sys.executable).parent
    env = dict(agent.env, MODEL_FORGE_AGENT_SOCK=str(agent.socket))
    commands: dict[str, Callable[[], None]] = {
        "python": _run_quiet([sys.executable, "-c", BASELINE_IMPORTS], env, ""),
        "agent-get": _run_quiet(
            [str(scripts / "modelforge-agent"), "get", PROVIDER, KEY], env, SECRET
        ),
    }
    missing = _secret_service_commands(ctx, commands)
    measure.unpinned([agent.pid])
    samples = measure.interleaved(commands, rounds=s.cli_runs, per_round=1, warmup=2)
    stats = {name: Summary.of(v) for name, v in samples.items()}
    base = stats["python"].p50
    section = Section(
        "CLI cold start (whole process)",
        intro=(
            f"Fork, exec and wait for each command, {s.cli_runs} runs each, interleaved, "
            "after 2 warm-up runs (page cache warm); nothing pinned. The agent is already "
            "running and answers from its cache; the Secret Service CLIs ask one "
            "gnome-keyring on a private D-Bus session."
        ),
    )
    section.rows.append(
        Row(
            BASELINE_ROW,
            stats["python"],
            how="the venv's python: interpreter start + the client's two essential imports",
            ratio="baseline",
        )
    )
    get = stats["agent-get"]
    ratios = [f"{fmt_ratio(get.p50 / base)} python"] + [
        f"{fmt_ratio(get.p50 / stats[name].p50)} {short}"
        for name, (_, short, _) in CLI_PEERS.items()
        if name in stats
    ]
    section.rows.append(
        Row(
            "modelforge-agent get P K",
            get,
            how="the venv's console script (what users run), MODEL_FORGE_AGENT_SOCK set",
            ratio="; ".join(ratios),
            checks=[Check(f"p50 ≤ {CLI_TARGET:.1f}× {BASELINE_ROW}", get.p50 / base <= CLI_TARGET)],
        )
    )
    for name, (row_name, _, how) in CLI_PEERS.items():
        if name in stats:
            ratio = f"{fmt_ratio(stats[name].p50 / base)} python"
            section.rows.append(Row(row_name, stats[name], how=how, ratio=ratio))
        else:
            section.rows.append(Row(row_name, not_measured=missing[name]))
    return section


def _secret_service_commands(
    ctx: Context, commands: dict[str, Callable[[], None]]
) -> dict[str, str]:
    """Add the Secret Service CLIs to ``commands``, each reading an item stored
    beforehand; returns why each one left out is missing."""
    try:
        service = ctx.secret_service()
    except PeerUnavailable as err:
        return {name: str(err) for name in CLI_PEERS}
    env = service.client_env()
    missing: dict[str, str] = {}
    _seed_keyring(env)
    keyring_script = Path(sys.executable).parent / "keyring"
    commands["keyring"] = _run_quiet(
        [str(keyring_script), "get", KEYRING_SERVICE, KEYRING_USER], env, SECRET
    )
    why = missing_program("secret-tool") or _seed_secret_tool(env)
    if why:
        missing["secret-tool"] = why
    else:
        commands["secret-tool"] = _run_quiet(
            ["secret-tool", "lookup", *SECRET_TOOL_ATTRIBUTES], env, SECRET
        )
    return missing


def _seed_secret_tool(env: dict[str, str]) -> str | None:
    """Store secret-tool's item (the secret on stdin, never in argv); why it failed, or None."""
    try:
        subprocess.run(
            ["secret-tool", "store", "--label=model-forge bench", *SECRET_TOOL_ATTRIBUTES],
            input=SECRET.encode(),
            env=env,
            check=True,
            timeout=30,
            capture_output=True,
        )
    except subprocess.CalledProcessError as err:
        return f"secret-tool store failed ({err.returncode}): {err.stderr.decode()[-200:]}"
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"secret-tool store failed: {type(err).__name__}"
    return None


def _seed_keyring(env: dict[str, str]) -> None:
    with environ(env):
        import keyring
        from keyring.backends import SecretService

        keyring.set_keyring(SecretService.Keyring())
        keyring.set_password(KEYRING_SERVICE, KEYRING_USER, SECRET)


def today(ctx: Context) -> Section:
    """The agent against the per-call paths users take without it."""
    from modelforge_credentials import EncryptedFileStorage
    from modelforge_credentials.client.sync import AgentClient

    s = ctx.settings
    agent = ctx.agent()
    agent_client = AgentClient(agent.socket)
    design = DesignEncryptedFileStorage(ctx.root / "design-small")
    design.store_all(make_credentials(10))
    direct = EncryptedFileStorage(agent.config_dir)
    calls: dict[str, Callable[[], object]] = {
        "agent": lambda: agent_client.retrieve(PROVIDER, KEY),
        "design": lambda: design.retrieve(PROVIDER, KEY),
        "direct": lambda: direct.retrieve(PROVIDER, KEY),
    }
    per_round = {"agent": 500, "design": 100, "direct": 100}
    env = None
    keyring_missing = None
    try:
        service = ctx.secret_service()
        env = service.client_env()
        _seed_keyring(env)
        keyring_agent = AgentClient(ctx.keyring_agent().socket)
        keyring_agent.store(PROVIDER, KEY, SECRET)

        import keyring

        calls["keyring"] = lambda: keyring.get_password(KEYRING_SERVICE, KEYRING_USER)
        calls["keyring-agent"] = lambda: keyring_agent.retrieve(PROVIDER, KEY)
        per_round.update({"keyring": 10, "keyring-agent": 500})
    except PeerUnavailable as err:
        keyring_missing = str(err)
    measure.unpinned([agent.pid])
    with environ(env) if env is not None else contextlib.nullcontext():
        if env is not None:
            from keyring.backends import SecretService

            keyring.set_keyring(SecretService.Keyring())
            assert keyring.get_password(KEYRING_SERVICE, KEYRING_USER) == SECRET
        samples = measure.interleaved(calls, rounds=s.today_rounds, per_round=per_round, warmup=20)
    agent_client.close()
    stats = {name: Summary.of(v) for name, v in samples.items()}
    a50 = stats["agent"].p50
    section = Section(
        "Against the per-call paths keyring users take today",
        intro=(
            f"In-process calls, {s.today_rounds} interleaved rounds, nothing pinned, 10 "
            "stored credentials. 'speed-up' is the row's p50 over the agent's cached "
            "retrieve p50 (first row)."
        ),
        notes=[
            "With 10 credentials in a key-file-protected file, reading the file in-process "
            "costs less than a round trip to another process; the growth table shows "
            "where that reverses. A passphrase-protected file read without the agent also "
            "pays the KDF (see the unlock section) in every new process."
        ],
    )
    section.rows.append(
        Row(
            "agent: AgentClient.retrieve (encrypted file)",
            stats["agent"],
            how="one persistent connection, cache hit",
            ratio="baseline",
        )
    )
    if "keyring" in stats:
        section.rows.append(
            Row(
                "keyring.get_password (Secret Service)",
                stats["keyring"],
                how="gnome-keyring, private D-Bus session; a new D-Bus connection per call",
                ratio=_speedup(stats["keyring"].p50, a50),
            )
        )
        section.rows.append(
            Row(
                "agent: AgentClient.retrieve (keyring backend)",
                stats["keyring-agent"],
                how="MODEL_FORGE_BACKEND=keyring, value cached (10 s TTL)",
                ratio=(
                    f"{fmt_ratio(stats['keyring'].p50 / stats['keyring-agent'].p50)} faster "
                    "than keyring.get_password"
                ),
            )
        )
    else:
        section.rows.append(
            Row("keyring.get_password (Secret Service)", not_measured=keyring_missing)
        )
    section.rows.append(
        Row(
            "design doc EncryptedFileStorage.retrieve",
            stats["design"],
            how="bench/design_storage.py: reads key file + Fernet JSON file, decrypts, per call",
            ratio=_speedup(stats["design"].p50, a50),
        )
    )
    section.rows.append(
        Row(
            "EncryptedFileStorage.retrieve, no agent",
            stats["direct"],
            how=(
                "this package's backend in-process: one stat per call, values from "
                "memory while the file is unchanged"
            ),
            ratio=_speedup(stats["direct"].p50, a50),
        )
    )
    return section
