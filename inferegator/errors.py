"""Every error the gateway answers, in OpenAI's shape: one mapping from cause to status/type/code.

``{"error": {"message", "type", "param", "code"}}`` with the HTTP status that the
openai SDK maps to its matching exception (400 BadRequestError, 401
AuthenticationError, 404 NotFoundError, 429 RateLimitError, 5xx InternalServerError).
"""

import json

ECHO_CHARS = 80  # the most of a client's own input an error message repeats


def shown(value, limit: int = ECHO_CHARS) -> str:
    """A client-supplied value for an error message: repr'd, cut to ``limit`` characters."""
    if isinstance(value, int) and value.bit_length() > 64:
        return "a number too large to show"  # repr of a huge int is slow, or refused
    text = value if isinstance(value, str) else repr(value)
    if len(text) > limit:
        text = text[:limit] + "..."
    return repr(text) if isinstance(value, str) else text


class GatewayBuildError(ValueError):
    """The configuration asks for something no plugin provides (a backend type, a routing
    policy, a policy option): found when the gateway is built, before it serves."""


class GatewayError(Exception):
    """An error answered to the client in OpenAI's shape."""

    def __init__(self, status: int, message: str, type: str, code: str | None = None,
                 param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}

    def sse_event(self) -> bytes:
        """The error as one SSE event, for failures after a stream has started."""
        return b"data: " + json.dumps(self.body()).encode() + b"\n\n"

    def response_event(self, sequence_number: int) -> bytes:
        """The error as a Responses stream's ``error`` event."""
        return b"event: error\ndata: " + json.dumps({
            "type": "error", "code": self.code, "message": self.message, "param": self.param,
            "sequence_number": sequence_number}).encode() + b"\n\n"


class UpstreamFault(Exception):
    """A backend broke the protocol or a bound (malformed event, too large, too slow): its
    fault, counted against it; ``error`` is what the client gets if no failover helps."""

    def __init__(self, error: GatewayError):
        super().__init__(error.message)
        self.error = error


def invalid_request(message: str, param: str | None = None,
                    code: str | None = None) -> GatewayError:
    return GatewayError(400, message, "invalid_request_error", code, param)


def invalid_api_key(message: str = "Incorrect API key provided.") -> GatewayError:
    return GatewayError(401, message, "invalid_request_error", "invalid_api_key",
                        headers={"WWW-Authenticate": 'Bearer realm="inferegator"'})


def model_not_found(model: str) -> GatewayError:
    return GatewayError(404, f"The model {shown(model)} does not exist or you do not have "
                             "access to it.", "invalid_request_error", "model_not_found", "model")


def unsupported_endpoint(model: str, path: str) -> GatewayError:
    """The model exists but does not serve this route (OpenAI answers 404 too)."""
    return GatewayError(404, f"The model {shown(model)} does not support {path}; see its "
                             "capabilities in /v1/models.", "invalid_request_error",
                        "unsupported_endpoint", "model")


def unsupported_parameter(model: str, param: str, what: str) -> GatewayError:
    """The request asks for a feature (a capability) the model does not declare."""
    return GatewayError(400, f"The model {shown(model)} does not support {what}: "
                             f"'{param}' cannot be used with it.", "invalid_request_error",
                        "unsupported_parameter", param)


def unknown_url(path: str) -> GatewayError:
    return GatewayError(404, f"Unknown request URL: {shown(path, 200)}. Please check the URL "
                             "for typos.", "invalid_request_error", "unknown_url")


def method_not_allowed(method: str, path: str) -> GatewayError:
    return GatewayError(405, f"Method {shown(method, 20)} is not allowed on {shown(path, 200)}.",
                        "invalid_request_error", "method_not_allowed")


def body_too_large(limit: int) -> GatewayError:
    return GatewayError(413, f"The request body exceeds the limit of {limit} bytes.",
                        "invalid_request_error", "request_too_large")


def model_not_allowed(model_id: str) -> GatewayError:
    return GatewayError(403, f"This API key may not use the model '{model_id}'.",
                        "invalid_request_error", "model_not_allowed", "model")


def permission_denied(message: str = "This endpoint requires an admin API key.") -> GatewayError:
    return GatewayError(403, message, "invalid_request_error", "permission_denied")


def not_found(kind: str, ident: str, param: str | None = None) -> GatewayError:
    return GatewayError(404, f"No {kind} with id {shown(ident)}.", "invalid_request_error",
                        "not_found", param)


def email_taken(email: str) -> GatewayError:
    return GatewayError(409, f"A user with the email {shown(email)} exists already.",
                        "invalid_request_error", "email_taken", "email")


def model_unavailable(model: str) -> GatewayError:
    return GatewayError(503, f"The model {shown(model)} is temporarily unavailable: no healthy "
                             "backend. Please retry shortly.", "server_error",
                        "model_unavailable")


def upstream_failed(detail: str = "") -> GatewayError:
    message = "The model backend failed while answering."
    return GatewayError(502, f"{message} {detail}".strip(), "server_error", "upstream_error")


def upstream_too_large(what: str, limit: int) -> GatewayError:
    return GatewayError(502, f"The model backend sent {what} larger than the gateway's limit of "
                             f"{limit} bytes.", "server_error", "upstream_too_large")


def upstream_timeout(seconds: float) -> GatewayError:
    return GatewayError(504, f"The model backend did not finish answering within {seconds:g} s.",
                        "server_error", "upstream_timeout")


def internal_error() -> GatewayError:
    return GatewayError(500, "The server had an error while processing your request.",
                        "server_error", "internal_error")


def upstream_unreadable_error(status: int, content: bytes) -> GatewayError:
    """A backend's error answer with an empty or non-JSON body: the gateway sent the request,
    so it is the backend's fault (502), never blamed on the client."""
    what = "an empty body" if not content.strip() else "a body that is not JSON"
    return GatewayError(502, f"The model backend answered HTTP {status} with {what}; the "
                             "gateway cannot tell what it objected to.", "server_error",
                        "upstream_error")


def context_length_exceeded(context: int, asked: int, param: str) -> GatewayError:
    """The prompt and the completion asked for cannot fit the model's context window."""
    return GatewayError(400, f"This model's maximum context length is {context} tokens. "
                             f"However, you requested about {asked} tokens (the prompt and "
                             f"max_tokens). Please reduce the length of the messages or "
                             f"completion.", "invalid_request_error", "context_length_exceeded",
                        param)
