"""Parse and validate a /v1/responses body the way SGLang 0.5.23 does (stateless subset).

The checks and their wording follow ResponsesRequest (protocol.py) and
OpenAIServingResponses.create_responses / _construct_input_messages
(serving_responses.py). The input becomes chat messages rendered with the simulator's
chat template, as SGLang renders them with the model's.
"""

import uuid
from dataclasses import dataclass, field

from .engine import SamplingParams
from .protocol import SGLangError
from .requests_in import GenerationCall, get_field, stop_strings
from .tokenizer import encode, render_chat

# ResponseTool.type values SGLang accepts (RESPONSE_TOOL_TYPES).
TOOL_TYPES = frozenset(("function", "web_search", "web_search_preview", "code_interpreter",
                        "file_search", "image_generation", "computer_use_preview",
                        "local_shell", "shell", "mcp", "custom", "namespace", "tool_search"))
ECHOED_EFFORTS = frozenset(("minimal", "low", "medium", "high"))
STORE_DISABLED = ("Response store is disabled. Stateful Responses require "
                  "--enable-response-store on a standalone server; response storage is "
                  "unavailable in PD mode.")
_TOOL_DEFAULTS = {"name": None, "description": None, "parameters": None, "strict": False,
                  "tools": None, "defer_loading": None, "format": None}
_TYPED = (("instructions", str), ("max_output_tokens", int), ("temperature", (int, float)),
          ("top_p", (int, float)), ("stream", bool), ("store", bool), ("background", bool),
          ("metadata", dict), ("user", str), ("model", str), ("previous_response_id", str),
          ("parallel_tool_calls", bool), ("text", dict), ("reasoning", dict),
          ("request_id", str), ("truncation", str), ("tools", list), ("include", list))


@dataclass
class ResponsesCall:
    """A validated /v1/responses request: what to generate and what the answer echoes."""

    generation: GenerationCall
    echo: dict = field(default_factory=dict)  # request fields the Response object repeats
    max_new_tokens: int | None = None  # may be negative: refused when the engine sees it


def _tools(body: dict) -> list[dict]:
    tools = get_field(body, "tools", list, [])
    echoed = []
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") not in TOOL_TYPES:
            raise SGLangError(400, f"tools[{i}].type must be one of {sorted(TOOL_TYPES)}",
                              param="tools")
        if tool["type"] == "function" and not tool.get("name"):
            raise SGLangError(400, "Function tools must include a name.", param="tools")
        echoed.append({"type": tool["type"], **_TOOL_DEFAULTS,
                       **{k: v for k, v in tool.items() if k != "type"}})
    return echoed


def _tool_choice(body: dict, tools: list[dict]):
    """The tool_choice SGLang echoes (effective_tool_choice), after its two refusals."""
    choice = body.get("tool_choice", "auto")
    if choice is None:
        choice = "auto"
    forcible = [t for t in tools if t["type"] in ("function", "custom")]
    if isinstance(choice, str):
        if choice not in ("auto", "required", "none"):
            raise SGLangError(400, "tool_choice must be 'auto', 'required', 'none' or an "
                                   "object", param="tool_choice")
        if choice == "required" and not forcible:
            raise SGLangError(400, 'tool_choice="required" requires at least one tool with '
                                   'type="function" or type="custom"; other built-in tool '
                                   "types cannot be forced.")
        return choice
    if not isinstance(choice, dict):
        raise SGLangError(400, "tool_choice must be 'auto', 'required', 'none' or an object",
                          param="tool_choice")
    name = choice.get("name") or (choice.get("function") or {}).get("name")
    if choice.get("type") not in ("function", "custom") or not name:
        return "auto"
    if not any(t["name"] == name for t in forcible):
        raise SGLangError(400, f"Tool {name!r} is not declared in tools", param="tool_choice")
    return {"type": choice["type"], "name": name}


def _part_texts(content) -> list[str]:
    if isinstance(content, str):
        return [content]
    return [p["text"] for p in content or [] if isinstance(p, dict)
            and isinstance(p.get("text"), str)]


