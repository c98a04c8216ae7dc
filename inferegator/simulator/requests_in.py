"""Parse and validate the bodies of the simulator's generation endpoints.

Only what the simulator acts on is checked; every other field (top_k, temperature, ...)
is accepted and ignored, as SGLang's own sampling does not change the shape of an answer.
Tools, structured outputs, logprobs and reasoning are read by features.py.
"""

import json
from dataclasses import dataclass

from . import features as extras
from .engine import SamplingParams
from .protocol import SGLangError
from .tokenizer import encode, render_chat

_MISSING = object()


@dataclass
class GenerationCall:
    """A validated generation request: one or more prompts, n samplings of each.

    Its engine requests are prompt-major: prompt p's sampling j is request p * n + j, which
    is also the choice index SGLang gives it.
    """

    prompts: list[list[int]]
    params: list[SamplingParams]
    stream: bool
    include_usage: bool
    continuous_usage: bool
    model: str
    rid: str | None
    features: extras.Features | None = None  # logprobs, tool calls, reasoning, refusal


def parse_json(raw: bytes) -> dict:
    """The request body as a JSON object, or a 400."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SGLangError(400, f"Invalid JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise SGLangError(400, "The request body must be a JSON object.")
    return body


def get_field(body: dict, name: str, types, default=_MISSING, where: str = ""):
    """body[name] checked against types; default when absent or null, else a 400."""
    value = body.get(name, _MISSING)
    if value is _MISSING or value is None:
        if default is _MISSING:
            raise SGLangError(400, f"Field required: {where}{name}", param=name)
        return default
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in _tuple(types)):
        names = " or ".join(t.__name__ for t in _tuple(types))
        raise SGLangError(400, f"{where}{name} must be {names}", param=name)
    return value


def _tuple(types):
    return types if isinstance(types, tuple) else (types,)


def stop_strings(value, param: str) -> tuple[str, ...]:
    """A stop string or list of them, empty strings dropped; a 400 for anything else."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(s, str) for s in value):
        return tuple(s for s in value if s)
    raise SGLangError(400, f"{param} must be a string or a list of strings", param=param)


def _positive(value, param: str):
    if value is not None and value < 0:
        raise SGLangError(400, f"{param} must be non-negative", param=param)
    return value


def _samplings(n: int, max_new_tokens, stop, seed, ignore_eos,
               output=None) -> list[SamplingParams]:
    if n < 1:
        raise SGLangError(400, "n must be at least 1", param="n")
    return [SamplingParams(max_new_tokens=max_new_tokens, stop=stop, seed=seed + i,
                           ignore_eos=ignore_eos, output=output) for i in range(n)]


def _openai_common(body: dict, prompts, max_tokens, features=None,
                   output=None) -> GenerationCall:
    options = get_field(body, "stream_options", dict, {})
    return GenerationCall(
        prompts=prompts,
        params=_samplings(get_field(body, "n", int, 1), max_tokens,
                          stop_strings(body.get("stop"), "stop"), get_field(body, "seed", int, 0),
                          get_field(body, "ignore_eos", bool, False), output),
        stream=get_field(body, "stream", bool, False),
        include_usage=bool(options.get("include_usage")),
        continuous_usage=bool(options.get("continuous_usage_stats")),
        model=get_field(body, "model", str, "default"),
        rid=get_field(body, "rid", str, None),
        features=features,
    )


def parse_chat(body: dict, settings=None) -> GenerationCall:
    """/v1/chat/completions; honours max_completion_tokens, then max_tokens, and the
    features of features.py (tools need settings' tool-call parser, reasoning its
    reasoning parser)."""
    messages = get_field(body, "messages", list)
    if not messages:
        raise SGLangError(400, "Messages cannot be empty.", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise SGLangError(400, f"messages[{i}] must be an object with a role",
                              param="messages")
        content = message.get("content")
        if content is not None and not isinstance(content, (str, list)):
            raise SGLangError(400, f"messages[{i}].content must be a string or a list",
                              param="messages")
    max_tokens = get_field(body, "max_completion_tokens", int, None)
    if max_tokens is None:
        max_tokens = get_field(body, "max_tokens", int, None)
    features, output, setup = extras.chat_features(body, messages, settings)
    prompt = render_chat(messages, tools=setup.tools, generation_prefix=setup.prompt_suffix,
                         render_calls=extras.render_past_calls(setup.tool_format))
    return _openai_common(body, [encode(prompt)], _positive(max_tokens, "max_tokens"),
                          features, output)


def is_token_ids(value) -> bool:
    """A list of ints (bools excluded)."""
    return isinstance(value, list) and all(
        isinstance(t, int) and not isinstance(t, bool) for t in value)


def completion_prompts(prompt) -> list[list[int]]:
    """The prompts of a /v1/completions body, tokenized, in order.

    As SGLang's CompletionRequest: a string, a list of strings, a list of token ids or a
    list of token-id lists; "Prompt cannot be empty" when it or every one of its prompts is.
    """
    shapes = "prompt must be a string, a list of strings, a list of token ids or a list " \
             "of token-id lists"
    if isinstance(prompt, str):
        prompts = [prompt]
    elif isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        prompts = prompt
    elif is_token_ids(prompt):
        prompts = [prompt] if prompt else []
    elif isinstance(prompt, list) and all(is_token_ids(p) for p in prompt):
        prompts = prompt
    else:
        raise SGLangError(400, shapes, param="prompt")
    if not prompts or all(not p for p in prompts):
        raise SGLangError(400, "Prompt cannot be empty", param="prompt")
    return [encode(p) if isinstance(p, str) else p for p in prompts]


def parse_completion(body: dict, settings=None) -> GenerationCall:
    """/v1/completions; max_tokens defaults to 16 and must be positive, as in SGLang;
    logprobs, response_format, json_schema, regex and ebnf (features.py)."""
    prompts = completion_prompts(get_field(body, "prompt", (str, list)))
    max_tokens = get_field(body, "max_tokens", int, 16)
    if max_tokens <= 0:
        raise SGLangError(400, "max_tokens must be positive", param="max_tokens")
    features, output = extras.completion_features(body)
    return _openai_common(body, prompts, max_tokens, features, output)


def parse_generate(body: dict) -> GenerationCall:
    """SGLang's native /generate: text or input_ids, sampling_params, stream, rid."""
    text, input_ids = body.get("text"), body.get("input_ids")
    if (text is None) == (input_ids is None):
        raise SGLangError(400, "Either text or input_ids should be provided.", param="text")
    if text is not None:
        prompt_ids = encode(get_field(body, "text", str))
    else:
        prompt_ids = get_field(body, "input_ids", list)
        if not prompt_ids or not all(isinstance(t, int) and not isinstance(t, bool)
                                     for t in prompt_ids):
            raise SGLangError(400, "input_ids must be a non-empty list of integers",
                              param="input_ids")
    sp = get_field(body, "sampling_params", dict, {})
    where = "sampling_params."
    refusal, output = extras.generate_plan(sp)
    return GenerationCall(
        prompts=[prompt_ids],
        params=_samplings(get_field(sp, "n", int, 1, where),
                          _positive(get_field(sp, "max_new_tokens", int, 128, where),
                                    "max_new_tokens"),
                          stop_strings(sp.get("stop"), "stop"),
                          get_field(sp, "seed", int, 0, where),
                          get_field(sp, "ignore_eos", bool, False, where), output),
        stream=get_field(body, "stream", bool, False),
        include_usage=False,
        continuous_usage=False,
        model="",
        rid=get_field(body, "rid", str, None),
        features=extras.Features(refusal=refusal),
    )
