"""SGLang's native routes through the gateway: /generate with the same keys, limits,
ledger and routing as the OpenAI routes.

The body names the gateway's public model (``model``, which SGLang's /generate does not
have and is not sent upstream); usage is read from each result's ``meta_info`` (JSON)
or from the last event of each choice (stream), so even a stream cut short is billed
the runtime's own counts. A model whose backends cannot serve the route is refused when
the gateway is built; one that does not declare it gets 404.
"""

import json

import openai
import pytest
import requests

from inferegator.config import parse_config
from inferegator.errors import GatewayBuildError
from inferegator.factory import build_gateway
from tests.gateway_fixtures import (
    MODEL,
    SIM_CAPABILITIES,
    gateway_yaml,
    launch_gateway,
    provision,
)
from tests.support.processes import Simulator
from tests.test_upstream_interop import ledger_row

NATIVE = SIM_CAPABILITIES + ("generate",)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    sim = Simulator("--instant")
    server = launch_gateway(tmp_path_factory.mktemp("gw"),
                            gateway_yaml([sim], capabilities=NATIVE))
    yield server
    server.stop()
    sim.stop()


def generate(gateway, body, key=None, stream=False):
    return requests.post(gateway.url + "/generate", json=body, timeout=10, stream=stream,
                         headers={"Authorization": f"Bearer {key or gateway.key}"})


def sse_data(resp) -> list:
    events = [block[len("data: "):] for block in resp.content.decode().split("\n\n")
              if block.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


@pytest.mark.parametrize("prompt", [{"text": "The capital of France is"},
                                    {"input_ids": [101, 2023, 2003, 1037]}])
def test_generate_json_is_metered_from_meta_info(gateway, prompt):
    resp = generate(gateway, {"model": MODEL, **prompt,
                              "sampling_params": {"max_new_tokens": 12}})
    assert resp.status_code == 200, resp.text
    result = resp.json()
    assert result["text"] and 0 < result["meta_info"]["completion_tokens"] <= 12
    assert "model" not in result
    if "input_ids" in prompt:
        assert result["meta_info"]["prompt_tokens"] == 4
    row = ledger_row(gateway, resp.headers["x-request-id"])
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        result["meta_info"]["prompt_tokens"], result["meta_info"]["completion_tokens"])
    assert row["model"] == MODEL and row["cost_usd"] > 0
    assert resp.headers["x-ratelimit-limit-requests"]


def test_several_samples_are_summed(gateway):
    resp = generate(gateway, {"model": MODEL, "text": "Tell me",
                              "sampling_params": {"max_new_tokens": 8, "n": 2}})
    results = resp.json()
    assert isinstance(results, list) and len(results) == 2
    row = ledger_row(gateway, resp.headers["x-request-id"])
    assert row["completion_tokens"] == sum(r["meta_info"]["completion_tokens"]
                                           for r in results)
    assert row["prompt_tokens"] == sum(r["meta_info"]["prompt_tokens"] for r in results)


def test_generate_stream_is_relayed_and_metered_from_its_last_event(gateway):
    with generate(gateway, {"model": MODEL, "text": "Stream it",
                            "sampling_params": {"max_new_tokens": 10}, "stream": True},
                  stream=True) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        events = sse_data(resp)
        request_id = resp.headers["x-request-id"]
    assert len(events) >= 2
    assert events[-1]["text"].startswith(events[0]["text"])  # cumulative text
    last = events[-1]["meta_info"]
    row = ledger_row(gateway, request_id)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        last["prompt_tokens"], last["completion_tokens"])


