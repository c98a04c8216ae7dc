"""The backend adapter contract, with pooled HTTP, health state and error translation.

A backend type (``sglang``, ``openai``, a plugin's own) subclasses BackendAdapter and
says where its endpoints are, how to authenticate and how to probe health.
"""

import hashlib
import json
import logging
import re
import time
import uuid

import requests
from requests.adapters import HTTPAdapter

from ..config.model import ResilienceConfig
from ..errors import GatewayError, UpstreamFault, upstream_timeout, upstream_unreadable_error
from .health import CircuitBreaker
from .transport import GeventHttpTransport, TransportError, UpstreamResponse

log = logging.getLogger(__name__)

ERROR_BODY_BYTES = 65536  # the most of an upstream error answer that is read
# Error types OpenAI's API uses; anything else a backend says (an exception's class name)
# becomes invalid_request_error or server_error.
OPENAI_ERROR_TYPES = frozenset(("invalid_request_error", "authentication_error",
                                "permission_error", "not_found_error", "rate_limit_exceeded",
                                "insufficient_quota", "server_error"))
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
_HEX32 = re.compile(r"[0-9a-f]{32}")
# How SGLang ("exceeds the model's maximum context length", "is longer than the model's
# context length") and vLLM ("maximum context length is") word a context overflow.
_CONTEXT_ERROR = re.compile(r"(maximum context length|longer than the model's context length)",
                            re.IGNORECASE)
# Statuses whose meaning the pipeline settles without the body: 401/403 (our credentials),
# 429 (busy) and 5xx. Any other error status with no JSON body is the backend's fault.
_STATUSES_WITHOUT_BODY = (401, 403, 429)
_COMPACT = json.JSONEncoder(separators=(",", ":")).encode  # the body sent upstream


def upstream_request_id(request_id: str) -> str:
    """The X-Request-ID sent upstream: always a UUID in its canonical form, which strict
    servers demand (llama-cpp-python's answers 400 with an empty body to anything else).

    A UUID is sent as it is; the gateway's own ``req-<32 hex>`` as the same 32 digits in
    UUID form; any other client id as a UUID derived from it (SHA-256, version 4 bits), so
    the same request carries the same upstream id on every attempt and an operator can
    recompute it from the id the client and the ledger see.
    """
    lowered = request_id.lower()
    if _UUID.fullmatch(lowered):
        return lowered
    if lowered.startswith("req-") and _HEX32.fullmatch(lowered[4:]):
        h = lowered[4:]
        return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
    return str(uuid.UUID(bytes=hashlib.sha256(request_id.encode()).digest()[:16], version=4))


def json_error_body(content: bytes) -> bool:
    """Whether an upstream error answer's body is a JSON object (an error we can relay)."""
    try:
        return isinstance(json.loads(content), dict)
    except (ValueError, RecursionError):
        return False


