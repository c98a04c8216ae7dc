"""Admission and reconciliation of one request against its key's limits and budget.

Limits count over a sliding window (``ratelimit.window_s``, 60 s: "per minute" means
"in any 60 seconds"). At admission a request reserves one request and its token
estimate (prompt estimate + max_tokens, or the model's default) on every limit of its
key, all or nothing; when it ends, the reservation is set to the real usage.
"""

import logging
import math
import time
import uuid

from .. import outcome as ends
from ..errors import GatewayError
from .durations import format_duration
from .stores import Limit, StoreUnavailable

log = logging.getLogger("inferegator.ratelimit")
MAX_RETRY_AFTER_MS = 60_000  # the openai SDK honours at most 60 s (older) / 120 s (newer)


def rate_limited(kind: str, limit: int, used: int, asked: int, retry_ms: int,
                 window_s: float) -> GatewayError:
    if retry_ms < 0:
        error = GatewayError(
            429, f"Request too large: it needs {asked} {kind} but the limit is {limit} per "
                 f"{window_s:g}s. Reduce max_tokens or the prompt.", kind,
            "rate_limit_exceeded", headers={"x-should-retry": "false"})
        return error
    wait_ms = min(max(retry_ms, 1), MAX_RETRY_AFTER_MS)
    return GatewayError(
        429, f"Rate limit reached for {kind}: limit {limit}, used {used}, requested {asked}. "
             f"Please try again in {format_duration(wait_ms)}.", kind, "rate_limit_exceeded",
        headers={"Retry-After": str(math.ceil(wait_ms / 1000)),
                 "retry-after-ms": str(wait_ms)})


def insufficient_quota(budget: float) -> GatewayError:
    # Never succeeds until the month turns or an admin raises it: the SDK must not retry.
    return GatewayError(429, f"This API key has spent its monthly budget of ${budget:g}.",
                        "insufficient_quota", "insufficient_quota",
                        headers={"x-should-retry": "false"})


def limiter_unavailable() -> GatewayError:
    return GatewayError(503, "Rate limiting is unavailable; please retry shortly.",
                        "server_error", "rate_limiter_unavailable")


