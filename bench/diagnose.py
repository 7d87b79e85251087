#!/usr/bin/env python3
"""Where the time goes: breakdowns behind the rows of BENCHMARKS.md.

    python3 bench/diagnose.py [--quick]

Runs in the project's venv (re-executing itself there, like bench/run.py)
and prints, without sockets where possible:

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

BENCH = Path(__file__).resolve().parent


def _per_call_us(fn: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def _show(rows: list[tuple[str, float]], unit: str = "µs") -> None:
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"  {name:<{width}}  {value:8.2f} {unit}")


class _NullTransport:
    def write(self, data: bytes) -> None:
        pass

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default

    def pause_reading(self) -> None:
        pass


async def server_path(scratch: Path, number: int) -> None:
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
    print("1. server: Python per cached retrieve (data_received, null transport)")
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
    _show([(name, _per_call_us(fn, number)) for name, fn in stages])
    # After a context switch the server runs with caches the client and the
    # kernel have filled: a longer Python path pays more for that than a hot
    # loop shows.
    cold = [
        ("agent: data_received, caches evicted first", lambda: connection.data_received(frame)),
        ("floor: data_received, caches evicted first", lambda: floor.data_received(frame)),
    ]
    _show([(name, _cold_call_us(fn, max(200, number // 100))) for name, fn in cold])
    agent.close()


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


def client_path(number: int) -> None:
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

    print("2. client: Python per call, without I/O")
    stages: list[tuple[str, Callable[[], object]]] = [
        ("AgentClient: encode_request", request),
        ("AgentClient: decode + parse_reply + expect_fields", receive),
        ("bare msgpack: packb + unpackb", bare),
        ("ssh-agent client: parse the answer", ssh_receive),
    ]
    _show([(name, _per_call_us(fn, number)) for name, fn in stages])


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


def cli_startup(root: Path, runs: int) -> None:
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
    print(f"3. CLI start-up: whole processes, median of {runs} interleaved runs")
    width = max(map(len, cases))
    for name, values in samples.items():
        p50 = statistics.median(values)
        print(f"  {name:<{width}}  {p50 * 1e3:7.1f} ms  {p50 / base:5.2f}× baseline")


def status_growth(ns: list[int], number: int) -> None:
    from modelforge_credentials.daemon.state import Cache

    print("4. status: Cache.__len__ (counted on every status) against N")
    rows = []
    for n in ns:
        cache = Cache(None, time.monotonic)
        cache.fill({"p": {f"k{i}": "v" for i in range(n)}})
        rows.append((f"N={n:,}", _per_call_us(lambda c=cache: len(c), max(1, number // n))))
    _show(rows)


def store_growth(scratch: Path, ns: list[int]) -> None:
    print("5. durable store, stage by stage (best of 5, ms)")
    header = ["N", "store", "read+parse", "decrypt", "unpack+check", "pack+encrypt", "write+fsync"]
    print("  " + "  ".join(f"{h:>12}" for h in header))
    for n in ns:
        stages = _store_stages(scratch / f"store-{n}", n)
        print("  " + f"{n:>12,}" + "".join(f"  {v:>12.2f}" for v in stages))


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
    quick = "--quick" in sys.argv[1:]
    import run

    run.bootstrap(sys.argv[1:], script=Path(__file__).resolve())
    sys.path.insert(0, str(BENCH))
    number = 20_000 if quick else 100_000
    with tempfile.TemporaryDirectory(prefix="mf-diag-") as name:
        scratch = Path(name)
        import peers

        peers.use_bytecode_cache(scratch / "pycache")
        asyncio.run(server_path(scratch, number))
        client_path(number)
        cli_startup(scratch, 8 if quick else 30)
        status_growth([10, 1_000, 10_000, 100_000], 1_000_000)
        store_growth(scratch, [1_000, 10_000] if quick else [1_000, 10_000, 100_000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
