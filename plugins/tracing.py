"""W3C trace context for every relayed request, sent upstream on each attempt; and, when
``tracing.exporter`` names one, OpenTelemetry spans for the request and its attempts.

A client's ``traceparent`` is continued (same trace id) or a new trace is started; each
upstream attempt is sent ``traceparent`` with a span id of its own, so a backend's spans
join the trace under that attempt. With the default exporter, ``none``, OpenTelemetry is
never imported: a request costs a header parse and a few random ids.

Spans are made after the fact, when the request has finished, from its outcome (its
times, attempts and result): one server span (child of the client's span) and one
client span per attempt, whose span ids are those sent upstream.
"""

import importlib.util
import os
import sys

from inferegator.plugin import (
    FAILED,
    UPSTREAM_FAILED,
    GatewayBuildError,
    TraceContext,
    hookimpl,
    new_span_id,
)

NAME = "tracing"
EXTRA = "pip install 'inferegator[tracing]'"


class RequestTrace:
    """One request's trace: its context, its own span id and each attempt's span id."""

    __slots__ = ("context", "span_id", "attempt_ids")

    def __init__(self, context: TraceContext):
        self.context = context
        self.span_id = new_span_id()  # the request's server span
        self.attempt_ids = []  # one per upstream attempt, as sent in traceparent

    @property
    def trace_id(self) -> str:
        return self.context.trace_id


def request_trace(request) -> RequestTrace:
    """The request's trace, made from its headers on first use."""
    trace = request.plugin_data.get(NAME)
    if trace is None:
        trace = request.plugin_data[NAME] = RequestTrace(TraceContext.from_headers(
            request.header("traceparent"), request.header("tracestate")))
    return trace


@hookimpl(trylast=True)
def inferegator_check_config(config):
    """What startup would fail on, found before any worker starts: a missing package, a
    span file that cannot be appended to."""
    tracing = config.tracing
    if tracing.exporter == "none":
        return None
    needs = ["opentelemetry.sdk"] + (
        ["opentelemetry.exporter.otlp.proto.http"] if tracing.exporter == "otlp" else [])
    problems = [f"tracing.exporter is {tracing.exporter!r}, which needs the package "
                f"{name.replace('.', '-')}: {EXTRA}"
                for name in needs if not _importable(name)]
    if tracing.exporter == "console" and tracing.endpoint:
        path = tracing.endpoint
        folder = os.path.dirname(os.path.abspath(path))
        if not (os.access(path, os.W_OK) if os.path.exists(path) else
                os.path.isdir(folder) and os.access(folder, os.W_OK)):
            problems.append(f"tracing.endpoint: cannot append spans to {path!r}")
    return problems


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


@hookimpl(trylast=True)
def inferegator_startup(gateway):
    config = gateway.config.tracing
    gateway.plugin_state[NAME] = None if config.exporter == "none" else Spans(config)


@hookimpl(trylast=True)
def inferegator_shutdown(gateway):
    spans = gateway.plugin_state.get(NAME)
    if spans is not None:
        spans.close()


@hookimpl(trylast=True)
def inferegator_before_upstream(request, headers):
    # ``headers`` is the same dict for every attempt of a request: each attempt overwrites.
    trace = request_trace(request)
    span_id = new_span_id()
    trace.attempt_ids.append(span_id)
    headers["traceparent"] = trace.context.traceparent(span_id)
    if trace.context.tracestate is not None:
        headers["tracestate"] = trace.context.tracestate


@hookimpl(wrapper=True)
def inferegator_request_finished(gateway, outcome):
    # A wrapper: the trace exists (a request refused before upstream has one too) before
    # any plugin's request_finished reads it, the access log's included.
    trace = request_trace(outcome.request)
    results = yield
    spans = gateway.plugin_state.get(NAME)
    if spans is not None:
        spans.record(outcome, trace)
    return results


class ChosenIds:
    """OpenTelemetry's IdGenerator for spans whose ids were chosen (and sent upstream)
    before the span is made: set ``trace_id`` and ``span_id``, then start the span.
    Registered as an IdGenerator by Spans, so that nothing imports OpenTelemetry before."""

    trace_id = span_id = 0

    def generate_trace_id(self) -> int:
        return self.trace_id

    def generate_span_id(self) -> int:
        return self.span_id

    def is_trace_id_random(self) -> bool:
        return True  # os.urandom's


def _console_exporter(endpoint: str):
    """Each span as one JSON line, appended to the file ``endpoint`` (standard error if
    empty); (exporter, the file to close or None)."""
    from opentelemetry.sdk.trace.export import ConsoleSpanExporter

    try:
        out = open(endpoint, "a", encoding="utf-8") if endpoint else None
    except OSError as exc:
        raise GatewayBuildError(f"tracing.endpoint: cannot append spans to {endpoint!r}: "
                                f"{exc.strerror}") from None
    return ConsoleSpanExporter(out=out or sys.stderr,
                               formatter=lambda span: span.to_json(indent=None) + "\n"), out


