"""Failover, all-down, mid-stream failure and client disconnects, against real processes."""

import json
import os
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests

from tests.gateway_fixtures import MODEL, gateway_yaml, sdk
from tests.support.processes import wait_until

MESSAGES = [{"role": "user", "content": "hello"}]


def ask(gateway):
    return sdk(gateway, timeout=10).chat.completions.create(model=MODEL, messages=MESSAGES,
                                                             max_tokens=4)


def test_one_backend_killed_under_load_no_client_error(start_sim, start_gateway):
    a, b = start_sim("--instant"), start_sim("--instant")
    gateway = start_gateway(gateway_yaml([a, b]))
    errors, done = [], []

    def client(i):
        for _ in range(40):
            try:
                ask(gateway)
                done.append(1)
            except openai.APIError as exc:
                errors.append(exc)

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client, i) for i in range(4)]
        wait_until(lambda: len(done) >= 20, timeout=30)
        os.killpg(a.proc.pid, signal.SIGKILL)  # the whole runtime, workers included
        for f in futures:
            f.result()
    assert errors == []  # failover happens before any byte reaches the client
    assert len(done) == 160
    assert b.metric("num_requests_total") > 80
    ready = requests.get(gateway.url + "/ready", timeout=5).json()
    assert ready["healthy_backends"] == {MODEL: 1}


def test_fallback_serves_when_primaries_are_down(start_sim, start_gateway):
    primary, fallback = start_sim("--instant"), start_sim("--instant")
    gateway = start_gateway(gateway_yaml([primary], fallbacks=[fallback]))
    ask(gateway)
    assert primary.metric("num_requests_total") == 1
    assert fallback.metric("num_requests_total") == 0
    primary.stop()
    for _ in range(3):
        ask(gateway)
    assert fallback.metric("num_requests_total") == 3


def test_all_backends_down_then_back(start_sim, start_gateway):
    sim = start_sim("--instant")
    port = sim.port
    gateway = start_gateway(gateway_yaml([sim]))
    sim.stop()
    for _ in range(2):
        with pytest.raises(openai.InternalServerError) as err:
            ask(gateway)
        assert err.value.status_code == 503 and err.value.code == "model_unavailable"
    start_sim("--instant", port=port)
    wait_until(lambda: requests.get(gateway.url + "/ready", timeout=5).status_code == 200,
               timeout=10, interval=0.05)
    assert ask(gateway).choices[0].message.content


def test_upstream_5xx_fails_over(start_sim, start_gateway):
    failing = start_sim("--instant", "--fault-500-rate", "1.0")
    good = start_sim("--instant")
    gateway = start_gateway(gateway_yaml([failing, good]))
    for _ in range(4):
        ask(gateway)
    assert good.metric("num_requests_total") == 4


def test_upstream_failure_mid_stream_raises_api_error(start_sim, start_gateway):
    sim = start_sim("--instant", "--fault-drop-rate", "1.0")
    gateway = start_gateway(gateway_yaml([sim]))
    stream = sdk(gateway).chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=50, stream=True,
        extra_body={"ignore_eos": True})
    received = []
    with pytest.raises(openai.APIError) as err:
        for chunk in stream:
            received.append(chunk)
    assert received  # some content arrived before the failure
    assert "mid-stream" in err.value.message


def test_client_dropping_a_stream_frees_the_runtime_within_a_second(start_sim, start_gateway):
    sim = start_sim("--decode-ms-per-token", "50")
    gateway = start_gateway(gateway_yaml([sim]))
    body = json.dumps({"model": MODEL, "messages": MESSAGES, "max_tokens": 400,
                       "ignore_eos": True, "stream": True}).encode()
    sock = socket.create_connection(("127.0.0.1", gateway.port))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                 b"Authorization: Bearer " + gateway.key.encode() + b"\r\n"
                 b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
                 % (len(body), body))
    received = b""
    while b"data: " not in received:
        received += sock.recv(65536)
    assert sim.load()["num_running_reqs"] == 1
    sock.close()
    closed = time.monotonic()
    wait_until(lambda: sim.load()["num_running_reqs"] == 0, timeout=1.0)
    assert time.monotonic() - closed < 1.0


def test_client_dropping_a_json_request_frees_the_runtime(start_sim, start_gateway):
    sim = start_sim("--decode-ms-per-token", "50")
    gateway = start_gateway(gateway_yaml([sim]))
    with pytest.raises(requests.ReadTimeout):
        requests.post(gateway.url + "/v1/chat/completions",
                      headers={"Authorization": f"Bearer {gateway.key}"},
                      json={"model": MODEL, "messages": MESSAGES, "max_tokens": 400,
                            "ignore_eos": True}, timeout=0.5)
    wait_until(lambda: sim.load()["num_running_reqs"] == 0, timeout=1.0)
    assert sim.metric("num_aborted_requests_total") == 1
