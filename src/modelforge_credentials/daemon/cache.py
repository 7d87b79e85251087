"""The agent's decrypted values, by ``(provider, key)``, with their age.

Touched only on the event loop's thread: the backend worker returns what it
read, and the agent keeps it only if no lock came in between.
"""

from __future__ import annotations

from collections.abc import Callable

Clock = Callable[[], float]
Pair = tuple[str, str]

MISS = object()  # Cache.lookup: not known, ask the backend


class Cache:
    """Decrypted values by ``(provider, key)``; ``None`` records an absence.

    ``complete`` means the whole store was loaded, so a miss is an absence.
    Entries expire after ``ttl`` seconds when one is set. Only validated
    names ever become entries.
    """

    def __init__(self, ttl: float | None, clock: Clock) -> None:
        self.ttl = ttl
        self._clock = clock
        self._entries: dict[Pair, tuple[str | None, float]] = {}
        self._values = 0  # entries holding a value: `status` reports it in O(1)
        self.complete = False

    def lookup(self, pair: Pair, now: float) -> object:
        """The value (``str``), an absence (``None``), or :data:`MISS`."""
        entry = self._entries.get(pair)
        if entry is None:
            return None if self.complete else MISS
        value, stored_at = entry
        if self.ttl is not None and now - stored_at >= self.ttl:
            self._drop(pair)
            return MISS
        return value

    def put(self, pair: Pair, value: str | None) -> None:
        self._drop(pair)
        if value is None and self.complete:
            return
        self._entries[pair] = (value, self._clock())
        if value is not None:
            self._values += 1

    def _drop(self, pair: Pair) -> None:
        old = self._entries.pop(pair, None)
        if old is not None and old[0] is not None:
            self._values -= 1

    def fill(self, credentials: dict[str, dict[str, str]]) -> None:
        now = self._clock()
        entries: dict[Pair, tuple[str | None, float]] = {
            (provider, key): (value, now)
            for provider, keys in credentials.items()
            for key, value in keys.items()
        }
        self._entries = entries
        self._values = len(entries)
        self.complete = True

    def names(self, provider: str | None) -> list[Pair]:
        return sorted(
            pair
            for pair, (value, _) in self._entries.items()
            if value is not None and (provider is None or pair[0] == provider)
        )

    def clear(self) -> None:
        self._entries = {}
        self._values = 0
        self.complete = False

    def __len__(self) -> int:
        return self._values
