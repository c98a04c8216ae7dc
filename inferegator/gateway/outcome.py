"""What happened to one request: handed to ``inferegator_request_finished`` when it ends."""

from dataclasses import dataclass, field

# How a request ended (RequestOutcome.status).
COMPLETED = "completed"  # the whole answer reached the client
CLIENT_DISCONNECTED = "client_disconnected"  # the client left before the end
UPSTREAM_FAILED = "upstream_failed"  # a backend failed after the answer had started
REJECTED = "rejected"  # refused before any backend was called (4xx)
FAILED = "failed"  # no backend could answer (5xx)


@dataclass
class RequestOutcome:
    request_id: str
    endpoint: str
    model_id: str
    stream: bool
    started: float  # wall clock, seconds
    principal: object = None
    backend: str | None = None
    status: str = COMPLETED
    http_status: int = 200
    usage: dict | None = None  # the backend's usage object, when it sent one
    prompt_tokens: int = 0  # from usage (0 when none came)
    completion_tokens: int = 0
    cached_tokens: int = 0
    cost_usd: float = 0.0  # at the model's prices
    latency_s: float = 0.0
    ttft_s: float | None = None
    error: str | None = None
    attempts: list = field(default_factory=list)  # backends tried, in order
    request: object = None  # the GatewayRequest (body, principal, plugin_data)
