"""The gateway's Falcon app: thin resources over the Pipeline, every error in OpenAI's shape."""

import json
import logging

import falcon

from ..auth import authenticate
from ..errors import (
    GatewayError,
    internal_error,
    method_not_allowed,
    model_not_found,
    unknown_url,
)
from .pipeline import Pipeline
from .request import CHAT, COMPLETIONS, ClientRequest

log = logging.getLogger("inferegator.gateway")


class Generation:
    """POST /v1/chat/completions or /v1/completions."""

    def __init__(self, pipeline, endpoint):
        self.pipeline = pipeline
        self.endpoint = endpoint

    def on_post(self, req, resp):
        self.pipeline.handle(self.endpoint, req, resp)


class Models:
    """GET /v1/models and /v1/models/{id}: OpenAI's fields plus pricing, context, capabilities,
    SGLang's max_model_len and root; only the models the caller's key may use (a model it may
    not use is the same 404 model_not_found as an unknown one)."""

    def __init__(self, gateway):
        self.gateway = gateway

    def on_get(self, req, resp):
        principal = authenticate(self.gateway, ClientRequest(req))
        resp.media = self.gateway.catalog.listing(principal)

    def on_get_one(self, req, resp, model_id):
        principal = authenticate(self.gateway, ClientRequest(req))
        model = self.gateway.catalog.visible(model_id, principal)
        if model is None:
            raise model_not_found(model_id)
        resp.media = self.gateway.catalog.card(model)


class Health:
    """GET /health: liveness; 200 whenever the worker can answer at all."""

    def on_get(self, req, resp):
        resp.media = {"status": "ok"}


class Ready:
    """GET /ready: 200 when every model has a healthy backend, else 503 with the counts."""

    def __init__(self, gateway):
        self.gateway = gateway

    def on_get(self, req, resp):
        state = self.gateway.ready()
        resp.status = falcon.HTTP_200 if state["ready"] else falcon.HTTP_503
        resp.media = state


def _answer(req, resp, error: GatewayError):
    resp.status = error.status
    resp.data = json.dumps(error.body()).encode()
    resp.content_type = "application/json"
    greq = getattr(req.context, "gateway_request", None)
    if greq is not None:
        resp.set_headers(greq.response_headers)
    resp.set_headers(error.headers)


def _gateway_error(req, resp, exc, params):
    _answer(req, resp, exc)


def _http_error(req, resp, exc, params):
    if exc.status_code == 404:
        error = unknown_url(req.path)
    elif exc.status_code == 405:
        error = method_not_allowed(req.method, req.path)
    else:
        kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
        error = GatewayError(exc.status_code, exc.description or exc.title, kind)
    _answer(req, resp, error)


def _unexpected_error(req, resp, exc, params):
    log.exception("unhandled error on %s %s", req.method, req.path)
    _answer(req, resp, internal_error())


def create_app(gateway) -> falcon.App:
    """The WSGI app serving one Gateway."""
    app = falcon.App(cors_enable=False)
    app.req_options.strip_url_path_trailing_slash = True
    pipeline = Pipeline(gateway)
    app.add_route("/v1/chat/completions", Generation(pipeline, CHAT))
    app.add_route("/v1/completions", Generation(pipeline, COMPLETIONS))
    models = Models(gateway)
    app.add_route("/v1/models", models)
    app.add_route("/v1/models/{model_id:path}", models, suffix="one")
    app.add_route("/health", Health())
    app.add_route("/ready", Ready(gateway))
    for routes in gateway.hook.inferegator_register_routes(gateway=gateway):
        for template, resource in routes or ():
            app.add_route(template, resource)
    app.add_error_handler(Exception, _unexpected_error)
    app.add_error_handler(falcon.HTTPError, _http_error)
    app.add_error_handler(GatewayError, _gateway_error)
    return app
