"""The request path: parse, authenticate, resolve, admit, select, call upstream, relay, finish.

One greenlet per request. Failover happens only before the first byte reaches the
client: a stream's first event is read from the backend before the response starts.
"""

import logging
import random
import time

import gevent
import requests

from ..backends.base import RETRYABLE_STATUSES
from ..backends.health import RetryBudget
from ..errors import (
    GatewayError,
    body_too_large,
    internal_error,
    invalid_api_key,
    invalid_request,
    model_not_found,
    model_unavailable,
    upstream_failed,
)
from ..serving.disconnect import ClientDisconnected, ClientWatch
from ..store.ledger import cost_usd
from . import outcome as ends
from .outcome import RequestOutcome
from .relay import SSERelay, rewrite_json
from .request import parse_generation

log = logging.getLogger("inferegator.gateway")


class Pipeline:
    """Serves POST /v1/chat/completions and /v1/completions for one Gateway."""

    def __init__(self, gateway):
        self.gateway = gateway
        self.hook = gateway.hook
        self.max_body_bytes = gateway.config.server.max_body_bytes
        self.resilience = gateway.config.resilience
        self.retry_budget = RetryBudget(self.resilience.retry_budget_ratio,
                                        self.resilience.retry_budget_min_per_s)

    def handle(self, endpoint: str, req, resp) -> None:
        started = time.perf_counter()
        greq = parse_generation(endpoint, read_body(req, self.max_body_bytes), req)
        req.context.gateway_request = greq
        resp.set_header("X-Request-ID", greq.request_id)
        outcome = RequestOutcome(greq.request_id, endpoint, greq.model_id, greq.stream,
                                 time.time(), request=greq)
        try:
            model = self._admit(greq, outcome)
            watch = ClientWatch(req.env)
            try:
                backend, upstream, first = self._call_upstream(greq, model, outcome, watch)
            except BaseException:
                watch.close()
                raise
        except GatewayError as error:
            outcome.status = ends.REJECTED if error.status < 500 else ends.FAILED
            self._finish(outcome, started, error)
            raise
        except ClientDisconnected:
            outcome.status = ends.CLIENT_DISCONNECTED
            self._finish(outcome, started, None)
            return
        resp.set_headers(greq.response_headers)
        if greq.stream:
            resp.content_type = "text/event-stream"
            resp.set_header("Cache-Control", "no-cache")
            resp.stream = self._relay_stream(greq, model, backend, upstream, first, outcome,
                                             watch, started)
            return
        try:
            watch.waiting = True
            try:
                content = upstream.content
            finally:
                watch.waiting = False
                backend.in_flight -= 1
                watch.close()
            resp.data, outcome.usage = rewrite_json(content, model.id)
            resp.content_type = "application/json"
        except ClientDisconnected:
            outcome.status = ends.CLIENT_DISCONNECTED
        except (requests.RequestException, ValueError) as exc:
            backend.mark_failed()
            outcome.status, outcome.error = ends.FAILED, str(exc)
            self._finish(outcome, started, None)
            raise internal_error() from None
        self._finish(outcome, started, None)

    def authenticate(self, request):
        """The caller's Principal (set on the request), or 401 invalid_api_key."""
        principal = self.hook.inferegator_authenticate(gateway=self.gateway, request=request)
        if principal is None:
            raise invalid_api_key()
        request.principal = principal
        return principal

    def _admit(self, greq, outcome):
        """Authenticate, resolve the model, and let every limiter vote; the CatalogModel."""
        principal = outcome.principal = self.authenticate(greq)
        model = self.gateway.catalog.get(greq.model_id)
        if model is None:
            raise model_not_found(greq.model_id)
        if greq.endpoint not in model.capabilities:  # "chat" and "completions" are both
            raise invalid_request(f"The model '{model.id}' does not support the "
                                  f"{greq.endpoint} endpoint.", "model", "unsupported_endpoint")
        for refusal in self.hook.inferegator_admit(gateway=self.gateway, principal=principal,
                                                   model=model, request=greq):
            if refusal is not None:
                raise refusal
        return model

    def _call_upstream(self, greq, model, outcome, watch):
        """Try backends in policy order until one starts answering; fail over before that."""
        candidates = model.candidates()
        if not candidates:
            raise model_unavailable(model.id)
        ordered = self.hook.inferegator_select_backend(
            gateway=self.gateway, model=model, request=greq, candidates=candidates)
        body = dict(greq.body)
        if greq.stream:
            body["stream_options"] = {**(greq.body.get("stream_options") or {}),
                                      "include_usage": True}
        headers = {"X-Request-ID": greq.request_id}
        last_error = None
        attempts = 0
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
            if not backend.breaker.begin():
                continue  # another request took the half-open trial meanwhile
            attempts += 1
            body["model"] = backend.upstream_model
            if greq.stream and backend.supports_continuous_usage:
                body["stream_options"]["continuous_usage_stats"] = True
            self.hook.inferegator_before_upstream(gateway=self.gateway, request=greq,
                                                  backend=backend, body=body, headers=headers)
            outcome.attempts.append(backend.name)
            backend.in_flight += 1
            watch.waiting = True
            try:
                upstream = backend.post(greq.endpoint, body, headers, greq.stream)
                if upstream.status_code >= 400:
                    status = upstream.status_code
                    error = backend.translate_error(status, upstream.content)
                    upstream.close()
                    backend.in_flight -= 1
                    if status in (401, 403):  # our credentials for the backend, not the client's
                        log.error("backend %s refused the gateway's credentials (%d)",
                                  backend.name, status)
                        backend.mark_failed()
                        last_error = upstream_failed("The backend refused the gateway's "
                                                     "credentials.")
                        continue
                    if status not in RETRYABLE_STATUSES:
                        backend.mark_succeeded()  # it answered; the request was at fault
                        raise error  # another backend won't help
                    if status != 429:
                        backend.mark_failed()
                    last_error = error
                    continue
                first = _first_events(upstream, backend, model, greq) if greq.stream else None
            except ClientDisconnected:
                backend.in_flight -= 1
                backend.breaker.release()
                raise
            except requests.RequestException as exc:
                backend.in_flight -= 1
                if watch.gone:
                    backend.breaker.release()
                    raise ClientDisconnected() from None
                log.warning("backend %s failed: %s", backend.name, exc.__class__.__name__)
                backend.mark_failed(refused=_refused(exc))
                continue
            finally:
                watch.waiting = False
            backend.mark_succeeded()
            outcome.backend = backend.name
            return backend, upstream, first
        if last_error is not None:
            raise last_error
        raise model_unavailable(model.id)

    def _relay_stream(self, greq, model, backend, upstream, first, outcome, watch, started):
        """The client's SSE stream: the prefetched events, then the rest as they come."""
        relay, events, chunks = first
        outcome.ttft_s = time.perf_counter() - started
        try:
            yield b"".join(events)
            while not relay.done:
                watch.waiting = True
                try:
                    data = next(chunks, None)
                finally:
                    watch.waiting = False
                if data is None:
                    break
                out = relay.feed(data)
                if out:
                    yield out[0] if len(out) == 1 else b"".join(out)
            if relay.error is not None:
                outcome.status, outcome.error = ends.UPSTREAM_FAILED, relay.error.message
            elif not relay.done:
                raise requests.exceptions.ChunkedEncodingError("stream ended without [DONE]")
            else:
                _drain(chunks)
        except ClientDisconnected:
            outcome.status = ends.CLIENT_DISCONNECTED
        except (requests.RequestException, ValueError) as exc:
            if watch.gone:
                outcome.status = ends.CLIENT_DISCONNECTED
            else:
                backend.mark_failed()
                outcome.status, outcome.error = ends.UPSTREAM_FAILED, str(exc)
                yield GatewayError(502, "The model backend failed mid-stream.", "server_error",
                                   "upstream_error").sse_event()
        except GeneratorExit:
            outcome.status = ends.CLIENT_DISCONNECTED
            raise
        finally:
            watch.close()
            upstream.close()
            backend.in_flight -= 1
            outcome.usage = relay.usage
            self._finish(outcome, started, None)

    def _finish(self, outcome, started, error) -> None:
        outcome.latency_s = time.perf_counter() - started
        if error is not None:
            outcome.http_status, outcome.error = error.status, error.message
        usage = outcome.usage
        if usage:
            outcome.prompt_tokens = int(usage.get("prompt_tokens") or 0)
            outcome.completion_tokens = int(usage.get("completion_tokens") or 0)
            outcome.cached_tokens = int(
                (usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
            model = self.gateway.catalog.get(outcome.model_id)
            if model is not None:
                outcome.cost_usd = cost_usd(model.pricing, outcome.prompt_tokens,
                                            outcome.completion_tokens, outcome.cached_tokens)
        try:
            self.hook.inferegator_request_finished(gateway=self.gateway, outcome=outcome)
        except Exception:  # a metering plugin's failure must not fail the answer
            log.exception("inferegator_request_finished failed for %s", outcome.request_id)


def _refused(exc) -> bool:
    """A refused connection: the runtime is down, not slow (the circuit opens at once)."""
    stack, looked = [exc], 0
    while stack and looked < 12:
        error = stack.pop()
        looked += 1
        if isinstance(error, ConnectionRefusedError):
            return True
        for cause in (getattr(error, "reason", None), error.__cause__, error.__context__,
                      *error.args):
            if isinstance(cause, BaseException):
                stack.append(cause)
    return False


def _first_events(upstream, backend, model, greq):
    """Read the stream until the first events to forward; failure here still allows failover."""
    client_continuous = bool((greq.body.get("stream_options") or {}).get(
        "continuous_usage_stats"))
    relay = SSERelay(backend.upstream_model, model.id, greq.include_usage,
                     strip_running_usage=backend.supports_continuous_usage
                     and not client_continuous)
    chunks = upstream.iter_content(chunk_size=None)
    while True:
        data = next(chunks, None)
        if data is None:
            raise requests.exceptions.ChunkedEncodingError("stream ended before any event")
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


def read_body(req, limit: int) -> bytes:
    """The request body, refusing (413) anything over the configured limit."""
    length = req.content_length
    if length is not None and length > limit:
        raise body_too_large(limit)
    data = req.bounded_stream.read(limit + 1)
    if len(data) > limit:
        raise body_too_large(limit)
    return data
