"""Prometheus metrics: each finished request counted, backends and queues sampled every
second, and ``GET /metrics`` served (with ``metrics.bind`` set, serve's master serves them
on that address instead, and the public port has no ``/metrics``).

A request costs a few increments on labelled children cached by their label values, never
a ``.labels()`` lookup; a model id the catalog does not have is counted as "unknown", so
callers cannot mint series. The names are in inferegator/observability/metrics.py and
docs/metrics.md.
"""

from inferegator.plugin import GatewayMetrics, every, hookimpl

SAMPLE_EVERY_S = 1.0
RATE_LIMITED, NO_QUOTA = "rate_limit_exceeded", "insufficient_quota"
LIMIT_KINDS = ("requests", "tokens")  # a rate limit's error type: the limit that refused


class RequestMeter:
    """Counts finished requests into the metrics."""

    def __init__(self, gateway, metrics: GatewayMetrics, per_key: bool):
        self.gateway = gateway
        self.metrics = metrics
        self.per_key = per_key
        self._ended = {}  # (model, backend, endpoint, code, outcome[, key]) -> children
        self._usage = {}  # (model[, key]) -> (prompt, cached, completion, cost) counters
        self._attempts = {}  # (model, backend, result) -> counter
        self._retries = {}  # model -> (retries, failovers) counters
        self._refusals = {}  # (model, kind[, key]) -> counter

    def finished(self, outcome) -> None:
        request = outcome.request
        model = request.model_id
        if model not in self.gateway.catalog.models:
            model = GatewayMetrics.UNKNOWN_MODEL
        key = ()
        if self.per_key:
            principal = request.principal
            key = ((principal.key_id or "") if principal is not None else "",)
        backend = outcome.backend or GatewayMetrics.NO_BACKEND
        labels = (model, backend, request.endpoint, outcome.http_status, outcome.status) + key
        children = self._ended.get(labels) or self._add_ended(labels)
        count, duration, first_token, gap = children
        count.inc()
        duration.observe(outcome.latency_s)
        if outcome.ttft_s is not None:
            first_token.observe(outcome.ttft_s)
        if outcome.gaps_s:
            GatewayMetrics.observe_all(gap, outcome.gaps_s)
        usage = outcome.usage
        if usage is not None:
            usage_labels = (model,) + key
            prompt, cached, completion, cost = self._usage.get(usage_labels) or \
                self._add_usage(usage_labels)
            prompt.inc(usage.prompt_tokens)
            if usage.cached_tokens:
                cached.inc(usage.cached_tokens)
            completion.inc(usage.completion_tokens)
            if outcome.cost_usd > 0:
                cost.inc(outcome.cost_usd)
        if outcome.http_status == 429:
            self._count_refusal(outcome, model, key)
        if outcome.attempts:
            self._count_attempts(outcome, model)

    def _count_refusal(self, outcome, model, key) -> None:
        if outcome.error_code == RATE_LIMITED and outcome.error_type in LIMIT_KINDS:
            kind = outcome.error_type
        elif outcome.error_code == NO_QUOTA:
            kind = "budget"
        else:
            return  # a backend's own 429, relayed: not one of the gateway's limits
        labels = (model, kind) + key
        counter = self._refusals.get(labels)
        if counter is None:
            counter = self._refusals[labels] = self.metrics.ratelimit_refusals.labels(*labels)
        counter.inc()

    def _count_attempts(self, outcome, model) -> None:
        attempts = self._attempts
        for backend, (_, _, result) in zip(outcome.attempts, outcome.attempt_times):
            labels = (model, backend, result)
            counter = attempts.get(labels)
            if counter is None:
                counter = attempts[labels] = self.metrics.upstream_attempts.labels(*labels)
            counter.inc()
        tried = len(outcome.attempts)
        if tried > 1:  # a failover is a retry that another backend answered
            retries, failovers = self._retries.get(model) or self._add_retries(model)
            retries.inc(tried - 1)
            if outcome.backend is not None and outcome.backend != outcome.attempts[0]:
                failovers.inc()

    def _add_ended(self, labels):
        model, backend, endpoint, code, status = labels[:5]
        m = self.metrics
        children = self._ended[labels] = (
            m.requests.labels(model, backend, endpoint, str(code), status, *labels[5:]),
            m.request_duration.labels(model, backend, endpoint),
            m.time_to_first_token.labels(model, backend, endpoint),
            m.inter_token_gap.labels(model, backend))
        return children

    def _add_usage(self, labels):
        m = self.metrics
        children = self._usage[labels] = tuple(
            metric.labels(*labels) for metric in (m.prompt_tokens, m.cached_prompt_tokens,
                                                  m.completion_tokens, m.cost))
        return children

    def _add_retries(self, model):
        children = self._retries[model] = (self.metrics.upstream_retries.labels(model),
                                           self.metrics.upstream_failovers.labels(model))
        return children


