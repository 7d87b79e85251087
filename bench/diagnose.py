#!/usr/bin/env python3
"""Where the time goes: breakdowns behind the rows of BENCHMARKS.md.

    python3 bench/diagnose.py [--quick] [--out docs]

Runs in the project's venv (re-executing itself there, like bench/run.py),
prints its tables and writes them to BENCHMARKS-stages.md in ``--out``, with
the same header as BENCHMARKS.md (command, date, commit, load average). It
measures, without sockets where possible:

1. the agent's Python cost per cached retrieve, split by stage, next to the
   floor server's (the same frame handed to each protocol's data_received),
   hot and with caches evicted before each call;
2. the client's Python cost per call (AgentClient's encode/decode steps);
3. CLI start-up: what each import and the argument parser add, in whole
   processes, interleaved;
4. ``status`` against the number of cached credentials;
5. a durable store, stage by stage, against the number of credentials.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path

import measure
from report import Section

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
TITLE = "Benchmarks: where the time goes, stage by stage"


def _per_call_us(fn: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def _stage_table(rows: list[tuple[str, float]]) -> tuple[list[str], list[list[str]]]:
    return ["stage", "per call"], [[name, f"{value:.2f} µs"] for name, value in rows]


class _NullTransport:
    def write(self, data: bytes) -> None:
        pass

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def pause_reading(self) -> None:
        pass


async def server_path(scratch: Path, number: int) -> Section:
    import floor_server
    from context import KEY, PROVIDER, make_credentials

    from modelforge_credentials import EncryptedFileStorage
    from modelforge_credentials.daemon.dispatch import dispatch
    from modelforge_credentials.daemon.server import AgentConnection, AgentServer
    from modelforge_credentials.daemon.state import Agent, AgentConfig
    from modelforge_credentials.protocol import (
        FrameDecoder,
        Op,
        encode_frame,
        encode_request,
        parse_request,
    )
    from modelforge_credentials.validation import validate_pair

    backend = EncryptedFileStorage(scratch / "server-path")
    backend.store_many(make_credentials(10))
    agent = Agent(backend, AgentConfig())
    await agent.start()
    connection = AgentConnection(AgentServer(agent))
    connection.transport = _NullTransport()  # type: ignore[assignment]
    floor = floor_server.FloorConnection({(PROVIDER, KEY): "sk"})
    floor.transport = _NullTransport()
    frame = encode_request(1, Op.RETRIEVE, provider=PROVIDER, key=KEY)
    decoder = FrameDecoder()

    def decode() -> object:
        decoder.feed(frame)
        return decoder.next_message()

    message = decode()
    assert isinstance(message, dict)
    request = parse_request(message)
    reply = dispatch(agent, request)
    assert isinstance(reply, dict)
    pair = (PROVIDER, KEY)
    stages: list[tuple[str, Callable[[], object]]] = [
        ("agent: AgentConnection.data_received, whole", lambda: connection.data_received(frame)),
        ("floor: FloorConnection.data_received, whole", lambda: floor.data_received(frame)),
        ("agent stage: FrameDecoder feed + next_message", decode),
        ("agent stage: parse_request", lambda: parse_request(message)),
        ("agent stage: dispatch (a cache hit)", lambda: dispatch(agent, request)),
        ("agent stage: encode_frame(reply)", lambda: encode_frame(reply)),
        ("for scale: os.stat of the store file", lambda: os.stat(backend.path)),
        ("for scale: validate_pair(provider, key)", lambda: validate_pair(*pair)),
    ]
    rows = [(name, _per_call_us(fn, number)) for name, fn in stages]
    # After a context switch the server runs with caches the client and the
    # kernel have filled: a longer Python path pays more for that than a hot
    # loop shows.
    cold = [
        ("agent: data_received, caches evicted first", lambda: connection.data_received(frame)),
        ("floor: data_received, caches evicted first", lambda: floor.data_received(frame)),
    ]
    rows += [(name, _cold_call_us(fn, max(200, number // 100))) for name, fn in cold]
    agent.close()
    intro = SERVER_INTRO.format(number=number)
    return Section("1. Server: Python per cached retrieve", intro, table=_stage_table(rows))


SERVER_INTRO = (
    "The same retrieve frame handed to each protocol's `data_received` with a null "
    "transport, in this process (asyncio's loop: no I/O is timed): best of 5 repeats of "
    "{number:,} calls; the two 'caches evicted' rows touch 8 MiB before each call "
    "(untimed), as a context switch would."
)


_EVICT = bytearray(8 << 20)


def _cold_call_us(fn: Callable[[], object], number: int) -> float:
    """Best-of-3 mean time of ``fn`` right after touching 8 MiB (untimed)."""
    lines = len(_EVICT) // 64
    best = float("inf")
    for _ in range(3):
        total = 0
        for _ in range(number):
            _EVICT[::64] = b"\x01" * lines
            started = time.perf_counter_ns()
            fn()
            total += time.perf_counter_ns() - started
        best = min(best, total / number)
    return best / 1e3


def client_path(number: int) -> Section:
    import msgpack

    from modelforge_credentials.protocol import (
        FrameDecoder,
        Op,
        encode_frame,
        encode_request,
        expect_fields,
        parse_reply,
    )

    reply = encode_frame({"id": 1, "ok": True, "value": "sk-" + "x" * 40})
    decoder = FrameDecoder()

    def receive() -> object:
        decoder.feed(reply)
        message = decoder.next_message()
        assert message is not None
        return expect_fields(parse_reply(message), Op.RETRIEVE)["value"]

    ssh_answer = b"\x00\x00\x00\x05\x0c\x00\x00\x00\x00"

    def ssh_receive() -> int:
        length = int.from_bytes(ssh_answer[:4], "big")
        assert len(ssh_answer) >= 4 + length and ssh_answer[4] == 12
        return int.from_bytes(ssh_answer[5:9], "big")

    def request() -> bytes:
        return encode_request(1, Op.RETRIEVE, provider="openai", key="api_key")

    def bare() -> object:
        return msgpack.unpackb(msgpack.packb({"v": 1, "id": 1, "op": "retrieve"}))

    stages: list[tuple[str, Callable[[], object]]] = [
        ("AgentClient: encode_request", request),
        ("AgentClient: decode + parse_reply + expect_fields", receive),
        ("bare msgpack: packb + unpackb", bare),
        ("ssh-agent client: parse the answer", ssh_receive),
    ]
    return Section(
        "2. Client: Python per call, without I/O",
        intro=f"Best of 5 repeats of {number:,} calls in this process.",
        table=_stage_table([(name, _per_call_us(fn, number)) for name, fn in stages]),
    )


# A `get` that imports only what the baseline does: the floor for a lean CLI.
LEAN_GET = """
import os, socket, sys, msgpack
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.connect(os.environ["MODEL_FORGE_AGENT_SOCK"])
provider, key = sys.argv[1:3]
body = msgpack.packb({"v": 1, "id": 1, "op": "retrieve", "provider": provider, "key": key})
s.sendall(len(body).to_bytes(4, "big") + body)
buf = b""
while len(buf) < 4 or len(buf) < 4 + int.from_bytes(buf[:4], "big"):
    buf += s.recv(65536)
