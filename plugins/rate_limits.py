"""Per-key rate limits and monthly budgets on the admit hook, reconciled when requests end."""

import time

from inferegator.plugin import RateLimiter, hookimpl, month_spend, open_window_store

SPEND_CACHE_S = 1.0  # a budget may be overrun by at most this long's spending


class SpendCache:
    """This month's spend per key, from the ledger, re-read at most every SPEND_CACHE_S."""

    def __init__(self, db, clock=time.monotonic):
        self.db = db
        self.clock = clock
        self._cache: dict[str, tuple[float, float]] = {}

    def __call__(self, key_id: str) -> float:
        now = self.clock()
        hit = self._cache.get(key_id)
        if hit is not None and hit[1] > now:
            return hit[0]
        spent = month_spend(self.db, key_id)
        self._cache[key_id] = (spent, now + SPEND_CACHE_S)
        return spent


@hookimpl(trylast=True)
def inferegator_startup(gateway):
    config = gateway.config.ratelimit
    gateway.plugin_state["rate_limits"] = RateLimiter(
        config, open_window_store(config.store), SpendCache(gateway.store.db))


@hookimpl(trylast=True)
def inferegator_admit(gateway, principal, model, request):
    return gateway.plugin_state["rate_limits"].admit(principal, model, request)


@hookimpl(trylast=True)
def inferegator_request_finished(gateway, outcome):
    request = outcome.request
    if request is not None:
        gateway.plugin_state["rate_limits"].finished(request, outcome)
