"""Every hook Inferegator calls, in one place: the contract between the core and its plugins.

Each spec says how its results are combined: **first result wins** (the first
implementation that returns something other than None answers; later ones are not
called) or **all results** (every implementation is called; the core combines their
answers as the spec says). Implementations may accept fewer arguments than listed, so
adding an argument later never breaks a plugin. Built-in plugins implement hooks with
``trylast=True`` and are registered before any other plugin, so that a user's plugin is
asked first. docs/hooks.md has a worked example for each hook.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:  # the names a plugin sees, all exported by inferegator.plugin
    from .auth import Principal
    from .backends.base import BackendAdapter
    from .catalog import CatalogModel
    from .errors import GatewayError
    from .gateway.core import Gateway
    from .gateway.request import ClientRequest, GatewayRequest
    from .outcome import RequestOutcome

hookspec = pluggy.HookspecMarker("inferegator")


# -- registration: called once per worker while the gateway is built -----------------------

@hookspec
def inferegator_register_backends() -> dict[str, type[BackendAdapter]]:
    """All results: {type name: BackendAdapter subclass}, merged (a user's plugin wins a
    name). The YAML's ``backends[].type`` picks one by name."""


@hookspec
def inferegator_register_routing_policies() -> dict[str, type]:
    """All results: {policy name: RoutingPolicy subclass}, merged (a user's plugin wins a
    name). The YAML's ``models[].routing`` picks one by name."""


@hookspec
def inferegator_register_routes(gateway: Gateway) -> list[tuple[str, object]]:
    """All results: (URI template, Falcon resource) pairs, each added to the app."""


# -- lifecycle ------------------------------------------------------------------------------

@hookspec
def inferegator_check_config(config) -> list[str] | None:
    """All results: problems a plugin finds in the checked ``config`` that only it can
    judge (a package its setting needs, a file it must write), each a sentence naming
    the setting. Run by ``check-config``, and so by ``serve`` and a reload before any
    worker starts: a problem found here stops them, with its words."""


@hookspec
def inferegator_startup(gateway: Gateway) -> None:
    """All implementations, once per worker when the gateway is built, before it serves:
    build per-worker state (keep it in ``gateway.plugin_state[<your name>]``)."""


@hookspec
def inferegator_shutdown(gateway: Gateway) -> None:
    """All implementations, once per worker when it stops: flush what must not be lost."""


# -- the request path -----------------------------------------------------------------------

@hookspec(firstresult=True)
def inferegator_authenticate(gateway: Gateway, request: ClientRequest) -> Principal | None:
    """First result wins: the Principal that made the request, or None (not mine; if no
    plugin knows the caller: 401). Raise GatewayError to refuse with another status.

    ``request`` offers ``header(name)``; on generation routes it is the GatewayRequest,
    whose body is not parsed yet (authentication comes first).
    """


@hookspec
def inferegator_admit(gateway: Gateway, principal: Principal, model: CatalogModel,
                      request: GatewayRequest) -> GatewayError | None:
    """All results: None admits, a GatewayError (e.g. a 429) refuses; the first refusal
    in call order is answered. May set response headers in ``request.response_headers``
    and keep per-request state in ``request.plugin_data[<your name>]``."""


@hookspec(firstresult=True)
def inferegator_select_backend(gateway: Gateway, model: CatalogModel, request: GatewayRequest,
                               candidates: list[BackendAdapter]) -> list[BackendAdapter] | None:
    """First result wins: the candidates (healthy primaries, then healthy fallbacks) in
    the order to try them. The built-in applies the model's routing policy."""


@hookspec
def inferegator_before_upstream(gateway: Gateway, request: GatewayRequest,
                                backend: BackendAdapter, body: dict, headers: dict) -> None:
    """All implementations, before each backend call: edit the outgoing JSON ``body`` and
    ``headers`` in place."""


@hookspec
def inferegator_after_upstream(gateway: Gateway, request: GatewayRequest,
                               backend: BackendAdapter, answer: dict | None) -> None:
    """All implementations, once the chosen backend has answered (status 2xx), before
    anything reaches the client: ``answer`` is a non-streamed answer's JSON object, which
    may be edited in place (the public model id is already set); None for a stream (its
    first events are read). For audit, response rewriting, tracing."""


@hookspec
def inferegator_response_headers(gateway: Gateway, request: ClientRequest) -> dict | None:
    """All results, merged: headers for an authenticated answer that no admission
    described (an error before admission, GET /v1/models), e.g. the caller's rate-limit
    state as it stands, using none of it. ``request.principal`` is set."""


@hookspec
def inferegator_request_finished(gateway: Gateway, outcome: RequestOutcome) -> None:
    """All implementations, exactly once per request when it has ended, however it ended
    (before a stream's ``[DONE]``): principal, model, backend, usage, cost, status, HTTP
    status, latency, time to first token, request id, and ``outcome.request``."""
