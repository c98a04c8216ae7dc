"""Per-key rate limits and monthly budgets on the admit hook, reconciled when requests end."""

from inferegator.plugin import RateLimiter, TTLCache, hookimpl, month_spend, open_window_store

SPEND_CACHE_S = 1.0  # a budget may be overrun by at most this long's spending


@hookimpl(trylast=True)
def inferegator_startup(gateway):
    config, db = gateway.config.ratelimit, gateway.store.db
    spend = TTLCache(lambda key_id: month_spend(db, key_id), SPEND_CACHE_S,
                     clock=gateway.clock)
    gateway.plugin_state["rate_limits"] = RateLimiter(
        config, open_window_store(config.store), spend.get, clock=gateway.clock)


@hookimpl(trylast=True)
def inferegator_admit(gateway, principal, model, request):
    return gateway.plugin_state["rate_limits"].admit(principal, model, request)


@hookimpl(trylast=True)
def inferegator_request_finished(gateway, outcome):
    request = outcome.request
    if request is not None:
        gateway.plugin_state["rate_limits"].finished(request, outcome)


@hookimpl(trylast=True)
def inferegator_response_headers(gateway, request):
    return gateway.plugin_state["rate_limits"].current_headers(request.principal)
