"""Where the prefix index lives: a process's memory, or Redis for every worker and replica.

Both keep, per runtime, each page sent there with the runtime's counter at that time (the
bytes of text sent there that it did not hold yet), a prompt's new pages their distance
apart, its last page oldest, and a count of the requests routed there lately (halved
every ``costs.spread_half_life_s``). A page is taken to be held while less than the
runtime's capacity (in bytes of text) came after it: a radix cache evicts the least
recently used leaves first. Both answer:

- ``route(runtimes, pages, request_id, costs)``: choose where the prompt goes (``rank``)
  and record that its pages were sent there, in one step; a ``Route``;
- ``release(runtime, request_id)``: that request is over (its answer ended);
- ``clear(runtime)``: forget the runtime's pages and recent requests (it restarted,
  flushed or was drained).

The loads the choice weighs differ: the memory store takes the caller's (the backend's
load as this worker sees it); the Redis store counts the requests routed there and not
yet released, by every worker and replica (each held at most ``costs.lease_s``), so
replicas that share it see the same loads and make the same choice.
"""

import math
import pathlib
import struct
import time
from typing import NamedTuple

from ..redis_scripts import Script, open_scripts
from .pages import covered_chars

ROUTE = Script.load(pathlib.Path(__file__).parent, "route.lua")


class Runtime(NamedTuple):
    """One candidate runtime as the index weighs it."""

    name: str  # what its cache holds: model @ URL
    capacity: int  # what its cache can hold, in bytes of prompt text
    slots: int  # requests it runs at once; more wait in its queue
    load: float  # requests on it (the memory store's; the Redis store counts its own)
    tie: float  # a random number: equal choices go to the smaller


class Costs(NamedTuple):
    """The cost model's constants for one request."""

    page_chars: int  # the pages' size (inferegator.prefix_index.pages)
    chars_per_token: float
    queue_tokens: float  # what one request queued ahead costs, in tokens of prefill
    epsilon: float  # fairness cap: no runtime past (1 + epsilon) x the mean load
    lease_s: float  # how long a request counts as in flight if never released
    spread_weight: float = 0.0  # a recent request above the mean counts this much load
    spread_half_life_s: float = 10.0  # how fast the recent requests are forgotten


class Route(NamedTuple):
    """The index's answer for one request."""

    order: list[int]  # indexes into the runtimes given, best first
    held: list[int]  # per runtime, the leading pages it holds
    loads: list[float]  # per runtime, the load weighed
    recent: list[float]  # per runtime, the requests routed there lately (decayed)


def rank(held: list[int], loads: list[float], recent: list[float], runtimes: list[Runtime],
         costs: Costs) -> list[int]:
    """Runtimes best first: those under the fairness cap, then by expected prefill
    against the others, then load, then the tie number. The expected prefill, in tokens:
    a queued request's for each request that would wait past its running slots, a share
    of one (1 / slots) for each request running there (they split its rounds), and for
    each recent request above the runtime's mean ``spread_weight`` times such a share
    (the choice among runtimes that hold the same prefix leans to the least used),
    less the tokens its held pages cover. route.lua makes the same choice in Redis."""
    bound = math.ceil((1.0 + costs.epsilon) * (sum(loads) + 1) / len(loads) - 1e-9)
    mean_recent = sum(recent) / len(recent)
    keyed = []
    per_request = costs.queue_tokens
    for i, (have, load, lately, runtime) in enumerate(zip(held, loads, recent, runtimes)):
        queued = max(0.0, load + 1 - runtime.slots)
        saved = covered_chars(have, costs.page_chars) / costs.chars_per_token
        busy = load + costs.spread_weight * (lately - mean_recent)
        cost = queued * per_request + busy * per_request / runtime.slots - saved
        keyed.append((load >= bound, cost, load, runtime.tie, i))
    keyed.sort()
    return [entry[-1] for entry in keyed]


class _Pages:
    """One runtime's pages and recent requests, in memory."""

    __slots__ = ("sent", "counter", "recent", "recent_at")

    def __init__(self):
        self.sent: dict[int, int] = {}  # page hash -> counter when last sent
        self.counter = 0  # bytes of text sent that the runtime did not hold
        self.recent = 0.0  # requests routed here, decayed to recent_at
        self.recent_at = 0.0

    def held(self, capacity: int, pages: list[int]) -> int:
        """How many leading pages the runtime holds."""
        sent, oldest = self.sent, self.counter - capacity
        lo, hi = 0, len(pages)
        while lo < hi:  # held pages are a prefix (route.lua says why)
            mid = (lo + hi + 1) // 2
            if sent.get(pages[mid - 1], oldest) > oldest:
                lo = mid
            else:
                hi = mid - 1
        return lo

    def record(self, capacity: int, held: int, pages: list[int], page_chars: int) -> None:
        """The pages were sent here, ``held`` of them already held."""
        added = covered_chars(len(pages), page_chars) - covered_chars(held, page_chars)
        before = self.counter
        self.counter += added
        now, sent = self.counter, self.sent
        first_new = covered_chars(held + 1, page_chars)
        for i, page in enumerate(pages, 1):  # as route.lua: a path's leaves age first
            sent[page] = now - max(0, covered_chars(i, page_chars) - first_new)
        if now // capacity > before // capacity:  # as route.lua: now and then, drop the aged
            oldest = now - capacity
            self.sent = {page: at for page, at in sent.items() if at > oldest}


