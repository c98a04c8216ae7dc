"""What a request asks of a model beyond its endpoint, and the sampling fields checked
before it goes upstream.

A model declares its capabilities in the YAML (``config.schema.CAPABILITIES``); a request
that needs one the model lacks is refused (``errors.unsupported_parameter``) naming the
field, instead of reaching a runtime that would ignore it or fail. The fields checked here
are the ones OpenAI's API bounds (temperature, top_p, penalties, logprobs, stop, tools,
tool_choice, response_format); every other field still passes through untouched.
"""

import re

from ..errors import invalid_request, shown
from .request import CHAT, COMPLETIONS, GENERATE, RESPONSES, int_field

MAX_STOPS = 64  # stop sequences per request (OpenAI allows 4; SGLang and vLLM any number)
MAX_TOOLS = 512
_FUNCTION_NAME = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
_RESPONSE_FORMATS = {"text": None, "json_object": "json_mode",
                     "json_schema": "structured_outputs"}
# SGLang's own constrained-decoding fields, each needing its capability.
_CONSTRAINTS = (("json_schema", "structured_outputs"), ("regex", "regex"), ("ebnf", "ebnf"))


# The request fields each capability makes usable, published per model in /v1/models
# (OpenRouter's ``supported_parameters``).
_GENERATION_PARAMETERS = ("max_tokens", "temperature", "top_p", "stop", "seed",
                          "frequency_penalty", "presence_penalty")
_PARAMETERS = {
    "tools": ("tools", "tool_choice", "parallel_tool_calls"),
    "json_mode": ("response_format",),
    "structured_outputs": ("response_format", "structured_outputs"),
    "regex": ("regex",), "ebnf": ("ebnf",),
    "logprobs": ("logprobs", "top_logprobs"),
    "reasoning": ("reasoning", "include_reasoning", "reasoning_effort"),
    "embeddings": ("encoding_format", "dimensions"),
}


def supported_parameters(capabilities) -> list[str]:
    """The request fields a model with these capabilities accepts, in a stable order."""
    names = list(_GENERATION_PARAMETERS) if {"chat", "completions", "responses"} & set(
        capabilities) else []
    for capability in capabilities:
        for name in _PARAMETERS.get(capability, ()):
            if name not in names:
                names.append(name)
    return names


def _number(body, name, low, high):
    value = body.get(name)
    if value is None:
        return None
    if type(value) not in (int, float):
        raise invalid_request(f"Invalid type for '{name}': expected a number, got "
                              f"{type(value).__name__}.", name, "invalid_type")
    if not low <= value <= high:
        raise invalid_request(f"Invalid value for '{name}': {shown(value)}; must be between "
                              f"{low:g} and {high:g}.", name, "invalid_value")
    return value


def _check_stop(stop) -> None:
    if stop is None or isinstance(stop, str):
        return
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise invalid_request("Invalid type for 'stop': expected a string or an array of "
                              "strings.", "stop", "invalid_type")
    if len(stop) > MAX_STOPS:
        raise invalid_request(f"Invalid value for 'stop': at most {MAX_STOPS} stop sequences.",
                              "stop", "invalid_value")


def _tool_names(tools, nested: bool) -> list[str]:
    """Validate ``tools``: chat nests each function (``{"type": "function", "function":
    {...}}``), Responses does not; returns the function names."""
    if not isinstance(tools, list):
        raise invalid_request("Invalid type for 'tools': expected an array.", "tools",
                              "invalid_type")
    if len(tools) > MAX_TOOLS:
        raise invalid_request(f"Invalid value for 'tools': at most {MAX_TOOLS} tools.", "tools",
                              "invalid_value")
    names = []
    for i, tool in enumerate(tools):
        param = f"tools[{i}]"
        if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
            raise invalid_request(f"Invalid value for '{param}': expected an object with a "
                                  "'type'.", param, "invalid_value")
        if tool["type"] != "function":
            continue  # built-in tools (Responses): the backend says whether it has them
        function = tool.get("function") if nested else tool
        if not isinstance(function, dict):
            raise invalid_request(f"Missing required parameter: '{param}.function'.",
                                  f"{param}.function", "missing_required_parameter")
        name = function.get("name")
        where = f"{param}.function.name" if nested else f"{param}.name"
        if not isinstance(name, str) or not _FUNCTION_NAME.fullmatch(name):
            raise invalid_request(f"Invalid value for '{where}': a function name is 1-64 "
                                  "letters, digits, '_', '-', '.' or ':'.", where,
                                  "invalid_value")
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            where = where.rsplit(".", 1)[0] + ".parameters"
            raise invalid_request(f"Invalid type for '{where}': expected a JSON Schema "
                                  "object.", where, "invalid_type")
        names.append(name)
    return names


