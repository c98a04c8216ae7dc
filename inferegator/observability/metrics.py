"""The gateway's Prometheus metrics: every name, label, bucket and help text in one place,
and the exposition a scrape gets (summed over every worker when ``serve`` runs several).

Under ``serve`` each worker writes its values to prometheus_client's multiprocess files
(``PROMETHEUS_MULTIPROC_DIR``, made by observability/multiprocess.py) and any worker, or
the master on ``metrics.bind``, answers a scrape from all of them. Counters and histograms
are summed over workers, dead ones included. A gauge is sampled by every worker for its
own share and combined as its ``multiprocess_mode`` says: ``livesum`` (counts: in flight,
streams open, rows queued, workers with a circuit open) or ``livemostrecent`` (a fact every
worker reads from the same place: a runtime's reported load). docs/metrics.md lists them.
"""

import os
from bisect import bisect_left

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    values,
)
from prometheus_client.multiprocess import MultiProcessCollector

from ..backends.health import CLOSED, HALF_OPEN, OPEN

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CIRCUIT_STATES = (CLOSED, OPEN, HALF_OPEN)
UNKNOWN_MODEL = "unknown"  # a model id not in the catalog: never its own label value
NO_BACKEND = "none"  # refused or failed before any backend answered

# Seconds. A whole request runs from milliseconds (a refusal, an embedding) to minutes (a
# long generation); a first token from tens of milliseconds to a long prompt's prefill; a
# gap between tokens around a decode step (10-50 ms) with a tail when batches grow.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                   60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.5,
               5.0)
FLUSH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


def _multiprocess_values() -> None:
    """Make sure this process writes multiprocess files when serve asked for them.

    prometheus_client chooses how values are stored once, when it is first imported; the
    serve master may have imported it (loading the config imports every plugin) before it
    named the directory, and its workers are forked, not started afresh, so a worker fixes
    the choice before it makes its first metric.
    """
    if os.environ.get(MULTIPROC_ENV) and not getattr(values.ValueClass, "_multiprocess",
                                                     False):
        values.ValueClass = values.get_value_class()


