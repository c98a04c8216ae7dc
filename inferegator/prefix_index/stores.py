"""Where the prefix index lives: a process's memory, or Redis for every worker and replica.

Both keep, per runtime, each page sent there with the runtime's page counter at that time
(the count of pages sent there that it did not hold yet), the new pages of a prompt one
count apart, its last page oldest. A page is taken to be held while fewer than the
runtime's capacity in pages came after it: a radix cache evicts the least recently used
leaves first. Both answer:

- ``lookup(runtimes, capacities, pages)``: per runtime, how many leading pages it holds;
- ``record(runtime, capacity, held, pages)``: the pages were just sent there (``held`` of
  them it held already);
- ``clear(runtime)``: forget the runtime's pages (it restarted, flushed or was drained).
"""

import pathlib

from ..redis_scripts import Script, open_scripts

LOOKUP = Script.load(pathlib.Path(__file__).parent, "lookup.lua")
RECORD = Script.load(pathlib.Path(__file__).parent, "record.lua")


class _Pages:
    __slots__ = ("sent", "counter")

    def __init__(self):
        self.sent: dict[int, int] = {}  # page hash -> counter when last sent
        self.counter = 0


class MemoryPrefixIndex:
    """The index of one process (one gunicorn worker; gevent: no locks needed)."""

    def __init__(self):
        self._runtimes: dict[str, _Pages] = {}

    def lookup(self, runtimes: list[str], capacities: list[int],
               pages: list[int]) -> list[int]:
        found = []
        for runtime, capacity in zip(runtimes, capacities):
            state = self._runtimes.get(runtime)
            if state is None:
                found.append(0)
                continue
            sent, oldest = state.sent, state.counter - capacity
            lo, hi = 0, len(pages)
            while lo < hi:  # held pages are a prefix (lookup.lua says why)
                mid = (lo + hi + 1) // 2
                if sent.get(pages[mid - 1], oldest) > oldest:
                    lo = mid
                else:
                    hi = mid - 1
            found.append(lo)
        return found

    def record(self, runtime: str, capacity: int, held: int, pages: list[int]) -> None:
        state = self._runtimes.get(runtime)
        if state is None:
            state = self._runtimes[runtime] = _Pages()
        state.counter += len(pages) - held
        now, sent = state.counter, state.sent
        for i, page in enumerate(pages):  # as record.lua: a path's leaves age first
            sent[page] = now - max(0, i - held)
        if len(sent) > 2 * capacity:
            oldest = now - capacity
            state.sent = {page: at for page, at in sent.items() if at > oldest}

    def clear(self, runtime: str) -> None:
        self._runtimes.pop(runtime, None)

    def close(self) -> None:
        pass


class RedisPrefixIndex:
    """The index every worker and replica shares: one script call to look up (waited
    for), one to record (not waited for), keys that expire when no longer written."""

    def __init__(self, url: str, prefix: str = "inferegator:px:", ttl_s: int = 86400,
                 timeout_s: float = 0.5):
        self._redis = open_scripts(url, (LOOKUP, RECORD), timeout_s)
        self.prefix = prefix
        self.ttl_s = ttl_s
        self._record_loaded = False

    def _keys(self, runtime: str) -> list[str]:
        return [f"{self.prefix}{runtime}:p", f"{self.prefix}{runtime}:n"]

    def lookup(self, runtimes: list[str], capacities: list[int],
               pages: list[int]) -> list[int]:
        keys = [key for runtime in runtimes for key in self._keys(runtime)]
        reply = self._redis.run(LOOKUP, keys, [len(pages), *capacities, *pages])
        return [int(value) for value in reply]

    def record(self, runtime: str, capacity: int, held: int, pages: list[int]) -> None:
        args = [held, capacity, self.ttl_s, *pages]
        if self._record_loaded:
            self._redis.send(RECORD, self._keys(runtime), args)
        else:  # the first one waits: it loads the script, so later ones arrive in order
            self._redis.run(RECORD, self._keys(runtime), args)
            self._record_loaded = True

    def clear(self, runtime: str) -> None:
        self._redis.command("DEL", *self._keys(runtime))

    def close(self) -> None:
        self._redis.close()


def open_prefix_index(url: str):
    """``memory`` or a redis://, unix:// or rediss:// URL."""
    return MemoryPrefixIndex() if url == "memory" else RedisPrefixIndex(url)
