"""Every hook Inferegator calls, in one place: the contract between the core and its plugins.

Hook implementations may accept fewer arguments than listed here, so adding an
argument later never breaks a plugin. Built-in plugins (``plugins/``) implement
these with ``trylast=True`` so that a user's plugin wins.
"""

import pluggy

hookspec = pluggy.HookspecMarker("inferegator")


# -- registration: called once per worker while the gateway is built -----------------------

@hookspec
def inferegator_register_backends():
    """Return a dict {type name: backend adapter class} (see inferegator.backends.base).

    The YAML's ``backends[].type`` picks one of these by name.
    """


@hookspec
def inferegator_register_routing_policies():
    """Return a dict {policy name: policy class} (see inferegator.routing).

    The YAML's ``models[].routing`` picks one of these by name.
    """


@hookspec
def inferegator_register_routes(gateway):
    """Return a list of (URI template, Falcon resource) pairs to add to the app.

    :param gateway: the Gateway being built (config, catalog, plugin manager).
    """


# -- lifecycle ------------------------------------------------------------------------------

@hookspec
def inferegator_startup(gateway):
    """Called in each worker once the gateway is built, before it serves requests."""


@hookspec
def inferegator_shutdown(gateway):
    """Called in each worker when it stops; flush what must not be lost."""


# -- the request path -----------------------------------------------------------------------

@hookspec(firstresult=True)
def inferegator_authenticate(gateway, request):
    """Return the Principal that made the request, or None if unknown (401).

    firstresult: the first non-None answer wins. Raise GatewayError to refuse with
    another status.

    :param request: the parsed GatewayRequest (headers, body, endpoint).
    """


@hookspec
def inferegator_admit(gateway, principal, model, request):
    """Return None to admit, or a GatewayError (e.g. 429) to refuse; any refusal wins.

    Every implementation is asked (every limiter votes); the first refusal is answered.
    An implementation may set headers to send on the response via
    ``request.response_headers``.
    """


@hookspec(firstresult=True)
def inferegator_select_backend(gateway, model, request, candidates):
    """Return the candidate backends in the order to try them.

    firstresult. ``candidates`` are the model's healthy primaries followed by its
    healthy fallbacks; the built-in implementation applies the model's routing policy.
    """


@hookspec
def inferegator_before_upstream(gateway, request, backend, body, headers):
    """Edit the outgoing JSON body (a dict) and headers in place before a backend call."""


@hookspec
def inferegator_request_finished(gateway, outcome):
    """Called once per request when it has ended, however it ended.

    :param outcome: a RequestOutcome (principal, model, backend, usage, status,
        latency, time to first token, request id).
    """
