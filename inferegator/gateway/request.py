"""Parse and validate a client's request once; everything else passes through.

The gateway checks only what it acts on (model, the prompt's field, stream,
stream_options, the output bound, n, an embedding's encoding_format and dimensions) and
bounds it; unknown fields such as SGLang's top_k, regex, json_schema or
separate_reasoning reach the backend untouched. The prompt's token estimate is taken
here, from exactly the field the endpoint uses.
"""

import re
import time
import uuid
from dataclasses import dataclass, field

from ..errors import invalid_request, shown

CHAT = "chat"
COMPLETIONS = "completions"
EMBEDDINGS = "embeddings"
RESPONSES = "responses"
GENERATE = "generate"  # SGLang's native /generate
RERANK = "rerank"  # SGLang's /v1/rerank (cross-encoder rerankers)
SCORE = "score"  # SGLang's /v1/score (label-token probabilities)
MAX_MODEL_ID = 256  # characters; longer ids are refused, never stored or echoed
MAX_TOKENS = 2 ** 31 - 1  # what the limiter's stores and the ledger's INTEGER columns hold
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class ClientRequest:
    """Any authenticated route's view of the HTTP request (what auth hooks read)."""

    def __init__(self, http):
        self.http = http  # the falcon.Request: headers, WSGI environ
        self.request_id = request_id(http)
        self.principal = None
        self.response_headers = {}

    def header(self, name: str, default=None):
        return self.http.get_header(name, default=default)


def request_id(http) -> str:
    """The client's X-Request-ID when it is a short token, else a new id."""
    given = http.get_header("X-Request-ID")
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given
    return f"req-{uuid.uuid4().hex}"


@dataclass
class GatewayRequest(ClientRequest):
    """One generation request from arrival to finish: created before authentication,
    its body fields filled in by ``parse_generation``."""

    endpoint: str  # CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES or a native route (GENERATE)
    http: object  # the falcon.Request: headers (http.get_header), WSGI environ
    request_id: str
    started: float = field(default_factory=time.perf_counter)
    body: dict = field(default_factory=dict)
    model_id: str | None = None  # None until the body is validated
    stream: bool = False
    include_usage: bool = False  # the client asked for the usage chunk
    max_tokens: int | None = None  # the client's bound on the output
    generates: bool = True  # False for embeddings: no output tokens to reserve
    n: int = 1  # completions generated: the client's n, times the prompts of a batch
    prompt_estimate: int = 0  # prompt tokens, estimated from the endpoint's own field
    longest_prompt: int | None = None  # a batch's largest prompt, which must fit the context
    needs: list = field(default_factory=list)  # (capability, param, what) it asks of a model
    principal: object = None
    response_headers: dict = field(default_factory=dict)  # set by hooks (e.g. rate limits)
    plugin_data: dict = field(default_factory=dict)  # per-request state of plugins, by name


def int_field(body, name, minimum, maximum=MAX_TOKENS, within=""):
    """body[name] as an integer in [minimum, maximum], or None; ``within`` prefixes the
    param of an error (``sampling_params.``)."""
    value = body.get(name)
    if value is None:
        return None
    param = within + name
    if not isinstance(value, int) or isinstance(value, bool):
        raise invalid_request(f"Invalid type for '{param}': expected an integer, got "
                              f"{type(value).__name__}.", param, "invalid_type")
    if not minimum <= value <= maximum:
        raise invalid_request(f"Invalid value for '{param}': must be between {minimum} and "
                              f"{maximum}.", param, "invalid_value")
    return value


def _part_chars(part) -> int:
    text = part.get("text") if isinstance(part, dict) else None
    return len(text) if isinstance(text, str) else 0


def _check_messages(messages) -> int:
    """Validate chat messages; returns their estimated prompt tokens."""
    if not isinstance(messages, list):
        raise invalid_request("Invalid type for 'messages': expected an array.", "messages",
                              "invalid_type")
    if not messages:
        raise invalid_request("'messages' must contain at least one message.", "messages",
                              "invalid_value")
    chars = 0
    for i, message in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(message, dict):
            raise invalid_request(f"Invalid type for '{param}': expected an object.", param,
                                  "invalid_type")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise invalid_request(f"Missing required parameter: '{param}.role'.",
                                  f"{param}.role", "missing_required_parameter")
        if len(role) > 64:
            raise invalid_request(f"Invalid value for '{param}.role': too long.",
                                  f"{param}.role", "invalid_value")
        content = message.get("content")
        if isinstance(content, str):
            chars += len(content)
        elif isinstance(content, list):
            chars += sum(_part_chars(p) for p in content)
        elif content is not None:
            raise invalid_request(f"Invalid type for '{param}.content': expected a string or "
                                  "an array of content parts.", f"{param}.content",
                                  "invalid_type")
    # About 4 characters per token, plus each message's framing and the reply's priming.
    return chars // 4 + 4 * len(messages) + 3


def _token_ids(value) -> bool:
    return bool(value) and all(type(t) is int and 0 <= t <= MAX_TOKENS for t in value)


