"""Consistent hashing with bounded loads, shared by the key-affine routing policies.

Every gateway replica and worker builds the same ring from the same YAML and hashes
with blake2b (never Python's salted ``hash()``), so they all map a key to the same
backend without talking to each other. Loads bound the choice (Mirrokni, Thorup and
Zadimoghaddam, "Consistent Hashing with Bounded Loads", 2016): a backend already
holding more than its share is passed over for the next one clockwise.
"""

import bisect
import hashlib
import math

from .routing import Option, RoutingPolicy


def stable_hash(text: str) -> int:
    """A 64-bit hash of text that every process and replica agrees on."""
    # surrogatepass: JSON may carry lone surrogates ("\ud800"), which strict UTF-8 refuses.
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big")


class HashRing:
    """Members on a ring of 64-bit points: ``virtual_nodes`` points for the heaviest.

    Points come from each member's ``name`` (backend type and URL), so the ring depends
    only on the configuration. A member of weight w gets about w / max weight of the points
    of the heaviest one; weight 0 gets none (never chosen by a key, only as failover).
    """

    def __init__(self, members: list, virtual_nodes: int = 160):
        self.members = list(members)
        weights = [max(float(getattr(m, "weight", 1.0)), 0.0) for m in self.members]
        heaviest = max(weights, default=0.0)
        self.weights = weights
        points = []
        seen_names: dict = {}
        for index, (member, weight) in enumerate(zip(self.members, weights)):
            if weight <= 0:
                continue
            name = member.name
            seen_names[name] = seen_names.get(name, 0) + 1
            if seen_names[name] > 1:  # the same URL listed twice: give it distinct points
                name = f"{name}#{seen_names[name]}"
            count = max(1, round(virtual_nodes * weight / heaviest))
            points.extend((stable_hash(f"{name}-{i}"), index) for i in range(count))
        points.sort()
        self._hashes = [h for h, _ in points]
        self._owners = [i for _, i in points]
        self._index = {id(m): i for i, m in enumerate(self.members)}

    def __len__(self) -> int:
        return len(self._hashes)

    def walk(self, key_hash: int, wanted: dict):
        """Yield the members in ``wanted`` (id(member) -> member), clockwise from key_hash.

        Each wanted member at most once; stops when all have been seen or the ring is
        done (a weight-0 or unknown member is never yielded).
        """
        owners = self._owners
        size = len(owners)
        if not size:
            return
        index = self._index
        pending = {index[k] for k in wanted if k in index}
        left = len(pending)
        if not left:
            return
        start = bisect.bisect_left(self._hashes, key_hash)
        members = self.members
        for step in range(size):
            owner = owners[(start + step) % size]
            if owner in pending:
                pending.discard(owner)
                yield members[owner]
                left -= 1
                if not left:
                    return

    def order(self, key_hash: int, candidates: list, epsilon: float, slack: int = 0) -> list:
        """Candidates best-first for a key: the first one clockwise under its load bound,
        then the others under theirs, then those at their bound (each group clockwise),
        then any candidate the ring does not hold, in the order given.

        A backend's bound is ceil((1 + epsilon) * (total load + 1) * its weight share)
        + slack, the total and shares taken over the candidates on the ring; with equal
        weights and no slack, ceil((1 + epsilon) * (total + 1) / n). Someone is always
        under their bound.
        """
        wanted = {id(b): b for b in candidates}
        walked = list(self.walk(key_hash, wanted))
        if len(walked) < len(candidates):
            on_ring = {id(b) for b in walked}
            rest = [b for b in candidates if id(b) not in on_ring]
        else:
            rest = []
        if len(walked) <= 1:
            return walked + rest
        loads = [b.load for b in walked]
        index = self._index
        weights = self.weights
        shares = [weights[index[id(b)]] for b in walked]
        scale = (1.0 + epsilon) * (sum(loads) + 1) / sum(shares)
        under, full = [], []
        for backend, load, share in zip(walked, loads, shares):
            # The small slack keeps float error (1.1 * 40 = 44.00000000000001) off the bound.
            (under if load < math.ceil(scale * share - 1e-9) + slack else full).append(backend)
        return under + full + rest


class RingPolicy(RoutingPolicy):
    """A policy that maps a routing key to a backend on a bounded-load ring of the
    model's primaries (built once: a model's backends are fixed for its lifetime)."""

    options = {
        "virtual_nodes": Option(160, int, 1),
        "balance_epsilon": Option(0.25, float, 0.0),
        "balance_slack": Option(0, int, 0),
        "routing_key_header": Option("X-Routing-Key", str),
    }

    def __init__(self, model):
        super().__init__(model)
        self.ring = HashRing(self.split_roles(model.backends)[0], self.settings["virtual_nodes"])
        self.epsilon = self.settings["balance_epsilon"]
        self.slack = self.settings["balance_slack"]
        self.key_header = self.settings["routing_key_header"]

    def header_key(self, request) -> str | None:
        """The client's own routing key (sticky sessions), if it sent one."""
        return request.header(self.key_header) or None

    def order_by_key(self, key: str, candidates: list) -> list:
        primaries, fallbacks = self.split_roles(candidates)
        return self.ring.order(stable_hash(key), primaries, self.epsilon,
                               self.slack) + fallbacks
