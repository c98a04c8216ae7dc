"""The ``least_load`` routing policy: the primary with the fewest requests first."""

import random

from inferegator import hookimpl
from inferegator.routing import Option, RoutingPolicy, by_load


class LeastLoadPolicy(RoutingPolicy):
    """Primaries by ``backend.load`` (ties in random order, so equal backends share),
    then fallbacks in YAML order."""

    options = {"seed": Option(None, int)}

    def __init__(self, model):
        super().__init__(model)
        self.random = random.Random(self.settings["seed"])

    def order(self, request, candidates):
        primaries, fallbacks = self.split_roles(candidates)
        return by_load(primaries, self.random) + fallbacks


@hookimpl(trylast=True)
def inferegator_register_routing_policies():
    return {"least_load": LeastLoadPolicy}
