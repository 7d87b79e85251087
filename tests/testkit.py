"""The small pieces every test tier shares: a fake clock, raw frames, a poll.

Pure (no processes, no sockets): tests/agent_harness.py builds the
real-process harness on top.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Callable

import msgpack  # type: ignore[import-untyped]
import pytest


class FakeClock:
    """The injected clock: time moves only when a test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


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
