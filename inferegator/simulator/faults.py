"""Seeded, reproducible fault injection for generation requests.

The n-th generation request's fate depends only on (seed, n): the same seed and
the same request order give the same faults, run after run.
"""

import random
import time


class FaultInjector:
    """Decides, per generation request, whether and how it fails."""

    def __init__(self, seed: int, rates, slow_start_s: float, clock=time.monotonic):
        self._seed = seed
        self._rates = tuple((kind, rate) for kind, rate in rates if rate > 0)
        self._ready_at = clock() + slow_start_s
        self._clock = clock
        self._count = 0

    @property
    def starting(self) -> bool:
        """True during the configured slow start."""
        return self._clock() < self._ready_at

    def draw(self):
        """The fault for the next generation request: "500", "503", "hang", "drop" or None."""
        index = self._count
        self._count += 1
        if not self._rates:
            return None
        roll = random.Random(self._seed * 1_000_003 + index).random()
        for kind, rate in self._rates:
            if roll < rate:
                return kind
            roll -= rate
        return None
