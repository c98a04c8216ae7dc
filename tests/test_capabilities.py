"""Capabilities as a contract, and the fields the gateway checks before upstream.

A model declares what it supports; a request that needs a capability the model lacks is
refused with 400 ``unsupported_parameter`` naming the field, an endpoint it lacks with 404
``unsupported_endpoint`` (as OpenAI answers), and invalid values of the fields OpenAI's
API bounds get 400 with ``param`` — each reaching the openai SDK as its exception class.
/v1/models publishes each model's capabilities in OpenRouter's style. Real gateway, real
simulator; the refusals come before any backend is called (the simulator's request
counter does not move).
"""

import openai
import pytest
import requests

from tests.gateway_fixtures import MODEL, gateway_yaml, launch_gateway, sdk
from tests.support.processes import Simulator

PLAIN = "acme/plain-chat"  # declares only chat and streaming
MESSAGES = [{"role": "user", "content": "Hello."}]
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
IMAGE = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    sim = Simulator("--instant")
    plain = ["  - id: " + PLAIN, "    capabilities: [chat, streaming]",
             "    max_completion_tokens: 64", "    backends:",
             f"      - {{type: sglang, url: '{sim.url}', model: sim-model}}"]
    server = launch_gateway(tmp_path_factory.mktemp("gw"),
                            gateway_yaml([sim]) + "\n".join(plain) + "\n")
    server.sim = sim
    yield server
    server.stop()
    sim.stop()


def requests_seen(sim) -> float:
    return sim.metric("num_requests_total")


@pytest.mark.parametrize("extra, param", [
    ({"tools": [TOOL]}, "tools"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {
        "name": "x", "schema": {"type": "object"}}}}, "response_format"),
    ({"logprobs": True, "top_logprobs": 2}, "logprobs"),
    ({"reasoning_effort": "low"}, "reasoning_effort"),
    ({"extra_body": {"regex": "[0-9]+"}}, "regex"),
    ({"extra_body": {"ebnf": "root ::= \"a\""}}, "ebnf"),
    ({"extra_body": {"chat_template_kwargs": {"enable_thinking": True}}},
     "chat_template_kwargs.enable_thinking"),
    ({"messages": [{"role": "user", "content": [{"type": "text", "text": "What is it?"},
                                                IMAGE]}]}, "messages[0].content[1]"),
])
def test_a_feature_the_model_lacks_is_refused_naming_the_field(gateway, extra, param):
    before = requests_seen(gateway.sim)
    body = {"model": PLAIN, "messages": MESSAGES, **extra}
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(gateway).chat.completions.create(**body)
    assert (caught.value.code, caught.value.param) == ("unsupported_parameter", param)
    assert PLAIN in caught.value.message
    assert requests_seen(gateway.sim) == before  # refused before any backend call


def test_a_model_that_declares_them_takes_them(gateway):
    answer = sdk(gateway).chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=5, tools=[TOOL], logprobs=True,
        top_logprobs=2, response_format={"type": "json_object"})
    assert answer.choices


def test_an_endpoint_the_model_lacks_is_a_404(gateway):
    with pytest.raises(openai.NotFoundError) as caught:
        sdk(gateway).completions.create(model=PLAIN, prompt="Hi")
    assert (caught.value.code, caught.value.param) == ("unsupported_endpoint", "model")
    assert "/v1/completions" in caught.value.message


def test_max_completion_tokens_bounds_the_answer(gateway):
    client = sdk(gateway)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=PLAIN, messages=MESSAGES, max_tokens=65)
    assert (caught.value.code, caught.value.param) == ("invalid_value", "max_tokens")
    assert client.chat.completions.create(model=PLAIN, messages=MESSAGES,
                                          max_tokens=64).choices


@pytest.mark.parametrize("extra, param, code", [
    ({"temperature": "hot"}, "temperature", "invalid_type"),
    ({"temperature": 2.5}, "temperature", "invalid_value"),
    ({"top_p": 1.5}, "top_p", "invalid_value"),
    ({"presence_penalty": -3}, "presence_penalty", "invalid_value"),
    ({"frequency_penalty": True}, "frequency_penalty", "invalid_type"),
    ({"seed": 1.5}, "seed", "invalid_type"),
    ({"logprobs": True, "top_logprobs": 50}, "top_logprobs", "invalid_value"),
    ({"top_logprobs": 2}, "top_logprobs", "invalid_value"),
    ({"logprobs": "yes"}, "logprobs", "invalid_type"),
    ({"tool_choice": "auto"}, "tool_choice", "invalid_value"),
    ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}},
     "tool_choice", "invalid_value"),
    ({"tools": [TOOL], "tool_choice": "sometimes"}, "tool_choice", "invalid_value"),
    ({"tools": {"not": "a list"}}, "tools", "invalid_type"),
    ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]},
     "tools[0].function.name", "invalid_value"),
    ({"tools": [{"type": "function"}]}, "tools[0].function", "missing_required_parameter"),
    ({"stop": ["x"] * 65}, "stop", "invalid_value"),
    ({"stop": 7}, "stop", "invalid_type"),
    ({"response_format": {"type": "xml"}}, "response_format", "invalid_value"),
    ({"response_format": {"type": "json_schema", "json_schema": {"schema": 3}}},
     "response_format", "invalid_value"),
])
def test_invalid_values_get_a_400_naming_the_field(gateway, extra, param, code):
    before = requests_seen(gateway.sim)
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(gateway).chat.completions.create(model=MODEL, messages=MESSAGES, **extra)
    assert (caught.value.code, caught.value.param) == (code, param)
    assert requests_seen(gateway.sim) == before


@pytest.mark.parametrize("extra, param, code", [
    ({"logprobs": 50}, "logprobs", "invalid_value"),
    ({"temperature": -1}, "temperature", "invalid_value"),
])
def test_completions_fields_are_checked_too(gateway, extra, param, code):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(gateway).completions.create(model=MODEL, prompt="Hi", **extra)
    assert (caught.value.code, caught.value.param) == (code, param)


def test_unknown_fields_still_pass_through(gateway):
    answer = sdk(gateway).chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=5,
        extra_body={"top_k": 5, "min_p": 0.1, "some_future_field": {"x": 1}})
    assert answer.choices[0].message.content


def test_models_publish_capabilities_in_openrouters_style(gateway):
    headers = {"Authorization": f"Bearer {gateway.key}"}
    cards = {c["id"]: c for c in requests.get(gateway.url + "/v1/models", headers=headers,
                                              timeout=10).json()["data"]}
    full, plain = cards[MODEL], cards[PLAIN]
    assert {"tools", "tool_choice", "response_format", "structured_outputs", "logprobs",
            "top_logprobs", "reasoning", "regex", "temperature", "max_tokens"} <= set(
        full["supported_parameters"])
    assert "tools" not in plain["supported_parameters"]
    assert "temperature" in plain["supported_parameters"]
    assert plain["architecture"] == {"input_modalities": ["text"],
                                     "output_modalities": ["text"]}
    assert plain["max_completion_tokens"] == 64 and full["max_completion_tokens"] is None
