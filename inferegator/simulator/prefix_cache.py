"""A radix prefix cache over token blocks, with a token capacity and LRU eviction.

Like SGLang's RadixCache with page_size > 1: a sequence is cut into blocks of
``page_size`` tokens and each block is a tree node whose key chains its parent's
(so one node stands for a whole prefix). Only whole blocks are cached. Nodes used
by running requests are locked and never evicted; unlocked leaves go
least-recently-used first once the cached tokens exceed the capacity.
"""

from collections import OrderedDict


class _Node:
    __slots__ = ("key", "parent", "children", "locks")

    def __init__(self, key, parent):
        self.key = key
        self.parent = parent
        self.children = 0
        self.locks = 0


class PrefixCache:
    """Matches, inserts, locks and evicts token-block prefixes."""

    def __init__(self, capacity_tokens: int, page_size: int):
        self.capacity_tokens = capacity_tokens
        self.page_size = page_size
        self._nodes: OrderedDict = OrderedDict()  # key -> _Node, least recently used first
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
        for key in self._keys(ids):
            node = nodes.get(key)
            if node is None:
                break
            nodes.move_to_end(key)
            path.append(node)
        return path

    def insert(self, ids: list[int]) -> list:
        """Cache every whole block of ids; returns the nodes of the full path."""
        path = []
        nodes = self._nodes
        parent = None
        for key in self._keys(ids):
            node = nodes.get(key)
            if node is None:
                node = nodes[key] = _Node(key, parent)
                if parent is not None:
                    parent.children += 1
            else:
                nodes.move_to_end(key)
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
        evicted = 0
        nodes = self._nodes
        while len(nodes) * self.page_size > self.capacity_tokens:
            victims = [n for n in nodes.values() if n.children == 0 and n.locks == 0]
            if not victims:
                break  # everything left is in use
            for node in victims:
                if len(nodes) * self.page_size <= self.capacity_tokens:
                    break
                del nodes[node.key]
                if node.parent is not None:
                    node.parent.children -= 1
                evicted += self.page_size
        self.evicted_tokens += evicted
        return evicted

    def flush(self) -> None:
        """Drop everything (SGLang's /flush_cache, only allowed when idle)."""
        self._nodes.clear()
