"""Backend types and supervised runtimes, each against real servers."""

import openai
import pytest
import requests

from tests.gateway_fixtures import MODEL, gateway_yaml, sdk
from tests.support.processes import free_port, wait_until

MESSAGES = [{"role": "user", "content": "hello"}]


def openai_backend_yaml(upstream, api_key, model="inner/model"):
    return ("models:\n  - id: outer/model\n    backends:\n"
            f"      - {{type: openai, url: '{upstream.url}/v1', api_key: '{api_key}', "
            f"model: {model}}}\n")


def test_openai_backend_sends_its_own_key(start_sim, start_gateway):
    """An Inferegator gateway is itself an OpenAI-compatible server that checks keys."""
    sim = start_sim("--instant")
    inner = start_gateway(gateway_yaml([sim], model="inner/model"))
    outer = start_gateway(openai_backend_yaml(inner, inner.key))
    assert outer.key != inner.key  # each gateway has its own store
    reply = sdk(outer).chat.completions.create(model="outer/model", messages=MESSAGES,
                                               max_tokens=4)
    assert reply.model == "outer/model" and reply.choices[0].message.content
    chunks = list(sdk(outer).chat.completions.create(
        model="outer/model", messages=MESSAGES, max_tokens=4, stream=True,
        stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == 4
    assert all(c.model == "outer/model" for c in chunks)


def test_openai_backend_with_a_wrong_key_is_a_server_side_error(start_sim, start_gateway):
    sim = start_sim("--instant")
    inner = start_gateway(gateway_yaml([sim], model="inner/model"))
    outer = start_gateway(openai_backend_yaml(inner, "sk-inf-not-the-right-key-000000000"))
    with pytest.raises(openai.APIStatusError) as err:
        sdk(outer).chat.completions.create(model="outer/model", messages=MESSAGES)
    assert err.value.status_code in (502, 503)  # never the client's 401


def test_serve_starts_and_supervises_its_runtimes(start_gateway):
    port = free_port()
    yaml_text = (
        f"server:\n  health_check_interval_s: 0.2\n"
        f"runtimes:\n  - name: sim\n    command: [inferegator, sim, --instant, --port, "
        f"'{port}']\n    health: http://127.0.0.1:{port}/health\n"
        f"models:\n  - id: {MODEL}\n    backends:\n"
        f"      - {{type: sglang, url: 'http://127.0.0.1:{port}', model: sim-model}}\n")
    gateway = start_gateway(yaml_text)
    wait_until(lambda: requests.get(gateway.url + "/ready", timeout=5).status_code == 200,
               timeout=20, interval=0.05)
    reply = sdk(gateway).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3)
    assert reply.usage.completion_tokens == 3
    gateway.stop()

    def runtime_gone():
        try:
            requests.get(f"http://127.0.0.1:{port}/health", timeout=1)
            return False
        except requests.ConnectionError:
            return True

    wait_until(runtime_gone, timeout=10, interval=0.05)  # the gateway stopped its runtime
