"""The small pieces every test tier shares: a fake clock, raw frames, a poll,
the protocol's error codes as the documentation states them.

Pure (no processes, no sockets): tests/agent_harness.py builds the
real-process harness on top.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import msgpack  # type: ignore[import-untyped]
import pytest

Snapshot = TypeVar("Snapshot")

#: The closed set of error codes of protocol version 1 (docs/PROTOCOL.md, section 5),
#: written out here so the tests do not take the agent's word for it.
PROTOCOL_ERROR_CODES = frozenset(
    {
        "bad_request",
        "unsupported_version",
        "unknown_op",
        "invalid",
        "locked",
        "bad_passphrase",
        "read_only",
        "unavailable",
        "too_large",
        "internal",
    }
)


class FakeClock:
    """The injected clock: time moves only when a test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingSleep:
    """An injected ``asyncio.sleep``: records each delay and advances ``clock`` by it
    instead of waiting."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self.clock.advance(delay)
        await asyncio.sleep(0)


def frame(body: bytes) -> bytes:
    """``body`` behind its 4-byte big-endian length, as the protocol frames it."""
    return struct.pack(">I", len(body)) + body


def map_frame(message: object) -> bytes:
    """``message`` packed with msgpack, then framed."""
    return frame(msgpack.packb(message, use_bin_type=True))


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> float:
    """Poll ``predicate`` until it holds (an event, never a timer); the seconds it took."""
    began = time.monotonic()
    deadline = began + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.005)
    return time.monotonic() - began


def crash_value(index: int) -> str:
    """The value a crash test's writer stores under ``k<index>`` (lengths vary)."""
    return f"v{index}-" + "x" * (index % 97)


@dataclass(frozen=True)
class WriterReport:
    """What a crash test's writer said before it was killed.

    The writer says ``begin N`` before its store of ``k<N>`` and ``ack N`` once
    that store returned, so a kill after a ``begin`` and before its ``ack``
    landed inside the store, by the writer's own account.
    """

    acks: list[int]
    #: The store begun and never acknowledged (the one the kill interrupted), if any.
    in_store: int | None

    @classmethod
    def parse(cls, output: bytes) -> WriterReport:
        acks: list[int] = []
        begun: int | None = None
        for line in output.decode().splitlines():
            word, index = line.split()
            if word == "begin":
                begun = int(index)
            elif word == "ack" and int(index) == begun:
                acks.append(begun)
                begun = None
            else:
                raise AssertionError(f"the writer said {line!r} out of turn in {output!r}")
        return cls(acks, begun)


def disk_value(index: int) -> str:
    """About 8 KB a value: a small tmpfs fills up in a few dozen stores."""
    return f"disk-SECRET-{index:04d}-" + "v" * 8000


@dataclass(frozen=True)
class FullDisk(Generic[Snapshot]):
    """Where :func:`store_until_full` stopped."""

    #: ``k<N>`` -> value of every store that succeeded.
    stored: dict[str, str]
    #: The error of the first store that failed, and that store's index.
    failure: Exception
    index: int
    #: The snapshot taken just before the failed store.
    before: Snapshot


def store_until_full(
    store: Callable[[str, str], object],
    error: type[Exception],
    snapshot: Callable[[], Snapshot],
    limit: int = 64,
) -> FullDisk[Snapshot]:
    """``store(k<N>, disk_value(N))`` for N = 0, 1, ... until it raises ``error``
    (fails the test if ``limit`` stores all succeed)."""
    stored: dict[str, str] = {}
    for index in range(limit):
        before = snapshot()
        try:
            store(f"k{index}", disk_value(index))
        except error as err:
            return FullDisk(stored, err, index, before)
        stored[f"k{index}"] = disk_value(index)
    pytest.fail(f"the disk never filled up in {limit} stores")