class RateLimiter:
    """Per-key limits over a window store; per-model extras; monthly budgets."""

    def __init__(self, config, window_store, spend_of, clock=time.monotonic):
        self.config = config
        self.store = window_store
        self.window_ms = int(config.window_s * 1000)
        self.spend_of = spend_of  # key id -> USD spent this month (may be cached)
        self.clock = clock
        self._last_warning = {}  # message -> when it was last logged
        self.store_errors = 0  # calls the window store failed (read by the metrics plugin)

    @staticmethod
    def _prefix(principal) -> str:
        return f"rl:{{{principal.key_id}}}"  # {hash tag}: one Redis Cluster slot per key

    def base_limits(self, principal, requests: int = 0, tokens: int = 0) -> list[Limit]:
        """The key's requests and tokens limits (its own, else the configured defaults),
        asking ``requests`` and ``tokens``: the first two limits of every admission."""
        cfg = self.config
        key = principal.attributes.get("key")
        rpm = (key and key.requests_per_minute) or cfg.requests_per_minute
        tpm = (key and key.tokens_per_minute) or cfg.tokens_per_minute
        base = self._prefix(principal)
        return [Limit(base + ":requests", rpm, requests), Limit(base + ":tokens", tpm, tokens)]

    def limits_for(self, principal, model, request) -> tuple[list[Limit], int]:
        cfg = self.config
        completion = 0 if not request.generates else (
            request.max_tokens or model.default_max_tokens or cfg.default_max_tokens)
        tokens = request.prompt_estimate + completion * request.n
        base = self._prefix(principal)
        limits = self.base_limits(principal, 1, tokens)
        extra = cfg.models.get(model.id)
        if extra is not None:
            if extra.requests_per_minute:
                limits.append(Limit(f"{base}:m:{model.id}:requests",
                                    extra.requests_per_minute, 1))
            if extra.tokens_per_minute:
                limits.append(Limit(f"{base}:m:{model.id}:tokens",
                                    extra.tokens_per_minute, tokens))
        return limits, tokens

    def admit(self, principal, model, request):
        """None to admit (headers set on the request), or the GatewayError to answer."""
        key = principal.attributes.get("key")
        if key is not None and key.monthly_budget_usd is not None:
            if self.spend_of(key.id) >= key.monthly_budget_usd:
                return insufficient_quota(key.monthly_budget_usd)
        limits, tokens = self.limits_for(principal, model, request)
        member = f"{request.request_id}:{uuid.uuid4().hex[:8]}"
        try:
            decision = self.store.admit(limits, member, self.window_ms)
        except StoreUnavailable as exc:
            self.store_errors += 1
            if self.config.on_store_error == "open":
                self._warn(exc)
                return None
            log.error("rate-limit store unreachable: %s", exc)
            return limiter_unavailable()
        request.response_headers.update(self._headers(limits, decision))
        if decision.admitted:
            request.plugin_data["rate_limits"] = (member, limits)
            return None
        # Name the limit that refused: one that can never fit first (no retry helps), else
        # the first one over; the wait is the longest any refusing limit needs.
        refusing = [(limit, used) for limit, used in zip(limits, decision.used)
                    if used + limit.amount > limit.maximum]
        refusing.sort(key=lambda pair: pair[0].amount <= pair[0].maximum)
        limit, used = refusing[0]
        kind = "requests" if limit.key.endswith(":requests") else "tokens"
        retry_ms = -1 if limit.amount > limit.maximum else max(decision.retry_after_ms, 0)
        return rate_limited(kind, limit.maximum, used, limit.amount, retry_ms,
                            self.config.window_s)

    def finished(self, request, outcome) -> None:
        """Set the token reservation to the real usage once the request has ended."""
        admission = request.plugin_data.get("rate_limits")
        if admission is None:
            return
        member, limits = admission
        if outcome.usage is not None:
            used = outcome.prompt_tokens + outcome.completion_tokens
        elif outcome.status in (ends.REJECTED, ends.FAILED):
            used = 0  # no backend produced anything
        else:
            return  # cut short with no usage known: keep the reservation
        try:
            for limit in limits:
                if limit.key.endswith(":tokens") and used != limit.amount:
                    self.store.reconcile(limit.key, member, used)
        except StoreUnavailable as exc:
            self.store_errors += 1
            self._warn(exc)

    def current_headers(self, principal) -> dict:
        """The x-ratelimit-* headers of the key's base limits as they stand now, reserving
        nothing (for answers given before admission, GET /v1/models); {} when the store
        cannot be reached. The remaining counts are what an admission now would find free."""
        limits = self.base_limits(principal)
        try:
            decision = self.store.peek(limits, self.window_ms)
        except StoreUnavailable as exc:
            self.store_errors += 1
            self._warn(exc, "rate-limit store unreachable, answering without "
                            "x-ratelimit headers: %s")
            return {}
        return self._headers(limits, decision)

    def _headers(self, limits, decision) -> dict:
        requests_limit, tokens_limit = limits[0], limits[1]
        window = self.window_ms

        def reset(i):
            oldest = decision.oldest_ms[i]
            return format_duration(oldest + window - decision.now_ms if oldest >= 0 else 0)

        return {
            "x-ratelimit-limit-requests": str(requests_limit.maximum),
            "x-ratelimit-remaining-requests": str(max(requests_limit.maximum
                                                      - decision.used[0], 0)),
            "x-ratelimit-reset-requests": reset(0),
            "x-ratelimit-limit-tokens": str(tokens_limit.maximum),
            "x-ratelimit-remaining-tokens": str(max(tokens_limit.maximum - decision.used[1], 0)),
            "x-ratelimit-reset-tokens": reset(1),
        }

    def _warn(self, exc, message="rate-limit store unreachable, admitting without limits: "
                                 "%s") -> None:
        now = self.clock()
        # one line per 10 s and message, not one per request
        if now - self._last_warning.get(message, -math.inf) > 10:
            self._last_warning[message] = now
            log.warning(message, exc)
