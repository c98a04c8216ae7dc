"""The ``least_load`` routing policy: the primary with the fewest requests first."""

from inferegator.plugin import RandomizedPolicy, by_load, hookimpl


class LeastLoadPolicy(RandomizedPolicy):
    """Primaries by ``backend.load`` (ties in random order, so equal backends share),
    then fallbacks in YAML order."""

    def order(self, request, candidates):
        primaries, fallbacks = self.split_roles(candidates)
        return by_load(primaries, self.random) + fallbacks


@hookimpl(trylast=True)
def inferegator_register_routing_policies():
    return {"least_load": LeastLoadPolicy}
