"""Reasoning models on the simulator (``--reasoning-parser``), as SGLang 0.5.23 serves them.

The model thinks first (``<think>...</think>``); with ``separate_reasoning`` (default) the
thinking is ``message.reasoning_content`` / ``delta.reasoning_content`` and ``content`` the
rest. Usage counts the thinking in ``completion_tokens`` and reports it twice, as SGLang's
UsageProcessor does: ``usage.reasoning_tokens`` and ``usage.completion_tokens_details.
reasoning_tokens`` (the latter null when there is none). qwen3 stops thinking with
``chat_template_kwargs: {"enable_thinking": false}``; deepseek-r1 always thinks.
"""

import openai
import pytest
import requests

from inferegator.simulator.tokenizer import render_chat, tokenize
from tests.support.processes import Simulator
from tests.test_gateway_openapi import assert_valid, validator_for  # noqa: F401
from tests.test_sim_tools import ASK, MODEL, TOOLS, chat_view, data_events, post


@pytest.fixture(scope="module")
def qwen3():
    server = Simulator("--instant", "--reasoning-parser", "qwen3",
                       "--tool-call-parser", "qwen25")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def r1():
    server = Simulator("--instant", "--reasoning-parser", "deepseek-r1")
    yield server
    server.stop()


def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


QUESTION = [{"role": "user", "content": "Think, then answer: why cache prefixes?"}]


def test_qwen3_json_reasoning_content_and_reasoning_tokens(qwen3, validator_for):  # noqa: F811
    body = post(qwen3, {"messages": QUESTION}).json()
    assert_valid(validator_for("CreateChatCompletionResponse"), chat_view(body))
    (choice,) = body["choices"]
    message, usage = choice["message"], body["usage"]
    thought, content = message["reasoning_content"], message["content"]
    assert thought.strip() and content.strip() and "think>" not in thought + content
    assert choice["finish_reason"] == "stop"
    # What the model wrote: <think>, the thinking, </think>, then the answer.
    thinking = len(tokenize("<think>" + thought + "</think>"))
    assert usage["reasoning_tokens"] == thinking > 0
    assert usage["completion_tokens_details"] == {"reasoning_tokens": thinking}
    assert usage["completion_tokens"] == thinking + len(tokenize(content))
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert usage["prompt_tokens"] == len(tokenize(render_chat(QUESTION)))


def test_qwen3_stream_splits_the_same_output(qwen3, validator_for):  # noqa: F811
    whole = post(qwen3, {"messages": QUESTION}).json()
    stream = client(qwen3).chat.completions.create(
        model=MODEL, messages=QUESTION, stream=True, stream_options={"include_usage": True})
    thought = content = ""
    finish = usage = None
    order = []
    for chunk in stream:
        usage = chunk.usage or usage
        for choice in chunk.choices:
            piece = getattr(choice.delta, "reasoning_content", None)
            if piece:
                thought += piece
                order.append("reasoning")
            if choice.delta.content:
                content += choice.delta.content
                order.append("content")
            finish = choice.finish_reason or finish
    message = whole["choices"][0]["message"]
    assert (thought, content) == (message["reasoning_content"], message["content"])
    assert order == sorted(order, key=lambda kind: kind == "content")  # thinking first
    assert order.count("reasoning") > 1  # streamed as it comes
    assert finish == "stop"
    assert usage.completion_tokens_details.reasoning_tokens == whole["usage"]["reasoning_tokens"]
    assert usage.model_dump()["reasoning_tokens"] == whole["usage"]["reasoning_tokens"]
    events, done = data_events(post(qwen3, {"messages": QUESTION, "stream": True,
                                            "stream_options": {"include_usage": True}},
                                    stream=True))
    validator = validator_for("CreateChatCompletionStreamResponse")
    assert done
    for event in events:
        assert_valid(validator, chat_view(event))


def test_enable_thinking_false_answers_directly(qwen3):
    body = post(qwen3, {"messages": QUESTION,
                        "chat_template_kwargs": {"enable_thinking": False}}).json()
    message, usage = body["choices"][0]["message"], body["usage"]
    assert message["reasoning_content"] is None and message["content"]
    assert usage["reasoning_tokens"] == 0 and usage["completion_tokens_details"] is None
    assert usage["completion_tokens"] == len(tokenize(message["content"]))
    # Qwen3's template closes an empty thinking block in the prompt.
    assert usage["prompt_tokens"] == len(tokenize(render_chat(
        QUESTION, generation_prefix="<think>\n\n</think>\n\n")))
    effort = post(qwen3, {"messages": QUESTION, "reasoning_effort": "none"}).json()
    assert effort["usage"]["reasoning_tokens"] == 0


