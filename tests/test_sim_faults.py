"""Fault injection is seeded and reproducible; hangs, drops and slow starts behave as declared."""

import requests

from tests.support.processes import wait_until

BODY = {"model": "sim-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
FAULTS = ("--fault-500-rate", "0.2", "--fault-503-rate", "0.2")


def outcomes(sim, count=30):
    seen = []
    for _ in range(count):
        resp = requests.post(sim.url + "/v1/chat/completions", json=BODY, timeout=10)
        seen.append(resp.status_code)
        if resp.status_code != 200:
            error = resp.json()
            assert error["object"] == "error" and error["code"] == resp.status_code
    return seen


def test_same_seed_same_faults_other_seed_other_faults(start_sim):
    first = outcomes(start_sim("--instant", "--fault-seed", "7", *FAULTS))
    again = outcomes(start_sim("--instant", "--fault-seed", "7", *FAULTS))
    other = outcomes(start_sim("--instant", "--fault-seed", "8", *FAULTS))
    assert first == again
    assert first != other
    assert {200, 500, 503} <= set(first)
    assert 3 <= first.count(500) + first.count(503) <= 22


def test_hang_answers_nothing_and_frees_nothing_it_does_not_hold(start_sim):
    sim = start_sim("--instant", "--fault-hang-rate", "1.0")
    try:
        requests.post(sim.url + "/v1/chat/completions", json=BODY, timeout=0.5)
        raise AssertionError("a hanging request answered")
    except requests.ReadTimeout:
        pass
    assert requests.get(sim.url + "/health", timeout=5).status_code == 200
    assert sim.load()["num_running_reqs"] == 0


def test_drop_cuts_a_stream_midway_and_a_json_answer_entirely(start_sim):
    sim = start_sim("--instant", "--fault-drop-rate", "1.0")
    resp = requests.post(sim.url + "/v1/chat/completions",
                         json={**BODY, "stream": True, "max_tokens": 50, "ignore_eos": True},
                         stream=True, timeout=10)
    received = b""
    try:
        for chunk in resp.iter_content(None):
            received += chunk
        raise AssertionError("the stream ended cleanly")
    except requests.exceptions.ChunkedEncodingError:
        pass
    assert received.count(b"data: ") >= 2 and b"[DONE]" not in received
    try:
        requests.post(sim.url + "/v1/chat/completions", json=BODY, timeout=10)
        raise AssertionError("a dropped JSON request answered")
    except requests.ConnectionError:
        pass
    assert wait_until(lambda: sim.load()["num_running_reqs"] == 0, timeout=2)


def test_slow_start_answers_503_until_ready(start_sim):
    sim = start_sim("--instant", "--slow-start-s", "1.5", ready=False)
    assert requests.get(sim.url + "/health", timeout=5).status_code == 503
    refused = requests.post(sim.url + "/v1/chat/completions", json=BODY, timeout=5)
    assert refused.status_code == 503 and refused.json()["code"] == 503
    wait_until(lambda: requests.get(sim.url + "/health", timeout=5).status_code == 200,
               timeout=10, interval=0.05)
    assert requests.post(sim.url + "/v1/chat/completions", json=BODY,
                         timeout=5).status_code == 200
