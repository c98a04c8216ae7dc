"""Tool calling on the simulator, held to SGLang 0.5.23's protocol (serving_chat, function_call/).

With a ``--tool-call-parser`` (qwen25 or llama3 here) the model calls tools when the
last message is the user's (the first three tools with parallel_tool_calls, else the first),
answers in text after a tool result, and SGLang's detector turns its output into
``tool_calls``: ids ``call_<24 hex>``, JSON-string arguments valid for each tool's schema,
``finish_reason: "tool_calls"``; a stream sends each call's id and name with empty
arguments, then the arguments in pieces. With ``--tool-call-parser none`` (SGLang's
default) no tool_calls are parsed. The shared helpers (``chat_view``,
``data_events``) are used by the other test_sim_* feature tests.
"""

import copy
import json
import re

import jsonschema
import openai
import pytest
import requests

from inferegator.simulator.tokenizer import render_chat, tokenize
from inferegator.simulator.tool_parsers import render_calls
from tests.support.processes import Simulator, wait_until
from tests.test_gateway_openapi import assert_valid, validator_for  # noqa: F401

MODEL = "sim-model"
CHAT = "/v1/chat/completions"
CALL_ID = re.compile(r"call_[0-9a-f]{24}")


def tool(name, parameters):
    return {"type": "function", "function": {"name": name, "description": f"{name} tool",
                                             "parameters": parameters}}


WEATHER = tool("get_weather", {
    "type": "object",
    "properties": {"city": {"type": "string", "minLength": 2},
                   "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                   "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "unit"], "additionalProperties": False})
TIME = tool("get_time", {
    "type": "object",
    "properties": {"timezone": {"type": "string"},
                   "precise": {"type": "boolean"},
                   "where": {"type": "object",
                             "properties": {"lat": {"type": "number", "minimum": -90,
                                                    "maximum": 90},
                                            "lon": {"type": "number", "minimum": -180,
                                                    "maximum": 180}},
                             "required": ["lat", "lon"]}},
    "required": ["timezone", "where"]})
CONVERT = tool("convert", {
    "type": "object",
    "properties": {"amounts": {"type": "array", "items": {"type": "number"}, "minItems": 2},
                   "to": {"type": "string", "enum": ["EUR", "USD"]}},
    "required": ["amounts", "to"]})
SEARCH = tool("search", {"type": "object", "properties": {"q": {"type": "string"}},
                         "required": ["q"]})
TOOLS = [WEATHER, TIME, CONVERT, SEARCH]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather and the time in Paris?"}]


