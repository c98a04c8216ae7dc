"""Admin routes for backends: list them with health, load and circuit state; drain and
undrain one at run time; flush a runtime's prefix cache.

A drain is stored in the database, so every worker and replica takes the backend out
of rotation at its next load poll (``server.load_poll_interval_s``, 1 s by default).
A flush goes to the runtime (SGLang's POST /flush_cache) and ends the backend's
``cache_epoch`` here, so cache-aware routing forgets what it held.
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


def named_backends(gateway, req) -> list:
    """The backends named by the body's "backend" (one runtime may serve several models)."""
    body = read_json(req, gateway.config.server)
    name = body.get("backend")
    if not isinstance(name, str) or not name:
        raise invalid_request("'backend' must name a backend, as GET /v1/admin/backends "
                              "lists it.", "backend", "invalid_value")
    matches = [b for b in gateway.catalog.backends() if b.name == name]
    if not matches:
        raise not_found("backend", name, "backend")
    return matches


class FlushCache:
    """POST /v1/admin/backends/flush_cache with {"backend": "<name>"}: the runtime drops
    its prefix cache (SGLang refuses while requests run: 400, try again when idle)."""

    def __init__(self, gateway):
        self.gateway = gateway

    def on_post(self, req, resp):
        authenticate(self.gateway, ClientRequest(req), admin=True)
        matches = named_backends(self.gateway, req)
        flushed = matches[0].flush_cache()
        if flushed is None:
            raise invalid_request(f"Backends of type {matches[0].type_name!r} have no cache "
                                  "to flush.", "backend", "unsupported")
        if not flushed:
            raise invalid_request("The runtime refused to flush its cache (it does while "
                                  "requests run); try again when it is idle.", "backend",
                                  "backend_busy")
        for backend in matches:
            backend.cache_epoch += 1
        resp.media = {"object": "list", "data": [b.state() for b in matches]}


class Drain:
    """POST /v1/admin/backends/drain and /undrain with {"backend": "<name>"}."""

    def __init__(self, gateway, drained: bool):
        self.gateway = gateway
        self.drained = drained

    def on_post(self, req, resp):
        authenticate(self.gateway, ClientRequest(req), admin=True)
        matches = named_backends(self.gateway, req)
        self.gateway.store.set_drained(matches[0].name, self.drained)
        for backend in matches:  # this worker at once; the others at their next poll
            backend.drained = self.drained
        resp.media = {"object": "list", "data": [b.state() for b in matches]}


@hookimpl(trylast=True)
def inferegator_register_routes(gateway):
    return [("/v1/admin/backends", Backends(gateway)),
            ("/v1/admin/backends/drain", Drain(gateway, True)),
            ("/v1/admin/backends/undrain", Drain(gateway, False)),
            ("/v1/admin/backends/flush_cache", FlushCache(gateway))]
