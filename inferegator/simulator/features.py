"""The request fields beyond plain generation: tools, structured outputs, logprobs, reasoning.

``chat_features`` and ``completion_features`` validate them in SGLang 0.5.23's order and
wording (``ChatCompletionRequest`` and ``serving_chat._validate_request``,
``to_sampling_params``, the grammar backend's compile errors) and decide, per request, what
the simulated model writes (an ``outputs.OutputPlan``) and how its output is turned into
the answer (a ``Features``).

Tool calls in ``tool_choice: "auto"``: the model calls tools when a tool-call parser is
configured, tools are given, no ``response_format``/``regex``/``ebnf`` constrains the output,
and the conversation's last message is the user's (after a ``tool`` result it answers in
text). It then calls the first three tools in order, one call each, with
``parallel_tool_calls`` (default true), else the first tool only. ``required`` calls the same
tools whatever the last message is; a named function is called once.
"""

import copy
import json
import random
from dataclasses import dataclass

from . import ebnf_gen, reasoning, regex_gen, schema_gen
from .options import Features
from .outputs import OutputPlan
from .protocol import SGLangError
from .tool_parsers import PARSERS as TOOL_PARSERS
from .tool_parsers import render_calls

PARALLEL_CALLS = 3  # tools called at once in auto/required mode with parallel_tool_calls
COMBINED_CONSTRAINTS = ("tool_choice 'required' or a named tool cannot be combined with "
                        "response_format, regex, or ebnf: the tool-call constraint and the "
                        "output constraint cannot both be honored.")


@dataclass
class ChatSetup:
    """What the chat template needs: tools shown to the model, how past calls are written,
    and what follows the assistant's turn marker."""

    tools: list | None = None
    tool_format: str = "qwen25"
    prompt_suffix: str = ""


def _bad(message: str, param: str | None = None):
    return SGLangError(400, message, param=param)


def _optional(body: dict, name: str, kinds, label: str):
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in
                                        (kinds if isinstance(kinds, tuple) else (kinds,))):
        raise _bad(f"{name} must be {label}", name)
    return value


# -- tools ------------------------------------------------------------------------------


def parse_tools(body: dict) -> list[dict] | None:
    """The request's tools (copies), each {"type", "function": {"name", "parameters", ...}}."""
    tools = body.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list):
        raise _bad("tools must be a list of tools", "tools")
    parsed = []
    for i, tool in enumerate(tools):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict):
            raise _bad(f"Field required: tools[{i}].function", "tools")
        if not isinstance(function.get("name"), str):
            raise _bad(f"tools[{i}].function.name must be str", "tools")
        if not isinstance(tool.get("type", "function"), str):
            raise _bad(f"tools[{i}].type must be str", "tools")
        if function.get("description") is not None and not isinstance(
                function["description"], str):
            raise _bad(f"tools[{i}].function.description must be str", "tools")
        parsed.append(copy.deepcopy(tool))
    return parsed


def parse_tool_choice(body: dict, tools: list | None):
    """"none", "auto", "required" or {"name": ...}; the default depends on tools."""
    choice = body.get("tool_choice")
    if choice is None:
        return "none" if tools is None else "auto"
    if choice in ("none", "auto", "required"):
        return choice
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict) \
            and choice.get("type", "function") == "function":
        name = choice["function"].get("name")
        if name is None or isinstance(name, str):
            return {"name": name}
    raise _bad("tool_choice must be 'none', 'auto', 'required' or "
               '{"type": "function", "function": {"name": ...}}', "tool_choice")


def check_tools(tools: list | None, choice) -> None:
    """serving_chat._validate_request's tool checks, in its order."""
    if choice == "required" and not tools:
        raise _bad("Tools cannot be empty if tool choice is set to required.")
    if isinstance(choice, dict):
        if not tools:
            raise _bad("Tools cannot be empty if tool choice is set to a specific tool.")
        if not any(t["function"]["name"] == choice["name"] for t in tools):
            raise _bad(f"Tool '{choice['name']}' not found in tools list.")
    for i, tool in enumerate(tools or []):
        parameters = tool["function"].get("parameters")
        if parameters is None:
            continue
        schema_gen.normalize_types(parameters)
        problem = schema_gen.schema_problem(parameters)
        if problem is not None:
            raise _bad(f"Tool {i} function has invalid 'parameters' schema: {problem}")