def sdk(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def post(server, body, path=CHAT, **kw):
    return requests.post(server.url + path, json={"model": MODEL, **body}, timeout=10, **kw)


def data_events(resp) -> tuple[list[dict], bool]:
    """The JSON events of an SSE answer, and whether it ended with [DONE]."""
    events, done = [], False
    for line in resp.iter_lines():
        if line.startswith(b"data: "):
            payload = line[len(b"data: "):]
            if payload == b"[DONE]":
                done = True
            else:
                assert not done, "an event after [DONE]"
                events.append(json.loads(payload))
    return events, done


def chat_view(obj):
    """obj with SGLang's departures from OpenAI's chat schema undone, after checking them:
    no ``refusal`` in a message or a logprobs object, ``reasoning_content`` (SGLang's
    extension), ``completion_tokens_details: null``, and in the chunks SGLang's pydantic
    models write (tool calls, content beside a tool-call parser) ``role``, ``id`` and
    ``function.name`` null and ``"usage": null``."""
    obj = copy.deepcopy(obj)
    if obj.get("usage", 0) is None:
        del obj["usage"]
    usage = obj.get("usage") or {}
    if "completion_tokens_details" in usage and usage["completion_tokens_details"] is None:
        assert usage["reasoning_tokens"] == 0
        del usage["completion_tokens_details"]
    for choice in obj.get("choices", []):
        for name in ("message", "delta"):
            part = choice.get(name)
            if part is None:
                continue
            thought = part.pop("reasoning_content", None)
            assert thought is None or isinstance(thought, str)
            if name == "message":
                assert "refusal" not in part
                part["refusal"] = None
            if part.get("role", "") is None:
                del part["role"]
            for call in part.get("tool_calls") or []:
                if call.get("id", "") is None:
                    del call["id"]
                if call["function"].get("name", "") is None:
                    del call["function"]["name"]
        if choice.get("logprobs") is not None:
            assert "refusal" not in choice["logprobs"]
            choice["logprobs"]["refusal"] = None
    return obj


@pytest.fixture(scope="module", params=["qwen25", "llama3"])
def tool_sim(request):
    server = Simulator("--instant", "--tool-call-parser", request.param)
    server.parser = request.param
    yield server
    server.stop()


@pytest.fixture(scope="module")
def qwen_sim():
    server = Simulator("--instant", "--tool-call-parser", "qwen25")
    yield server
    server.stop()


def check_calls(calls, names):
    assert [c.function.name for c in calls] == names
    for call in calls:
        assert CALL_ID.fullmatch(call.id) and call.type == "function"
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    assert len({c.id for c in calls}) == len(calls)


def test_round_trip_call_result_answer(tool_sim, validator_for):  # noqa: F811
    client = sdk(tool_sim)
    messages = copy.deepcopy(ASK)
    first = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
    (choice,) = first.choices
    assert choice.finish_reason == "tool_calls"
    check_calls(choice.message.tool_calls, ["get_weather", "get_time", "convert"])
    assert choice.message.content == ""  # SGLang's empty content beside calls
    # The calls' text, in the parser's format, is what the completion tokens count.
    raw = render_calls(tool_sim.parser, [(c.function.name, json.loads(c.function.arguments))
                                         for c in choice.message.tool_calls])
    assert first.usage.completion_tokens == len(tokenize(raw))
    assert first.usage.prompt_tokens == len(tokenize(render_chat(messages, tools=TOOLS)))

    messages.append(choice.message.model_dump(exclude_none=True))
    for call in choice.message.tool_calls:
        messages.append({"role": "tool", "tool_call_id": call.id,
                         "content": json.dumps({"result": call.function.name})})
    raw_final = post(tool_sim, {"messages": messages, "tools": TOOLS})
    assert raw_final.status_code == 200
    assert_valid(validator_for("CreateChatCompletionResponse"), chat_view(raw_final.json()))
    final = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
    (answer,) = final.choices
    assert answer.message.tool_calls is None and answer.finish_reason == "stop"
    assert answer.message.content and "<tool_call>" not in answer.message.content
    # The history renders the calls as the model wrote them: the second prompt extends
    # the first prompt and its answer, so the prefix cache serves them.
    turn = first.usage.prompt_tokens + first.usage.completion_tokens
    assert final.usage.prompt_tokens_details.cached_tokens >= turn // 16 * 16


def test_streamed_calls_id_and_name_first_then_argument_pieces(tool_sim, validator_for):  # noqa: F811
    body = {"messages": ASK, "tools": TOOLS, "seed": 5}
    expected = post(tool_sim, body).json()["choices"][0]["message"]["tool_calls"]
    stream = sdk(tool_sim).chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, seed=5, stream=True,
        stream_options={"include_usage": True})
    pieces: dict[int, list] = {}
    finish, usage = None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            for delta in choice.delta.tool_calls or []:
                pieces.setdefault(delta.index, []).append(delta)
            finish = choice.finish_reason or finish
    assert finish == "tool_calls" and usage.completion_tokens > 0
    assert sorted(pieces) == [0, 1, 2]
    for index, deltas in pieces.items():
        head, rest = deltas[0], deltas[1:]
        assert CALL_ID.fullmatch(head.id) and head.type == "function"
        assert head.function.name == expected[index]["function"]["name"]
        assert head.function.arguments == ""
        assert rest and all(d.id is None and d.function.name is None for d in rest)
        arguments = "".join(d.function.arguments for d in rest)
        assert arguments == expected[index]["function"]["arguments"]
        assert len(rest) > 1  # the arguments come in pieces, not at once

    resp = post(tool_sim, {**body, "stream": True, "stream_options": {"include_usage": True}},
                stream=True)
    events, done = data_events(resp)
    assert done
    validator = validator_for("CreateChatCompletionStreamResponse")
    for event in events:
        assert_valid(validator, chat_view(event))
    assert events[-1]["usage"]["completion_tokens"] == usage.completion_tokens


def test_parallel_tool_calls_false_calls_one_tool(tool_sim):
    answer = sdk(tool_sim).chat.completions.create(model=MODEL, messages=ASK, tools=TOOLS,
                                                   parallel_tool_calls=False)
    check_calls(answer.choices[0].message.tool_calls, ["get_weather"])


def test_named_and_required_call_even_after_a_tool_result(qwen_sim):
    history = ASK + [{"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "search", "arguments": '{"q": "paris"}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    client = sdk(qwen_sim)
    named = client.chat.completions.create(
        model=MODEL, messages=history, tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "convert"}})
    check_calls(named.choices[0].message.tool_calls, ["convert"])
    required = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS[:2],
                                              tool_choice="required")
    check_calls(required.choices[0].message.tool_calls, ["get_weather", "get_time"])
    auto = client.chat.completions.create(model=MODEL, messages=history, tools=TOOLS)
    assert auto.choices[0].message.tool_calls is None


def test_tool_choice_none_answers_text_without_showing_the_tools(qwen_sim):
    answer = post(qwen_sim, {"messages": ASK, "tools": TOOLS, "tool_choice": "none"}).json()
    (choice,) = answer["choices"]
    assert "tool_calls" not in choice["message"] and choice["finish_reason"] == "stop"
    assert answer["usage"]["prompt_tokens"] == len(tokenize(render_chat(ASK)))


def test_n_choices_each_call_with_their_own_arguments(qwen_sim):
    answer = post(qwen_sim, {"messages": ASK, "tools": [SEARCH], "n": 3}).json()
    args = []
    for choice in answer["choices"]:
        (call,) = choice["message"]["tool_calls"]
        assert choice["finish_reason"] == "tool_calls"
        jsonschema.validate(json.loads(call["function"]["arguments"]), SCHEMAS["search"])
        args.append(call["function"]["arguments"])
    assert len(set(args)) > 1
    assert answer["usage"]["completion_tokens"] == sum(
        len(tokenize(render_calls("qwen25", [("search", json.loads(a))]))) for a in args)


