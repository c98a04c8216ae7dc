"""Token accounting and the prefix cache: consistent counts, hits on a shared prefix, eviction."""

import requests

from inferegator.simulator.prefix_cache import PrefixCache
from inferegator.simulator.tokenizer import encode, render_chat, tokenize


def chat(sim, messages, **extra):
    body = {"model": "sim-model", "messages": messages, **extra}
    return requests.post(sim.url + "/v1/chat/completions", json=body, timeout=10).json()


def test_tokenizer_rule():
    assert tokenize("Hello, world!") == ["Hello", ",", " world", "!"]
    assert tokenize("<|user|>hi  there\n") == ["<|user|>", "hi", "  there", "\n"]
    assert encode("a b") == encode("a b") and len(encode("a b")) == 2


def test_prompt_plus_completion_is_total_and_prompt_matches_template(sim):
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Explain GPU inference in one sentence."}]
    for n in (1, 2):
        body = chat(sim, messages, n=n, max_tokens=10)
        usage = body["usage"]
        assert usage["prompt_tokens"] + usage["completion_tokens"] == usage["total_tokens"]
        assert usage["prompt_tokens"] == len(tokenize(render_chat(messages)))
        assert usage["completion_tokens"] == sum(
            len(tokenize(c["message"]["content"])) for c in body["choices"])


def test_cached_tokens_rise_on_a_repeated_prefix(start_sim):
    sim = start_sim("--instant", "--page-size", "4")
    system = {"role": "system", "content": "Shared instructions " * 40}
    first = chat(sim, [system, {"role": "user", "content": "question one"}], max_tokens=4)
    second = chat(sim, [system, {"role": "user", "content": "question two"}], max_tokens=4)
    assert first["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached >= 80 and cached % 4 == 0
    assert cached < second["usage"]["prompt_tokens"]
    assert sim.load()["cache_hit_rate"] > 0


def test_next_turn_hits_the_previous_turns_answer(start_sim):
    sim = start_sim("--instant", "--page-size", "1")
    turn1 = [{"role": "user", "content": "Tell me about caches."}]
    answer = chat(sim, turn1, max_tokens=20)
    reply = answer["choices"][0]["message"]
    turn2 = turn1 + [reply, {"role": "user", "content": "And then?"}]
    second = chat(sim, turn2, max_tokens=4)
    prompt1 = answer["usage"]["prompt_tokens"]
    cached = second["usage"]["prompt_tokens_details"]["cached_tokens"]
    assert cached >= prompt1 + answer["usage"]["completion_tokens"] - 1


def test_cached_tokens_fall_after_eviction(start_sim):
    sim = start_sim("--instant", "--page-size", "4", "--cache-capacity-tokens", "256")
    prompt = [{"role": "user", "content": "remember this prefix " * 20}]
    chat(sim, prompt, max_tokens=2)
    assert chat(sim, prompt, max_tokens=2)["usage"]["prompt_tokens_details"]["cached_tokens"] > 0
    for i in range(6):  # fill the cache with other prompts until the first is evicted
        chat(sim, [{"role": "user", "content": f"other text {i} " * 30}], max_tokens=2)
    assert chat(sim, prompt, max_tokens=2)["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    assert sim.load()["num_cached_tokens"] <= 256 + 4


def test_prefix_cache_keeps_locked_paths_and_evicts_lru():
    cache = PrefixCache(capacity_tokens=8, page_size=2)
    a = cache.insert([1, 2, 3, 4])
    cache.lock(a)
    cache.insert([5, 6, 7, 8])
    cache.insert([9, 10, 11, 12])
    cache.evict()
    assert len(cache.match([1, 2, 3, 4])) == 2  # locked: kept
    assert cache.match([5, 6]) == []  # least recently used: gone
    assert len(cache.match([9, 10, 11, 12])) == 2
    assert cache.cached_tokens <= 8
    cache.unlock(a)