def pooled_session(pool_size: int) -> requests.Session:
    """A keep-alive session for control calls (probes, loads, model lists); no hidden
    retries. Generation requests go through the backend's Transport instead."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.trust_env = False  # no proxies or netrc lookups
    return session


class BackendLease:
    """One request's hold on one backend, from its choice to the end of its answer.

    It owns what must be given back exactly once, whatever way the request ends: the
    backend's in-flight count, the circuit's half-open trial (given back without a verdict
    when none was reached) and the upstream response (closed: a finished one's connection
    is back in the pool already; an unfinished one's is dropped).
    """

    __slots__ = ("backend", "response", "_verdict", "_open")

    def __init__(self, backend):
        self.backend = backend
        self.response = None
        self._verdict = False
        self._open = True
        backend.in_flight += 1

    def succeeded(self) -> None:
        self._verdict = True
        self.backend.mark_succeeded()

    def failed(self, refused: bool = False) -> None:
        self._verdict = True
        self.backend.mark_failed(refused)

    def close(self) -> None:
        if not self._open:
            return
        self._open = False
        self.backend.in_flight -= 1
        if not self._verdict:
            self.backend.breaker.release()
        if self.response is not None:
            self.response.close()


class BackendAdapter:
    """One upstream server serving one model."""

    type_name = "base"
    # Endpoint name -> path under ``url``, for the endpoints this type serves; the gateway
    # refuses a model that declares an endpoint capability its backends' types lack.
    paths: dict = {}
    # Sends running usage on every stream event when asked (stream_options.
    # continuous_usage_stats), so a stream cut short can still be metered exactly.
    supports_continuous_usage = False

    def __init__(self, config, model_id: str, resilience=None):
        self.config = config
        self.url = config.url.rstrip("/")
        self.upstream_model = config.model or model_id
        self.role = config.role
        self.weight = config.weight
        self.name = f"{config.type}:{self.url}"
        self.timeout = (config.connect_timeout_s, config.read_timeout_s)
        self.total_timeout_s = config.total_timeout_s
        self.max_response_bytes = config.max_response_bytes
        self.max_event_bytes = config.max_event_bytes
        self.session = pooled_session(config.pool_size)  # control calls only
        self._transport = None  # the hot path's; built on first use (auth_headers)
        resilience = resilience or ResilienceConfig()
        self.probe_ok = None  # unknown until the first probe, which decides either way
        self._drained = False
        # Moves when the runtime's prefix cache is known to be gone (it came back after
        # failing, was drained or flushed): what routing remembers of it is stale.
        self.cache_epoch = 0
        self.breaker = CircuitBreaker(resilience.breaker_failures, resilience.breaker_open_s)
        self.in_flight = 0
        self.last_failure = 0.0
        self.last_success = 0.0  # monotonic time of the last answered request
        self.failed_probes = 0
        self.passed_probes = 0
        # The runtime's own load as it last reported it (SGLang /v1/loads), or None:
        # {"running": int, "waiting": int, "ours": this worker's in-flight count when
        # polled, "at": monotonic seconds}
        self.reported_load = None

    # -- what a backend type defines ------------------------------------------------------

    def endpoint_path(self, endpoint: str) -> str:
        """The path of an endpoint ("chat", "completions", "embeddings", ...) under ``url``:
        by default the type's ``paths[endpoint]``."""
        return self.paths[endpoint]

    def health_url(self) -> str:
        raise NotImplementedError

    def auth_headers(self) -> dict:
        return {}

    def discover(self) -> dict:
        """Facts the backend reports about itself, e.g. {"context_length": 131072}."""
        return {}

    def poll_load(self) -> dict | None:
        """The runtime's own load, {"running": n, "waiting": n}, if it reports one
        (SGLang's adds "capacity_tokens", its KV cache's size, and "slots", its running
        requests' cap; either may be None)."""
        return None

    def flush_cache(self) -> bool | None:
        """Ask the runtime to drop its prefix cache: True if it did, False if it refused,
        None when this backend type has none to flush."""
        return None

    @property
    def load(self) -> float:
        """Requests on this backend: this worker's own in-flight count (exact, current)
        plus what the runtime reported beyond what this worker had in flight when it was
        polled (the other workers' and replicas' share, which only the runtime knows)."""
        reported = self.reported_load
        if reported is None:
            return float(self.in_flight)
        others = reported["running"] + reported["waiting"] - reported["ours"]
        return float(self.in_flight + max(others, 0))

    # -- shared behaviour -----------------------------------------------------------------

    def deadline_fault(self) -> UpstreamFault:
        """What a request gets that this backend has not answered within total_timeout_s."""
        return UpstreamFault(upstream_timeout(self.total_timeout_s))

    def lease(self) -> BackendLease | None:
        """Take this backend for one request, or None if its circuit says no."""
        return BackendLease(self) if self.breaker.begin() else None

    @property
    def transport(self) -> GeventHttpTransport:
        """The pooled upstream connections generation requests go out on."""
        transport = self._transport
        if transport is None:
            connect, read = self.timeout
            transport = self._transport = GeventHttpTransport(
                self.url, self.config.pool_size, connect, read, headers=self.auth_headers())
        return transport

    def post(self, endpoint: str, body: dict, headers: dict) -> UpstreamResponse:
        """Send one generation request; the answer once its head has come, its body unread.

        Raises TransportError when it cannot be sent or its head not read, and UpstreamFault
        (the backend's fault: counted against it, failover allowed) for an error answer
        whose status blames the request but whose body is empty or not JSON, since the
        gateway, not the client, wrote that request. An error answer's start (at most
        ERROR_BODY_BYTES) is read ahead: ``response.preload(ERROR_BODY_BYTES)`` gives it.
        """
        rid = headers.get("X-Request-ID")
        if rid is not None:
            headers = {**headers, "X-Request-ID": upstream_request_id(rid)}
        response = self.transport.post(self.endpoint_path(endpoint),
                                       _COMPACT(body).encode(), headers, stream=True)
        status = response.status_code
        if 400 <= status < 500 and status not in _STATUSES_WITHOUT_BODY:
            try:
                content = response.preload(ERROR_BODY_BYTES)
            except TransportError:
                response.close()
                raise
            if not json_error_body(content):
                response.close()
                log.warning("backend %s answered %d with %s: %r", self.name, status,
                            "an empty body" if not content.strip() else "a non-JSON body",
                            content[:200])
                raise UpstreamFault(upstream_unreadable_error(status, content))
        return response

    def probe(self, timeout: float = 2.0) -> bool:
        """Active health check: True if the health URL answers 200."""
        try:
            resp = self.session.get(self.health_url(), headers=self.auth_headers(),
                                    timeout=timeout)
            resp.close()
            return resp.status_code == 200
        except requests.RequestException:
            return False

    @property
    def drained(self) -> bool:
        """Taken out of rotation by an operator (a drain also ends its cache_epoch)."""
        return self._drained

    @drained.setter
    def drained(self, value: bool) -> None:
        if value and not self._drained:
            self.cache_epoch += 1
        self._drained = value

    @property
    def healthy(self) -> bool:
        """In rotation: probes pass, not drained, circuit not open (half-open counts)."""
        return self.probe_ok is not False and not self.drained and self.breaker.usable()

    def mark_failed(self, refused: bool = False) -> None:
        """Passive health: a failed request; a refused connection opens the circuit at once."""
        self.last_failure = time.monotonic()
        if refused:
            self.breaker.trip(refused=True)
        else:
            self.breaker.failure()

    def mark_succeeded(self) -> None:
        self.last_success = time.monotonic()
        self.breaker.success()

    def state(self) -> dict:
        """What an operator sees in the admin API."""
        return {"name": self.name, "url": self.url, "type": self.type_name,
                "role": self.role, "weight": self.weight, "healthy": self.healthy,
                "probe_ok": self.probe_ok, "drained": self.drained,
                "circuit": self.breaker.state, "consecutive_failures": self.breaker.failures,
                "in_flight": self.in_flight, "reported_load": self.reported_load}

    def translate_error(self, status: int, content: bytes) -> GatewayError:
        """An upstream error in OpenAI's shape, from SGLang's flat or OpenAI's nested form."""
        try:
            body = json.loads(content)
        except (ValueError, RecursionError):
            body = None
        if not isinstance(body, dict):  # nothing the client could act on: the backend's fault
            return upstream_unreadable_error(status, content)
        error = body.get("error")
        if isinstance(error, dict):
            body = error
        code, kind, param = body.get("code"), body.get("type"), body.get("param")
        if kind not in OPENAI_ERROR_TYPES:
            kind = "invalid_request_error" if status < 500 else "server_error"
        message = str(body.get("message") or f"HTTP {status}")
        if not isinstance(code, str):
            code = None  # SGLang puts the HTTP status there
        if status == 400 and code is None and _CONTEXT_ERROR.search(message):
            code = "context_length_exceeded"  # SGLang and vLLM say it in words only
        return GatewayError(status, message[:1000], kind,
                            code[:100] if code else None,
                            param[:100] if isinstance(param, str) else None)