def _check_prompt(prompt, param: str = "prompt") -> int:
    """Validate a prompt (completions' ``prompt``, embeddings' ``input``) in any shape
    OpenAI's API allows; returns its estimated tokens: a string, strings, token ids, or
    lists of token ids."""
    if prompt is None:
        raise invalid_request(f"Missing required parameter: '{param}'.", param,
                              "missing_required_parameter")
    if isinstance(prompt, str):
        return len(prompt) // 4 + 1
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, str) for p in prompt):
            return sum(len(p) // 4 + 1 for p in prompt)
        if _token_ids(prompt):
            return len(prompt)
        if all(isinstance(p, list) and _token_ids(p) for p in prompt):
            return sum(len(p) for p in prompt)
    raise invalid_request(f"Invalid type for '{param}': expected a string, an array of "
                          "strings, an array of token ids or an array of token-id arrays.",
                          param, "invalid_type")


def prompt_count(prompt) -> int:
    """How many prompts a valid prompt holds: a batch is strings or lists of token ids."""
    if isinstance(prompt, list) and prompt and not isinstance(prompt[0], int):
        return len(prompt)
    return 1


def _item_chars(item, param: str) -> int:
    """Characters of text in one Responses input item (a message, a tool output ...)."""
    if not isinstance(item, dict):
        raise invalid_request(f"Invalid type for '{param}': expected an object.", param,
                              "invalid_type")
    content = item.get("content")
    if isinstance(content, str):
        chars = len(content)
    elif isinstance(content, list):
        chars = sum(_part_chars(p) for p in content)
    elif content is None:
        chars = 0
    else:
        raise invalid_request(f"Invalid type for '{param}.content': expected a string or an "
                              "array of content parts.", f"{param}.content", "invalid_type")
    for name in ("output", "arguments"):  # function_call_output, function_call
        value = item.get(name)
        if isinstance(value, str):
            chars += len(value)
    return chars


def _check_input_items(value) -> int:
    """Validate a Responses ``input`` (a string or an array of items); its estimated
    tokens."""
    if value is None:
        raise invalid_request("Missing required parameter: 'input'.", "input",
                              "missing_required_parameter")
    if isinstance(value, str):
        return len(value) // 4 + 3
    if not isinstance(value, list):
        raise invalid_request("Invalid type for 'input': expected a string or an array of "
                              "input items.", "input", "invalid_type")
    chars = sum(_item_chars(item, f"input[{i}]") for i, item in enumerate(value))
    return chars // 4 + 4 * len(value) + 3


def estimate_prompt_tokens(endpoint: str, body: dict) -> int:
    """A valid body's prompt tokens as the limiter reserves them: about 4 characters per
    token, plus framing."""
    return _check_messages(body["messages"]) if endpoint == CHAT else _check_prompt(
        body.get("prompt"))


def _check_model(body: dict) -> str:
    model = body.get("model")
    if model is None:
        raise invalid_request("Missing required parameter: 'model'.", "model",
                              "missing_required_parameter")
    if not isinstance(model, str) or not model:
        raise invalid_request("Invalid type for 'model': expected a non-empty string.",
                              "model", "invalid_type")
    if len(model) > MAX_MODEL_ID:
        raise invalid_request(f"Invalid value for 'model': longer than {MAX_MODEL_ID} "
                              "characters.", "model", "invalid_value")
    return model


def _check_stream(body: dict, chat_options: bool = True) -> tuple[bool, bool]:
    """(stream, include_usage): ``stream_options`` as chat and completions define it, or
    (Responses) any object, allowed only with ``stream``."""
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
    return stream, bool(chat_options and options and options.get("include_usage"))


def parse_generation(greq: GatewayRequest, body: dict) -> GatewayRequest:
    """Validate a /v1/chat/completions or /v1/completions body into greq; 400 naming the
    field if bad."""
    model = _check_model(body)
    if greq.endpoint == CHAT:
        if "messages" not in body:
            raise invalid_request("Missing required parameter: 'messages'.", "messages",
                                  "missing_required_parameter")
        estimate, prompts = _check_messages(body["messages"]), 1
    else:
        estimate = _check_prompt(body.get("prompt"))
        prompts = prompt_count(body["prompt"])
        if prompts > 1:
            greq.longest_prompt = max(_check_prompt(p) for p in body["prompt"])
    stream, include_usage = _check_stream(body)
    max_tokens = int_field(body, "max_completion_tokens", 1)
    if max_tokens is None:
        max_tokens = int_field(body, "max_tokens", 1)
    greq.n = (int_field(body, "n", 1, 128) or 1) * prompts
    greq.body, greq.model_id, greq.stream, greq.max_tokens = body, model, stream, max_tokens
    greq.include_usage = include_usage
    greq.prompt_estimate = estimate
    return greq


_ENCODING_FORMATS = ("float", "base64")


def parse_embeddings(greq: GatewayRequest, body: dict) -> GatewayRequest:
    """Validate a /v1/embeddings body into greq: ``input`` in any prompt shape,
    ``encoding_format`` and ``dimensions``; nothing is generated or streamed."""
    greq.model_id = _check_model(body)
    greq.prompt_estimate = _check_prompt(body.get("input"), "input")
    encoding = body.get("encoding_format")
    if encoding is not None and encoding not in _ENCODING_FORMATS:
        raise invalid_request(f"Invalid value for 'encoding_format': {shown(encoding)}; "
                              "expected 'float' or 'base64'.", "encoding_format",
                              "invalid_value")
    int_field(body, "dimensions", 1)
    greq.body, greq.generates = body, False
    return greq


def parse_responses(greq: GatewayRequest, body: dict) -> GatewayRequest:
    """Validate a /v1/responses body into greq: ``input`` (a string or input items),
    ``instructions``, ``max_output_tokens`` and ``stream``."""
    greq.model_id = _check_model(body)
    estimate = _check_input_items(body.get("input"))
    instructions = body.get("instructions")
    if instructions is not None:
        if not isinstance(instructions, str):
            raise invalid_request("Invalid type for 'instructions': expected a string.",
                                  "instructions", "invalid_type")
        estimate += len(instructions) // 4 + 4
    greq.stream, _ = _check_stream(body, chat_options=False)
    greq.max_tokens = int_field(body, "max_output_tokens", 1)
    greq.body, greq.prompt_estimate = body, estimate
    return greq


SGLANG_MAX_NEW_TOKENS = 128  # what SGLang generates when sampling_params sets no bound


def parse_generate(greq: GatewayRequest, body: dict) -> GatewayRequest:
    """Validate SGLang's native /generate body into greq: ``model`` (the gateway's public
    id; SGLang's /generate has no such field, so it is not sent upstream), ``text`` or
    ``input_ids`` (one prompt or a batch), ``sampling_params`` (``max_new_tokens``, ``n``)
    and ``stream``."""
    greq.model_id = _check_model(body)
    text, ids = body.get("text"), body.get("input_ids")
    if (text is None) == (ids is None):
        raise invalid_request("Exactly one of 'text' and 'input_ids' is required.", "text",
                              "missing_required_parameter")
    param, prompt = ("text", text) if text is not None else ("input_ids", ids)
    greq.prompt_estimate = _check_prompt(prompt, param)
    prompts = prompt_count(prompt)
    if prompts > 1:
        greq.longest_prompt = max(_check_prompt(p, param) for p in prompt)
    params = body.get("sampling_params")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise invalid_request("Invalid type for 'sampling_params': expected an object.",
                              "sampling_params", "invalid_type")
    max_new = int_field(params, "max_new_tokens", 0, within="sampling_params.")
    greq.max_tokens = SGLANG_MAX_NEW_TOKENS if max_new is None else max_new
    greq.n = (int_field(params, "n", 1, 128, within="sampling_params.") or 1) * prompts
    greq.stream, _ = _check_stream(body, chat_options=False)
    greq.body = body
    return greq


def _query_chars(query, param: str) -> int:
    """A rerank query or document: a string or a list of content parts; its characters."""
    if isinstance(query, str) and query.strip():
        return len(query)
    if isinstance(query, list) and query and all(isinstance(p, dict) for p in query):
        return sum(_part_chars(p) for p in query)
    raise invalid_request(f"Invalid value for '{param}': expected a non-empty string or an "
                          "array of content parts.", param, "invalid_value")


def parse_rerank(greq: GatewayRequest, body: dict) -> GatewayRequest:
    """Validate SGLang's /v1/rerank body into greq: ``model`` (the gateway's; not sent),
    ``query``, ``documents`` and ``top_n``; each (query, document) pair is one prompt."""
    greq.model_id = _check_model(body)
    query = _query_chars(body.get("query"), "query")
    documents = body.get("documents")
    if not isinstance(documents, list) or not documents:
        raise invalid_request("Invalid value for 'documents': expected a non-empty array.",
                              "documents", "invalid_value")
    chars = [_query_chars(d, f"documents[{i}]") for i, d in enumerate(documents)]
    int_field(body, "top_n", 1)
    greq.prompt_estimate = sum((query + c) // 4 + 2 for c in chars)
    greq.body, greq.generates = body, False
    return greq


def parse_score(greq: GatewayRequest, body: dict) -> GatewayRequest:
    """Validate SGLang's /v1/score body into greq: ``query`` and ``items`` (text or token
    ids) and ``label_token_ids``; each (query, item) pair is one prompt, nothing is
    generated."""
    greq.model_id = _check_model(body)
    query = _check_prompt(body.get("query"), "query")
    items = body.get("items")
    if isinstance(items, str):
        items = [items]
    if not isinstance(items, list) or not items:
        raise invalid_request("Invalid value for 'items': expected a string or a non-empty "
                              "array.", "items", "invalid_value")
    estimates = [_check_prompt(item, f"items[{i}]") for i, item in enumerate(items)]
    labels = body.get("label_token_ids")
    if not isinstance(labels, list) or not labels or not (
            _token_ids(labels) or all(isinstance(x, list) and _token_ids(x) for x in labels)):
        raise invalid_request("Invalid value for 'label_token_ids': expected an array of "
                              "token ids (or one per item).", "label_token_ids",
                              "invalid_value")
    greq.prompt_estimate = sum(query + e for e in estimates)
    greq.body, greq.generates = body, False
    return greq
