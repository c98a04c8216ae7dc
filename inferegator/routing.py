"""The routing-policy contract: order a model's candidate backends for one request."""


class RoutingPolicy:
    """Subclass and register through ``inferegator_register_routing_policies``.

    One instance per model per worker, built when the gateway starts.
    """

    def __init__(self, model):
        self.model = model

    def order(self, request, candidates: list) -> list:
        """Return candidates in the order to try them (the first is the choice)."""
        raise NotImplementedError
