"""/v1/embeddings of an ``--is-embedding`` simulator, held to SGLang 0.5.23's protocol.

Real simulator processes; the openai SDK where it fits (float, and its default base64);
every input shape; SGLang's refusals and wording; what an embedding model answers on the
generation routes; the answer validates against OpenAI's CreateEmbeddingResponse.
"""

import base64
import math
import struct
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
import requests

from inferegator.simulator.tokenizer import encode, tokenize
from tests.support.processes import Simulator, wait_until
from tests.test_gateway_openapi import assert_valid, validator_for  # noqa: F401

DIM = 64
MODEL = "sim-embed"


@pytest.fixture(scope="module")
def emb():
    server = Simulator("--instant", "--is-embedding", "--embedding-dim", DIM, "--matryoshka",
                       model=MODEL)
    yield server
    server.stop()


def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def post(server, body, path="/v1/embeddings"):
    return requests.post(server.url + path, json=body, timeout=10)


def norm(vector) -> float:
    return math.sqrt(sum(v * v for v in vector))


def test_sdk_float_vectors_are_unit_length_with_sglangs_usage(emb):
    text = "The quick brown fox."
    answer = client(emb).embeddings.create(model=MODEL, input=text, encoding_format="float")
    assert answer.object == "list" and answer.model == MODEL
    (item,) = answer.data
    assert item.object == "embedding" and item.index == 0
    assert len(item.embedding) == DIM and math.isclose(norm(item.embedding), 1.0, rel_tol=1e-5)
    assert answer.usage.prompt_tokens == len(tokenize(text)) == answer.usage.total_tokens
    raw = post(emb, {"model": MODEL, "input": text}).json()
    assert raw["usage"] == {"prompt_tokens": 5, "total_tokens": 5, "completion_tokens": 0,
                            "prompt_tokens_details": None, "reasoning_tokens": 0,
                            "completion_tokens_details": None}
    assert list(raw) == ["data", "model", "object", "usage"]
    assert list(raw["data"][0]) == ["embedding", "index", "object"]


def test_base64_is_little_endian_float32_and_the_sdk_default_decodes_it(emb):
    texts = ["first text", "second, longer text"]
    floats = client(emb).embeddings.create(model=MODEL, input=texts, encoding_format="float")
    decoded = client(emb).embeddings.create(model=MODEL, input=texts)  # the SDK asks base64
    assert [d.embedding for d in decoded.data] == [f.embedding for f in floats.data]
    raw = post(emb, {"model": MODEL, "input": texts, "encoding_format": "base64"}).json()
    packed = base64.b64decode(raw["data"][1]["embedding"])
    assert len(packed) == 4 * DIM
    assert list(struct.unpack(f"<{DIM}f", packed)) == floats.data[1].embedding


def test_a_batch_keeps_its_order_and_sums_usage(emb):
    texts = ["alpha beta", "gamma", "alpha beta"]
    answer = client(emb).embeddings.create(model=MODEL, input=texts, encoding_format="float")
    assert [d.index for d in answer.data] == [0, 1, 2]
    vectors = [d.embedding for d in answer.data]
    assert vectors[0] == vectors[2] != vectors[1]  # the same text, the same vector
    assert answer.usage.prompt_tokens == sum(len(tokenize(t)) for t in texts)
    alone = client(emb).embeddings.create(model=MODEL, input="gamma", encoding_format="float")
    assert alone.data[0].embedding == vectors[1]


def test_token_ids_embed_like_their_text(emb):
    text = "Token ids and text agree."
    ids = encode(text)
    by_text = client(emb).embeddings.create(model=MODEL, input=text, encoding_format="float")
    by_ids = client(emb).embeddings.create(model=MODEL, input=ids, encoding_format="float")
    assert by_ids.data[0].embedding == by_text.data[0].embedding
    assert by_ids.usage.prompt_tokens == len(ids)
    lists = [[101, 2023], [101, 2003, 1037]]
    batch = client(emb).embeddings.create(model=MODEL, input=lists, encoding_format="float")
    assert [d.index for d in batch.data] == [0, 1]
    assert batch.usage.prompt_tokens == 5
    first = client(emb).embeddings.create(model=MODEL, input=lists[0], encoding_format="float")
    assert batch.data[0].embedding == first.data[0].embedding


def test_matryoshka_dimensions_truncate_then_renormalize(emb):
    full = post(emb, {"input": "nested dolls"}).json()["data"][0]["embedding"]
    small = post(emb, {"input": "nested dolls", "dimensions": 16}).json()["data"][0]["embedding"]
    assert len(small) == 16 and math.isclose(norm(small), 1.0, rel_tol=1e-5)
    scale = norm(full[:16])
    assert small == pytest.approx([v / scale for v in full[:16]], rel=1e-5, abs=1e-6)
    assert len(post(emb, {"input": "x", "dimensions": DIM}).json()["data"][0]["embedding"]) \
        == DIM


