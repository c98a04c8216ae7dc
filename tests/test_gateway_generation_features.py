"""What SGLang can generate, through a real gateway in front of real simulators: tool
calls, structured outputs (json_object, json_schema, regex), logprobs and reasoning.

Each survives the relay as the runtime sent it (tool-call deltas, logprobs and reasoning
deltas relayed as they come), the ledger's tokens equal the runtime's, and the answers and
chunks validate against OpenAI's schema (``reasoning_content`` is SGLang's extension and
is set aside before validating). Driven by the openai SDK, LangChain and LiteLLM.
"""

import json
import os
import re

import jsonschema
import pydantic
import pytest
import requests

from tests.gateway_fixtures import MODEL, SIM_CAPABILITIES, gateway_yaml, launch_gateway, sdk
from tests.support.processes import Simulator
from tests.test_gateway_openapi import assert_valid, validator_for  # noqa: F401
from tests.test_upstream_interop import ledger_row

REASONER = "acme/sim-reasoner"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"}, "unit": {"type": "string", "enum": ["C", "F"]}},
        "required": ["city", "unit"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "The local time in a city.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
ASK = [{"role": "user", "content": "What is the weather and the time in Paris?"}]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    sim = Simulator("--instant", "--tool-call-parser", "qwen25")
    reasoner = Simulator("--instant", "--reasoning-parser", "qwen3", model="sim-reasoner")
    text = gateway_yaml([sim]) + "\n".join([
        f"  - id: {REASONER}", f"    capabilities: [{', '.join(SIM_CAPABILITIES)}]",
        "    pricing: {prompt: 1.0, completion: 2.0}", "    backends:",
        f"      - {{type: sglang, url: '{reasoner.url}', model: sim-reasoner}}"]) + "\n"
    server = launch_gateway(tmp_path_factory.mktemp("gw"), text)
    yield server
    server.stop()
    sim.stop()
    reasoner.stop()


def without_nulls(node):
    if isinstance(node, dict):
        return {k: without_nulls(v) for k, v in node.items() if v is not None}
    return [without_nulls(v) for v in node] if isinstance(node, list) else node


def without_extensions(obj):
    """A chunk or answer with SGLang's departures from OpenAI's schema set aside, for
    validation: its extensions (reasoning_content, matched_stop, usage.reasoning_tokens),
    the nulls it writes where OpenAI omits a field (a tool-call chunk's role, an argument
    delta's id and name) and the logprobs object's missing refusal."""
    obj = json.loads(json.dumps(obj))
    for choice in obj.get("choices") or ():
        choice.pop("matched_stop", None)
        for part in ("message", "delta"):
            if isinstance(choice.get(part), dict):
                choice[part].pop("reasoning_content", None)
        if "delta" in choice:
            choice["delta"] = without_nulls(choice["delta"])
        if isinstance(choice.get("logprobs"), dict):
            choice["logprobs"].setdefault("refusal", None)
    if isinstance(obj.get("usage"), dict):
        obj["usage"].pop("reasoning_tokens", None)
    return obj


def raw_chat(gateway, **body):
    return requests.post(gateway.url + "/v1/chat/completions", json=body, timeout=10,
                         headers={"Authorization": f"Bearer {gateway.key}"})


def stream_chunks(resp) -> list[dict]:
    return [json.loads(b[6:]) for b in resp.text.split("\n\n")
            if b.startswith("data: {")]


# ---------------------------------------------------------------- tools


def check_arguments(call, tools=(WEATHER, TIME)):
    schema = {t["function"]["name"]: t["function"]["parameters"] for t in tools}
    jsonschema.validate(json.loads(call.function.arguments), schema[call.function.name])


def test_a_tool_round_trip_in_json(gateway):
    client = sdk(gateway)
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=ASK, tools=[WEATHER, TIME], parallel_tool_calls=True)
    first = raw.parse()
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls
    assert len(calls) == 2 and {c.function.name for c in calls} == {"get_weather", "get_time"}
    for call in calls:
        check_arguments(call)
    row = ledger_row(gateway, raw.headers["x-request-id"])
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        first.usage.prompt_tokens, first.usage.completion_tokens)
    history = ASK + [choice.message.model_dump(exclude_none=True)] + [
        {"role": "tool", "tool_call_id": c.id, "content": json.dumps({"ok": True})}
        for c in calls]
    final = client.chat.completions.create(model=MODEL, messages=history,
                                           tools=[WEATHER, TIME])
    assert final.choices[0].finish_reason in ("stop", "length")
    assert final.choices[0].message.content and not final.choices[0].message.tool_calls