def test_a_cut_stream_is_billed_the_runtimes_running_counts(tmp_path):
    sim = Simulator("--instant", "--fault-drop-rate", "1.0", "--output-tokens-min", "30",
                    "--output-tokens-max", "30")
    gateway = launch_gateway(tmp_path, gateway_yaml([sim], capabilities=NATIVE))
    try:
        with generate(gateway, {"model": MODEL, "text": "Cut", "stream": True,
                                "sampling_params": {"max_new_tokens": 30}},
                      stream=True) as resp:
            body = resp.content.decode()
            request_id = resp.headers["x-request-id"]
        events = [json.loads(b[6:]) for b in body.split("\n\n") if b.startswith("data: {")]
        relayed = [e for e in events if "meta_info" in e]
        assert relayed and "error" in events[-1]
        row = ledger_row(gateway, request_id)
        assert row["status"] == "upstream_failed"
        assert row["completion_tokens"] == relayed[-1]["meta_info"]["completion_tokens"] > 0
    finally:
        gateway.stop()
        sim.stop()


@pytest.mark.parametrize("body, param, code", [
    ({"text": "no model"}, "model", "missing_required_parameter"),
    ({"model": MODEL}, "text", "missing_required_parameter"),
    ({"model": MODEL, "text": "x", "input_ids": [1]}, "text", "missing_required_parameter"),
    ({"model": MODEL, "input_ids": [[]]}, "input_ids", "invalid_type"),
    ({"model": MODEL, "text": "x", "sampling_params": 3}, "sampling_params", "invalid_type"),
    ({"model": MODEL, "text": "x", "sampling_params": {"max_new_tokens": -1}},
     "sampling_params.max_new_tokens", "invalid_value"),
])
def test_bad_bodies_get_the_gateways_400(gateway, body, param, code):
    resp = generate(gateway, body)
    assert resp.status_code == 400
    assert (resp.json()["error"]["param"], resp.json()["error"]["code"]) == (param, code)


def test_keys_and_limits_apply(gateway):
    resp = requests.post(gateway.url + "/generate", json={"model": MODEL, "text": "hi"},
                         timeout=10)
    assert resp.status_code == 401
    key, _ = provision(gateway.storage, "native-limited@example.com", requests_per_minute=1)
    assert generate(gateway, {"model": MODEL, "text": "once"}, key=key).status_code == 200
    refused = generate(gateway, {"model": MODEL, "text": "twice"}, key=key)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"


def test_a_model_without_the_route_is_a_404(tmp_path):
    sim = Simulator("--instant")
    gateway = launch_gateway(tmp_path, gateway_yaml([sim]))
    try:
        resp = generate(gateway, {"model": MODEL, "text": "hi"})
        assert resp.status_code == 404
        assert resp.json()["error"]["code"] == "unsupported_endpoint"
    finally:
        gateway.stop()
        sim.stop()


def test_a_backend_type_without_the_route_cannot_declare_it(tmp_path):
    config = parse_config(
        f"storage: 'sqlite:///{tmp_path}/x.db'\nmodels:\n  - id: m\n"
        "    capabilities: [chat, generate]\n"
        "    backends: [{type: openai, url: 'http://127.0.0.1:9/v1'}]\n")
    with pytest.raises(GatewayBuildError) as caught:
        build_gateway(config)
    assert "does not serve /generate" in str(caught.value)


def test_the_openai_sdk_is_unaffected(gateway):
    """The OpenAI routes of a model that also serves /generate work as before."""
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0)
    assert client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4).choices


# ---------------------------------------------------------------- /v1/rerank and /v1/score

RERANKER = "acme/sim-rerank"


@pytest.fixture(scope="module")
def scoring(tmp_path_factory):
    """A gateway with a reranker model and a chat model that also serves /v1/score."""
    reranker = Simulator("--instant", "--is-reranker", model="sim-rerank")
    chat = Simulator("--instant")
    text = gateway_yaml([chat], capabilities=NATIVE + ("score",)) + "\n".join([
        f"  - id: {RERANKER}", "    pricing: {prompt: 0.5, completion: 0}",
        "    capabilities: [rerank]", "    backends:",
        f"      - {{type: sglang, url: '{reranker.url}', model: sim-rerank}}"]) + "\n"
    server = launch_gateway(tmp_path_factory.mktemp("gw"), text)
    yield server
    server.stop()
    reranker.stop()
    chat.stop()


def post(gateway, path, body, key=None):
    return requests.post(gateway.url + path, json=body, timeout=10,
                         headers={"Authorization": f"Bearer {key or gateway.key}"})


