"""What happened to one request: handed to ``inferegator_request_finished`` when it ends."""

from dataclasses import dataclass, field
from typing import NamedTuple

# How a request ended (RequestOutcome.status).
COMPLETED = "completed"  # the whole answer reached the client
CLIENT_DISCONNECTED = "client_disconnected"  # the client left before the end
UPSTREAM_FAILED = "upstream_failed"  # a backend failed after the answer had started
REJECTED = "rejected"  # refused before any backend was called (4xx)
FAILED = "failed"  # no answer could be given (5xx)

_MAX_TOKENS = 2 ** 31 - 1


def _count(value) -> int | None:
    return value if type(value) is int and 0 <= value <= _MAX_TOKENS else None


class Usage(NamedTuple):
    """Tokens a request used, as the backend reported them."""

    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int = 0

    @classmethod
    def from_upstream(cls, usage) -> "Usage | None":
        """A backend's usage object in Chat's naming (prompt_tokens, completion_tokens),
        Responses' (input_tokens, output_tokens) or an embedding's (prompt_tokens equal to
        total_tokens, nothing generated); None if it is not one (a broken or hostile
        backend's text or negative counts are not billed as if they were tokens)."""
        if not isinstance(usage, dict):
            return None
        if "input_tokens" in usage:
            prompt, completion = _count(usage.get("input_tokens")), _count(
                usage.get("output_tokens"))
            details = usage.get("input_tokens_details")
        else:
            prompt, completion = _count(usage.get("prompt_tokens")), _count(
                usage.get("completion_tokens"))
            if completion is None and prompt is not None and "completion_tokens" not in usage \
                    and usage.get("total_tokens") == prompt:
                completion = 0  # an embedding: the prompt is all there is
            details = usage.get("prompt_tokens_details")
        if prompt is None or completion is None:
            return None
        cached = _count(details.get("cached_tokens")) if isinstance(details, dict) else None
        return cls(prompt, completion, min(cached or 0, prompt))


@dataclass
class RequestOutcome:
    """How one request ended; what it asked for and who asked are on ``request``."""

    request: object  # the GatewayRequest: request_id, endpoint, principal, body, plugin_data
    started: float  # wall clock, seconds
    backend: str | None = None
    status: str = COMPLETED
    http_status: int = 200
    usage: Usage | None = None  # what the backend reported; None when unknown
    cost_usd: float = 0.0  # at the model's prices
    latency_s: float = 0.0
    ttft_s: float | None = None
    error: str | None = None
    # The answered error's OpenAI fields: a rate limit's type is the limit that refused
    # (requests or tokens) with code rate_limit_exceeded; a budget's is insufficient_quota.
    error_type: str | None = None
    error_code: str | None = None
    error_param: str | None = None
    attempts: list = field(default_factory=list)  # backends tried, in order
    # One (started, ended, result) per attempt, perf_counter seconds; result: "answered",
    # "failed" (connection, timeout, 5xx) or "refused" (the backend's 4xx/429 verdict).
    attempt_times: list = field(default_factory=list)
    gaps_s: list | None = None  # a stream's seconds between the chunks sent to the client
    finished: bool = False  # inferegator_request_finished has run (exactly once)

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def endpoint(self) -> str:
        return self.request.endpoint

    @property
    def model_id(self) -> str | None:
        """None when the body was refused before it named a valid model."""
        return self.request.model_id

    @property
    def stream(self) -> bool:
        return self.request.stream

    @property
    def principal(self):
        """None when authentication failed (nobody to bill)."""
        return self.request.principal

    @property
    def prompt_tokens(self) -> int:
        return self.usage.prompt_tokens if self.usage else 0

    @property
    def completion_tokens(self) -> int:
        return self.usage.completion_tokens if self.usage else 0

    @property
    def cached_tokens(self) -> int:
        return self.usage.cached_tokens if self.usage else 0
