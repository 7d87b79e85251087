"""The floor: the least a Python asyncio server must do to answer a retrieve.

    python bench/floor_server.py SOCKET < credentials.msgpack

Speaks the agent's framing (4-byte big-endian length + one msgpack map) and
answers every request as a retrieve from a dict, with no validation, no
peer check, no lock rule and no timers: the agent's cost above this is the
price of its checks and bookkeeping. It runs on the event loop the agent
would (MODEL_FORGE_EVENT_LOOP, daemon/loop.py), so the ratio compares like
with like. Prints ``ready`` once it listens.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any

import msgpack

_unpackb = msgpack.unpackb
_packb = msgpack.packb


class FloorConnection(asyncio.Protocol):
    def __init__(self, values: dict[tuple[str, str], str]) -> None:
        self.values = values
        self.buf = bytearray()
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        replies = []
        while len(buf) >= 4:
            end = 4 + int.from_bytes(buf[:4], "big")
            if len(buf) < end:
                break
            request = _unpackb(buf[4:end])
            del buf[:end]
            value = self.values.get((request.get("provider"), request.get("key")))
            body = _packb({"id": request.get("id"), "ok": True, "value": value})
            replies.append(len(body).to_bytes(4, "big") + body)
        if replies and self.transport is not None:
            self.transport.write(b"".join(replies))


async def serve(path: str, values: dict[tuple[str, str], str]) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_unix_server(lambda: FloorConnection(values), path, backlog=128)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    async with server:
        await stop.wait()
    os.unlink(path)


def main() -> int:
    path = sys.argv[1]
    credentials = msgpack.unpackb(sys.stdin.buffer.read())
    values = {(p, k): v for p, keys in credentials.items() for k, v in keys.items()}
    from modelforge_credentials.daemon.loop import loop_factory

    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(serve(path, values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