def decayed(count: float, since: float, now: float, half_life_s: float) -> float:
    """A count of requests, halved for every ``half_life_s`` since it was last added to."""
    return count * 0.5 ** (max(0.0, now - since) / half_life_s)


class MemoryPrefixIndex:
    """The index of one process (one gunicorn worker; gevent: no locks needed)."""

    def __init__(self, clock=time.monotonic):
        self._runtimes: dict[str, _Pages] = {}
        self._clock = clock

    def route(self, runtimes: list[Runtime], pages: list[int], request_id: str,
              costs: Costs) -> Route:
        now = self._clock()
        states = [self._runtimes.get(runtime.name) for runtime in runtimes]
        held = [state.held(runtime.capacity, pages) if state else 0
                for state, runtime in zip(states, runtimes)]
        recent = [decayed(state.recent, state.recent_at, now, costs.spread_half_life_s)
                  if state else 0.0 for state in states]
        loads = [runtime.load for runtime in runtimes]
        order = rank(held, loads, recent, runtimes, costs)
        first = order[0]
        chosen = runtimes[first]
        state = states[first] or self._runtimes.setdefault(chosen.name, _Pages())
        state.record(chosen.capacity, held[first], pages, costs.page_chars)
        state.recent, state.recent_at = recent[first] + 1, now
        return Route(order, held, loads, recent)

    def release(self, runtime: str, request_id: str) -> None:
        pass  # the caller's loads count its requests already

    def clear(self, runtime: str) -> None:
        self._runtimes.pop(runtime, None)

    def close(self) -> None:
        pass


class RedisPrefixIndex:
    """The index every worker and replica shares: one script call per request, waited
    for, chooses and records; a release is sent without waiting; keys expire when no
    longer written."""

    # The prefix names the keys' layout (px2: the counter inside the pages hash), so that
    # replicas of an older layout during a rolling upgrade keep an index of their own.
    def __init__(self, url: str, prefix: str = "inferegator:px2:", ttl_s: int = 86400,
                 timeout_s: float = 0.5):
        self._redis = open_scripts(url, (ROUTE,), timeout_s)
        self.prefix = prefix
        self.ttl_s = ttl_s

    def _keys(self, runtime: str) -> list[str]:
        """Its pages (with its counter) and its in-flight set."""
        return [f"{self.prefix}{runtime}:p", f"{self.prefix}{runtime}:f"]

    def route(self, runtimes: list[Runtime], pages: list[int], request_id: str,
              costs: Costs) -> Route:
        keys, per_runtime = [], []
        for runtime in runtimes:
            keys += self._keys(runtime.name)
            per_runtime += (runtime.capacity, runtime.slots, repr(float(runtime.tie)))
        reply = self._redis.run(ROUTE, keys, [
            len(pages), request_id, repr(float(costs.lease_s)), self.ttl_s,
            costs.page_chars, repr(float(costs.chars_per_token)),
            repr(float(costs.queue_tokens)), repr(float(costs.epsilon)),
            repr(float(costs.spread_weight)), repr(float(costs.spread_half_life_s)),
            *per_runtime, _packed(pages)])
        count = len(runtimes)
        return Route([int(i) - 1 for i in reply[:count]],
                     [int(v) for v in reply[count:2 * count]],
                     [float(v) for v in reply[2 * count:3 * count]],
                     [float(v) for v in reply[3 * count:]])

    def release(self, runtime: str, request_id: str) -> None:
        self._redis.send_command("ZREM", self._keys(runtime)[1], request_id)

    def clear(self, runtime: str) -> None:
        """Its pages (what it is running stays counted until released)."""
        self._redis.command("DEL", self._keys(runtime)[0])

    def close(self) -> None:
        self._redis.close()


def _packed(pages: list[int]) -> bytes:
    """The page hashes as one argument: 8 bytes each (route.lua slices them)."""
    return struct.pack(f">{len(pages)}Q", *pages)


def open_prefix_index(url: str):
    """``memory`` or a redis://, unix:// or rediss:// URL."""
    return MemoryPrefixIndex() if url == "memory" else RedisPrefixIndex(url)
