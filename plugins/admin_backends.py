"""Admin routes for backends: list them with health, load and circuit state; drain and
undrain one at run time.

A drain is stored in the database, so every worker and replica takes the backend out
of rotation at its next load poll (``server.load_poll_interval_s``, 1 s by default).
"""

from inferegator.plugin import (
    ClientRequest,
    authenticate,
    hookimpl,
    invalid_request,
    not_found,
    read_json,
)


class Backends:
    """GET /v1/admin/backends: every model's backends as this worker sees them."""

    def __init__(self, gateway):
        self.gateway = gateway

    def on_get(self, req, resp):
        authenticate(self.gateway, ClientRequest(req), admin=True)
        resp.media = {"object": "list", "data": [
            {"model": model.id, "routing": model.config.routing, **backend.state()}
            for model in self.gateway.catalog.models.values() for backend in model.backends]}


class Drain:
    """POST /v1/admin/backends/drain and /undrain with {"backend": "<name>"}."""

    def __init__(self, gateway, drained: bool):
        self.gateway = gateway
        self.drained = drained

    def on_post(self, req, resp):
        authenticate(self.gateway, ClientRequest(req), admin=True)
        body = read_json(req, self.gateway.config.server)
        name = body.get("backend")
        if not isinstance(name, str) or not name:
            raise invalid_request("'backend' must name a backend, as GET /v1/admin/backends "
                                  "lists it.", "backend", "invalid_value")
        matches = [b for b in self.gateway.catalog.backends() if b.name == name]
        if not matches:
            raise not_found("backend", name, "backend")
        self.gateway.store.set_drained(name, self.drained)
        for backend in matches:  # this worker at once; the others at their next poll
            backend.drained = self.drained
        resp.media = {"object": "list", "data": [b.state() for b in matches]}


@hookimpl(trylast=True)
def inferegator_register_routes(gateway):
    return [("/v1/admin/backends", Backends(gateway)),
            ("/v1/admin/backends/drain", Drain(gateway, True)),
            ("/v1/admin/backends/undrain", Drain(gateway, False))]