def past_calls(messages: list) -> None:
    """Assistant tool calls in the history: their arguments must be JSON objects
    (serving_chat.parse_tool_call_arguments)."""
    for i, message in enumerate(messages):
        calls = message.get("tool_calls")
        if message.get("role") != "assistant" or calls is None:
            continue
        if not isinstance(calls, list):
            raise _bad(f"messages[{i}].tool_calls must be a list", "messages")
        for call in calls:
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict) or not isinstance(function.get("name"), str):
                raise _bad(f"messages[{i}].tool_calls: each call needs a function name",
                           "messages")
            arguments = function.get("arguments")
            if not isinstance(arguments, (str, dict, type(None))):
                raise _bad(f"messages[{i}].tool_calls: function.arguments must be a string or "
                           "an object", "messages")
            if isinstance(arguments, str):
                try:
                    arguments = json.loads(arguments)
                except ValueError:
                    raise _bad("Assistant tool call function.arguments must be valid "
                               "JSON.") from None
                if not isinstance(arguments, dict):
                    raise _bad("Assistant tool call function.arguments must be a JSON "
                               "object.")


def render_past_calls(tool_format: str):
    """The chat template's rendering of an assistant message's tool_calls."""
    def render(calls: list) -> str:
        pairs = []
        for call in calls:
            function = call["function"]
            arguments = function.get("arguments")
            if isinstance(arguments, str):
                arguments = json.loads(arguments)
            pairs.append((function["name"], arguments if arguments is not None else {}))
        return render_calls(tool_format, pairs)
    return render


def called_tools(tools: list, choice, parallel: bool, messages: list):
    """The tools the model calls: [(name, parameters)], or None for a text answer."""
    if choice == "none" or not tools:
        return None
    if isinstance(choice, dict):
        chosen = [t for t in tools if t["function"]["name"] == choice["name"]][:1]
    elif choice == "auto" and messages[-1].get("role") != "user":
        return None
    else:
        chosen = tools[:PARALLEL_CALLS] if parallel else tools[:1]
    return [(t["function"]["name"], t["function"].get("parameters")
             or {"type": "object", "properties": {}}) for t in chosen]


# -- structured outputs -----------------------------------------------------------------


def parse_response_format(body: dict, completions: bool = False):
    """The JSON schema response_format asks for, or None (text, structural_tag)."""
    fmt = body.get("response_format")
    if fmt is None:
        return None
    if not isinstance(fmt, dict):
        raise _bad("response_format must be an object", "response_format")
    kind = fmt.get("type")
    if kind not in ("text", "json_object", "json_schema", "structural_tag"):
        raise _bad("response_format.type must be one of 'text', 'json_object', "
                   "'json_schema', 'structural_tag'", "response_format")
    if kind == "json_object":
        return {"type": "object"}
    if kind != "json_schema":
        return None
    spec = fmt.get("json_schema")
    if spec is None and isinstance(fmt.get("schema"), dict) and not completions:
        schema = fmt["schema"]  # SGLang's shorthand: the schema beside the type
        spec = {"name": schema.get("title", "Schema"), "schema": schema}
    if spec is not None:
        if not isinstance(spec, dict):
            raise _bad("response_format.json_schema must be an object", "response_format")
        if not isinstance(spec.get("name"), str):
            raise _bad("Field required: response_format.json_schema.name", "response_format")
        if spec.get("strict") is not None and not isinstance(spec["strict"], bool):
            raise _bad("response_format.json_schema.strict must be bool", "response_format")
        if spec.get("schema") is not None and not isinstance(spec["schema"], dict):
            raise _bad("response_format.json_schema.schema must be an object",
                       "response_format")
    schema = spec.get("schema") if spec else None
    if schema is None:
        raise _bad("schema_ is required for json_schema response format request.")
    return schema


def grammar(json_schema, regex: str | None, ebnf: str | None):
    """(kind, spec, refusal) of the output constraint, json_schema first (the grammar
    manager's order); refusal is the backend's compile error."""
    if json_schema is not None:
        if isinstance(json_schema, str):
            try:
                json_schema = json.loads(json_schema)
            except ValueError as exc:
                return "json", None, f"Failed to compile json grammar: {exc}"
        problem = schema_gen.xgrammar_problem(json_schema)
        if problem is None:
            try:
                schema_gen.instance(json_schema, random.Random(0))
            except schema_gen.SchemaError as exc:
                problem = str(exc) or "the schema admits no value"
        return "json", json_schema, problem and f"Failed to compile json grammar: {problem}"
    if regex is not None:
        try:
            regex_gen.check(regex)
        except regex_gen.RegexError as exc:
            return "regex", regex, f"Failed to compile regex grammar: {exc}"
        return "regex", regex, None
    if ebnf is not None:
        try:
            ebnf_gen.check(ebnf)
        except ebnf_gen.EbnfError as exc:
            return "ebnf", ebnf, f"Failed to compile ebnf grammar: {exc}"
        return "ebnf", ebnf, None
    return None, None, None


