"""Each simulator endpoint answers with SGLang's field names and shapes."""

import json

import openai
import pytest
import requests

from inferegator.simulator.tokenizer import encode, tokenize

CHAT = {"model": "sim-model", "messages": [{"role": "user", "content": "Say something."}]}


def post(sim, path, body, **kw):
    return requests.post(sim.url + path, json=body, timeout=10, **kw)


def sse_events(resp):
    events = []
    for line in resp.iter_lines():
        if line.startswith(b"data: "):
            payload = line[len(b"data: "):]
            events.append(payload if payload == b"[DONE]" else json.loads(payload))
    return events


def test_health_endpoints_answer_200_with_empty_body(sim):
    for path in ("/health", "/health_generate"):
        resp = requests.get(sim.url + path, timeout=5)
        assert resp.status_code == 200 and resp.content == b""


def test_model_info_and_its_old_name(sim):
    for path in ("/model_info", "/get_model_info"):
        info = requests.get(sim.url + path, timeout=5).json()
        assert info["model_path"] == "sim-model"
        assert {"tokenizer_path", "is_generation", "preferred_sampling_params",
                "weight_version", "model_type", "architectures"} <= info.keys()
        assert info["is_generation"] is True


def test_server_info_and_its_old_name(sim):
    for path in ("/server_info", "/get_server_info"):
        info = requests.get(sim.url + path, timeout=5).json()
        assert info["context_length"] == 32768
        assert info["max_running_requests"] == 64
        assert info["dp_size"] == 1 and info["served_model_name"] == "sim-model"
        assert isinstance(info["internal_states"], list) and info["internal_states"]
        assert "max_total_num_tokens" in info and "version" in info


def test_models_list_and_one_model(sim):
    listing = requests.get(sim.url + "/v1/models", timeout=5).json()
    assert listing["object"] == "list"
    (card,) = listing["data"]
    assert card == {"id": "sim-model", "object": "model", "created": card["created"],
                    "owned_by": "sglang", "root": "sim-model", "parent": None,
                    "max_model_len": 32768}
    assert requests.get(sim.url + "/v1/models/sim-model", timeout=5).json() == card
    missing = requests.get(sim.url + "/v1/models/other", timeout=5)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"


def test_loads_new_and_old_endpoints(sim):
    loads = requests.get(sim.url + "/v1/loads", timeout=5).json()
    assert {"timestamp", "version", "loads"} <= loads.keys()
    (rank,) = loads["loads"]
    assert {"dp_rank", "num_running_reqs", "num_waiting_reqs", "num_used_tokens",
            "num_total_tokens", "max_total_num_tokens", "token_usage", "gen_throughput",
            "cache_hit_rate", "utilization", "max_running_requests"} <= rank.keys()
    old = requests.get(sim.url + "/get_load", timeout=5).json()
    assert old[0].keys() == {"dp_rank", "num_reqs", "num_waiting_reqs", "num_tokens"}
    prom = requests.get(sim.url + "/v1/loads?format=prometheus", timeout=5).text
    assert 'sglang_num_running_reqs{dp_rank="0"} ' in prom


def test_metrics_use_sglang_names(sim):
    post(sim, "/v1/chat/completions", CHAT)
    text = requests.get(sim.url + "/metrics", timeout=5).text
    for name in ("num_running_reqs", "num_queue_reqs", "num_used_tokens", "token_usage",
                 "gen_throughput", "cache_hit_rate", "prompt_tokens_total",
                 "generation_tokens_total", "cached_tokens_total", "num_requests_total"):
        assert f'sglang:{name}{{model_name="sim-model"}} ' in text, name
    for name in ("time_to_first_token_seconds", "inter_token_latency_seconds",
                 "e2e_request_latency_seconds"):
        assert f"# TYPE sglang:{name} histogram" in text
        assert f'sglang:{name}_bucket{{model_name="sim-model",le="+Inf"}}' in text
    assert sim.metric("num_requests_total") >= 1


def test_chat_completion_json(sim):
    body = post(sim, "/v1/chat/completions", {**CHAT, "max_tokens": 12}).json()
    assert body["object"] == "chat.completion" and body["model"] == "sim-model"
    (choice,) = body["choices"]
    assert choice["message"]["role"] == "assistant" and choice["message"]["content"]
    assert choice["finish_reason"] in ("stop", "length") and "matched_stop" in choice
    usage = body["usage"]
    assert usage["completion_tokens"] == len(tokenize(choice["message"]["content"]))
    assert usage["prompt_tokens_details"]["cached_tokens"] >= 0


def test_max_completion_tokens_wins_over_max_tokens(sim):
    body = post(sim, "/v1/chat/completions",
                {**CHAT, "max_tokens": 30, "max_completion_tokens": 3,
                 "ignore_eos": True}).json()
    assert body["usage"]["completion_tokens"] == 3
    assert body["choices"][0]["finish_reason"] == "length"


