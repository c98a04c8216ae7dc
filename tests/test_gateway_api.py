"""The gateway's OpenAI API, driven by the real openai SDK against real simulators."""

import pytest
import requests

from inferegator.simulator.tokenizer import render_chat, tokenize
from tests.gateway_fixtures import MODEL, SIM_CAPABILITIES, gateway_yaml, launch_gateway, sdk

MESSAGES = [{"role": "user", "content": "Explain GPU inference in one sentence."}]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """One gateway over two instant simulators, shared by the read-only tests here."""
    from tests.support.processes import Simulator

    sims = [Simulator("--instant", "--output-tokens-max", "20"),
            Simulator("--instant", "--output-tokens-max", "20")]
    gateway = launch_gateway(tmp_path_factory.mktemp("gw"), gateway_yaml(sims))
    yield gateway, sims
    gateway.stop()
    for sim in sims:
        sim.stop()


def test_chat_json(served):
    gateway, _ = served
    reply = sdk(gateway).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12)
    assert reply.model == MODEL  # the upstream's own name is mapped back
    assert reply.object == "chat.completion"
    content = reply.choices[0].message.content
    assert reply.usage.completion_tokens == len(tokenize(content))
    assert reply.usage.prompt_tokens == len(tokenize(render_chat(MESSAGES)))
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_chat_stream_with_usage(served):
    gateway, _ = served
    chunks = list(sdk(gateway).chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=8, stream=True,
        stream_options={"include_usage": True}, extra_body={"ignore_eos": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.model == MODEL for c in chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    assert chunks[-2].choices[0].finish_reason == "length"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert len(tokenize(text)) == 8


def test_chat_stream_without_usage_drops_the_usage_chunk(served):
    gateway, _ = served
    chunks = list(sdk(gateway).chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=5, stream=True))
    assert chunks and all(c.choices for c in chunks)
    assert all(c.usage is None for c in chunks)


def test_completions(served):
    gateway, _ = served
    reply = sdk(gateway).completions.create(model=MODEL, prompt="Once upon a time",
                                            max_tokens=6)
    assert reply.model == MODEL and reply.choices[0].text
    assert reply.usage.prompt_tokens == 4 and reply.usage.completion_tokens <= 6


def test_models_list_and_one_model(served):
    gateway, _ = served
    client = sdk(gateway)
    (card,) = client.models.list().data
    assert card.id == MODEL and card.owned_by == "acme"
    one = client.models.retrieve(MODEL)
    extra = one.model_extra
    assert extra["pricing"]["prompt"] == 1.0 and extra["pricing"]["cached_prompt"] == 0.5
    assert extra["context_length"] == 32768  # learnt from the SGLang runtime's server_info
    assert extra["capabilities"] == list(SIM_CAPABILITIES)


def test_n_and_stop(served):
    gateway, _ = served
    client = sdk(gateway)
    reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, n=3, max_tokens=6,
                                           extra_body={"ignore_eos": True})
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert reply.usage.completion_tokens == 18
    full = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=20,
                                          extra_body={"ignore_eos": True})
    text = full.choices[0].message.content
    stop = text.split()[2]
    cut = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=20,
                                         stop=[stop], extra_body={"ignore_eos": True})
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == text[:text.index(stop)]


def test_sglang_extras_reach_the_backend(served):
    gateway, _ = served
    client = sdk(gateway)
    plain = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=60)
    assert plain.usage.completion_tokens <= 20  # the simulator's natural length
    extended = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=60,
        extra_body={"ignore_eos": True, "rid": "my-request-7", "top_k": 5,
                    "regex": "[a-z ]+", "separate_reasoning": False})
    assert extended.usage.completion_tokens == 60  # ignore_eos arrived
    assert extended.id == "my-request-7"  # so did rid


def test_request_id_goes_in_and_out(served):
    gateway, _ = served
    resp = requests.post(gateway.url + "/v1/chat/completions",
                         headers={"Authorization": f"Bearer {gateway.key}",
                                  "X-Request-ID": "abc-1"},
                         json={"model": MODEL, "messages": MESSAGES, "max_tokens": 2},
                         timeout=10)
    assert resp.status_code == 200 and resp.headers["X-Request-ID"] == "abc-1"
    generated = requests.post(gateway.url + "/v1/chat/completions",
                              headers={"Authorization": f"Bearer {gateway.key}"},
                              json={"model": MODEL, "messages": MESSAGES, "max_tokens": 2},
                              timeout=10)
    assert generated.headers["X-Request-ID"].startswith("req-")


def test_health_and_ready(served):
    gateway, _ = served
    assert requests.get(gateway.url + "/health", timeout=5).status_code == 200
    ready = requests.get(gateway.url + "/ready", timeout=5)
    assert ready.status_code == 200 and ready.json()["healthy_backends"] == {MODEL: 2}
