"""A per-worker cache whose entries expire: how long a looked-up fact may be stale.

Bounded, so that lookups of random keys (an attacker's made-up API keys) cannot grow it
without end: when full, it starts again empty.
"""

import time


class TTLCache:
    """``get(key)``: ``load(key)``'s value, at most ``ttl_s`` seconds old."""

    def __init__(self, load, ttl_s: float, max_entries: int = 100_000, clock=time.monotonic):
        self.load = load
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self._entries: dict = {}

    def get(self, key):
        now = self.clock()
        entry = self._entries.get(key)
        if entry is not None and entry[1] > now:
            return entry[0]
        value = self.load(key)
        if len(self._entries) >= self.max_entries:
            self._entries.clear()
        self._entries[key] = (value, now + self.ttl_s)
        return value