def test_a_call_cut_by_max_tokens_is_no_call(qwen_sim):
    body = {"messages": ASK, "tools": TOOLS, "max_tokens": 12}
    choice = post(qwen_sim, body).json()["choices"][0]
    assert choice["finish_reason"] == "length"
    assert "tool_calls" not in choice["message"] and choice["message"]["content"] == ""
    events, done = data_events(post(qwen_sim, {**body, "stream": True}, stream=True))
    assert done and events[-1]["choices"][0]["finish_reason"] == "length"
    heads = [d for e in events for c in e["choices"] for d in c["delta"].get("tool_calls") or []
             if d["id"] is not None]
    assert [d["function"]["name"] for d in heads] == ["get_weather"]  # named, then cut


def test_without_a_parser_auto_ignores_tools_and_required_writes_the_json_array(start_sim):
    sim = start_sim("--instant", "--tool-call-parser", "none")
    auto = post(sim, {"messages": ASK, "tools": TOOLS}).json()["choices"][0]
    assert "tool_calls" not in auto["message"] and auto["finish_reason"] != "tool_calls"
    required = post(sim, {"messages": ASK, "tools": TOOLS, "tool_choice": "required"}).json()
    choice = required["choices"][0]
    assert "tool_calls" not in choice["message"] and choice["finish_reason"] == "stop"
    calls = json.loads(choice["message"]["content"])  # the json_schema constraint's array
    assert [c["name"] for c in calls] == ["get_weather", "get_time", "convert"]
    for call in calls:
        jsonschema.validate(call["parameters"], SCHEMAS[call["name"]])


@pytest.mark.parametrize("extra, message", [
    ({"tool_choice": "required"}, "Tools cannot be empty if tool choice is set to required."),
    ({"tool_choice": {"type": "function", "function": {"name": "get_weather"}}},
     "Tools cannot be empty if tool choice is set to a specific tool."),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "Tool 'nope' not found in tools list."),
    ({"tools": [tool("broken", {"type": "strin"})]},
     "Tool 0 function has invalid 'parameters' schema: 'strin' is not valid under any of "
     "the given schemas"),
    ({"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"}},
     "tool_choice 'required' or a named tool cannot be combined with response_format, "
     "regex, or ebnf: the tool-call constraint and the output constraint cannot both be "
     "honored."),
    ({"messages": ASK + [{"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "search", "arguments": "{"}}]}]},
     "Assistant tool call function.arguments must be valid JSON."),
])
def test_sglangs_refusals(qwen_sim, extra, message):
    resp = post(qwen_sim, {"messages": ASK, **extra})
    assert resp.status_code == 400
    assert resp.json() == {"object": "error", "message": message, "type": "BadRequestError",
                           "param": None, "code": 400}


@pytest.mark.parametrize("extra, param", [
    ({"tools": "x"}, "tools"), ({"tools": [{"type": "function"}]}, "tools"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice"),
    ({"tools": TOOLS, "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
])
def test_mistyped_tool_fields_are_400s(qwen_sim, extra, param):
    resp = post(qwen_sim, {"messages": ASK, **extra})
    assert resp.status_code == 400 and resp.json()["param"] == param


def test_abort_ends_a_tool_call_stream_with_abort(start_sim):
    sim = start_sim("--decode-ms-per-token", "40", "--tool-call-parser", "qwen25")
    resp = post(sim, {"messages": ASK, "tools": TOOLS, "stream": True, "rid": "tools-abort"},
                stream=True)
    lines = resp.iter_lines()
    for line in lines:
        if b'"tool_calls"' in line:
            break
    requests.post(sim.url + "/abort_request", json={"rid": "tools-abort"}, timeout=5)
    rest = [json.loads(line[6:]) for line in lines
            if line.startswith(b"data: {")]
    finishes = [c["finish_reason"] for e in rest for c in e["choices"] if c["finish_reason"]]
    assert finishes == ["abort"]
    wait_until(lambda: sim.load()["num_running_reqs"] == 0, timeout=2)


def test_a_dropped_tool_call_stream_ends_without_done(start_sim):
    sim = start_sim("--instant", "--tool-call-parser", "qwen25", "--fault-drop-rate", "1")
    resp = post(sim, {"messages": ASK, "tools": TOOLS, "stream": True}, stream=True)
    received = b""
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        for chunk in resp.iter_content(None):
            received += chunk
    assert b"[DONE]" not in received and b'"finish_reason":"tool_calls"' not in received


def test_the_default_is_no_parser_as_sglangs_and_an_unknown_one_is_refused_at_start(sim):
    message = post(sim, {"messages": ASK, "tools": [SEARCH]}).json()["choices"][0]["message"]
    assert message.get("tool_calls") is None and message["content"]
    with pytest.raises(RuntimeError, match="--tool-call-parser must be one of qwen25, qwen, "
                                           "llama3, none"):
        Simulator("--tool-call-parser", "kimi_k2")
