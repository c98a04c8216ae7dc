"""The request path: authenticate, parse, resolve, admit, select, call upstream, relay, finish.

The same path serves every relayed route (OpenAI's and SGLang's native); what differs
between them is in ``endpoints.ENDPOINTS``.

One greenlet per request. Failover happens only before the first byte reaches the
client: a stream's first event is read from the backend before the response starts.
Every exit, whatever ends the request, goes through one ``finally``: the backend lease
is closed once (in-flight count, circuit trial, connection) and ``_finish`` runs once
(one ledger row with the status the client saw).
"""

import logging
import random
import time

import gevent

from .. import outcome as ends
from ..auth import authenticate
from ..backends.base import ERROR_BODY_BYTES
from ..backends.health import RetryBudget
from ..backends.transport import TransportError
from ..body import json_object, read_body
from ..errors import (
    GatewayError,
    UpstreamFault,
    context_length_exceeded,
    internal_error,
    invalid_request,
    model_not_found,
    model_unavailable,
    unsupported_endpoint,
    unsupported_parameter,
    upstream_failed,
    upstream_timeout,
    upstream_too_large,
)
from ..outcome import RequestOutcome
from ..serving.disconnect import ClientDisconnected, ClientWatch
from .endpoints import ENDPOINTS
from .features import check_features
from .request import GatewayRequest, request_id

log = logging.getLogger("inferegator.gateway")

ANSWER_CHUNK_BYTES = 65536