# -- per endpoint -----------------------------------------------------------------------


def chat_features(body: dict, messages: list, settings) -> tuple:
    """(Features, OutputPlan or None, ChatSetup) of a chat request."""
    tool_parser = getattr(settings, "tool_call_parser", None)
    tool_parser = None if tool_parser == "none" else tool_parser
    reasoning_parser = getattr(settings, "reasoning_parser", None)
    tools = parse_tools(body)
    choice = parse_tool_choice(body, tools)
    parallel = _optional(body, "parallel_tool_calls", bool, "bool")
    logprobs = _optional(body, "logprobs", bool, "bool") or False
    top = _optional(body, "top_logprobs", int, "int") or 0
    regex = _optional(body, "regex", str, "str")
    ebnf = _optional(body, "ebnf", str, "str")
    separate = _optional(body, "separate_reasoning", bool, "bool")
    stream_reasoning = _optional(body, "stream_reasoning", bool, "bool")
    kwargs = _optional(body, "chat_template_kwargs", dict, "an object") or {}
    effort = body.get("reasoning_effort")
    if effort is not None:
        if isinstance(effort, bool) or not isinstance(effort, (str, int, float)):
            raise _bad("reasoning_effort must be a string or a number", "reasoning_effort")
        kwargs = {"enable_thinking": effort != "none", **kwargs}
    json_schema = parse_response_format(body)
    check_tools(tools, choice)  # _validate_request
    past_calls(messages)  # _process_messages, before to_sampling_params' check below

    tool_forced = bool(tools) and (choice == "required" or isinstance(choice, dict))
    constrained = json_schema is not None or regex is not None or ebnf is not None
    if tool_forced and constrained:
        raise _bad(COMBINED_CONSTRAINTS)
    kind, spec, refusal = grammar(json_schema, regex, ebnf)
    thinking = reasoning.thinks(reasoning_parser, kwargs)
    parsing = tool_parser in TOOL_PARSERS and bool(tools) and choice != "none"
    features = Features(
        logprobs=logprobs, top_logprobs=max(top, 0),
        tool_parser=tool_parser if parsing else None,
        tool_names=[t["function"]["name"] for t in tools or []],
        split_reasoning=reasoning_parser is not None and separate is not False,
        thinking=thinking, stream_reasoning=stream_reasoning is not False,
        server_parsers=bool(reasoning_parser or tool_parser), refusal=refusal)

    calls = None
    if tool_forced or (tool_parser and not constrained):
        calls = called_tools(tools, choice, parallel is not False, messages)
    think = reasoning_parser if thinking else None
    if calls is not None:
        plan = OutputPlan(think, "calls", calls, tool_parser)
    elif kind is not None:
        plan = OutputPlan(think, kind, spec)
    else:
        plan = OutputPlan(think) if think else None

    shown = None
    if tools and choice != "none":
        shown = [t for t in tools if not isinstance(choice, dict)
                 or t["function"]["name"] == choice["name"]] or None
    setup = ChatSetup(tools=shown, tool_format=tool_parser or "qwen25",
                      prompt_suffix=reasoning.prompt_suffix(reasoning_parser, thinking))
    return features, plan, setup


def completion_features(body: dict) -> tuple:
    """(Features, OutputPlan or None) of a /v1/completions request."""
    logprobs = _optional(body, "logprobs", int, "int")
    json_schema = _optional(body, "json_schema", str, "str")
    regex = _optional(body, "regex", str, "str")
    ebnf = _optional(body, "ebnf", str, "str")
    response_schema = parse_response_format(body, completions=True)
    if response_schema is not None:
        json_schema = response_schema
    kind, spec, refusal = grammar(json_schema, regex, ebnf)
    features = Features(logprobs=logprobs is not None, top_logprobs=max(logprobs or 0, 0),
                        refusal=refusal)
    return features, (OutputPlan(None, kind, spec) if kind else None)


def generate_plan(sampling_params: dict) -> tuple:
    """(refusal, OutputPlan or None) of /generate's sampling_params json_schema/regex/ebnf."""
    json_schema = _optional(sampling_params, "json_schema", str, "str")
    regex = _optional(sampling_params, "regex", str, "str")
    ebnf = _optional(sampling_params, "ebnf", str, "str")
    kind, spec, refusal = grammar(json_schema, regex, ebnf)
    return refusal, (OutputPlan(None, kind, spec) if kind else None)