def _chat_message(item, index: int):
    """One input item as a chat message (SGLang's _normalize_response_message_for_chat)."""
    if not isinstance(item, dict):
        raise SGLangError(400, f"input[{index}] must be an input item object", param="input")
    kind = item.get("type")
    if kind == "function_call":
        return {"role": "assistant", "content": item.get("arguments") or "{}"}
    if kind == "function_call_output":
        output = item.get("output", "")
        return {"role": "tool",
                "content": output if isinstance(output, str) else "".join(_part_texts(output))}
    if kind == "reasoning":
        return None  # carried as reasoning_content, which the chat template leaves out
    if kind not in (None, "message"):
        # create_responses answers f"{e} {e.__cause__}" for this ValueError
        raise SGLangError(400, f"Unsupported Responses API input item type: {kind!r} None")
    role, content = item.get("role"), item.get("content")
    if not isinstance(role, str) or not isinstance(content, (str, list)):
        raise SGLangError(400, f"input[{index}] needs a role and a string or list content",
                          param="input")
    return {"role": "system" if role == "developer" else role, "content": content}


def input_messages(body: dict) -> list[dict]:
    """instructions + input as chat messages: one leading system message, assistants merged."""
    value = body.get("input")
    if value is None:
        raise SGLangError(400, "Field required: input", param="input")
    if not isinstance(value, (str, list)):
        raise SGLangError(400, "input must be a string or a list of input items",
                          param="input")
    messages = [{"role": "system", "content": body["instructions"]}] \
        if body.get("instructions") else []
    if isinstance(value, str):
        messages.append({"role": "user", "content": value})
    else:
        messages += [m for i, item in enumerate(value)
                     if (m := _chat_message(item, i)) is not None]
    merged = []
    for m in messages:
        if m["role"] == "assistant" and merged and merged[-1]["role"] == "assistant":
            merged[-1] = {"role": "assistant", "content": "\n\n".join(
                t for t in ("".join(_part_texts(merged[-1]["content"])),
                            "".join(_part_texts(m["content"]))) if t)}
        else:
            merged.append(m)
    system = [t for m in merged if m["role"] == "system" for t in _part_texts(m["content"])]
    others = [m for m in merged if m["role"] != "system"]
    return ([{"role": "system", "content": "\n\n".join(system)}] if system else []) + others


def parse_responses(body: dict, served_model: str) -> ResponsesCall:
    """Validate a /v1/responses body in create_responses' order of refusals."""
    for name, types in _TYPED:
        get_field(body, name, types, None)
    stream = bool(body.get("stream"))
    tools = _tools(body)
    if any(t["type"] == "shell" for t in tools):
        raise SGLangError(400, "Shell tools are not supported by this model", param="tools")
    for name in ("previous_response_id", "background"):
        if body.get(name):
            raise SGLangError(400, STORE_DISABLED, param=name)
    model = body.get("model")
    if model is None:
        raise SGLangError(400, "1 validation error for ResponsesResponse\nmodel\n  Input "
                               "should be a valid string [type=string_type, input_value=None, "
                               "input_type=NoneType]")
    if model != served_model and not model.startswith(served_model + ":"):
        raise SGLangError(404, f"The model '{model}' does not exist", param="model")
    tool_choice = _tool_choice(body, tools)
    if stream and "message.output_text.logprobs" in (body.get("include") or []):
        raise SGLangError(400, "logprobs are not supported in streaming mode",
                          param="logprobs")
    prompt = encode(render_chat(input_messages(body)))
    limit = body.get("max_output_tokens")
    max_new_tokens = None if limit is None else limit - 2  # SGLang's BOS/EOS headroom
    params = SamplingParams(max_new_tokens=max_new_tokens,
                            stop=stop_strings(body.get("stop"), "stop"))
    rid = body.get("request_id") or f"resp_{uuid.uuid4().hex}"
    generation = GenerationCall(prompts=[prompt], params=[params], stream=stream,
                                include_usage=False, continuous_usage=False, model=model,
                                rid=rid)
    reasoning = body.get("reasoning") or {}
    effort = reasoning.get("effort")
    echo = {
        "parallel_tool_calls": body.get("parallel_tool_calls", True) is not False,
        "tool_choice": tool_choice, "tools": tools,
        "instructions": body.get("instructions"),
        "max_output_tokens": limit, "previous_response_id": None,
        "reasoning": {"effort": effort if effort in ECHOED_EFFORTS else None,
                      "summary": None},
        "store": body.get("store", True), "temperature": body.get("temperature"),
        "text": body.get("text"), "top_p": body.get("top_p"),
        "truncation": body.get("truncation") or "disabled", "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }
    return ResponsesCall(generation, echo, max_new_tokens)