class Pipeline:
    """Serves the relayed routes (ENDPOINTS: the OpenAI ones and SGLang's native ones) of one
    Gateway."""

    def __init__(self, gateway):
        self.gateway = gateway
        self.hook = gateway.hook
        self.server = gateway.config.server
        self.resilience = gateway.config.resilience
        self.retry_budget = RetryBudget(self.resilience.retry_budget_ratio,
                                        self.resilience.retry_budget_min_per_s)
        # Plugins are all registered before the app is built: with no after-upstream
        # implementation, requests skip the hook call (and the JSON answer its callback).
        self.after_upstream = (self.hook.inferegator_after_upstream
                               if self.hook.inferegator_after_upstream.get_hookimpls() else None)
        self.streams_open = 0  # streams being relayed now (read by the metrics plugin)

    def handle(self, endpoint: str, req, resp) -> None:
        greq = req.context.gateway_request = GatewayRequest(endpoint, req, request_id(req))
        resp.set_header("X-Request-ID", greq.request_id)
        outcome = RequestOutcome(greq, time.time())
        watch = lease = None
        streaming = False
        try:
            raw = read_body(req, self.server.max_body_bytes, self.server.body_timeout_s)
            authenticate(self.gateway, greq)
            body = json_object(raw)
            ENDPOINTS[endpoint].parse(greq, body)
            greq.needs = check_features(endpoint, body)
            model = self._admit(greq)
            watch = ClientWatch(req.env)
            lease, first = self._call_upstream(greq, model, outcome, watch)
            resp.set_headers(greq.response_headers)
            if greq.stream:
                resp.content_type = "text/event-stream"
                resp.set_header("Cache-Control", "no-cache")
                resp.stream = _Stream(self._relay_stream(greq, model, lease, first, outcome,
                                                         watch),
                                      lambda: self._abandoned(outcome, lease, watch))
                streaming = True  # the stream owns the lease, the watch and the finish now
                return
            resp.data, outcome.usage = self._read_answer(greq, lease, model, watch)
            resp.content_type = "application/json"
        except GatewayError as error:
            _failed(outcome, error)
            raise
        except ClientDisconnected:
            outcome.status = ends.CLIENT_DISCONNECTED
        except BaseException:  # a bug or a plugin's exception: still one row, with the 500
            _failed(outcome, internal_error())
            raise
        finally:
            if not streaming:
                self._end(outcome, lease, watch)

    def _admit(self, greq):
        """Resolve the model and let every limiter vote; the CatalogModel."""
        model = self.gateway.catalog.get(greq.model_id)
        if model is None:
            raise model_not_found(greq.model_id)
        if greq.endpoint not in model.capabilities:  # endpoint names are capabilities
            raise unsupported_endpoint(model.id, ENDPOINTS[greq.endpoint].path)
        for capability, param, what in greq.needs:
            if capability not in model.capabilities:
                raise unsupported_parameter(model.id, param, what)
        bound = model.config.max_completion_tokens
        if bound is not None and greq.max_tokens is not None and greq.max_tokens > bound:
            param = ENDPOINTS[greq.endpoint].max_tokens_param
            raise invalid_request(f"Invalid value for '{param}': this model generates at most "
                                  f"{bound} tokens per answer.", param, "invalid_value")
        self._check_context(greq, model)
        for refusal in self.hook.inferegator_admit(gateway=self.gateway,
                                                   principal=greq.principal, model=model,
                                                   request=greq):
            if refusal is not None:
                raise refusal
        return model

    @staticmethod
    def _check_context(greq, model) -> None:
        """400 context_length_exceeded when the prompt (as estimated) and max_tokens cannot
        fit the model's context, before any limit reserves tokens for them."""
        context, endpoint = model.context_length, ENDPOINTS[greq.endpoint]
        if context is None or endpoint.max_tokens_param is None:
            return  # an embedding's inputs each meet the context on their own, upstream
        prompt = greq.prompt_estimate if greq.longest_prompt is None else greq.longest_prompt
        asked = prompt + (greq.max_tokens or 0)
        if asked > context:
            param = endpoint.max_tokens_param if greq.max_tokens and \
                greq.max_tokens >= context else endpoint.prompt_param
            raise context_length_exceeded(context, asked, param)

    def _call_upstream(self, greq, model, outcome, watch):
        """Try backends in policy order until one starts answering; fail over before that.

        A 500 is the request's fault until another backend answers the same request: only
        then is it counted against the backend that gave it, so one user's poisoned
        request cannot open every circuit of a model.
        """
        candidates = model.candidates()
        if not candidates:
            raise model_unavailable(model.id)
        ordered = self.hook.inferegator_select_backend(
            gateway=self.gateway, model=model, request=greq, candidates=candidates)
        body = ENDPOINTS[greq.endpoint].upstream_body(greq)
        headers = {"X-Request-ID": greq.request_id}
        last_error, attempts, suspects = None, 0, []
        self.retry_budget.request()
        for backend in ordered or ():
            if attempts >= self.resilience.max_attempts:
                break
            if not backend.breaker.usable():
                continue  # open, or half-open with its one trial already running
            if attempts:
                if not self.retry_budget.try_retry():
                    log.warning("retry budget spent; not retrying %s", greq.request_id)
                    break
                delay_ms = self.resilience.retry_backoff_ms * 2 ** (attempts - 1)
                gevent.sleep(delay_ms * random.uniform(0.5, 1.5) / 1000)
                if watch.gone:
                    raise ClientDisconnected()
            lease = backend.lease()
            if lease is None:
                continue  # another request took the half-open trial meanwhile
            attempts += 1
            answered = False
            try:
                answered, first, error = self._attempt(lease, greq, model, body, headers,
                                                       outcome, watch)
                if answered:
                    for suspect in suspects:  # another backend could answer: theirs the 500
                        suspect.mark_failed()
                    outcome.backend = backend.name
                    return lease, first
                if error is not None:
                    if error.status == 500:
                        suspects.append(backend)
                    last_error = error
            finally:
                if not answered:
                    lease.close()
        if last_error is not None:
            raise last_error
        raise model_unavailable(model.id)

    def _attempt(self, lease, greq, model, body, headers, outcome, watch):
        """One backend's try: (True, first events or None, None) when it answers; (False,
        None, the error or None) when another backend may be tried; raises when none
        should be."""
        backend = lease.backend
        watch.arm(backend.total_timeout_s, backend.deadline_fault)
        if ENDPOINTS[greq.endpoint].names_model:
            body["model"] = backend.upstream_model
        if greq.stream and backend.supports_continuous_usage and "stream_options" in body:
            body["stream_options"]["continuous_usage_stats"] = True
        self.hook.inferegator_before_upstream(gateway=self.gateway, request=greq,
                                              backend=backend, body=body, headers=headers)
        outcome.attempts.append(backend.name)
        timing = [time.perf_counter(), 0.0, "failed"]
        outcome.attempt_times.append(timing)
        watch.waiting = True
        try:
            upstream = lease.response = backend.post(greq.endpoint, body, headers)
            status = upstream.status_code
            if status >= 400:
                if status < 500:
                    timing[2] = "refused"
                return False, None, _upstream_error(lease, status,
                                                     upstream.preload(ERROR_BODY_BYTES))
            first = _first_events(upstream, backend, model, greq) if greq.stream else None
        except TransportError as exc:
            if watch.gone:
                raise ClientDisconnected() from None
            log.warning("backend %s failed: %s", backend.name, exc.kind)
            lease.failed(refused=exc.refused)
            return False, None, None
        except UpstreamFault as fault:
            log.warning("backend %s: %s", backend.name, fault)
            lease.failed()
            return False, None, fault.error
        finally:
            watch.waiting = False
            timing[1] = time.perf_counter()
        timing[2] = "answered"
        lease.succeeded()
        if first is not None and self.after_upstream is not None:
            self.after_upstream(gateway=self.gateway, request=greq, backend=backend,
                                answer=None)
        return True, first, None

    def _read_answer(self, greq, lease, model, watch):
        """A non-streamed answer, read within the backend's size and time bounds; returns
        (the client's bytes, usage)."""
        backend, upstream = lease.backend, lease.response
        limit = backend.max_response_bytes
        declared = upstream.headers.get("Content-Length")
        watch.waiting = True
        try:
            if declared is not None and declared.isdigit() and int(declared) > limit:
                raise UpstreamFault(upstream_too_large("an answer", limit))
            parts, size = [], 0
            for data in upstream.iter_content(ANSWER_CHUNK_BYTES):
                size += len(data)
                if size > limit:
                    raise UpstreamFault(upstream_too_large("an answer", limit))
                parts.append(data)
            watch.waiting = False
            after = self.after_upstream
            endpoint = ENDPOINTS[greq.endpoint]
            return endpoint.rewrite(b"".join(parts), model.id, None if after is None else (
                lambda answer: after(gateway=self.gateway, request=greq, backend=backend,
                                     answer=answer)), endpoint.fix_answer, greq)
        except UpstreamFault as fault:
            lease.failed()
            raise fault.error from None
        except TransportError:
            if watch.gone:
                raise ClientDisconnected() from None
            lease.failed()
            raise upstream_failed() from None
        finally:
            watch.waiting = False

    def _relay_stream(self, greq, model, lease, first, outcome, watch):
        """The client's SSE stream: the prefetched events, then the rest as they come."""
        relay, events, chunks = first
        clock = time.perf_counter
        last = clock()
        outcome.ttft_s = last - greq.started
        gaps = outcome.gaps_s = []
        self.streams_open += 1
        try:
            if relay.done:
                self._end_stream(outcome, relay, lease, watch, chunks)
            yield b"".join(events)
            while not relay.done:
                watch.waiting = True
                try:
                    data = next(chunks, None)
                finally:
                    watch.waiting = False
                if watch.expired:
                    raise UpstreamFault(upstream_timeout(lease.backend.total_timeout_s))
                if data is None:
                    break
                out = relay.feed(data)
                if relay.done:  # billed before the client sees [DONE]
                    self._end_stream(outcome, relay, lease, watch, chunks)
                if out:
                    now = clock()
                    gaps.append(now - last)
                    last = now
                    yield out[0] if len(out) == 1 else b"".join(out)
            if relay.error is not None:
                outcome.status, outcome.error = ends.UPSTREAM_FAILED, relay.error.message
            elif not relay.done:
                raise UpstreamFault(upstream_failed("The stream ended early."))
        except ClientDisconnected:
            outcome.status = ends.CLIENT_DISCONNECTED
        except GeneratorExit:
            outcome.status = ends.CLIENT_DISCONNECTED
            raise
        except (UpstreamFault, TransportError, ValueError) as exc:
            if watch.gone:
                outcome.status = ends.CLIENT_DISCONNECTED
            else:
                lease.failed()
                error = exc.error if isinstance(exc, UpstreamFault) else upstream_failed(
                    "It failed mid-stream.")
                outcome.status, outcome.error = ends.UPSTREAM_FAILED, error.message
                yield relay.error_event(error)
        except Exception:
            log.exception("stream relay failed for %s", greq.request_id)
            outcome.status, outcome.error = ends.FAILED, "internal error"
            yield relay.error_event(internal_error())
        finally:
            self.streams_open -= 1
            if outcome.usage is None:
                outcome.usage = relay.usage
            self._end(outcome, lease, watch)

    def _end_stream(self, outcome, relay, lease, watch, chunks) -> None:
        """A stream's [DONE] came: read the upstream's end (its connection goes back to
        the pool), then end the request, before the client is sent [DONE]."""
        _drain(chunks)
        outcome.usage = relay.usage
        if relay.error is not None:  # a Responses stream that ended response.failed
            outcome.status, outcome.error = ends.UPSTREAM_FAILED, relay.error.message
        self._end(outcome, lease, watch)

    def _abandoned(self, outcome, lease, watch) -> None:
        """The server closed the stream; if it never ran (the client left first), end the
        request here."""
        if not outcome.finished:
            outcome.status = ends.CLIENT_DISCONNECTED
            self._end(outcome, lease, watch)

    def _end(self, outcome, lease, watch) -> None:
        """Every exit of a request comes here: the lease and the watch are given back and
        the request finished, each exactly once however often this is called."""
        if lease is not None:
            lease.close()
        if watch is not None:
            watch.close()
        self._finish(outcome)

    def _finish(self, outcome) -> None:
        """Hand the outcome to the request_finished hooks, exactly once per request."""
        if outcome.finished:
            return
        outcome.finished = True
        outcome.latency_s = time.perf_counter() - outcome.request.started
        if outcome.usage is not None:
            model = self.gateway.catalog.get(outcome.model_id)
            if model is not None:
                outcome.cost_usd = model.pricing.cost_usd(*outcome.usage)
        try:
            self.hook.inferegator_request_finished(gateway=self.gateway, outcome=outcome)
        except Exception:  # a metering plugin's failure must not fail the answer
            log.exception("inferegator_request_finished failed for %s", outcome.request_id)