def test_a_tool_round_trip_streamed_with_parallel_calls(gateway, validator_for):  # noqa: F811
    resp = raw_chat(gateway, model=MODEL, messages=ASK, tools=[WEATHER, TIME],
                    parallel_tool_calls=True, stream=True,
                    stream_options={"include_usage": True})
    chunks = stream_chunks(resp)
    calls = {}
    for chunk in chunks:
        assert_valid(validator_for("CreateChatCompletionStreamResponse"),
                     without_extensions(chunk))
        for choice in chunk["choices"]:
            for delta in choice["delta"].get("tool_calls") or ():
                call = calls.setdefault(delta["index"], {"name": "", "arguments": ""})
                function = delta.get("function") or {}
                call["name"] += function.get("name") or ""
                call["arguments"] += function.get("arguments") or ""
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == \
        "tool_calls"
    assert sorted(c["name"] for c in calls.values()) == ["get_time", "get_weather"]
    for call in calls.values():
        schema = {"get_weather": WEATHER, "get_time": TIME}[call["name"]]
        jsonschema.validate(json.loads(call["arguments"]), schema["function"]["parameters"])
    usage = chunks[-1]["usage"]
    row = ledger_row(gateway, resp.headers["x-request-id"])
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        usage["prompt_tokens"], usage["completion_tokens"])


def test_tool_choice_names_the_function_to_call(gateway):
    answer = sdk(gateway).chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER, TIME],
        tool_choice={"type": "function", "function": {"name": "get_time"}})
    calls = answer.choices[0].message.tool_calls
    assert [c.function.name for c in calls] == ["get_time"]


# ---------------------------------------------------------------- structured outputs


class City(pydantic.BaseModel):
    name: str
    population: int
    capital: bool


def test_parse_with_a_pydantic_model(gateway):
    answer = sdk(gateway).chat.completions.parse(
        model=MODEL, messages=[{"role": "user", "content": "Describe Paris."}],
        response_format=City, max_tokens=200)
    city = answer.choices[0].message.parsed
    assert isinstance(city, City)


def test_json_object_mode(gateway, validator_for):  # noqa: F811
    resp = raw_chat(gateway, model=MODEL, max_tokens=200,
                    messages=[{"role": "user", "content": "JSON please."}],
                    response_format={"type": "json_object"})
    assert resp.status_code == 200
    assert isinstance(json.loads(resp.json()["choices"][0]["message"]["content"]), dict)
    assert_valid(validator_for("CreateChatCompletionResponse"), without_extensions(resp.json()))
    assert_ledger_matches(gateway, resp.headers["x-request-id"], resp.json()["usage"])


def assert_ledger_matches(gateway, request_id, usage):
    row = ledger_row(gateway, request_id)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        usage["prompt_tokens"], usage["completion_tokens"])


def test_a_regex_constraint(gateway):
    pattern = r"(yes|no), [0-9]{3}"
    raw = sdk(gateway).chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": "Answer."}], max_tokens=50,
        extra_body={"regex": pattern})
    answer = raw.parse()
    assert re.fullmatch(pattern, answer.choices[0].message.content)
    assert_ledger_matches(gateway, raw.headers["x-request-id"], answer.usage.model_dump())


# ---------------------------------------------------------------- logprobs