sys.stdout.write(msgpack.unpackb(buf[4:])["value"] + "\\n")
"""


def cli_startup(root: Path, runs: int) -> Section:
    from context import KEY, PROVIDER, make_credentials
    from peers import AgentPeer

    from modelforge_credentials import EncryptedFileStorage

    agent = AgentPeer(root / "cli-agent")
    EncryptedFileStorage(agent.config_dir).store_many(make_credentials(10))
    agent.start()
    env = dict(agent.env, MODEL_FORGE_AGENT_SOCK=str(agent.socket))
    python = sys.executable
    script = str(Path(python).parent / "modelforge-agent")
    mf = "modelforge_credentials"
    cases = {
        "python -c pass": [python, "-c", "pass"],
        "import msgpack, socket (the baseline)": [python, "-c", "import msgpack, socket"],
        "  + re (pip's console-script wrapper)": [python, "-c", "import msgpack, socket, re"],
        "import typing": [python, "-c", "import typing"],
        "import dataclasses": [python, "-c", "import dataclasses"],
        "import pathlib": [python, "-c", "import pathlib"],
        "import argparse": [python, "-c", "import argparse"],
        "import modelforge_credentials": [python, "-c", f"import {mf}"],
        "import ...client.sync": [python, "-c", f"import {mf}.client.sync"],
        "import ...cli": [python, "-c", f"import {mf}.cli"],
        "import ...cli, ...client.sync": [python, "-c", f"import {mf}.cli, {mf}.client.sync"],
        "  + build_parser()": [
            python,
            "-c",
            f"import {mf}.cli as c, {mf}.client.sync; c.build_parser()",
        ],
        "modelforge-agent get (console script)": [script, "get", PROVIDER, KEY],
        "lean get: socket + msgpack only": [python, "-c", LEAN_GET, PROVIDER, KEY],
    }
    samples: dict[str, list[float]] = {name: [] for name in cases}
    try:
        for command in cases.values():  # fills the bytecode cache
            measure.run_process(command, env)
        for _ in range(runs):
            for name, command in cases.items():
                started = time.perf_counter()
                status, _, err = measure.run_process(command, env)
                samples[name].append(time.perf_counter() - started)
                if status != 0:
                    raise RuntimeError(f"{name} failed: {err[-300:]!r}")
    finally:
        agent.stop()
    base = statistics.median(samples["import msgpack, socket (the baseline)"])
    rows = []
    for name, values in samples.items():
        p50 = statistics.median(values)
        rows.append([name, f"{p50 * 1e3:.1f} ms", f"{p50 / base:.2f}×"])
    return Section(
        "3. CLI start-up: what each import adds",
        intro=(
            f"Whole processes (fork, exec, wait), median of {runs} interleaved runs after "
            "one untimed run of each; `get` asks an agent that is already running."
        ),
        table=(["process", "p50", "× baseline"], rows),
    )


def status_growth(ns: list[int], number: int) -> Section:
    from modelforge_credentials.daemon.cache import Cache

    rows = []
    for n in ns:
        cache = Cache(None, time.monotonic)
        cache.fill({"p": {f"k{i}": "v" for i in range(n)}})
        rows.append((f"N={n:,}", _per_call_us(lambda c=cache: len(c), max(1, number // n))))
    return Section(
        "4. Status: the cache count it reports, against N",
        intro="`len(Cache)` (what every `status` answer counts), best of 5 repeats.",
        table=_stage_table(rows),
    )


def store_growth(scratch: Path, ns: list[int]) -> Section:
    header = ["N", "store", "read+parse", "decrypt", "unpack+check", "pack+encrypt", "write+fsync"]
    rows = []
    for n in ns:
        stages = _store_stages(scratch / f"store-{n}", n)
        rows.append([f"{n:,}", *(f"{v:.2f} ms" for v in stages)])
    return Section(
        "5. Durable store, stage by stage",
        intro=(
            "EncryptedFileStorage.store in this process (key-file protection) and each of "
            "its stages alone, best of 5."
        ),
        table=(header, rows),
    )


def _store_stages(directory: Path, n: int) -> list[float]:
    from context import make_credentials
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    from modelforge_credentials import EncryptedFileStorage
    from modelforge_credentials.backends import fileformat
    from modelforge_credentials.files import write_atomic

    storage = EncryptedFileStorage(directory)
    storage.store_many(make_credentials(n))
    parsed = fileformat.parse(storage.path.read_bytes())
    key = storage._keys.data_key(parsed.envelope)
    plain = AESGCM(key).decrypt(parsed.nonce, parsed.body, parsed.head)
    data = fileformat._check_credentials(plain)
    encoded = fileformat.encode(parsed.envelope, key, data)
    scratch = storage.config_dir / "scratch.enc"

    def best(fn: Callable[[], object]) -> float:
        return min(timeit.repeat(fn, number=1, repeat=5)) * 1e3

    return [
        best(lambda: storage.store("bench", "x", "y")),
        best(lambda: fileformat.parse(storage.path.read_bytes())),
        best(lambda: AESGCM(key).decrypt(parsed.nonce, parsed.body, parsed.head)),
        best(lambda: fileformat._check_credentials(plain)),
        best(lambda: fileformat.encode(parsed.envelope, key, data)),
        best(lambda: write_atomic(scratch, encoded)),
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts: a smoke test")
    parser.add_argument("--out", default=str(ROOT / "docs"), help="where the report goes")
    args = parser.parse_args()
    import run

    run.bootstrap(sys.argv[1:], script=Path(__file__).resolve())
    sys.path.insert(0, str(BENCH))
    import report

    record = run.RunRecord()
    number = 20_000 if args.quick else 100_000
    with tempfile.TemporaryDirectory(prefix="mf-diag-") as name:
        scratch = Path(name)
        import peers

        peers.use_bytecode_cache(scratch / "pycache")
        sections = [
            asyncio.run(server_path(scratch, number)),
            client_path(number),
            cli_startup(scratch, 8 if args.quick else 30),
            status_growth([10, 1_000, 10_000, 100_000], 1_000_000),
            store_growth(scratch, [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]),
        ]
    command = "python3 bench/diagnose.py" + (" --quick" if args.quick else "")
    preamble = [
        *record.header(command, args.quick),
        "",
        "The stages behind the rows of [BENCHMARKS.md](BENCHMARKS.md). Absolute times "
        "are for this machine and its load; compare rows within a table.",
    ]
    print(report.terminal(sections))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / run.STAGES_REPORT
    path.write_text(report.markdown(TITLE, preamble, sections) + "\n")
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