class _Stream:
    """The SSE body handed to the server: the relay, plus a close() that ends the request
    even when the relay never started (a generator's finally runs only once started)."""

    __slots__ = ("_relay", "_on_close")

    def __init__(self, relay, on_close):
        self._relay = relay
        self._on_close = on_close

    def __iter__(self):
        return self._relay

    def close(self) -> None:
        self._relay.close()
        self._on_close()


def _failed(outcome, error: GatewayError) -> None:
    outcome.status = ends.REJECTED if error.status < 500 else ends.FAILED
    outcome.http_status, outcome.error = error.status, error.message
    outcome.error_type, outcome.error_code, outcome.error_param = error.type, error.code, \
        error.param


def _upstream_error(lease, status: int, content: bytes) -> GatewayError:
    """What an upstream error status means for the backend, and the client's error if no
    other backend can help; raises when the request itself is at fault (4xx)."""
    backend = lease.backend
    if status in (401, 403):  # our credentials for the backend, not the client's
        log.error("backend %s refused the gateway's credentials (%d)", backend.name, status)
        lease.failed()
        return upstream_failed("The backend refused the gateway's credentials.")
    if status == 429:
        return backend.translate_error(status, content)  # busy: no verdict, try another
    if status == 500:
        return upstream_failed()  # its exception text stays with the operator's logs
    if status >= 500:
        lease.failed()
        return upstream_failed()
    lease.succeeded()  # it answered; the request was at fault, another backend won't help
    raise backend.translate_error(status, content)


def _first_events(upstream, backend, model, greq):
    """Read the stream until the first events to forward; failure here still allows failover."""
    client_continuous = bool((greq.body.get("stream_options") or {}).get(
        "continuous_usage_stats"))
    relay_class = ENDPOINTS[greq.endpoint].stream_relay
    relay = relay_class(backend.upstream_model, model.id, greq.include_usage,
                        strip_running_usage=backend.supports_continuous_usage
                        and not client_continuous, max_event_bytes=backend.max_event_bytes,
                        prompt_estimate=greq.prompt_estimate)
    chunks = upstream.iter_content(chunk_size=None)
    while True:
        data = next(chunks, None)
        if data is None:
            raise UpstreamFault(upstream_failed("The stream ended before any event."))
        events = relay.feed(data)
        if events:
            return relay, events, chunks


def _drain(chunks, limit_bytes: int = 65536, limit_s: float = 1.0) -> None:
    """Read what follows [DONE] (the chunked terminator) so the connection is pooled again.

    Bounded in bytes and time, in case an upstream keeps talking.
    """
    received = 0
    with gevent.Timeout(limit_s, False):
        for data in chunks:
            received += len(data)
            if received > limit_bytes:
                break
