"""Token logprobs on the simulator, in SGLang 0.5.23's shapes.

Chat: ``logprobs: true`` (+ ``top_logprobs: k``) gives ``choices[].logprobs.content[]`` of
``{token, bytes, logprob, top_logprobs: [{token, bytes, logprob}]}``, one per generated token
(the simulator's tokens), streamed with the chunk of their delta. Completions:
``logprobs: k`` gives ``{text_offset, token_logprobs, tokens, top_logprobs}`` with
``text_offset`` -1 (SGLang does not fill it). Values are deterministic and <= 0; the chosen
token is the most likely. SGLang does not bound top_logprobs (no 400 for 0..20).
"""

import json
import math

import openai
import pytest

from inferegator.simulator.tokenizer import tokenize
from tests.test_gateway_openapi import assert_valid, validator_for  # noqa: F401
from tests.test_sim_tools import MODEL, chat_view, data_events, post

ASK = [{"role": "user", "content": "Say something with logprobs."}]


def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def check_entry(entry, k):
    """One ChatCompletionTokenLogprob: bytes, a logprob <= 0, k ranked alternatives."""
    assert entry["bytes"] == list(entry["token"].encode("utf-8"))
    assert entry["logprob"] <= 0
    top = entry["top_logprobs"]
    assert len(top) == k
    if k:
        assert top[0]["token"] == entry["token"] and top[0]["logprob"] == entry["logprob"]
        assert [t["logprob"] for t in top] == sorted((t["logprob"] for t in top), reverse=True)
        assert len({t["token"] for t in top}) == k
        assert sum(math.exp(t["logprob"]) for t in top) <= 1.0
        for t in top:
            assert t["bytes"] == list(t["token"].encode("utf-8"))


def test_chat_logprobs_with_the_sdk(sim):
    answer = client(sim).chat.completions.create(model=MODEL, messages=ASK, logprobs=True,
                                                 top_logprobs=3, max_tokens=12)
    (choice,) = answer.choices
    content = choice.logprobs.content
    assert len(content) == answer.usage.completion_tokens == 12
    assert "".join(t.token for t in content) == choice.message.content
    assert [t.token for t in content] == tokenize(choice.message.content)
    for token in content:
        check_entry(token.model_dump(), 3)


def test_chat_logprobs_json_is_deterministic_and_valid(sim, validator_for):  # noqa: F811
    body = {"messages": ASK, "logprobs": True, "top_logprobs": 2, "n": 2, "max_tokens": 6}
    first, second = post(sim, body).json(), post(sim, body).json()
    assert [c["logprobs"] for c in first["choices"]] == [c["logprobs"] for c in second["choices"]]
    assert first["choices"][0]["logprobs"] != first["choices"][1]["logprobs"]
    assert_valid(validator_for("CreateChatCompletionResponse"), chat_view(first))
    without = post(sim, {**body, "top_logprobs": None}).json()
    for entry in without["choices"][0]["logprobs"]["content"]:
        check_entry(entry, 0)
    assert post(sim, {"messages": ASK, "max_tokens": 3}).json()["choices"][0]["logprobs"] \
        is None


@pytest.mark.parametrize("parser", ["qwen25", "none"])
def test_chat_stream_carries_each_deltas_logprobs(start_sim, validator_for, parser):  # noqa: F811
    sim = start_sim("--instant", "--tool-call-parser", parser)
    plain = post(sim, {"messages": ASK, "max_tokens": 10}).json()["choices"][0]["message"]
    stop = tokenize(plain["content"])[5]
    body = {"messages": ASK, "logprobs": True, "top_logprobs": 2, "max_tokens": 10,
            "stop": [stop]}
    whole = post(sim, body).json()
    events, done = data_events(post(sim, {**body, "stream": True}, stream=True))
    assert done
    validator = validator_for("CreateChatCompletionStreamResponse")
    streamed, own = [], []
    for event in events:
        assert_valid(validator, chat_view(event))
        for choice in event["choices"]:
            if choice["logprobs"] is None:
                continue
            tokens = choice["logprobs"]["content"]
            if choice["delta"].get("content"):  # logprobs ride on their delta
                assert "".join(t["token"] for t in tokens) == choice["delta"]["content"]
            else:
                assert choice["delta"] == {"reasoning_content": None}
                own += tokens
            streamed += tokens
    expected = whole["choices"][0]["logprobs"]["content"]
    assert [t["token"] for t in expected[5:]] == [stop]  # the stop's token, not shown
    if parser == "none":  # SGLang drops a step's logprobs when it makes no chunk ...
        assert own == [] and streamed == expected[:5]
    else:  # ... unless a parser is configured: then they get a chunk of their own
        assert own == expected[5:] and streamed == expected