def test_chat_stream_with_usage(sim):
    resp = post(sim, "/v1/chat/completions",
                {**CHAT, "stream": True, "max_tokens": 8, "ignore_eos": True,
                 "stream_options": {"include_usage": True}}, stream=True)
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = sse_events(resp)
    assert events[-1] == b"[DONE]"
    first, *middle, finish, usage_chunk, _ = events
    assert first["choices"][0]["delta"]["role"] == "assistant"
    assert all(e["object"] == "chat.completion.chunk" for e in events[:-1])
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in middle)
    assert finish["choices"][0]["finish_reason"] == "length"
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens"] == 8 == len(tokenize(text))


def test_chat_stream_without_usage_has_no_usage_chunk(sim):
    events = sse_events(post(sim, "/v1/chat/completions",
                             {**CHAT, "stream": True, "max_tokens": 4}, stream=True))
    assert events[-1] == b"[DONE]"
    assert all(e.get("usage") is None for e in events[:-1])


def test_n_choices(sim):
    body = post(sim, "/v1/chat/completions",
                {**CHAT, "n": 3, "max_tokens": 6, "ignore_eos": True}).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert body["usage"]["completion_tokens"] == 18
    texts = {c["message"]["content"] for c in body["choices"]}
    assert len(texts) > 1  # each choice samples with its own seed


def test_stop_string_cuts_output(sim):
    full = post(sim, "/v1/chat/completions",
                {**CHAT, "max_tokens": 40, "ignore_eos": True}).json()
    text = full["choices"][0]["message"]["content"]
    stop = text.split()[3]
    cut = post(sim, "/v1/chat/completions",
               {**CHAT, "max_tokens": 40, "ignore_eos": True, "stop": [stop]}).json()
    choice = cut["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["matched_stop"] == stop
    assert choice["message"]["content"] == text[:text.index(stop)]
    streamed = sse_events(post(sim, "/v1/chat/completions",
                               {**CHAT, "max_tokens": 40, "ignore_eos": True, "stop": stop,
                                "stream": True}, stream=True))
    assert "".join(e["choices"][0]["delta"].get("content") or ""
                   for e in streamed[:-1]) == text[:text.index(stop)]


def test_output_is_deterministic_per_prompt_and_seed(sim):
    def answer(seed):
        body = post(sim, "/v1/chat/completions", {**CHAT, "seed": seed, "max_tokens": 20})
        return body.json()["choices"][0]["message"]["content"]

    assert answer(1) == answer(1)
    assert answer(1) != answer(2)


def test_completions_json_and_stream(sim):
    body = post(sim, "/v1/completions", {"model": "sim-model", "prompt": "Once upon"}).json()
    assert body["object"] == "text_completion"
    assert body["usage"]["completion_tokens"] <= 16  # SGLang's default max_tokens
    assert body["usage"]["prompt_tokens"] == 2
    events = sse_events(post(sim, "/v1/completions",
                             {"prompt": "Once upon", "stream": True, "max_tokens": 5,
                              "stream_options": {"include_usage": True}}, stream=True))
    assert events[-1] == b"[DONE]" and events[-2]["usage"]["prompt_tokens"] == 2
    assert all(e["object"] == "text_completion" for e in events[:-1])


def test_generate_json_and_cumulative_stream(sim):
    result = post(sim, "/generate", {"text": "The capital of France is",
                                     "sampling_params": {"max_new_tokens": 5,
                                                         "ignore_eos": True}}).json()
    assert len(result["output_ids"]) == 5
    meta = result["meta_info"]
    assert meta["finish_reason"] == {"type": "length", "length": 5}
    assert {"id", "prompt_tokens", "completion_tokens", "cached_tokens",
            "e2e_latency"} <= meta.keys()
    events = sse_events(post(sim, "/generate", {"input_ids": [1, 2, 3, 4], "stream": True,
                                                "sampling_params": {"max_new_tokens": 4,
                                                                    "ignore_eos": True}},
                             stream=True))
    texts = [e["text"] for e in events[:-1]]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:]))  # cumulative
    assert events[-2]["meta_info"]["finish_reason"]["type"] == "length"
    assert events[-1] == b"[DONE]"


def test_flush_cache_when_idle(sim):
    resp = requests.post(sim.url + "/flush_cache", timeout=5)
    assert resp.status_code == 200 and resp.text.startswith("Cache flushed.")


def test_abort_request_of_unknown_rid_is_accepted(sim):
    resp = requests.post(sim.url + "/abort_request", json={"rid": "nope"}, timeout=5)
    assert resp.status_code == 200 and resp.content == b""


