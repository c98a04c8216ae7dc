"""The ``power_of_two`` routing policy: of two random primaries, the less loaded one.

Choosing between two at random keeps nearly all of least_load's balance while
replicas whose load views lag do not all pile onto the same "least loaded" backend.
"""

from inferegator.plugin import RandomizedPolicy, by_load, hookimpl


class PowerOfTwoPolicy(RandomizedPolicy):
    """The less loaded of two random primaries first, then the other primaries by load,
    then fallbacks in YAML order."""

    def order(self, request, candidates):
        primaries, fallbacks = self.split_roles(candidates)
        if len(primaries) <= 2:
            return by_load(primaries, self.random) + fallbacks
        a, b = self.random.sample(primaries, 2)  # already in random order: ties keep it
        first = b if b.load < a.load else a
        rest = by_load([p for p in primaries if p is not first], self.random)
        return [first] + rest + fallbacks


@hookimpl(trylast=True)
def inferegator_register_routing_policies():
    return {"power_of_two": PowerOfTwoPolicy}
