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
from .endpoints import ENDPOINTS
from .pipeline import Pipeline
from .request import ClientRequest

log = logging.getLogger("inferegator.gateway")


class Relayed:
    """POST on a relayed route: /v1/chat/completions, /v1/completions, /v1/embeddings or
    /v1/responses."""

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

    def _caller(self, req, resp):
        client = req.context.gateway_request = ClientRequest(req)
        resp.set_header("X-Request-ID", client.request_id)
        principal = authenticate(self.gateway, client)
        resp.set_headers(described_headers(self.gateway, client))
        return principal

    def on_get(self, req, resp):
        resp.media = self.gateway.catalog.listing(self._caller(req, resp))

    def on_get_one(self, req, resp, model_id):
        model = self.gateway.catalog.visible(model_id, self._caller(req, resp))
        if model is None:
            raise model_not_found(model_id)
        resp.media = self.gateway.catalog.card(model)


def described_headers(gateway, client) -> dict:
    """Headers of an authenticated answer that no admission described: what the
    inferegator_response_headers hooks say (the caller's rate-limit state)."""
    headers = {}
    for result in gateway.hook.inferegator_response_headers(gateway=gateway, request=client):
        headers.update(result or {})
    return headers


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


class ErrorAnswers:
    """Every error in OpenAI's shape; an authenticated caller's carries its request id and
    rate-limit headers, also when it came before admission."""

    def __init__(self, gateway):
        self.gateway = gateway

    def answer(self, req, resp, error: GatewayError) -> None:
        resp.status = error.status
        resp.data = json.dumps(error.body()).encode()
        resp.content_type = "application/json"
        client = getattr(req.context, "gateway_request", None)
        if client is not None:
            resp.set_header("X-Request-ID", client.request_id)
            resp.set_headers(client.response_headers)
            if client.principal is not None and \
                    "x-ratelimit-limit-requests" not in client.response_headers:
                resp.set_headers(described_headers(self.gateway, client))
        resp.set_headers(error.headers)

    def gateway_error(self, req, resp, exc, params):
        self.answer(req, resp, exc)

    def http_error(self, req, resp, exc, params):
        if exc.status_code == 404:
            error = unknown_url(req.path)
        elif exc.status_code == 405:
            error = method_not_allowed(req.method, req.path)
        else:
            kind = "invalid_request_error" if exc.status_code < 500 else "server_error"
            error = GatewayError(exc.status_code, exc.description or exc.title, kind)
        self.answer(req, resp, error)

    def unexpected_error(self, req, resp, exc, params):
        log.exception("unhandled error on %s %s", req.method, req.path)
        self.answer(req, resp, internal_error())


def create_app(gateway) -> falcon.App:
    """The WSGI app serving one Gateway."""
    app = falcon.App(cors_enable=False)
    app.req_options.strip_url_path_trailing_slash = True
    pipeline = gateway.pipeline = Pipeline(gateway)
    for endpoint in ENDPOINTS.values():
        app.add_route(endpoint.path, Relayed(pipeline, endpoint.name))
    models = Models(gateway)
    app.add_route("/v1/models", models)
    app.add_route("/v1/models/{model_id:path}", models, suffix="one")
    app.add_route("/health", Health())
    app.add_route("/ready", Ready(gateway))
    for routes in gateway.hook.inferegator_register_routes(gateway=gateway):
        for template, resource in routes or ():
            app.add_route(template, resource)
    errors = ErrorAnswers(gateway)
    app.add_error_handler(Exception, errors.unexpected_error)
    app.add_error_handler(falcon.HTTPError, errors.http_error)
    app.add_error_handler(GatewayError, errors.gateway_error)
    return app
