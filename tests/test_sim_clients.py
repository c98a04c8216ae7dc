"""Real clients against the simulator: the openai SDK, and sglang-router with two workers."""

import sys

import openai
import pytest
import requests

from tests.support.processes import ServerProcess, free_port


def client(sim):
    return openai.OpenAI(base_url=sim.url + "/v1", api_key="unused", max_retries=0)


def test_openai_sdk_gets_a_completion(sim):
    reply = client(sim).chat.completions.create(
        model="sim-model", messages=[{"role": "user", "content": "Hello!"}], max_tokens=10)
    assert reply.choices[0].message.content
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens
    assert reply.usage.prompt_tokens_details.cached_tokens >= 0


def test_openai_sdk_stream_with_usage(sim):
    stream = client(sim).chat.completions.create(
        model="sim-model", messages=[{"role": "user", "content": "Hello!"}], max_tokens=10,
        stream=True, stream_options={"include_usage": True}, extra_body={"ignore_eos": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text
    assert chunks[-1].usage.completion_tokens == 10


def test_openai_sdk_text_completion(sim):
    reply = client(sim).completions.create(model="sim-model", prompt="Once upon a time",
                                           max_tokens=5)
    assert reply.choices[0].text and reply.usage.completion_tokens <= 5


def test_openai_sdk_raises_on_bad_request(sim):
    with pytest.raises(openai.BadRequestError):
        client(sim).chat.completions.create(model="sim-model", messages=[])


@pytest.fixture
def router(start_sim):
    """The real sglang-router (round robin) in front of two simulators."""
    sims = [start_sim("--instant"), start_sim("--instant")]
    port = free_port()
    argv = [sys.executable, "-m", "sglang_router.launch_router", "--host", "127.0.0.1",
            "--port", str(port), "--policy", "round_robin", "--log-level", "warn",
            "--prometheus-port", str(free_port()),
            "--worker-urls", *(s.url for s in sims)]
    proc = ServerProcess(argv, f"http://127.0.0.1:{port}/health",
                         env={"HF_HUB_OFFLINE": "1", "NO_PROXY": "*"})
    yield f"http://127.0.0.1:{port}", sims
    proc.stop()


def test_sglang_router_routes_to_both_simulators(router):
    url, sims = router
    workers = requests.get(url + "/workers", timeout=5)
    assert workers.status_code == 200
    llm = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    for i in range(8):
        reply = llm.chat.completions.create(
            model="sim-model", messages=[{"role": "user", "content": f"question {i}"}],
            max_tokens=5)
        assert reply.choices[0].message.content
    stream = llm.chat.completions.create(
        model="sim-model", messages=[{"role": "user", "content": "stream please"}],
        max_tokens=5, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    served = [s.metric("num_requests_total") for s in sims]
    assert all(n >= 3 for n in served) and sum(served) == 9, served
