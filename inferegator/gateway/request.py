"""Parse and validate a client's generation request once; everything else passes through.

The gateway checks only what it acts on (model, messages/prompt, stream,
stream_options, max_tokens, n); unknown fields such as SGLang's top_k, regex,
json_schema or separate_reasoning reach the backend untouched.
"""

import json
import uuid
from dataclasses import dataclass, field

from ..errors import invalid_request

CHAT = "chat"
COMPLETIONS = "completions"


class ClientRequest:
    """Any authenticated route's view of the HTTP request (what auth hooks read)."""

    def __init__(self, http):
        self.http = http  # the falcon.Request: headers, WSGI environ
        self.principal = None
        self.response_headers = {}

    def header(self, name: str, default=None):
        return self.http.get_header(name, default=default)


@dataclass
class GatewayRequest(ClientRequest):
    """A validated generation request on its way through the pipeline."""

    endpoint: str  # CHAT or COMPLETIONS
    body: dict
    http: object  # the falcon.Request: headers (http.get_header), WSGI environ
    request_id: str
    model_id: str
    stream: bool
    include_usage: bool  # the client asked for the usage chunk
    max_tokens: int | None
    n: int
    principal: object = None
    response_headers: dict = field(default_factory=dict)  # set by hooks (e.g. rate limits)
    plugin_data: dict = field(default_factory=dict)  # per-request state of plugins, by name


def _int(body, name, minimum, maximum=None):
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise invalid_request(f"Invalid type for '{name}': expected an integer, got "
                              f"{type(value).__name__}.", name, "invalid_type")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum else f"at least {minimum}"
        raise invalid_request(f"Invalid value for '{name}': must be {bound}, got {value}.",
                              name, "invalid_value")
    return value


def _check_messages(messages):
    if not isinstance(messages, list):
        raise invalid_request("Invalid type for 'messages': expected an array.", "messages",
                              "invalid_type")
    if not messages:
        raise invalid_request("'messages' must contain at least one message.", "messages",
                              "invalid_value")
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise invalid_request(f"Invalid type for '{param}': expected an object.", param,
                                  "invalid_type")
        if not isinstance(message.get("role"), str):
            raise invalid_request(f"Missing required parameter: '{param}.role'.",
                                  f"{param}.role", "missing_required_parameter")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise invalid_request(f"Invalid type for '{param}.content': expected a string or "
                                  "an array of content parts.", f"{param}.content",
                                  "invalid_type")


def _check_prompt(prompt):
    if prompt is None:
        raise invalid_request("Missing required parameter: 'prompt'.", "prompt",
                              "missing_required_parameter")
    if isinstance(prompt, str):
        return
    if isinstance(prompt, list) and prompt and (
            all(isinstance(p, str) for p in prompt)
            or all(isinstance(p, int) and not isinstance(p, bool) for p in prompt)):
        return
    raise invalid_request("Invalid type for 'prompt': expected a string, an array of strings "
                          "or an array of token ids.", "prompt", "invalid_type")


def json_object(raw: bytes) -> dict:
    """A request body as a JSON object; 400 invalid_json for anything else."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise invalid_request("We could not parse the JSON body of your request. The body "
                              "must be valid JSON.", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise invalid_request("The request body must be a JSON object.", None, "invalid_json")
    return body


def parse_generation(endpoint: str, raw: bytes, http) -> GatewayRequest:
    """Validate a /v1/chat/completions or /v1/completions body; 400 naming the field if bad."""
    body = json_object(raw)
    model = body.get("model")
    if model is None:
        raise invalid_request("Missing required parameter: 'model'.", "model",
                              "missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise invalid_request("Invalid type for 'model': expected a non-empty string.",
                              "model", "invalid_type")
    if endpoint == CHAT:
        if "messages" not in body:
            raise invalid_request("Missing required parameter: 'messages'.", "messages",
                                  "missing_required_parameter")
        _check_messages(body["messages"])
    else:
        _check_prompt(body.get("prompt"))
    stream = body.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise invalid_request("Invalid type for 'stream': expected a boolean.", "stream",
                              "invalid_type")
    options = body.get("stream_options")
    if options is not None:
        if not stream:
            raise invalid_request("The 'stream_options' parameter is only allowed when "
                                  "'stream' is enabled.", "stream_options", "invalid_value")
        if not isinstance(options, dict):
            raise invalid_request("Invalid type for 'stream_options': expected an object.",
                                  "stream_options", "invalid_type")
    max_tokens = _int(body, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = _int(body, "max_tokens", 1)
    n = _int(body, "n", 1, 128) or 1
    return GatewayRequest(
        endpoint=endpoint, body=body, http=http,
        request_id=http.get_header("X-Request-ID") or f"req-{uuid.uuid4().hex}",
        model_id=model, stream=stream,
        include_usage=bool(options and options.get("include_usage")),
        max_tokens=max_tokens, n=n)