def test_logprobs_on_chat_json_and_stream(gateway, validator_for):  # noqa: F811
    client = sdk(gateway)
    answer = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi."}], max_tokens=8,
        logprobs=True, top_logprobs=3)
    content = answer.choices[0].logprobs.content
    assert content and "".join(t.token for t in content) == answer.choices[0].message.content
    assert all(t.logprob <= 0 and len(t.top_logprobs) == 3 for t in content)
    resp = raw_chat(gateway, model=MODEL, messages=[{"role": "user", "content": "Hi."}],
                    max_tokens=8, logprobs=True, top_logprobs=2, stream=True,
                    stream_options={"include_usage": True})
    chunks = stream_chunks(resp)
    assert_ledger_matches(gateway, resp.headers["x-request-id"], chunks[-1]["usage"])
    with_logprobs = [c for c in chunks if c["choices"] and c["choices"][0].get("logprobs")]
    assert with_logprobs
    for chunk in chunks:
        assert_valid(validator_for("CreateChatCompletionStreamResponse"),
                     without_extensions(chunk))


def test_logprobs_on_completions(gateway):
    answer = sdk(gateway).completions.create(model=MODEL, prompt="Once upon", max_tokens=6,
                                             logprobs=2)
    logprobs = answer.choices[0].logprobs
    assert "".join(logprobs.tokens) == answer.choices[0].text
    assert len(logprobs.token_logprobs) == len(logprobs.tokens)
    assert all(len(top) <= 2 for top in logprobs.top_logprobs)


# ---------------------------------------------------------------- reasoning


def test_reasoning_content_and_tokens_in_json(gateway):
    raw = sdk(gateway).chat.completions.with_raw_response.create(
        model=REASONER, messages=[{"role": "user", "content": "Think, then answer."}],
        max_tokens=200)
    answer = raw.parse()
    message = answer.choices[0].message.model_extra
    assert message.get("reasoning_content")
    assert answer.choices[0].message.content
    assert "<think>" not in answer.choices[0].message.content
    details = answer.usage.completion_tokens_details
    assert details is not None and 0 < details.reasoning_tokens < answer.usage.completion_tokens
    row = ledger_row(gateway, raw.headers["x-request-id"])
    assert row["completion_tokens"] == answer.usage.completion_tokens


def test_reasoning_deltas_stream_and_tokens_are_metered(gateway, validator_for):  # noqa: F811
    resp = raw_chat(gateway, model=REASONER, max_tokens=200, stream=True,
                    messages=[{"role": "user", "content": "Think, then answer."}],
                    stream_options={"include_usage": True})
    chunks = stream_chunks(resp)
    for chunk in chunks:
        assert_valid(validator_for("CreateChatCompletionStreamResponse"),
                     without_extensions(chunk))
    thinking = "".join(c["choices"][0]["delta"].get("reasoning_content") or ""
                       for c in chunks if c["choices"])
    said = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks
                   if c["choices"])
    assert thinking and said
    usage = chunks[-1]["usage"]
    assert usage["completion_tokens_details"]["reasoning_tokens"] > 0
    row = ledger_row(gateway, resp.headers["x-request-id"])
    assert row["completion_tokens"] == usage["completion_tokens"]


def test_thinking_can_be_turned_off(gateway):
    answer = sdk(gateway).chat.completions.create(
        model=REASONER, messages=[{"role": "user", "content": "Just answer."}], max_tokens=50,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert not answer.choices[0].message.model_extra.get("reasoning_content")


# ---------------------------------------------------------------- LangChain and LiteLLM


def test_langchain_bind_tools_and_structured_output(gateway):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=MODEL, base_url=gateway.url + "/v1", api_key=gateway.key,
                     max_retries=0, max_tokens=200)
    called = llm.bind_tools([WEATHER]).invoke("What is the weather in Paris?")
    assert called.tool_calls and called.tool_calls[0]["name"] == "get_weather"
    jsonschema.validate(called.tool_calls[0]["args"], WEATHER["function"]["parameters"])
    city = llm.with_structured_output(City, method="json_schema").invoke("Describe Paris.")
    assert isinstance(city, City)


def test_litellm_completion_with_tools(gateway):
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no download at import
    import litellm

    answer = litellm.completion(model=f"openai/{MODEL}", messages=ASK, tools=[WEATHER],
                                api_base=gateway.url + "/v1", api_key=gateway.key)
    calls = answer.choices[0].message.tool_calls
    assert calls and calls[0].function.name == "get_weather"
    jsonschema.validate(json.loads(calls[0].function.arguments),
                        WEATHER["function"]["parameters"])