DOCUMENTS = ["Paris is the capital of France.", "Bananas are yellow.",
             "The capital of Germany is Berlin.", "France borders Spain."]


def test_rerank_orders_documents_and_bills_every_pair_even_with_top_n(scoring):
    every = post(scoring, "/v1/rerank", {"model": RERANKER, "query": "capital of France",
                                         "documents": DOCUMENTS})
    assert every.status_code == 200, every.text
    results = every.json()
    assert [r["index"] for r in results][0] == 0  # the best match first
    assert [r["score"] for r in results] == sorted((r["score"] for r in results),
                                                   reverse=True)
    all_pairs = sum(r["meta_info"]["prompt_tokens"] for r in results)
    top = post(scoring, "/v1/rerank", {"model": RERANKER, "query": "capital of France",
                                       "documents": DOCUMENTS, "top_n": 2})
    assert [r["index"] for r in top.json()] == [r["index"] for r in results[:2]]
    for resp in (every, top):  # the runtime scored every pair either way
        row = ledger_row(scoring, resp.headers["x-request-id"])
        assert (row["prompt_tokens"], row["completion_tokens"]) == (all_pairs, 0)
        assert row["cost_usd"] == pytest.approx(all_pairs * 0.5 / 1e6)


def test_score_returns_label_probabilities_and_is_metered(scoring):
    resp = post(scoring, "/v1/score", {"model": MODEL, "query": "Is this good? ",
                                       "items": ["Yes", "No"], "label_token_ids": [1, 2],
                                       "apply_softmax": True})
    assert resp.status_code == 200, resp.text
    answer = resp.json()
    assert answer["model"] == MODEL and answer["object"] == "scoring"
    assert len(answer["scores"]) == 2
    assert all(sum(row) == pytest.approx(1.0, abs=1e-5) for row in answer["scores"])
    row = ledger_row(scoring, resp.headers["x-request-id"])
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        answer["usage"]["prompt_tokens"], 0)


@pytest.mark.parametrize("path, body, param", [
    ("/v1/rerank", {"model": RERANKER, "documents": ["a"]}, "query"),
    ("/v1/rerank", {"model": RERANKER, "query": "q", "documents": []}, "documents"),
    ("/v1/rerank", {"model": RERANKER, "query": "q", "documents": ["a", 3]}, "documents[1]"),
    ("/v1/rerank", {"model": RERANKER, "query": "q", "documents": ["a"], "top_n": 0},
     "top_n"),
    ("/v1/score", {"model": MODEL, "query": "q", "items": [], "label_token_ids": [1]},
     "items"),
    ("/v1/score", {"model": MODEL, "query": "q", "items": ["a"]}, "label_token_ids"),
])
def test_bad_rerank_and_score_bodies_get_the_gateways_400(scoring, path, body, param):
    resp = post(scoring, path, body)
    assert resp.status_code == 400
    assert resp.json()["error"]["param"] == param


@pytest.mark.parametrize("path, body", [
    ("/v1/rerank", {"model": RERANKER, "query": "q", "documents": ["a", "b"]}),
    ("/v1/score", {"model": MODEL, "query": "q", "items": ["a"], "label_token_ids": [1]}),
])
def test_rerank_and_score_need_a_key_and_are_limited(scoring, path, body):
    assert requests.post(scoring.url + path, json=body, timeout=10).status_code == 401
    key, _ = provision(scoring.storage, f"limited{path.replace('/', '-')}@example.com",
                       requests_per_minute=1)
    assert post(scoring, path, body, key=key).status_code == 200
    refused = post(scoring, path, body, key=key)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"


def test_each_route_only_for_models_that_declare_it(scoring):
    assert post(scoring, "/v1/rerank", {"model": MODEL, "query": "q",
                                        "documents": ["a"]}).status_code == 404
    assert post(scoring, "/v1/score", {"model": RERANKER, "query": "q", "items": ["a"],
                                       "label_token_ids": [1]}).status_code == 404
    assert requests.post(scoring.url + "/v1/rerank", json={}, timeout=10).status_code == 401
