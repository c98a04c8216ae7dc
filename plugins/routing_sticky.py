"""The ``sticky`` routing policy: a client-chosen key (a header) keeps to one backend.

The same bounded-load ring as cache_aware, keyed only by the ``X-Routing-Key`` header
(a session or user id), so every replica agrees without shared state. Requests without
the header are ordered by load, as least_load does.
"""

import random

from inferegator.plugin import Option, RingPolicy, by_load, hookimpl


class StickyPolicy(RingPolicy):
    """Header present: primaries clockwise from its hash, the first under its load bound
    first. Absent: primaries by load. Fallbacks after, in YAML order."""

    options = {**RingPolicy.options, "seed": Option(None, int)}

    def __init__(self, model):
        super().__init__(model)
        self.random = random.Random(self.settings["seed"])

    def order(self, request, candidates):
        key = self.header_key(request)
        if key is not None:
            return self.order_by_key(key, candidates)
        primaries, fallbacks = self.split_roles(candidates)
        return by_load(primaries, self.random) + fallbacks


@hookimpl(trylast=True)
def inferegator_register_routing_policies():
    return {"sticky": StickyPolicy}