def test_logprobs_count_the_token_a_stop_string_cut(sim):
    plain = post(sim, {"messages": ASK, "max_tokens": 8}).json()["choices"][0]["message"][
        "content"]
    stop = tokenize(plain)[3]
    answer = post(sim, {"messages": ASK, "max_tokens": 8, "stop": stop, "logprobs": True})
    choice = answer.json()["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["matched_stop"] == stop
    tokens = [t["token"] for t in choice["logprobs"]["content"]]
    assert tokens == tokenize(plain)[:4]  # the stop's own token is counted and scored
    assert len(tokens) == answer.json()["usage"]["completion_tokens"]


def test_completions_logprobs_json_and_stream(sim, validator_for):  # noqa: F811
    body = {"prompt": "Once upon a time", "logprobs": 3, "max_tokens": 7}
    answer = post(sim, body, path="/v1/completions").json()
    assert_valid(validator_for("CreateCompletionResponse"), {
        **answer, "usage": {k: v for k, v in answer["usage"].items()
                            if k != "completion_tokens_details"}})
    (choice,) = answer["choices"]
    logprobs = choice["logprobs"]
    assert list(logprobs) == ["text_offset", "token_logprobs", "tokens", "top_logprobs"]
    assert logprobs["text_offset"] == [-1] * 7
    assert "".join(logprobs["tokens"]) == choice["text"]
    assert all(lp <= 0 for lp in logprobs["token_logprobs"])
    for token, lp, top in zip(logprobs["tokens"], logprobs["token_logprobs"],
                              logprobs["top_logprobs"], strict=True):
        assert len(top) == 3 and top[token] == lp == max(top.values())
    merged = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    stream = client(sim).completions.create(model=MODEL, stream=True, **body)
    for event in stream:
        for c in event.choices:
            if c.logprobs is not None:
                assert c.text
                for key in merged:
                    merged[key] += getattr(c.logprobs, key)
    assert merged == {k: logprobs[k] for k in merged}
    sdk_answer = client(sim).completions.create(model=MODEL, **body)
    assert sdk_answer.choices[0].logprobs.tokens == logprobs["tokens"]


def test_completions_logprobs_zero_has_no_top_logprobs(sim):
    logprobs = post(sim, {"prompt": "Hi", "logprobs": 0, "max_tokens": 3},
                    path="/v1/completions").json()["choices"][0]["logprobs"]
    assert len(logprobs["tokens"]) == 3 and logprobs["top_logprobs"] == []
    assert post(sim, {"prompt": "Hi", "max_tokens": 3},
                path="/v1/completions").json()["choices"][0]["logprobs"] is None


def test_sglang_does_not_bound_top_logprobs(sim):
    """No 400 outside OpenAI's 0..20: more alternatives, or none for a negative count."""
    wide = post(sim, {"messages": ASK, "logprobs": True, "top_logprobs": 25, "max_tokens": 2})
    for entry in wide.json()["choices"][0]["logprobs"]["content"]:
        check_entry(entry, 25)
    negative = post(sim, {"messages": ASK, "logprobs": True, "top_logprobs": -1,
                          "max_tokens": 2})
    assert all(e["top_logprobs"] == [] for e in negative.json()["choices"][0]["logprobs"][
        "content"])


@pytest.mark.parametrize("path, extra, param", [
    ("/v1/chat/completions", {"logprobs": "yes"}, "logprobs"),
    ("/v1/chat/completions", {"logprobs": True, "top_logprobs": "2"}, "top_logprobs"),
    ("/v1/completions", {"logprobs": True}, "logprobs"),
    ("/v1/completions", {"logprobs": [1]}, "logprobs"),
])
def test_mistyped_logprobs_are_400s(sim, path, extra, param):
    body = {"messages": ASK} if path.endswith("chat/completions") else {"prompt": "x"}
    resp = post(sim, {**body, **extra}, path=path)
    assert resp.status_code == 400 and resp.json()["param"] == param


def test_tokens_of_a_tool_call_carry_logprobs_in_chunks_of_their_own(start_sim):
    sim = start_sim("--instant", "--tool-call-parser", "qwen25")
    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "string"}}, "required": ["x"]}}}]
    body = {"messages": ASK, "tools": tools, "logprobs": True}
    answer = post(sim, body).json()
    completion = answer["usage"]["completion_tokens"]
    assert len(answer["choices"][0]["logprobs"]["content"]) == completion
    events, done = data_events(post(sim, {**body, "stream": True}, stream=True))
    scored = [e["choices"][0] for e in events if e["choices"][0]["logprobs"]]
    # SGLang's flush: no tool-call chunk carries logprobs; each step gets a chunk of its own.
    assert all(c["delta"] == {"reasoning_content": None} for c in scored)
    assert sum(len(c["logprobs"]["content"]) for c in scored) == completion
    assert json.dumps([t for c in scored for t in c["logprobs"]["content"]]) == json.dumps(
        answer["choices"][0]["logprobs"]["content"])
