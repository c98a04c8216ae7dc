"""Prefill runs as one batched step per scheduling round, as SGLang's scheduler runs it.

Concurrent prompts share a round's time, a long prompt is prefilled in chunks, a cache hit
shortens the round it joins, and running decodes stall while a prefill round runs. Timings
are read from the simulator's own ``sim_timestamps``; every bound is a lower bound that the
model guarantees (a round never ends early), or a comparison with a wide margin.
"""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.support.processes import wait_until

RATE = 20000.0  # the default --prefill-tokens-per-s
SLACK = 0.95  # gevent's timers may fire a hair early


def ids(start: int, count: int) -> list[int]:
    """A prompt of count distinct token ids that no other prompt here shares."""
    return list(range(start, start + count))


def generate(sim, prompt, max_new_tokens=1, **extra):
    """A /generate call with token ids; returns its meta_info."""
    body = {"input_ids": prompt, "sampling_params": {"max_new_tokens": max_new_tokens,
                                                     "ignore_eos": True}, **extra}
    answer = requests.post(sim.url + "/generate", json=body, timeout=60)
    assert answer.status_code == 200, answer.text
    return answer.json()["meta_info"]


def stamps(meta) -> dict:
    return meta["sim_timestamps"]


def ttft(meta) -> float:
    return stamps(meta)["first_token"] - stamps(meta)["arrived"]


def test_concurrent_long_prompts_share_the_prefill_rounds(start_sim):
    sim = start_sim()
    prompts = [ids(100_000 * (i + 1), 4000) for i in range(4)]
    with ThreadPoolExecutor(4) as pool:
        metas = list(pool.map(lambda p: generate(sim, p), prompts))
    times = [stamps(m) for m in metas]
    first_arrival = min(t["arrived"] for t in times)
    first_token = min(t["first_token"] for t in times)
    last_token = max(t["first_token"] for t in times)
    assert max(t["arrived"] for t in times) < first_token  # all four were there together
    # One prefill engine: the last first token waits for all 16,000 tokens (≈0.8 s),
    # not for its own 4,000 (0.2 s) as with independent timers.
    assert last_token - first_arrival >= SLACK * 16000 / RATE
    assert max(ttft(m) for m in metas) >= SLACK * 2 * 4000 / RATE
    alone = generate(sim, ids(900_000, 4000))
    assert ttft(alone) >= SLACK * 4000 / RATE
    assert all(m["cached_tokens"] == 0 for m in metas + [alone])


def _first_token_after(sim, load, prompt) -> tuple[float, dict]:
    """Send load, then prompt once load is in a prefill round; prompt's first token
    comes how long after load's, and prompt's meta_info."""
    with ThreadPoolExecutor(2) as pool:
        loaded = pool.submit(generate, sim, load)
        wait_until(lambda: sim.load()["num_running_reqs"] == 1, timeout=10)
        measured = pool.submit(generate, sim, prompt)
        load_meta, meta = loaded.result(), measured.result()
    return stamps(meta)["first_token"] - stamps(load_meta)["first_token"], meta


def test_a_cached_prompt_gets_its_first_token_sooner_under_the_same_load(start_sim):
    sim = start_sim()
    shared = ids(500_000, 4000)
    generate(sim, shared)  # now in the prefix cache
    uncached_after, uncached = _first_token_after(sim, ids(100_000, 8000),
                                                  ids(600_000, 4016))
    cached_after, cached = _first_token_after(sim, ids(200_000, 8000),
                                              shared + ids(700_000, 16))
    assert uncached["cached_tokens"] == 0 and cached["cached_tokens"] == 4000
    # Behind the same 8,000-token prefill, the uncached prompt needs a round of its own
    # (4,016 tokens, ≈0.2 s); the cached one only 16 tokens.
    assert uncached_after >= SLACK * 4016 / RATE
    assert cached_after < uncached_after - 0.1


def _stream_token_times(sim, body, started: threading.Event) -> list[float]:
    """Arrival times of a /generate stream's events; started is set after the fifth."""
    times = []
    with requests.post(sim.url + "/generate", json=body, stream=True, timeout=60) as resp:
        for line in resp.iter_lines():
            if line.startswith(b"data: {"):
                times.append(time.monotonic())
                if len(times) == 5:
                    started.set()
    return times


def test_running_decodes_stall_while_a_long_prefill_runs(start_sim):
    rate = 10000.0
    sim = start_sim("--prefill-tokens-per-s", rate)
    body = {"text": "decode me", "stream": True,
            "sampling_params": {"max_new_tokens": 300, "ignore_eos": True}}
    started = threading.Event()
    with ThreadPoolExecutor(1) as pool:
        stream = pool.submit(_stream_token_times, sim, body, started)
        assert started.wait(30)
        long_prompt = generate(sim, ids(100_000, 8000))  # one 0.8 s prefill round
        times = stream.result()
    assert len(times) >= 300  # a token each (and a closing event)
    assert ttft(long_prompt) >= SLACK * 8000 / rate
    gaps = [b - a for a, b in zip(times, times[1:])]
    # Without the stall the gaps are one decode step (12 ms).
    assert max(gaps) >= 0.75 * 8000 / rate


def test_a_long_prompt_is_prefilled_in_chunks_and_a_short_one_waits_for_its_round(start_sim):
    sim = start_sim("--chunked-prefill-size", "2000")
    with ThreadPoolExecutor(2) as pool:
        long_run = pool.submit(generate, sim, ids(100_000, 5000))
        wait_until(lambda: sim.load()["num_running_reqs"] == 1, timeout=10)
        short = pool.submit(generate, sim, ids(300_000, 100)).result()
        long_meta = long_run.result()
    # Rounds of 2,000 + 2,000 + 1,000 tokens: the chunked prompt goes on first each
    # round, so the short prompt only fits in the last one, next to its last chunk.
    assert ttft(long_meta) >= SLACK * 5000 / RATE
    assert stamps(short)["first_token"] >= stamps(long_meta)["first_token"] - 0.05
    assert ttft(short) >= SLACK * 1000 / RATE


def test_aborting_a_request_mid_prefill_frees_the_rounds_at_once(start_sim):
    sim = start_sim("--prefill-tokens-per-s", "10000", "--chunked-prefill-size", "1000")
    with ThreadPoolExecutor(1) as pool:
        long_run = pool.submit(generate, sim, ids(100_000, 20000), rid="long-prompt")
        wait_until(lambda: sim.load()["num_running_reqs"] == 1, timeout=10)
        requests.post(sim.url + "/abort_request", json={"rid": "long-prompt"}, timeout=5)
        aborted = long_run.result()
    assert aborted["finish_reason"]["type"] == "abort"
    assert aborted["e2e_latency"] < 1.0  # its prefill would take 2 s
    assert sim.load()["num_running_reqs"] == 0
    after = generate(sim, ids(300_000, 100))
    assert ttft(after) < 1.0  # no rounds left over for the aborted prompt
    assert sim.metric("num_aborted_requests_total") == 1


def test_embedding_inputs_are_prefilled_in_shared_rounds(start_sim):
    sim = start_sim("--is-embedding")
    body = {"model": "sim-model", "input": [ids(100_000, 6000), ids(200_000, 6000)]}
    began = time.monotonic()
    answer = requests.post(sim.url + "/v1/embeddings", data=json.dumps(body),
                           headers={"Content-Type": "application/json"}, timeout=30)
    took = time.monotonic() - began
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["data"]) == 2
    assert took >= SLACK * 12000 / RATE  # one engine for both: 0.6 s, not 0.3 s
