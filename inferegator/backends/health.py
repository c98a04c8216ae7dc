"""Per-backend health: a circuit breaker for passive failures, and a retry budget.

The breaker is closed while requests succeed; ``breaker_failures`` failures in a row
(or one refused connection) open it; after ``breaker_open_s`` it is half-open and lets
exactly one trial request through: success closes it, failure opens it again.
"""

import time
from collections import deque

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitBreaker:
    __slots__ = ("failure_threshold", "open_s", "clock", "failures", "_opened_at",
                 "_trial_running", "_state", "_refused")

    def __init__(self, failure_threshold: int, open_s: float, clock=time.monotonic):
        self.failure_threshold = failure_threshold
        self.open_s = open_s
        self.clock = clock
        self.failures = 0
        self._state = CLOSED
        self._opened_at = 0.0
        self._trial_running = False
        self._refused = False

    @property
    def state(self) -> str:
        if self._state == OPEN and self.clock() - self._opened_at >= self.open_s:
            self._state = HALF_OPEN
            self._trial_running = False
        return self._state

    def usable(self) -> bool:
        """May a request be sent now? (half-open: only while no trial is running)"""
        state = self.state
        return state == CLOSED or (state == HALF_OPEN and not self._trial_running)

    def begin(self) -> bool:
        """Claim the right to send one request; False if the breaker says no."""
        state = self.state
        if state == CLOSED:
            return True
        if state == HALF_OPEN and not self._trial_running:
            self._trial_running = True
            return True
        return False

    def success(self) -> None:
        self.failures = 0
        self._state = CLOSED
        self._trial_running = False
        self._refused = False

    def probe_passed(self) -> bool:
        """A passed health probe closes a circuit opened by refused connections (the
        runtime was down and is back: True), not one opened by failing requests: a runtime
        whose /health answers while its generations hang must stay out."""
        if self._refused and self._state != CLOSED:
            self.success()
            return True
        return False

    def failure(self) -> None:
        self.failures += 1
        if self._state == HALF_OPEN or self.failures >= self.failure_threshold:
            self.trip()
        else:
            self._trial_running = False

    def release(self) -> None:
        """Give back a claimed trial without a verdict (the client left)."""
        self._trial_running = False

    def trip(self, refused: bool = False) -> None:
        """Open now (e.g. the backend refused the connection: no point in waiting)."""
        self._state = OPEN
        self._opened_at = self.clock()
        self._trial_running = False
        self._refused = refused


class RetryBudget:
    """Retries allowed: at most ratio x requests over the last window_s, plus a floor rate."""

    def __init__(self, ratio: float, min_per_s: float, window_s: float = 10.0,
                 clock=time.monotonic):
        self.ratio = ratio
        self.min_per_s = min_per_s
        self.window_s = window_s
        self.clock = clock
        self._requests: deque = deque()
        self._retries: deque = deque()

    def _trim(self, now):
        for events in (self._requests, self._retries):
            while events and events[0] <= now - self.window_s:
                events.popleft()

    def request(self) -> None:
        self._requests.append(self.clock())

    def try_retry(self) -> bool:
        now = self.clock()
        self._trim(now)
        allowed = self.ratio * len(self._requests) + self.min_per_s * self.window_s
        if len(self._retries) < allowed:
            self._retries.append(now)
            return True
        return False
