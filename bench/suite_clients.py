"""The agent from a shell and against the keyring paths users take today.

Each suite returns a report :class:`Section`; a missing Secret Service gives
"not measured" rows.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from pathlib import Path

import measure
from context import KEY, PROVIDER, SECRET, Context, make_credentials
from design_storage import DesignEncryptedFileStorage
from measure import Summary
from peers import PeerUnavailable, environ
from report import Check, Row, Section, fmt_ratio

KEYRING_SERVICE = f"model-forge.{PROVIDER}.{KEY}"
KEYRING_USER = "credential"


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
        "python": _run_quiet([sys.executable, "-c", "import msgpack, socket"], env, ""),
        "agent-get": _run_quiet(
            [str(scripts / "modelforge-agent"), "get", PROVIDER, KEY], env, SECRET
        ),
    }
    keyring_missing = None
    try:
        service = ctx.secret_service()
        _seed_keyring(service.client_env())
        commands["keyring"] = _run_quiet(
            [str(scripts / "keyring"), "get", KEYRING_SERVICE, KEYRING_USER],
            service.client_env(),
            SECRET,
        )
    except PeerUnavailable as err:
        keyring_missing = str(err)
    measure.unpinned([agent.pid])
    samples = measure.interleaved(commands, rounds=s.cli_runs, per_round=1, warmup=2)
    stats = {name: Summary.of(v) for name, v in samples.items()}
    base = stats["python"].p50
    section = Section(
        "CLI cold start (whole process)",
        intro=(
            f"Fork, exec and wait for each command, {s.cli_runs} runs each, interleaved, "
            "after 2 warm-up runs (page cache warm); nothing pinned. The agent is already "
            "running and answers from its cache."
        ),
    )
    section.rows.append(
        Row(
            'python -c "import msgpack, socket"',
            stats["python"],
            how="the venv's python: interpreter start + the client's two essential imports",
            ratio="baseline",
        )
    )
    get = stats["agent-get"]
    ratio = f"{fmt_ratio(get.p50 / base)} python"
    keyring_ratio = None
    if "keyring" in stats:
        keyring_ratio = get.p50 / stats["keyring"].p50
        ratio += f"; {fmt_ratio(keyring_ratio)} keyring get"
    section.rows.append(
        Row(
            "modelforge-agent get P K",
            get,
            how="the venv's console script (what users run), MODEL_FORGE_AGENT_SOCK set",
            ratio=ratio,
            checks=[Check("p50 ≤ 1.3× python -c import", get.p50 / base <= 1.3)],
        )
    )
    if "keyring" in stats:
        section.rows.append(
            Row(
                "keyring get SERVICE USER (Secret Service)",
                stats["keyring"],
                how="the venv's keyring script, gnome-keyring on a private D-Bus session",
                ratio=f"{fmt_ratio(stats['keyring'].p50 / base)} python",
            )
        )
    else:
        section.rows.append(Row("keyring get SERVICE USER", not_measured=keyring_missing))
    return section


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