def _otlp_exporter(endpoint: str):
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        raise GatewayBuildError(
            "tracing.exporter is 'otlp', which needs the package "
            f"opentelemetry-exporter-otlp-proto-http: {EXTRA}") from None
    return OTLPSpanExporter(endpoint=endpoint or None)  # None: OTEL_EXPORTER_OTLP_* or local


class Spans:
    """A finished request's spans, made from its outcome and exported by OpenTelemetry's
    SDK: to a file or stderr, one span a line, as it ends (console), or in batches (otlp)."""

    def __init__(self, config):
        try:
            from opentelemetry import context, trace
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
            from opentelemetry.sdk.trace.id_generator import IdGenerator
        except ImportError:
            raise GatewayBuildError(
                f"tracing.exporter is {config.exporter!r}, which needs the package "
                f"opentelemetry-sdk: {EXTRA}") from None
        IdGenerator.register(ChosenIds)
        self.api, self.empty = trace, context.Context
        self.out = None
        if config.exporter == "console":
            exporter, self.out = _console_exporter(config.endpoint)
            processor = SimpleSpanProcessor(exporter)
        else:
            processor = BatchSpanProcessor(_otlp_exporter(config.endpoint))
        self.ids = ChosenIds()
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": config.service_name}),
            id_generator=self.ids)
        self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("inferegator")

    def close(self) -> None:
        self.provider.shutdown()  # exports what is batched
        if self.out is not None:
            self.out.close()

    def _caller(self, context: TraceContext):
        """The OpenTelemetry context whose span is the caller's (none: a new trace)."""
        api = self.api
        if context.parent_id is None:
            return self.empty()
        state = api.TraceState.from_header([context.tracestate]) \
            if context.tracestate is not None else None
        return api.set_span_in_context(api.NonRecordingSpan(api.SpanContext(
            int(context.trace_id, 16), int(context.parent_id, 16), is_remote=True,
            trace_flags=api.TraceFlags(context.flags), trace_state=state)), self.empty())

    def _start(self, name, parent, kind, trace_id, span_id, start_s, attributes):
        # No greenlet switch between choosing the ids and starting the span.
        self.ids.trace_id, self.ids.span_id = trace_id, span_id
        return self.tracer.start_span(name, parent, kind,
                                      {k: v for k, v in attributes.items() if v is not None},
                                      start_time=int(start_s * 1e9))

    def record(self, outcome, trace: RequestTrace) -> None:
        api, request = self.api, outcome.request
        http, principal = request.http, request.principal
        trace_id = int(trace.trace_id, 16)
        server = self._start(f"{http.method} {http.path}", self._caller(trace.context),
                             api.SpanKind.SERVER, trace_id, int(trace.span_id, 16),
                             outcome.started, _request_attributes(outcome, http, principal))
        within = api.set_span_in_context(server, self.empty())
        wall = outcome.started - request.started  # perf_counter seconds -> wall clock
        for number, (backend, (began, ended, result), span_id) in enumerate(
                zip(outcome.attempts, outcome.attempt_times, trace.attempt_ids), 1):
            attempt = self._start(
                f"upstream {backend}", within, api.SpanKind.CLIENT, trace_id, int(span_id, 16),
                began + wall, {"inferegator.backend": backend, "inferegator.attempt": number,
                               "inferegator.attempt.result": result})
            if result != "answered":
                attempt.set_status(api.Status(api.StatusCode.ERROR, result))
            attempt.end(int((max(began, ended) + wall) * 1e9))
        if outcome.status in (UPSTREAM_FAILED, FAILED) or outcome.http_status >= 500:
            server.set_status(api.Status(api.StatusCode.ERROR, outcome.error or outcome.status))
        server.end(int((outcome.started + outcome.latency_s) * 1e9))


def _request_attributes(outcome, http, principal) -> dict:
    """The server span's attributes: OpenTelemetry's HTTP and GenAI names where they
    exist, ``inferegator.*`` for the rest."""
    request, usage = outcome.request, outcome.usage
    return {
        "http.request.method": http.method, "url.path": http.path,
        "http.response.status_code": outcome.http_status, "client.address": http.remote_addr,
        "gen_ai.request.model": request.model_id,
        "gen_ai.usage.input_tokens": usage.prompt_tokens if usage is not None else None,
        "gen_ai.usage.output_tokens": usage.completion_tokens if usage is not None else None,
        "inferegator.request_id": request.request_id, "inferegator.endpoint": request.endpoint,
        "inferegator.stream": request.stream, "inferegator.backend": outcome.backend,
        "inferegator.status": outcome.status, "inferegator.attempts": len(outcome.attempts),
        "inferegator.cached_tokens": usage.cached_tokens if usage is not None else None,
        "inferegator.cost_usd": outcome.cost_usd,
        "inferegator.key_id": principal.key_id if principal is not None else None,
        "inferegator.user_id": principal.owner if principal is not None else None,
        "error.type": outcome.error_code or outcome.error_type,
    }