def test_continuous_usage_stats_put_running_usage_on_every_chunk(sim):
    events = sse_events(post(sim, "/v1/chat/completions",
                             {**CHAT, "stream": True, "max_tokens": 5, "ignore_eos": True,
                              "stream_options": {"include_usage": True,
                                                 "continuous_usage_stats": True}},
                             stream=True))
    content = [e for e in events[:-1] if e["choices"] and e["choices"][0]["delta"].get("content")]
    assert [e["usage"]["completion_tokens"] for e in content] == [1, 2, 3, 4, 5]
    assert all(e["usage"]["prompt_tokens"] == content[0]["usage"]["prompt_tokens"]
               for e in content)


def completion(sim, **body):
    return post(sim, "/v1/completions", {"model": "sim-model", **body})


def test_completion_batch_of_strings_is_prompt_major_with_summed_usage(sim):
    prompts = ["Once upon a time", "In a galaxy far away"]
    batch = completion(sim, prompt=prompts, n=2, max_tokens=6, ignore_eos=True).json()
    assert [c["index"] for c in batch["choices"]] == [0, 1, 2, 3]
    for p, prompt in enumerate(prompts):  # choice p * n + j is prompt p's sampling j
        single = completion(sim, prompt=prompt, n=2, max_tokens=6, ignore_eos=True).json()
        assert [c["text"] for c in batch["choices"][2 * p:2 * p + 2]] == \
            [c["text"] for c in single["choices"]]
    usage = batch["usage"]
    assert usage["prompt_tokens"] == sum(len(tokenize(p)) for p in prompts) == 9
    assert usage["completion_tokens"] == 24
    assert usage["total_tokens"] == 33


@pytest.mark.parametrize("prompt, choices, prompt_tokens", [
    ("Once upon a time", 1, 4),
    (["Once upon a time", "It was a dark night"], 2, 9),
    ([1, 2, 3, 4, 5], 1, 5),
    ([[1, 2, 3], [4, 5, 6, 7], [8]], 3, 8),
])
def test_openai_sdk_sends_every_prompt_shape(sim, prompt, choices, prompt_tokens):
    client = openai.OpenAI(base_url=sim.url + "/v1", api_key="unused", max_retries=0)
    answer = client.completions.create(model="sim-model", prompt=prompt, max_tokens=4,
                                       extra_body={"ignore_eos": True})
    assert [c.index for c in answer.choices] == list(range(choices))
    assert all(len(tokenize(c.text)) == 4 for c in answer.choices)
    assert answer.usage.prompt_tokens == prompt_tokens
    assert answer.usage.completion_tokens == 4 * choices


def test_token_ids_in_a_batch_complete_like_their_text(sim):
    text = "The same prompt twice"
    by_text = completion(sim, prompt=text, max_tokens=5).json()["choices"][0]["text"]
    batch = completion(sim, prompt=[encode(text), [7, 8]], max_tokens=5).json()
    assert batch["choices"][0]["text"] == by_text != batch["choices"][1]["text"]


def test_a_streamed_batch_carries_every_choice_and_the_summed_usage(sim):
    body = {"prompt": [[1, 2, 3], [4, 5, 6, 7]], "n": 2, "max_tokens": 5, "ignore_eos": True}
    answer = completion(sim, **body).json()
    events = sse_events(post(sim, "/v1/completions",
                             {**body, "stream": True, "stream_options": {"include_usage": True}},
                             stream=True))
    assert events[-1] == b"[DONE]"
    *chunks, usage_chunk, _ = events
    texts = {}
    finished = set()
    for chunk in chunks:
        (choice,) = chunk["choices"]
        texts[choice["index"]] = texts.get(choice["index"], "") + choice["text"]
        if choice["finish_reason"]:
            finished.add(choice["index"])
    assert finished == {0, 1, 2, 3}
    assert [texts[i] for i in range(4)] == [c["text"] for c in answer["choices"]]
    assert usage_chunk["usage"] == answer["usage"]
    assert usage_chunk["usage"]["prompt_tokens"] == 7


@pytest.mark.parametrize("prompt, message", [
    ([""], "Prompt cannot be empty"),
    ([[]], "Prompt cannot be empty"),
    ([], "Prompt cannot be empty"),
    (["a", 1], "prompt must be a string, a list of strings, a list of token ids or a list "
               "of token-id lists"),
    ([[1], ["a"]], "prompt must be a string, a list of strings, a list of token ids or a "
                   "list of token-id lists"),
])
def test_bad_completion_prompts_are_refused(sim, prompt, message):
    resp = completion(sim, prompt=prompt)
    assert resp.status_code == 400
    assert (resp.json()["message"], resp.json()["param"]) == (message, "prompt")


def test_every_prompt_of_a_batch_must_fit_the_context(start_sim):
    small = start_sim("--instant", "--context-length", "16")
    assert completion(small, prompt=[[1, 2], [3]], max_tokens=8).status_code == 200
    resp = completion(small, prompt=[[1, 2], list(range(1, 12))], max_tokens=8)
    assert resp.status_code == 400
    assert resp.json()["message"].startswith("Requested token count exceeds the model's")