def _check_tool_choice(body, names, nested: bool) -> None:
    choice = body.get("tool_choice")
    if choice is None:
        return
    if body.get("tools") is None:
        raise invalid_request("Invalid value for 'tool_choice': 'tool_choice' is only allowed "
                              "when 'tools' are specified.", "tool_choice", "invalid_value")
    if choice in ("none", "auto", "required"):
        return
    function = choice.get("function") if nested and isinstance(choice, dict) else choice
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(choice, dict) or choice.get("type") != "function" or \
            not isinstance(name, str):
        raise invalid_request("Invalid value for 'tool_choice': expected 'none', 'auto', "
                              "'required' or a function to call.", "tool_choice",
                              "invalid_value")
    if name not in names:
        raise invalid_request(f"Invalid value for 'tool_choice': no tool is named "
                              f"{shown(name)}.", "tool_choice", "invalid_value")


def _response_format(value, param: str) -> str | None:
    """The capability a response_format (or Responses' text.format) needs."""
    if value is None:
        return None
    kind = value.get("type") if isinstance(value, dict) else None
    if kind not in _RESPONSE_FORMATS:
        raise invalid_request(f"Invalid value for '{param}': the type must be 'text', "
                              "'json_object' or 'json_schema'.", param, "invalid_value")
    if kind == "json_schema":
        schema = value.get("json_schema", value)  # Responses puts the schema inline
        if not isinstance(schema, dict) or not isinstance(schema.get("schema", {}), dict):
            raise invalid_request(f"Invalid value for '{param}': 'json_schema' needs a "
                                  "'schema' object.", param, "invalid_value")
    return _RESPONSE_FORMATS[kind]


def _image_part(items, field: str, image_type: str) -> str | None:
    """The param of the first image content part of ``body[field]``, if any."""
    for i, item in enumerate(items if isinstance(items, list) else ()):
        content = item.get("content") if isinstance(item, dict) else None
        for j, part in enumerate(content if isinstance(content, list) else ()):
            if isinstance(part, dict) and part.get("type") == image_type:
                return f"{field}[{i}].content[{j}]"
    return None


def check_features(endpoint: str, body: dict) -> list[tuple[str, str, str]]:
    """Validate the sampling and feature fields of a generation body (400 naming the field)
    and return what it needs: (capability, param, what) for each capability."""
    needs = []
    if body.get("stream") is True and endpoint in (CHAT, COMPLETIONS, RESPONSES, GENERATE):
        needs.append(("streaming", "stream", "streaming"))
    if endpoint not in (CHAT, COMPLETIONS, RESPONSES):
        return needs
    _number(body, "temperature", 0, 2)
    _number(body, "top_p", 0, 1)
    _number(body, "frequency_penalty", -2, 2)
    _number(body, "presence_penalty", -2, 2)
    int_field(body, "seed", -2 ** 63, 2 ** 64 - 1)
    nested = endpoint != RESPONSES
    if body.get("tools") is not None or body.get("tool_choice") is not None:
        names = [] if body.get("tools") is None else _tool_names(body["tools"], nested)
        _check_tool_choice(body, names, nested)
        if body.get("tools"):
            needs.append(("tools", "tools", "tool calling"))
    if endpoint == RESPONSES:
        text = body.get("text")
        fmt = text.get("format") if isinstance(text, dict) else None
        capability = _response_format(fmt, "text.format")
        if capability:
            needs.append((capability, "text.format", capability.replace("_", " ")))
        if body.get("reasoning") is not None:
            needs.append(("reasoning", "reasoning", "reasoning"))
        image = _image_part(body.get("input"), "input", "input_image")
        if image:
            needs.append(("vision", image, "image inputs"))
        return needs
    _check_stop(body.get("stop"))
    capability = _response_format(body.get("response_format"), "response_format")
    if capability:
        needs.append((capability, "response_format", capability.replace("_", " ")))
    for name, capability in _CONSTRAINTS:
        if body.get(name) is not None:
            needs.append((capability, name, f"{capability.replace('_', ' ')} constraints"))
    if endpoint == CHAT:
        logprobs = body.get("logprobs")
        if logprobs is not None and not isinstance(logprobs, bool):
            raise invalid_request("Invalid type for 'logprobs': expected a boolean.",
                                  "logprobs", "invalid_type")
        top = int_field(body, "top_logprobs", 0, 20)
        if top is not None and not logprobs:
            raise invalid_request("Invalid value for 'top_logprobs': 'logprobs' must be true "
                                  "when 'top_logprobs' is set.", "top_logprobs",
                                  "invalid_value")
        if logprobs:
            needs.append(("logprobs", "logprobs", "logprobs"))
        if body.get("reasoning_effort") is not None:
            needs.append(("reasoning", "reasoning_effort", "reasoning"))
        kwargs = body.get("chat_template_kwargs")
        if isinstance(kwargs, dict) and kwargs.get("enable_thinking"):
            needs.append(("reasoning", "chat_template_kwargs.enable_thinking", "reasoning"))
        image = _image_part(body.get("messages"), "messages", "image_url")
        if image:
            needs.append(("vision", image, "image inputs"))
    elif int_field(body, "logprobs", 0, 20):
        needs.append(("logprobs", "logprobs", "logprobs"))
    return needs