@pytest.mark.parametrize("body, message", [
    ({"input": "x", "dimensions": 0}, "Requested dimensions must be greater than 0"),
    ({"input": "x", "dimensions": DIM + 1},
     f"Provided dimensions are greater than max embedding dimension: {DIM}"),
    ({"input": ""}, "Input cannot be empty"),
    ({"input": []}, "Input cannot be empty"),
    ({"input": "   "}, "Input cannot be empty or whitespace only"),
    ({"input": ["a", 1]}, "All items in input list must be strings"),
    ({"input": ["a", " "]}, "Input at index 1 cannot be empty or whitespace only"),
    ({"input": [1, -2]}, "Token ID at index 1 must be non-negative"),
    ({"input": [1, "a"]}, "All items in input list must be integers"),
    ({"input": [[1], []]}, "Input at index 1 cannot be empty"),
    ({"input": "x", "encoding_format": "int8"},
     "encoding_format must be either 'float' or 'base64', got 'int8'"),
    ({"model": MODEL}, "Field required: input"),
])
def test_refusals_use_sglangs_wording_and_flat_shape(emb, body, message):
    resp = post(emb, body)
    assert resp.status_code == 400
    error = resp.json()
    assert (error["object"], error["type"], error["code"]) == ("error", "BadRequestError", 400)
    assert error["message"] == message


def test_an_input_as_long_as_the_context_is_refused(start_sim):
    server = start_sim("--instant", "--is-embedding", "--context-length", "8")
    resp = post(server, {"input": list(range(1, 9))})
    assert resp.status_code == 400
    assert resp.json()["message"] == \
        "The input (8 tokens) is longer than the model's context length (8 tokens)."
    assert post(server, {"input": list(range(1, 8))}).status_code == 200


def test_dimensions_need_a_matryoshka_model(start_sim):
    server = start_sim("--instant", "--is-embedding", model="plain-embed")
    resp = post(server, {"input": "x", "dimensions": 8})
    assert resp.status_code == 400
    assert resp.json()["message"] == (
        "Model 'plain-embed' does not support matryoshka representation, changing output "
        "dimensions will lead to poor results.")
    assert len(post(server, {"input": "x"}).json()["data"][0]["embedding"]) == 1024


def test_a_generation_model_refuses_embeddings(sim):
    resp = post(sim, {"input": "hello"})
    assert resp.status_code == 400
    assert resp.json()["message"].startswith(
        "This model does not appear to be an embedding model by default.")


def test_the_generation_routes_of_an_embedding_model(emb):
    info = requests.get(emb.url + "/model_info", timeout=5).json()
    assert info["is_generation"] is False
    assert requests.get(emb.url + "/server_info", timeout=5).json()["is_embedding"] is True
    for path, body in (("/v1/chat/completions",
                        {"messages": [{"role": "user", "content": "hi"}]}),
                       ("/v1/completions", {"prompt": "hi"})):
        for stream in (False, True):
            resp = post(emb, {**body, "stream": stream}, path)
            assert resp.status_code == 500
            assert resp.json() == {"object": "error", "message": "Internal server error: 'text'",
                                   "type": "InternalServerError", "param": None, "code": 500}
    resp = post(emb, {"model": MODEL, "input": "hi"}, "/v1/responses")
    assert resp.status_code == 400
    assert resp.json() == {"error": {"message": "'text'", "type": "invalid_request_error",
                                     "param": None, "code": 400}}
    result = post(emb, {"text": "hi there"}, "/generate").json()
    assert result["meta_info"]["prompt_tokens"] == 2
    assert result["embedding"] == post(emb, {"input": "hi there"}).json()["data"][0]["embedding"]


def test_the_answer_validates_against_openais_schema(emb, validator_for):  # noqa: F811
    for body in ({"input": ["schema", "check"]}, {"input": [[1, 2], [3]]}):
        resp = post(emb, {"model": MODEL, **body})
        assert resp.status_code == 200
        assert_valid(validator_for("CreateEmbeddingResponse"), resp.json())


def test_embeddings_queue_and_prefill_and_count_in_the_metrics(start_sim):
    server = start_sim("--is-embedding", "--max-running-requests", "1",
                       "--prefill-tokens-per-s", "20")
    ids = list(range(1, 21))  # 20 tokens: 1 s of prefill each
    with ThreadPoolExecutor(2) as pool:
        started = time.monotonic()
        first = pool.submit(post, server, {"input": ids})
        wait_until(lambda: server.load()["num_running_reqs"] == 1, timeout=5)
        second = pool.submit(post, server, {"input": ids})
        wait_until(lambda: server.load()["num_waiting_reqs"] == 1, timeout=5)
        assert first.result().status_code == second.result().status_code == 200
        assert time.monotonic() - started >= 2.0  # one after the other
    assert server.metric("num_requests_total") == 2
    assert server.metric("prompt_tokens_total") == 40
    assert server.load()["num_running_reqs"] == 0


def test_injected_faults_apply_to_embeddings(start_sim):
    server = start_sim("--instant", "--is-embedding", "--fault-503-rate", "1.0")
    resp = post(server, {"input": "x"})
    assert resp.status_code == 503 and resp.json()["code"] == 503
