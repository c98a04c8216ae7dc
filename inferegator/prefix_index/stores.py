"""Where the prefix index lives: a process's memory, or Redis for every worker and replica.

Both keep, per runtime, each page sent there with the runtime's counter at that time (the
bytes of text sent there that it did not hold yet), a prompt's new pages their distance
apart, its last page oldest, and a count of the requests routed there lately (halved
every ``costs.spread_half_life_s``). A page is taken to be held while less than the
runtime's capacity (in bytes of text) came after it: a radix cache evicts the least
recently used leaves first. Both answer:

- ``route(runtimes, pages, request_id, costs, ends)``: choose where the prompt goes
  (``rank``) and record that its pages (and its own end, ``pages.Ends``) were sent
  there, in one step; a ``Route``;
- ``release(runtime, request_id)``: that request is over (its answer ended);
- ``clear(runtime)``: forget the runtime's pages and recent requests (it restarted,
  flushed or was drained);
- ``claim(name, ttl_s)``: True for the first caller in ``ttl_s`` seconds (one copy of a
  hot prefix at a time, inferegator.prefix_index.copies).

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
from .pages import Ends, covered_chars

NO_ENDS = Ends(0, 0, 0)

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
    held: list[int]  # per runtime, the leading pages (cuts) it holds
    loads: list[float]  # per runtime, the load weighed
    recent: list[float]  # per runtime, the requests routed there lately (decayed)
    held_chars: list[int]  # per runtime, the bytes of the prompt it holds: its pages, or
    # up to the previous turn's end where it holds that


def rank(held_chars: list[int], loads: list[float], recent: list[float],
         runtimes: list[Runtime], costs: Costs) -> list[int]:
    """Runtimes best first: those under the fairness cap, then by expected prefill
    against the others, then load, then the tie number. The expected prefill, in tokens:
    a queued request's for each request that would wait past its running slots, a share
    of one (1 / slots) for each request running there (they split its rounds), and for
    each recent request above the runtime's mean ``spread_weight`` times such a share,
    less the tokens it holds (``held_chars``). The recent requests only count where the
    longest prefix is held by more than one runtime (or by none): they lean the choice
    among equal holders to the least used, and never take a conversation away from the
    one runtime that holds its history. route.lua makes the same choice in Redis."""
    bound = math.ceil((1.0 + costs.epsilon) * (sum(loads) + 1) / len(loads) - 1e-9)
    mean_recent = sum(recent) / len(recent)
    most = max(held_chars)
    lean = costs.spread_weight if held_chars.count(most) > 1 else 0.0
    keyed = []
    per_request = costs.queue_tokens
    for i, (have, load, lately, runtime) in enumerate(zip(held_chars, loads, recent,
                                                            runtimes)):
        queued = max(0.0, load + 1 - runtime.slots)
        saved = have / costs.chars_per_token
        busy = load + lean * (lately - mean_recent)
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

    def held(self, capacity: int, pages: list[int], ends: Ends,
             page_chars: int) -> tuple[int, int]:
        """How many leading pages the runtime holds, and how many bytes of the prompt."""
        sent, oldest = self.sent, self.counter - capacity
        lo, hi = 0, len(pages)
        while lo < hi:  # held pages are a prefix (route.lua says why)
            mid = (lo + hi + 1) // 2
            if sent.get(pages[mid - 1], oldest) > oldest:
                lo = mid
            else:
                hi = mid - 1
        chars = covered_chars(lo, page_chars)
        if ends.previous_chars > chars and sent.get(ends.previous, oldest) > oldest:
            chars = ends.previous_chars
        return lo, chars

    def record(self, capacity: int, held: int, pages: list[int], page_chars: int,
               own_end: int) -> None:
        """The pages (and the prompt's own end) were sent here, ``held`` of them already
        held."""
        added = covered_chars(len(pages), page_chars) - covered_chars(held, page_chars)
        before = self.counter
        self.counter += added
        now, sent = self.counter, self.sent
        first_new = covered_chars(held + 1, page_chars)
        at = now
        for i, page in enumerate(pages, 1):  # as route.lua: a path's leaves age first
            sent[page] = at = now - max(0, covered_chars(i, page_chars) - first_new)
        if own_end:
            sent[own_end] = at
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
        self._claims: dict[str, float] = {}  # name -> when the claim ends
        self._clock = clock

    def route(self, runtimes: list[Runtime], pages: list[int], request_id: str,
              costs: Costs, ends: Ends = NO_ENDS) -> Route:
        now = self._clock()
        states = [self._runtimes.get(runtime.name) for runtime in runtimes]
        held, held_chars = [], []
        for state, runtime in zip(states, runtimes):
            cuts, chars = state.held(runtime.capacity, pages, ends, costs.page_chars) \
                if state else (0, 0)
            held.append(cuts)
            held_chars.append(chars)
        recent = [decayed(state.recent, state.recent_at, now, costs.spread_half_life_s)
                  if state else 0.0 for state in states]
        loads = [runtime.load for runtime in runtimes]
        order = rank(held_chars, loads, recent, runtimes, costs)
        first = order[0]
        chosen = runtimes[first]
        state = states[first] or self._runtimes.setdefault(chosen.name, _Pages())
        state.record(chosen.capacity, held[first], pages, costs.page_chars, ends.own)
        state.recent, state.recent_at = recent[first] + 1, now
        return Route(order, held, loads, recent, held_chars)

    def release(self, runtime: str, request_id: str) -> None:
        pass  # the caller's loads count its requests already

    def clear(self, runtime: str) -> None:
        self._runtimes.pop(runtime, None)

    def claim(self, name: str, ttl_s: float) -> bool:
        now = self._clock()
        claims = self._claims
        if claims.get(name, now) > now:
            return False
        if len(claims) > 1024:  # the ended ones go now and then
            self._claims = claims = {k: end for k, end in claims.items() if end > now}
        claims[name] = now + ttl_s
        return True

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
              costs: Costs, ends: Ends = NO_ENDS) -> Route:
        keys, per_runtime = [], []
        for runtime in runtimes:
            keys += self._keys(runtime.name)
            per_runtime += (runtime.capacity, runtime.slots, repr(float(runtime.tie)))
        reply = self._redis.run(ROUTE, keys, [
            len(pages), request_id, repr(float(costs.lease_s)), self.ttl_s,
            costs.page_chars, repr(float(costs.chars_per_token)),
            repr(float(costs.queue_tokens)), repr(float(costs.epsilon)),
            repr(float(costs.spread_weight)), repr(float(costs.spread_half_life_s)),
            *per_runtime, _packed(pages), _packed((ends.own,)) if ends.own else b"",
            _packed((ends.previous,)) if ends.previous else b"", ends.previous_chars])
        count = len(runtimes)
        return Route([int(i) - 1 for i in reply[:count]],
                     [int(v) for v in reply[count:2 * count]],
                     [float(v) for v in reply[2 * count:3 * count]],
                     [float(v) for v in reply[3 * count:4 * count]],
                     [int(v) for v in reply[4 * count:]])

    def release(self, runtime: str, request_id: str) -> None:
        self._redis.send_command("ZREM", self._keys(runtime)[1], request_id)

    def clear(self, runtime: str) -> None:
        """Its pages (what it is running stays counted until released)."""
        self._redis.command("DEL", self._keys(runtime)[0])

    def claim(self, name: str, ttl_s: float) -> bool:
        reply = self._redis.command("SET", f"{self.prefix}claim:{name}", "1", "NX", "PX",
                                    max(1, int(ttl_s * 1000)))
        return reply is not None

    def close(self) -> None:
        self._redis.close()


def _packed(pages: list[int]) -> bytes:
    """The page hashes as one argument: 8 bytes each (route.lua slices them)."""
    return struct.pack(f">{len(pages)}Q", *pages)


def open_prefix_index(url: str):
    """``memory`` or a redis://, unix:// or rediss:// URL."""
    return MemoryPrefixIndex() if url == "memory" else RedisPrefixIndex(url)
