"""The ``weighted`` routing policy: primaries at random in proportion to their weight."""

from inferegator.plugin import RandomizedPolicy, hookimpl


class WeightedPolicy(RandomizedPolicy):
    """A weighted random order of the primaries (weight 0: never first while another
    primary is a candidate), then fallbacks in YAML order.

    Each primary draws an exponential clock with rate = its weight and the earliest goes
    first (Efraimidis and Spirakis): the first is backend i with probability w_i / sum(w),
    and the failover order after it is weighted the same way.
    """

    def order(self, request, candidates):
        primaries, fallbacks = self.split_roles(candidates)
        if len(primaries) < 2:
            return primaries + fallbacks
        draw = self.random.expovariate
        weighted = [b for b in primaries if b.weight > 0]
        drained = [b for b in primaries if b.weight <= 0]
        if not weighted:  # all drained: share among them evenly rather than refuse
            weighted, drained = drained, []
            clocks = [draw(1.0) for _ in weighted]
        else:
            clocks = [draw(b.weight) for b in weighted]
        ranked = sorted(range(len(weighted)), key=clocks.__getitem__)
        return [weighted[i] for i in ranked] + drained + fallbacks


@hookimpl(trylast=True)
def inferegator_register_routing_policies():
    return {"weighted": WeightedPolicy}
