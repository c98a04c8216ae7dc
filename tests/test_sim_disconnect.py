"""A client that hangs up leaves the running batch (and the queue) at once."""

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import requests

from tests.support.processes import wait_until


def open_stream(sim, body):
    """Send a streaming request on a raw socket and read until the first event arrives."""
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", sim.port))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(payload), payload))
    return sock


def read_until(sock, marker: bytes) -> bytes:
    received = b""
    while marker not in received:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before {marker!r}"
        received += chunk
    return received


BODY = {"model": "sim-model", "messages": [{"role": "user", "content": "long answer"}],
        "max_tokens": 500, "ignore_eos": True, "stream": True}


def test_disconnect_mid_stream_aborts_within_a_second(start_sim):
    sim = start_sim("--decode-ms-per-token", "50")
    sock = open_stream(sim, BODY)
    read_until(sock, b"data: ")
    assert sim.load()["num_running_reqs"] == 1
    sock.close()
    closed = time.monotonic()
    wait_until(lambda: sim.load()["num_running_reqs"] == 0, timeout=1.0)
    assert time.monotonic() - closed < 1.0
    assert sim.metric("num_aborted_requests_total") == 1


def test_disconnect_while_queued_leaves_the_queue(start_sim):
    sim = start_sim("--decode-ms-per-token", "50", "--max-running-requests", "1")
    running = open_stream(sim, BODY)
    read_until(running, b"data: ")
    queued = open_stream(sim, BODY)
    wait_until(lambda: sim.load()["num_waiting_reqs"] == 1, timeout=5)
    queued.close()
    wait_until(lambda: sim.load()["num_waiting_reqs"] == 0, timeout=1.0)
    assert sim.load()["num_running_reqs"] == 1
    running.close()
    wait_until(lambda: sim.load()["num_running_reqs"] == 0, timeout=1.0)


def test_abort_request_ends_a_running_stream_with_abort(start_sim):
    sim = start_sim("--decode-ms-per-token", "50")
    sock = open_stream(sim, {**BODY, "rid": "to-abort"})
    read_until(sock, b"data: ")
    assert requests.post(sim.url + "/abort_request", json={"rid": "to-abort"},
                         timeout=5).status_code == 200
    assert b'"finish_reason":"abort"' in read_until(sock, b"[DONE]")
    sock.close()


def test_abort_all_answers_a_queued_json_request_with_abort(start_sim):
    sim = start_sim("--decode-ms-per-token", "50", "--max-running-requests", "1")
    running = open_stream(sim, BODY)
    read_until(running, b"data: ")
    with ThreadPoolExecutor(1) as pool:
        queued = pool.submit(requests.post, sim.url + "/v1/chat/completions", timeout=10,
                             json={**BODY, "stream": False})
        wait_until(lambda: sim.load()["num_waiting_reqs"] == 1, timeout=5)
        requests.post(sim.url + "/abort_request", json={"abort_all": True}, timeout=5)
        answer = queued.result()
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["finish_reason"] == "abort"
    running.close()
    wait_until(lambda: sim.load()["num_running_reqs"] == 0, timeout=1.0)