def test_max_tokens_inside_the_thinking(qwen3):
    body = post(qwen3, {"messages": QUESTION, "max_tokens": 6}).json()
    (choice,) = body["choices"]
    assert choice["finish_reason"] == "length" and choice["message"]["content"] == ""
    assert choice["message"]["reasoning_content"]
    assert body["usage"]["reasoning_tokens"] == body["usage"]["completion_tokens"] == 6


def test_stream_reasoning_false_sends_the_thinking_at_once(qwen3):
    events, done = data_events(post(qwen3, {"messages": QUESTION, "stream": True,
                                            "stream_reasoning": False}, stream=True))
    pieces = [c["delta"]["reasoning_content"] for e in events for c in e["choices"]
              if c["delta"].get("reasoning_content")]
    whole = post(qwen3, {"messages": QUESTION}).json()["choices"][0]["message"]
    assert done and pieces == [whole["reasoning_content"]]


def test_n_choices_sum_their_reasoning_tokens(qwen3):
    body = post(qwen3, {"messages": QUESTION, "n": 2}).json()
    per_choice = [len(tokenize("<think>" + c["message"]["reasoning_content"] + "</think>"))
                  for c in body["choices"]]
    assert body["usage"]["reasoning_tokens"] == sum(per_choice)
    assert per_choice[0] != per_choice[1] or body["choices"][0] != body["choices"][1]


def test_thinking_then_tool_calls(qwen3):
    body = post(qwen3, {"messages": ASK, "tools": TOOLS[:1]}).json()
    (choice,) = body["choices"]
    assert choice["message"]["reasoning_content"] and choice["finish_reason"] == "tool_calls"
    assert [c["function"]["name"] for c in choice["message"]["tool_calls"]] == ["get_weather"]
    assert body["usage"]["reasoning_tokens"] > 0


def test_thinking_then_structured_output(qwen3):
    body = post(qwen3, {"messages": QUESTION, "regex": "(yes|no)"}).json()
    message = body["choices"][0]["message"]
    assert message["reasoning_content"] and message["content"] in ("yes", "no")
    assert body["usage"]["completion_tokens"] == body["usage"]["reasoning_tokens"] + 1


def test_deepseek_r1_thinks_after_the_templates_open_tag(r1):
    body = post(r1, {"messages": QUESTION,
                     "chat_template_kwargs": {"enable_thinking": False}}).json()
    message, usage = body["choices"][0]["message"], body["usage"]
    assert message["reasoning_content"] and message["content"]  # it always thinks
    assert usage["prompt_tokens"] == len(tokenize(render_chat(QUESTION,
                                                              generation_prefix="<think>\n")))
    # No <think> in the output: the prompt opened it.
    assert usage["reasoning_tokens"] == len(tokenize(message["reasoning_content"] + "</think>"))
    raw = post(r1, {"messages": QUESTION, "separate_reasoning": False}).json()
    text = raw["choices"][0]["message"]["content"]
    assert raw["choices"][0]["message"]["reasoning_content"] is None
    assert text == message["reasoning_content"] + "</think>" + message["content"]
    assert raw["usage"]["reasoning_tokens"] == usage["reasoning_tokens"]


def test_without_a_parser_there_is_no_thinking(sim):
    body = post(sim, {"messages": QUESTION, "separate_reasoning": True}).json()
    assert body["choices"][0]["message"]["reasoning_content"] is None
    assert body["usage"]["reasoning_tokens"] == 0


def test_server_info_names_the_parsers(qwen3, sim):
    info = requests.get(qwen3.url + "/server_info", timeout=5).json()
    assert (info["reasoning_parser"], info["tool_call_parser"]) == ("qwen3", "qwen25")
    assert requests.get(sim.url + "/server_info", timeout=5).json()["reasoning_parser"] is None


def test_unknown_reasoning_parser_is_refused_at_start():
    with pytest.raises(RuntimeError, match="--reasoning-parser must be one of"):
        Simulator("--reasoning-parser", "o1")
