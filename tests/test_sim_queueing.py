"""With one running slot, a second request waits in the FIFO queue for the first."""

from concurrent.futures import ThreadPoolExecutor

import requests

from tests.support.processes import wait_until


def generate(sim, text):
    body = {"text": text, "sampling_params": {"max_new_tokens": 10, "ignore_eos": True}}
    return requests.post(sim.url + "/generate", json=body, timeout=30).json()


def test_second_request_waits_for_the_first(start_sim):
    sim = start_sim("--max-running-requests", "1", "--decode-ms-per-token", "20")
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(generate, sim, "first request")
        wait_until(lambda: sim.load()["num_running_reqs"] == 1, timeout=10)
        second = pool.submit(generate, sim, "second request")
        wait_until(lambda: sim.load()["num_waiting_reqs"] == 1, timeout=10)
        assert sim.load()["num_running_reqs"] == 1
        a = first.result()["meta_info"]["sim_timestamps"]
        b = second.result()["meta_info"]["sim_timestamps"]
    assert b["arrived"] < a["finished"]  # it arrived while the first was running...
    assert b["scheduled"] >= a["finished"]  # ...and only started once the first finished
    assert a["scheduled"] - a["arrived"] < b["scheduled"] - b["arrived"]
    assert sim.metric("num_requests_total") == 2


def test_decode_slows_down_as_the_batch_grows(start_sim):
    sim = start_sim("--decode-ms-per-token", "5", "--decode-batch-slope", "0.5")
    alone = generate(sim, "alone")["meta_info"]
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda i: generate(sim, f"batch {i}"), range(4)))
    decode_alone = alone["sim_timestamps"]["finished"] - alone["sim_timestamps"]["first_token"]
    decode_batched = max(r["meta_info"]["sim_timestamps"]["finished"]
                         - r["meta_info"]["sim_timestamps"]["first_token"] for r in together)
    assert decode_batched > decode_alone
