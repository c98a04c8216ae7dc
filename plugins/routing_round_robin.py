"""The ``round_robin`` routing policy: rotate over healthy primaries, then fallbacks in order."""

import itertools

from inferegator.plugin import RoutingPolicy, hookimpl


class RoundRobinPolicy(RoutingPolicy):
    """Each request starts at the next primary; the others follow as failover order."""

    options = {}  # takes no routing_options: a misplaced one is a configuration error

    def __init__(self, model):
        super().__init__(model)
        self._counter = itertools.count()

    def order(self, request, candidates):
        primaries, fallbacks = self.split_roles(candidates)
        if primaries:
            start = next(self._counter) % len(primaries)
            primaries = primaries[start:] + primaries[:start]
        return primaries + fallbacks


@hookimpl(trylast=True)
def inferegator_register_routing_policies():
    return {"round_robin": RoundRobinPolicy}


@hookimpl(trylast=True)
def inferegator_select_backend(model, request, candidates):
    """The default selection: the model's own routing policy."""
    return model.policy.order(request, candidates)
