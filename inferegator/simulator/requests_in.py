"""Parse and validate the bodies of the simulator's generation endpoints.

Only what the simulator acts on is checked; every other field (top_k, regex,
json_schema, separate_reasoning, ...) is accepted and ignored, as SGLang's own
sampling does not change the shape of an answer.
"""

import json
from dataclasses import dataclass

from .engine import SamplingParams
from .protocol import SGLangError
from .tokenizer import encode, render_chat

_MISSING = object()


@dataclass
class GenerationCall:
    """A validated generation request: one prompt, n samplings."""

    prompt_ids: list[int]
    params: list[SamplingParams]
    stream: bool
    include_usage: bool
    continuous_usage: bool
    model: str
    rid: str | None


def parse_json(raw: bytes) -> dict:
    """The request body as a JSON object, or a 400."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SGLangError(400, f"Invalid JSON body: {exc}") from None
    if not isinstance(body, dict):
        raise SGLangError(400, "The request body must be a JSON object.")
    return body


def _get(body: dict, name: str, types, default=_MISSING, where: str = ""):
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


def _stops(value, param: str) -> tuple[str, ...]:
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


def _samplings(n: int, max_new_tokens, stop, seed, ignore_eos) -> list[SamplingParams]:
    if n < 1:
        raise SGLangError(400, "n must be at least 1", param="n")
    return [SamplingParams(max_new_tokens=max_new_tokens, stop=stop, seed=seed + i,
                           ignore_eos=ignore_eos) for i in range(n)]


def _openai_common(body: dict, prompt_ids, max_tokens) -> GenerationCall:
    options = _get(body, "stream_options", dict, {})
    return GenerationCall(
        prompt_ids=prompt_ids,
        params=_samplings(_get(body, "n", int, 1), max_tokens,
                          _stops(body.get("stop"), "stop"), _get(body, "seed", int, 0),
                          _get(body, "ignore_eos", bool, False)),
        stream=_get(body, "stream", bool, False),
        include_usage=bool(options.get("include_usage")),
        continuous_usage=bool(options.get("continuous_usage_stats")),
        model=_get(body, "model", str, "default"),
        rid=_get(body, "rid", str, None),
    )


def parse_chat(body: dict) -> GenerationCall:
    """/v1/chat/completions; honours max_completion_tokens, then max_tokens."""
    messages = _get(body, "messages", list)
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
    max_tokens = _get(body, "max_completion_tokens", int, None)
    if max_tokens is None:
        max_tokens = _get(body, "max_tokens", int, None)
    return _openai_common(body, encode(render_chat(messages)),
                          _positive(max_tokens, "max_tokens"))


def parse_completion(body: dict) -> GenerationCall:
    """/v1/completions; max_tokens defaults to 16 and must be positive, as in SGLang."""
    prompt = _get(body, "prompt", (str, list))
    if isinstance(prompt, list):
        if not prompt or not all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            raise SGLangError(400, "prompt must be a string or a list of token ids",
                              param="prompt")
        prompt_ids = prompt
    else:
        if not prompt:
            raise SGLangError(400, "Prompt cannot be empty", param="prompt")
        prompt_ids = encode(prompt)
    max_tokens = _get(body, "max_tokens", int, 16)
    if max_tokens <= 0:
        raise SGLangError(400, "max_tokens must be positive", param="max_tokens")
    return _openai_common(body, prompt_ids, max_tokens)


def parse_generate(body: dict) -> GenerationCall:
    """SGLang's native /generate: text or input_ids, sampling_params, stream, rid."""
    text, input_ids = body.get("text"), body.get("input_ids")
    if (text is None) == (input_ids is None):
        raise SGLangError(400, "Either text or input_ids should be provided.", param="text")
    if text is not None:
        prompt_ids = encode(_get(body, "text", str))
    else:
        prompt_ids = _get(body, "input_ids", list)
        if not prompt_ids or not all(isinstance(t, int) and not isinstance(t, bool)
                                     for t in prompt_ids):
            raise SGLangError(400, "input_ids must be a non-empty list of integers",
                              param="input_ids")
    sp = _get(body, "sampling_params", dict, {})
    where = "sampling_params."
    return GenerationCall(
        prompt_ids=prompt_ids,
        params=_samplings(_get(sp, "n", int, 1, where),
                          _positive(_get(sp, "max_new_tokens", int, 128, where),
                                    "max_new_tokens"),
                          _stops(sp.get("stop"), "stop"), _get(sp, "seed", int, 0, where),
                          _get(sp, "ignore_eos", bool, False, where)),
        stream=_get(body, "stream", bool, False),
        include_usage=False,
        continuous_usage=False,
        model="",
        rid=_get(body, "rid", str, None),
    )
