"""When the agent locks by itself, and how it slows down passphrase guessing.

Both read the agent's (injected) clock and its live configuration, which a
SIGHUP may change: the limits are looked up on every check, never copied.
"""

from __future__ import annotations

from typing import Protocol


class LockLimits(Protocol):
    idle_timeout: float | None  # None or 0: never
    max_unlock: float | None  # the absolute limit after an unlock
    unlock_delay_base: float
    unlock_delay_cap: float


class LockTimers:
    """The idle limit (since the last request that touched a secret) and the
    absolute limit (since the unlock)."""

    def __init__(self, limits: LockLimits, now: float) -> None:
        self.limits = limits
        self.last_activity = now
        self.unlocked_at: float | None = None

    def expired(self, now: float, holding: bool) -> str | None:
        """Why the agent must lock now, or None. ``holding``: some secret is
        in memory (unlocked, or values cached)."""
        idle = self.limits.idle_timeout
        if idle and now - self.last_activity >= idle and (self.unlocked_at is not None or holding):
            return f"idle for {now - self.last_activity:.0f} s"
        limit = self.limits.max_unlock
        if limit and self.unlocked_at is not None and now - self.unlocked_at >= limit:
            return f"unlocked for {now - self.unlocked_at:.0f} s (the maximum)"
        return None

    def next_deadline(self, holding: bool) -> float | None:
        """Clock time of the next check that could change anything."""
        deadlines = []
        if self.limits.idle_timeout and (self.unlocked_at is not None or holding):
            deadlines.append(self.last_activity + self.limits.idle_timeout)
        if self.limits.max_unlock and self.unlocked_at is not None:
            deadlines.append(self.unlocked_at + self.limits.max_unlock)
        return min(deadlines) if deadlines else None


class UnlockBackoff:
    """Each failed unlock in a row doubles the wait before its answer, up to
    the cap; a success resets it."""

    def __init__(self, limits: LockLimits) -> None:
        self.limits = limits
        self.failures = 0

    def failed(self) -> float:
        """Count a failure; the delay before answering it."""
        self.failures += 1
        base, cap = self.limits.unlock_delay_base, self.limits.unlock_delay_cap
        return float(min(cap, base * 2 ** (self.failures - 1)))

    def succeeded(self) -> None:
        self.failures = 0
