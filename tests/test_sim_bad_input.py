"""Bad input gets a 400 in SGLang's flat error shape, and the worker lives on."""

import pytest
import requests

CASES = [
    ("/v1/chat/completions", b"{not json", None),
    ("/v1/chat/completions", b"[1, 2]", None),
    ("/v1/chat/completions", b'{"model": "m"}', "messages"),
    ("/v1/chat/completions", b'{"messages": []}', "messages"),
    ("/v1/chat/completions", b'{"messages": "hi"}', "messages"),
    ("/v1/chat/completions", b'{"messages": [{"content": "x"}]}', "messages"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": 5}]}', "messages"),
    ("/v1/chat/completions", b'{"messages": [{"role": "user", "content": "x"}], "n": "2"}',
     "n"),
    ("/v1/chat/completions",
     b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": -1}', "max_tokens"),
    ("/v1/chat/completions",
     b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "stream"),
    ("/v1/chat/completions",
     b'{"messages": [{"role": "user", "content": "x"}], "stop": [1]}', "stop"),
    ("/v1/chat/completions",
     b'{"messages": [{"role": "user", "content": "x"}], "max_tokens": 999999}', None),
    ("/v1/completions", b'{"prompt": ""}', "prompt"),
    ("/v1/completions", b'{"prompt": "x", "max_tokens": 0}', "max_tokens"),
    ("/generate", b'{"sampling_params": {}}', "text"),
    ("/generate", b'{"text": "x", "sampling_params": {"max_new_tokens": "9"}}',
     "max_new_tokens"),
    ("/generate", b'{"input_ids": ["a"]}', "input_ids"),
]


@pytest.mark.parametrize("path,raw,param", CASES)
def test_bad_input_is_a_400_in_sglang_shape(sim, path, raw, param):
    resp = requests.post(sim.url + path, data=raw, timeout=5,
                         headers={"Content-Type": "application/json"})
    assert resp.status_code == 400
    body = resp.json()
    assert body["object"] == "error" and body["code"] == 400 and body["message"]
    assert body["param"] == param


def test_routing_errors_and_the_worker_survives(sim):
    assert requests.get(sim.url + "/nope", timeout=5).json() == {"detail": "Not Found"}
    wrong = requests.get(sim.url + "/v1/chat/completions", timeout=5)
    assert wrong.status_code == 405 and wrong.json() == {"detail": "Method Not Allowed"}
    pid = requests.get(sim.url + "/server_info", timeout=5).json()["startup_time"]
    for path, raw, _ in CASES:
        requests.post(sim.url + path, data=raw, timeout=5)
    assert requests.get(sim.url + "/server_info", timeout=5).json()["startup_time"] == pid
    assert requests.get(sim.url + "/health", timeout=5).status_code == 200