class GaugeSampler:
    """Sets this worker's share of the gauges, and turns the running counts that other
    parts keep (limiter store errors, ledger rows) into counter increments."""

    def __init__(self, gateway, metrics: GatewayMetrics):
        self.gateway = gateway
        self.metrics = metrics
        self._backends = {}  # (model, backend) -> (healthy, {state: child}, in flight)
        self._loads = {}  # (model, backend) -> (running, waiting), once a load was reported
        self._seen = {"store_errors": 0, "written": 0, "dead_letters": 0}

    def sample(self) -> None:
        self._sample_backends()
        m, gateway = self.metrics, self.gateway
        pipeline = gateway.pipeline  # set once the app is built, after startup
        if pipeline is not None:
            m.streams_open.set(pipeline.streams_open)
        ledger = gateway.store.ledger if gateway.store is not None else None
        if ledger is not None:
            m.ledger_queue.set(ledger.pending)
            self._count("written", ledger.written, m.ledger_rows_written)
            self._count("dead_letters", ledger.dead_letters, m.ledger_dead_letters)
        limiter = gateway.plugin_state.get("rate_limits")
        if limiter is not None:
            self._count("store_errors", limiter.store_errors, m.ratelimit_store_errors)

    def _count(self, name: str, total: int, counter) -> None:
        delta = total - self._seen[name]
        if delta > 0:
            counter.inc(delta)
        self._seen[name] = total

    def _sample_backends(self) -> None:
        present = set()
        for model in self.gateway.catalog.models.values():
            for backend in model.backends:
                labels = (model.id, backend.name)
                present.add(labels)
                healthy, states, in_flight = self._backends.get(labels) or self._add(labels)
                healthy.set(1 if backend.healthy and backend.probe_ok is True else 0)
                now = backend.breaker.state
                for state, child in states.items():
                    child.set(1 if state == now else 0)
                in_flight.set(backend.in_flight)
                load = backend.reported_load
                if load is not None:
                    running, waiting = self._loads.get(labels) or self._add_load(labels)
                    running.set(load["running"])
                    waiting.set(load["waiting"])
                elif labels in self._loads:  # it stopped reporting: no load known is 0
                    for child in self._loads[labels]:
                        child.set(0)
        for labels in self._backends.keys() - present:  # gone with a reload
            self._drop(labels)

    def _add(self, labels):
        m = self.metrics
        children = self._backends[labels] = (
            m.backend_healthy.labels(*labels),
            {state: m.backend_circuit_state.labels(*labels, state)
             for state in GatewayMetrics.CIRCUIT_STATES},
            m.backend_in_flight.labels(*labels))
        return children

    def _add_load(self, labels):
        gauge = self.metrics.backend_reported_requests
        children = self._loads[labels] = (gauge.labels(*labels, "running"),
                                          gauge.labels(*labels, "waiting"))
        return children

    def _drop(self, labels) -> None:
        """A backend no longer configured: its series go (in multiprocess files, which
        keep every series a live worker wrote, they read 0 until the worker ends)."""
        m = self.metrics
        healthy, states, in_flight = self._backends.pop(labels)
        for child in (healthy, *states.values(), in_flight, *self._loads.pop(labels, ())):
            child.set(0)
        for metric in (m.backend_healthy, m.backend_in_flight):
            metric.remove(*labels)
        for state in GatewayMetrics.CIRCUIT_STATES:
            m.backend_circuit_state.remove(*labels, state)
        for state in ("running", "waiting"):
            try:
                m.backend_reported_requests.remove(*labels, state)
            except KeyError:
                pass  # never reported a load


class MetricsState:
    """This worker's metrics: the definitions, the request meter and the gauge sampler."""

    def __init__(self, gateway):
        config = gateway.config.metrics
        self.metrics = GatewayMetrics(per_key=config.per_key_labels)
        self.requests = RequestMeter(gateway, self.metrics, config.per_key_labels)
        self.gauges = GaugeSampler(gateway, self.metrics)
        self._store = gateway.store
        self._greenlet = None

    def start(self) -> None:
        self.metrics.workers.set(1)
        if self._store is not None:
            self._store.ledger.on_flush = self.metrics.ledger_flush.observe
        self._greenlet = every(lambda: SAMPLE_EVERY_S, self.gauges.sample, "metrics sampling",
                               at_once=True)

    def stop(self) -> None:
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None


class MetricsPage:
    """GET /metrics: the text exposition, every worker's values summed."""

    def __init__(self, state: MetricsState):
        self.state = state

    def on_get(self, req, resp):
        self.state.gauges.sample()  # this worker's share as of now; the others' <= 1 s old
        resp.data = self.state.metrics.render()
        resp.content_type = GatewayMetrics.CONTENT_TYPE


@hookimpl(trylast=True)
def inferegator_startup(gateway):
    if gateway.config.metrics.enabled:
        state = gateway.plugin_state["metrics"] = MetricsState(gateway)
        state.start()


@hookimpl(trylast=True)
def inferegator_shutdown(gateway):
    state = gateway.plugin_state.get("metrics")
    if state is not None:
        state.stop()


@hookimpl(trylast=True)
def inferegator_request_finished(gateway, outcome):
    state = gateway.plugin_state.get("metrics")
    if state is not None:
        state.requests.finished(outcome)


@hookimpl(trylast=True)
def inferegator_register_routes(gateway):
    state = gateway.plugin_state.get("metrics")
    if state is None or gateway.config.metrics.bind:
        return []  # off, or served by the master on its own address
    return [("/metrics", MetricsPage(state))]
