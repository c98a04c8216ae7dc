"""A radix prefix cache over token blocks, with a token capacity and LRU eviction.

Like SGLang's RadixCache with page_size > 1: a sequence is cut into blocks of
``page_size`` tokens and each block is a tree node whose key chains its parent's
(so one node stands for a whole prefix). Only whole blocks are cached. Nodes used
by running requests are locked and never evicted; unlocked leaves go
least-recently-used first once the cached tokens exceed the capacity.
"""

import heapq
import itertools


class _Node:
    __slots__ = ("key", "parent", "children", "locks", "tick")

    def __init__(self, key, parent, tick):
        self.key = key
        self.parent = parent
        self.children = 0
        self.locks = 0
        self.tick = tick


class PrefixCache:
    """Matches, inserts, locks and evicts token-block prefixes."""

    def __init__(self, capacity_tokens: int, page_size: int):
        self.capacity_tokens = capacity_tokens
        self.page_size = page_size
        self._nodes: dict = {}  # chained block key -> _Node
        self._clock = itertools.count()  # access ticks: higher is more recent
        self.evicted_tokens = 0

    @property
    def cached_tokens(self) -> int:
        """Tokens held in the cache now."""
        return len(self._nodes) * self.page_size

    def _keys(self, ids: list[int]):
        size = self.page_size
        key = None
        for start in range(0, len(ids) - size + 1, size):
            key = hash((key, tuple(ids[start:start + size])))
            yield key

    def match(self, ids: list[int]) -> list:
        """The cached nodes covering the longest cached prefix of ids (touching them)."""
        path = []
        nodes = self._nodes
        tick = next(self._clock)
        for key in self._keys(ids):
            node = nodes.get(key)
            if node is None:
                break
            node.tick = tick
            path.append(node)
        return path

    def insert(self, ids: list[int]) -> list:
        """Cache every whole block of ids; returns the nodes of the full path."""
        path = []
        nodes = self._nodes
        parent = None
        tick = next(self._clock)
        for key in self._keys(ids):
            node = nodes.get(key)
            if node is None:
                node = nodes[key] = _Node(key, parent, tick)
                if parent is not None:
                    parent.children += 1
            else:
                node.tick = tick
            path.append(node)
            parent = node
        return path

    @staticmethod
    def lock(path: list) -> None:
        """Protect a path from eviction while a request uses it."""
        for node in path:
            node.locks += 1

    @staticmethod
    def unlock(path: list) -> None:
        """Release a path locked by lock()."""
        for node in path:
            node.locks -= 1

    def evict(self) -> int:
        """Evict unlocked leaves, least recently used first, until within capacity."""
        nodes = self._nodes
        excess = len(nodes) - self.capacity_tokens // self.page_size
        if excess <= 0:
            return 0
        heap = [(n.tick, id(n), n) for n in nodes.values() if n.children == 0 and n.locks == 0]
        heapq.heapify(heap)
        evicted = 0
        while evicted < excess and heap:
            _, _, node = heapq.heappop(heap)
            del nodes[node.key]
            evicted += 1
            parent = node.parent
            if parent is not None:
                parent.children -= 1
                if parent.children == 0 and parent.locks == 0:
                    heapq.heappush(heap, (parent.tick, id(parent), parent))
        self.evicted_tokens += evicted * self.page_size
        return evicted * self.page_size

    def flush(self) -> None:
        """Drop everything (SGLang's /flush_cache, only allowed when idle)."""
        self._nodes.clear()
