"""Sliding-window counters: in memory (one worker) or in Redis (shared, one script call).

Both answer ``admit(limits, member, window_ms)`` all or nothing over every limit of
a request, ``reconcile(limit_key, member, amount)`` to correct an amount later (Redis:
without waiting for it), and ``peek(limits, window_ms)`` to read what the windows hold
now without admitting anything.
Each admission is remembered (member -> amount) until it leaves the window, which is
what makes counts exact: a limit of N admits N in any window, never N + 1.
"""

import pathlib
import time
from collections import deque
from dataclasses import dataclass

from ..redis_scripts import Script, StoreUnavailable, open_scripts  # noqa: F401 (raised here)

_LUA = pathlib.Path(__file__).parent


@dataclass(frozen=True)
class Limit:
    """One counter to check: its key, its maximum per window, the amount asked now."""

    key: str
    maximum: int
    amount: int


@dataclass
class Decision:
    admitted: bool
    retry_after_ms: int  # -1: can never fit (the amount exceeds the limit)
    now_ms: int
    used: list  # per limit, after this admission if admitted
    oldest_ms: list  # per limit, the oldest admission still counted (-1: none)


class MemoryWindowStore:
    """Counters of one process (one gunicorn worker, gevent: no locks needed)."""

    def __init__(self, clock=time.monotonic):  # monotonic: a clock step cannot reorder
        self.clock = clock
        self._windows: dict[str, tuple[deque, dict, list]] = {}

    @staticmethod
    def _prune(window, now, window_ms):
        """Drop the admissions that have left the window (and their amounts)."""
        entries, amounts, total = window
        while entries and entries[0][0] <= now - window_ms:
            _, member = entries.popleft()
            total[0] -= amounts.pop(member, 0)
        return window

    def _window(self, key, now, window_ms):
        return self._prune(self._windows.setdefault(key, (deque(), {}, [0])), now, window_ms)

    def peek(self, limits: list[Limit], window_ms: int) -> Decision:
        """What each limit's window holds now; nothing added (amounts are ignored)."""
        now = int(self.clock() * 1000)
        used, oldest = [], []
        for limit in limits:
            window = self._windows.get(limit.key)  # a key never admitted stays absent
            if window is None:
                used.append(0)
                oldest.append(-1)
                continue
            entries, _, total = self._prune(window, now, window_ms)
            used.append(total[0])
            oldest.append(entries[0][0] if entries else -1)
        return Decision(True, 0, now, used, oldest)

    def admit(self, limits: list[Limit], member: str, window_ms: int) -> Decision:
        now = int(self.clock() * 1000)
        used, oldest, admitted, retry = [], [], True, 0
        for limit in limits:
            entries, amounts, total = self._window(limit.key, now, window_ms)
            used.append(total[0])
            oldest.append(entries[0][0] if entries else -1)
            if total[0] + limit.amount > limit.maximum:
                admitted = False
                if limit.amount > limit.maximum:
                    retry = -1
                elif retry >= 0:
                    need, freed = total[0] + limit.amount - limit.maximum, 0
                    for ts, old in entries:
                        freed += amounts[old]
                        if freed >= need:
                            retry = max(retry, ts + window_ms - now)
                            break
        if admitted:
            for i, limit in enumerate(limits):
                entries, amounts, total = self._windows[limit.key]
                entries.append((now, member))
                amounts[member] = limit.amount
                total[0] += limit.amount
                used[i] += limit.amount
                if oldest[i] < 0:
                    oldest[i] = now
        return Decision(admitted, retry, now, used, oldest)

    def reconcile(self, key: str, member: str, amount: int) -> None:
        window = self._windows.get(key)
        if window is None or member not in window[1]:
            return  # it left the window already
        window[2][0] += amount - window[1][member]
        window[1][member] = amount


ADMIT = Script.load(_LUA, "window.lua")
RECONCILE = Script.load(_LUA, "reconcile.lua")
PEEK = Script.load(_LUA, "peek.lua")


class RedisWindowStore:
    """Counters shared by every worker and replica: one Lua script call per admission.

    redis:// and unix:// URLs go through PipelinedRedis (one pipelined connection per
    process, a fraction of redis-py's CPU per call); rediss:// through redis-py, or any
    URL with ``pipelined=False``. ``admit`` and ``peek`` wait for Redis; ``reconcile``
    does not (its reply is read and dropped), so it raises StoreUnavailable only when no
    connection can be opened, and a failure after that is logged, not raised.
    """

    def __init__(self, url: str, timeout_s: float = 0.5, pipelined: bool | None = None):
        self._redis = open_scripts(url, (ADMIT, RECONCILE, PEEK), timeout_s, pipelined)

    @staticmethod
    def _keys(limits: list[Limit]) -> list[str]:
        """Each limit's sorted set, hash and running sum, as window.lua and peek.lua read them."""
        return [name for limit in limits
                for name in (limit.key + ":z", limit.key + ":h", limit.key + ":sum")]

    @staticmethod
    def _decision(reply: list) -> Decision:
        values = [int(v) for v in reply]
        return Decision(values[0] == 1, values[1], values[2], values[3::2], values[4::2])

    def admit(self, limits: list[Limit], member: str, window_ms: int) -> Decision:
        args = [window_ms, member]
        for limit in limits:
            args += [limit.maximum, limit.amount]
        return self._decision(self._redis.run(ADMIT, self._keys(limits), args))

    def peek(self, limits: list[Limit], window_ms: int) -> Decision:
        """What each limit's window holds now, in one script call; nothing added."""
        return self._decision(self._redis.run(PEEK, self._keys(limits), [window_ms]))

    def reconcile(self, key: str, member: str, amount: int) -> None:
        self._redis.send(RECONCILE, [key + ":h", key + ":sum"], [member, amount])

    def close(self) -> None:
        """Close the connection(s); a later call opens them again."""
        self._redis.close()


def open_window_store(url: str):
    """`memory` or a redis://, unix:// or rediss:// URL."""
    if url == "memory":
        return MemoryWindowStore()
    return RedisWindowStore(url)
