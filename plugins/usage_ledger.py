"""Meter every authenticated request into the usage ledger, with its cost.

Rows are queued in memory and written in batches by the ledger's flusher; the
shutdown hook writes what is left, so a graceful stop loses no row.
"""

from inferegator.plugin import hookimpl


@hookimpl(trylast=True)
def inferegator_startup(gateway):
    gateway.store.ledger.start()


@hookimpl(trylast=True)
def inferegator_shutdown(gateway):
    gateway.store.ledger.close()


@hookimpl(trylast=True)
def inferegator_request_finished(gateway, outcome):
    principal = outcome.principal
    if principal is None:
        return  # never authenticated: nobody to bill
    gateway.store.ledger.record({
        "request_id": outcome.request_id, "key_id": principal.key_id,
        "user_id": principal.owner, "model": outcome.model_id, "backend": outcome.backend,
        "prompt_tokens": outcome.prompt_tokens, "completion_tokens": outcome.completion_tokens,
        "cached_tokens": outcome.cached_tokens, "cost_usd": outcome.cost_usd,
        "status": outcome.status, "http_status": outcome.http_status,
        "latency_ms": outcome.latency_s * 1000.0,
        "ttft_ms": outcome.ttft_s * 1000.0 if outcome.ttft_s is not None else None,
        "created": outcome.started,
    })