class GatewayMetrics:
    """One gateway's metrics, registered in ``registry`` (a private CollectorRegistry)."""

    CONTENT_TYPE = CONTENT_TYPE_LATEST
    CIRCUIT_STATES = CIRCUIT_STATES
    UNKNOWN_MODEL = UNKNOWN_MODEL
    NO_BACKEND = NO_BACKEND

    def __init__(self, registry: CollectorRegistry | None = None, per_key: bool = False):
        _multiprocess_values()
        self.registry = registry = registry if registry is not None else CollectorRegistry()
        key = ("key_id",) if per_key else ()
        backend = ("model", "backend")

        def counter(name, doc, labels=()):
            return Counter(name, doc, labels, registry=registry)

        def gauge(name, doc, labels, mode):
            return Gauge(name, doc, labels, registry=registry, multiprocess_mode=mode)

        def histogram(name, doc, labels, buckets):
            return Histogram(name, doc, labels, registry=registry, buckets=buckets)

        # -- requests, as they ended --------------------------------------------------------
        self.requests = counter(
            "inferegator_requests", "API requests that ended, by HTTP status code and how "
            "they ended (outcome).", ("model", "backend", "endpoint", "code", "outcome") + key)
        self.request_duration = histogram(
            "inferegator_request_duration_seconds", "Time from the request's arrival to "
            "its end (a stream's last event).", ("model", "backend", "endpoint"),
            LATENCY_BUCKETS)
        self.time_to_first_token = histogram(
            "inferegator_time_to_first_token_seconds", "Time from a stream's arrival to "
            "its first event sent to the client.", ("model", "backend", "endpoint"),
            TTFT_BUCKETS)
        self.inter_token_gap = histogram(
            "inferegator_inter_token_gap_seconds", "Time between consecutive chunks of a "
            "stream sent to the client.", backend, GAP_BUCKETS)
        self.prompt_tokens = counter(
            "inferegator_prompt_tokens", "Prompt tokens, as the backends reported them.",
            ("model",) + key)
        self.cached_prompt_tokens = counter(
            "inferegator_cached_prompt_tokens", "Prompt tokens served from the prefix cache "
            "(a part of the prompt tokens).", ("model",) + key)
        self.completion_tokens = counter(
            "inferegator_completion_tokens", "Generated tokens, as the backends reported "
            "them.", ("model",) + key)
        self.cost = counter(
            "inferegator_cost_usd", "What the requests cost at the model's prices, in US "
            "dollars.", ("model",) + key)
        self.ratelimit_refusals = counter(
            "inferegator_ratelimit_refusals", "Requests refused with 429 by the gateway's "
            "limits: kind is requests or tokens (per-minute limits) or budget (monthly).",
            ("model", "kind") + key)
        # -- upstream attempts --------------------------------------------------------------
        self.upstream_attempts = counter(
            "inferegator_upstream_attempts", "Calls to backends, by result: answered, "
            "failed (connection, timeout, 5xx) or refused (the backend's 4xx).",
            backend + ("result",))
        self.upstream_retries = counter(
            "inferegator_upstream_retries", "Attempts beyond a request's first.", ("model",))
        self.upstream_failovers = counter(
            "inferegator_upstream_failovers", "Requests answered by a backend other than the "
            "first one tried.", ("model",))
        # -- backends, sampled every second by every worker ---------------------------------
        self.backend_healthy = gauge(
            "inferegator_backend_healthy", "Workers that have the backend in rotation (health "
            "probes pass, not drained, circuit not open).", backend, "livesum")
        self.backend_circuit_state = gauge(
            "inferegator_backend_circuit_state", "Workers whose circuit breaker for the "
            "backend is in this state (closed, open, half_open).", backend + ("state",),
            "livesum")
        self.backend_in_flight = gauge(
            "inferegator_backend_in_flight", "Requests the gateway has on the backend now.",
            backend, "livesum")
        self.backend_reported_requests = gauge(
            "inferegator_backend_reported_requests", "Requests the runtime reported it is "
            "running or has waiting (SGLang /v1/loads), all clients included.",
            backend + ("state",), "livemostrecent")
        # -- the gateway --------------------------------------------------------------------
        self.workers = gauge("inferegator_workers", "Worker processes serving.", (),
                             "livesum")
        self.streams_open = gauge("inferegator_streams_open", "Streams being relayed now.",
                                  (), "livesum")
        self.ledger_queue = gauge(
            "inferegator_ledger_queue_rows", "Usage ledger rows waiting to be written.", (),
            "livesum")
        self.ledger_flush = histogram(
            "inferegator_ledger_flush_seconds", "Time to write one batch of ledger rows.", (),
            FLUSH_BUCKETS)
        self.ledger_rows_written = counter(
            "inferegator_ledger_rows_written", "Usage ledger rows written to the database.")
        self.ledger_dead_letters = counter(
            "inferegator_ledger_dead_letters", "Usage ledger rows the database refused "
            "(logged with their request id).")
        self.ratelimit_store_errors = counter(
            "inferegator_ratelimit_store_errors", "Calls to the rate-limit store (Redis) that "
            "failed.")

    def render(self) -> bytes:
        """The text exposition for a scrape: every worker's values when serve runs with a
        multiprocess directory, else this gateway's own (a gateway built in-process)."""
        return exposition(self.registry)

    @staticmethod
    def observe_all(histogram, amounts) -> None:
        """Observe many values at once (a stream's gaps): each bucket and the sum written
        once, not once per value. Falls back to observe() if the histogram's layout is not
        the one known here."""
        try:
            bounds, buckets, total = histogram._upper_bounds, histogram._buckets, \
                histogram._sum
        except AttributeError:
            for amount in amounts:
                histogram.observe(amount)
            return
        counts = [0] * len(bounds)
        for amount in amounts:
            counts[bisect_left(bounds, amount)] += 1
        for bucket, count in zip(buckets, counts):
            if count:
                bucket.inc(count)
        total.inc(sum(amounts))


def exposition(registry) -> bytes:
    """The text exposition: a fresh MultiProcessCollector over the multiprocess directory
    when there is one (prometheus_client's advice: one per scrape), else ``registry``."""
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path)
    return generate_latest(registry)
