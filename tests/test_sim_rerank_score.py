"""/v1/rerank and /v1/score of the simulator, held to SGLang 0.5.23's protocol.

Real simulator processes: a cross-encoder (``--is-reranker``), an embedding model and the
shared generation model. Shapes field by field, ordering and determinism, token counts
against the simulator's tokenizer, SGLang's refusals and wording, faults and queueing.
The expected scores are recomputed here from the rules docs/simulator.md states.
"""

import math
import re
import struct
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from inferegator.simulator.tokenizer import encode, token_id, tokenize
from tests.support.processes import Simulator, wait_until

VOCAB = 128256
DIM = 8


@pytest.fixture(scope="module")
def reranker():
    server = Simulator("--instant", "--is-reranker", model="sim-rerank")
    yield server
    server.stop()


@pytest.fixture(scope="module")
def embedder():
    server = Simulator("--instant", "--is-embedding", "--embedding-dim", DIM, model="sim-embed")
    yield server
    server.stop()


def post(server, path, body, method="post"):
    return getattr(requests, method)(server.url + path, json=body, timeout=10)


def f32(value: float) -> float:
    return struct.unpack("<f", struct.pack("<f", value))[0]


def words(text: str) -> set[str]:
    return {w.lower() for w in re.findall(r"\w+", text)}


def overlap(query: str, document: str) -> float:
    """The documented cross-encoder rule: shared query words / query words, as float32."""
    return f32(len(words(query) & words(document)) / len(words(query)))


def copy_logprob(prompt: list[int], token: int) -> float:
    """The documented copy model: 0.9 by frequency in the prompt, 0.1 spread evenly."""
    p = 0.9 * Counter(prompt)[token] / len(prompt) + 0.1 / VOCAB
    return f32(math.log(p))


def assert_error(resp, status, message, type_="BadRequestError"):
    assert resp.status_code == status, resp.text
    assert resp.json() == {"object": "error", "message": message, "type": type_,
                           "param": resp.json()["param"], "code": status}


# -- /v1/rerank -------------------------------------------------------------------------------

QUERY = "What is the capital of France?"
DOCS = ["Berlin is the capital of Germany.", "Paris is the capital of France.",
        "Bananas are yellow.", "France exports wine."]


def test_rerank_answers_a_list_best_first_with_each_pairs_meta_info(reranker):
    resp = post(reranker, "/v1/rerank", {"query": QUERY, "documents": DOCS})
    assert resp.status_code == 200
    results = resp.json()
    assert isinstance(results, list) and len(results) == len(DOCS)
    expected = sorted(((overlap(QUERY, d), i) for i, d in enumerate(DOCS)),
                      key=lambda pair: pair[0], reverse=True)
    assert [(r["score"], r["index"]) for r in results] == expected
    assert [r["index"] for r in results] == [1, 0, 3, 2]
    assert results[0]["score"] == f32(5 / 6) and results[-1]["score"] == 0.0
    ids = set()
    for r in results:
        assert list(r) == ["score", "document", "index", "meta_info"]
        assert r["document"] == DOCS[r["index"]]
        meta = r["meta_info"]
        assert list(meta) == ["id", "finish_reason", "prompt_tokens", "weight_version",
                              "num_retractions", "e2e_latency"]
        assert re.fullmatch(r"[0-9a-f]{32}", meta["id"])
        ids.add(meta["id"])
        assert meta["finish_reason"] == {"type": "length", "length": 0}
        assert meta["prompt_tokens"] == len(encode(QUERY)) + len(encode(DOCS[r["index"]]))
        assert (meta["weight_version"], meta["num_retractions"]) == ("default", 0)
        assert meta["e2e_latency"] >= 0
    assert len(ids) == len(DOCS)  # one engine request per pair
    assert results[0]["meta_info"]["prompt_tokens"] == 7 + 7


def test_rerank_is_deterministic_and_put_is_the_same_route(reranker):
    body = {"query": QUERY, "documents": DOCS, "model": "ignored"}
    first = post(reranker, "/v1/rerank", body).json()
    again = post(reranker, "/v1/rerank", body, method="put").json()
    assert [(r["score"], r["index"]) for r in first] == [(r["score"], r["index"]) for r in again]


def test_ties_keep_document_order_top_n_cuts_and_documents_can_be_left_out(reranker):
    docs = ["nothing here", "capital", "also nothing", "capital", "France capital"]
    full = post(reranker, "/v1/rerank", {"query": "capital France", "documents": docs}).json()
    assert [r["index"] for r in full] == [4, 1, 3, 0, 2]
    assert [r["score"] for r in full] == [1.0, 0.5, 0.5, 0.0, 0.0]
    top = post(reranker, "/v1/rerank", {"query": "capital France", "documents": docs,
                                        "top_n": 2, "return_documents": False}).json()
    assert [r["index"] for r in top] == [4, 1]
    assert all(list(r) == ["score", "index", "meta_info"] for r in top)
    many = post(reranker, "/v1/rerank", {"query": "capital France", "documents": docs,
                                         "top_n": 50}).json()
    assert [r["index"] for r in many] == [4, 1, 3, 0, 2]


def test_rerank_reads_the_text_of_content_parts(reranker):
    query = [{"type": "text", "text": "capital"}, {"type": "text", "text": "France"}]
    docs = [[{"type": "image_url", "image_url": {"url": "http://x/y.png"}},
             {"type": "text", "text": "France"}], "capital France"]
    resp = post(reranker, "/v1/rerank", {"query": query, "documents": docs,
                                         "return_documents": False})
    assert resp.status_code == 200
    results = resp.json()
    assert [(r["index"], r["score"]) for r in results] == [(1, 1.0), (0, 0.5)]
    assert results[0]["meta_info"]["prompt_tokens"] == len(encode("capital France")) * 2
    # A list of parts cannot be returned as RerankResponse.document (a string): pydantic's 400.
    resp = post(reranker, "/v1/rerank", {"query": query, "documents": docs})
    assert resp.status_code == 400
    error = resp.json()
    assert (error["type"], error["code"]) == ("BadRequest", 400)
    assert error["message"].startswith(
        "1 validation error for RerankResponse\ndocument\n  Input should be a valid string")


@pytest.mark.parametrize("body, message", [
    ({"documents": ["a"]}, "Field required: query"),
    ({"query": "q"}, "Field required: documents"),
    ({"query": "", "documents": ["a"]}, "Query cannot be empty"),
    ({"query": [], "documents": ["a"]}, "Query cannot be empty"),
    ({"query": "  ", "documents": ["a"]}, "Query cannot be empty or whitespace only"),
    ({"query": "q", "documents": []}, "Documents cannot be empty"),
    ({"query": "q", "documents": ["a", ""]}, "Each document must be a non-empty string"),
    ({"query": "q", "documents": ["a", []]}, "Each document must be a non-empty string"),
    ({"query": "q", "documents": [" \n"]}, "Each document cannot be empty or whitespace only"),
    ({"query": "q", "documents": ["a"], "top_n": 0},
     "Value error, parameter top_n should be larger than 0."),
    ({"query": "q", "documents": ["a"], "top_n": "2"}, "top_n must be int"),
    ({"query": "q", "documents": "a"}, "documents must be list"),
    ({"query": "q", "documents": [3]},
     "documents[0] must be a string or a list of content parts (text, image_url, video_url)"),
])
def test_rerank_refusals(reranker, body, message):
    assert_error(post(reranker, "/v1/rerank", body), 400, message)


def test_a_generation_model_refuses_rerank_as_sglang_does(sim):
    resp = post(sim, "/v1/rerank", {"query": "q", "documents": ["a"]})
    assert_error(resp, 400, "This model does not appear to be an embedding model by default. "
                            "Please add `--is-embedding` when launching the server or try "
                            "another model.")
    assert_error(post(sim, "/v1/rerank", {"query": "q", "documents": []}), 400,
                 "Documents cannot be empty")  # the handler's checks come first


def test_an_embedding_model_scores_a_pair_by_its_embeddings_first_component(embedder):
    results = post(embedder, "/v1/rerank", {"query": QUERY, "documents": DOCS}).json()
    assert len(results) == len(DOCS)
    for r in results:
        ids = encode(QUERY) + encode(DOCS[r["index"]])
        vector = post(embedder, "/v1/embeddings", {"input": ids}).json()["data"][0]["embedding"]
        assert r["score"] == vector[0]
        assert r["meta_info"]["prompt_tokens"] == len(ids)
    scores = [r["score"] for r in results]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == len(scores)


def test_a_pair_as_long_as_the_context_is_refused(start_sim):
    server = start_sim("--instant", "--is-reranker", "--context-length", "8")
    resp = post(server, "/v1/rerank", {"query": "one two three", "documents": ["a", "b c d e f"]})
    assert_error(resp, 400, "The input (8 tokens) is longer than the model's context length "
                            "(8 tokens).")
    assert post(server, "/v1/rerank", {"query": "one two three",
                                       "documents": ["a", "b c d e"]}).status_code == 200


def test_a_reranker_describes_itself_as_a_sequence_classifier(reranker):
    info = requests.get(reranker.url + "/model_info", timeout=5).json()
    assert info["is_generation"] is False
    assert info["architectures"] == ["XLMRobertaForSequenceClassification"]
    assert info["model_type"] == "xlm-roberta"
    assert requests.get(reranker.url + "/server_info", timeout=5).json()["is_embedding"] is True


# -- /v1/score --------------------------------------------------------------------------------

YES, NO, MAYBE = token_id(" yes"), token_id(" no"), token_id(" maybe")
PROMPT = "Answer yes or no, yes being likelier than no:"


def test_score_answer_shape_and_copy_model_probabilities(sim):
    items = [" yes yes", " no"]
    body = {"query": PROMPT, "items": items, "label_token_ids": [YES, NO, MAYBE],
            "model": "scorer"}
    resp = post(sim, "/v1/score", body)
    assert resp.status_code == 200
    answer = resp.json()
    assert list(answer) == ["scores", "pooled_hidden_states", "token_logprobs", "model",
                            "usage", "object"]
    assert (answer["object"], answer["model"]) == ("scoring", "scorer")
    assert answer["pooled_hidden_states"] is None and answer["token_logprobs"] is None
    prompts = [encode(PROMPT + item) for item in items]
    tokens = sum(len(p) for p in prompts)
    assert answer["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens,
                               "completion_tokens": 0, "prompt_tokens_details": None,
                               "reasoning_tokens": 0, "completion_tokens_details": None}
    for row, prompt in zip(answer["scores"], prompts):
        assert row == pytest.approx([math.exp(copy_logprob(prompt, t))
                                     for t in (YES, NO, MAYBE)], rel=1e-12)
        assert sum(row) < 1
    first, second = answer["scores"]
    assert first[0] > first[1] > first[2]  # " yes" 4 times, " no" twice, " maybe" never
    assert second[1] > second[0] > second[2]
    assert first[2] == second[2] == pytest.approx(0.1 / VOCAB, rel=1e-6)
    assert post(sim, "/v1/score", body).json()["scores"] == answer["scores"]
    del body["model"]
    assert post(sim, "/v1/score", body).json()["model"] == "default"


def test_softmax_sums_to_one_and_temperature_flattens_it(sim):
    body = {"query": PROMPT, "items": [" yes"], "label_token_ids": [YES, NO],
            "apply_softmax": True}
    (sharp,) = post(sim, "/v1/score", body).json()["scores"]
    (flat,) = post(sim, "/v1/score", {**body, "temperature": 4.0}).json()["scores"]
    assert sum(sharp) == pytest.approx(1.0) and sum(flat) == pytest.approx(1.0)
    prompt = encode(PROMPT + " yes")
    lps = [copy_logprob(prompt, t) for t in (YES, NO)]
    assert sharp == pytest.approx([math.exp(lp) / sum(map(math.exp, lps)) for lp in lps])
    assert sharp[0] > flat[0] > 0.5 > flat[1] > sharp[1]


def test_item_first_and_per_item_labels_and_token_logprobs(sim):
    body = {"query": " yes", "items": ["no no", "maybe"], "item_first": True,
            "label_token_ids": [[NO, YES], [MAYBE]], "return_token_logprobs": True}
    answer = post(sim, "/v1/score", body).json()
    prompts = [encode("no no yes"), encode("maybe yes")]
    assert answer["usage"]["prompt_tokens"] == 3 + 2
    assert [len(row) for row in answer["scores"]] == [2, 1]
    expected = [[copy_logprob(prompts[0], NO), copy_logprob(prompts[0], YES)],
                [copy_logprob(prompts[1], MAYBE)]]
    assert answer["token_logprobs"] == expected
    assert answer["scores"] == [[math.exp(lp) for lp in row] for row in expected]


def test_token_id_inputs_concatenate_and_a_text_query_pastes_token_items_as_text(sim):
    answer = post(sim, "/v1/score", {"query": [5, 6, 7], "items": [[7, 7], [8]],
                                     "label_token_ids": [7, 8]}).json()
    assert answer["usage"]["prompt_tokens"] == 5 + 4
    assert answer["scores"][0] == pytest.approx([math.exp(copy_logprob([5, 6, 7, 7, 7], t))
                                                 for t in (7, 8)])
    no_query = post(sim, "/v1/score", {"items": [[7, 7]], "label_token_ids": [7]}).json()
    assert no_query["usage"]["prompt_tokens"] == 2
    assert no_query["scores"] == [[pytest.approx(math.exp(copy_logprob([7, 7], 7)))]]
    pasted = post(sim, "/v1/score", {"query": "ids:", "items": [[1, 2]],
                                     "label_token_ids": [1]}).json()
    assert pasted["usage"]["prompt_tokens"] == len(tokenize("ids:[1, 2]"))
    one = post(sim, "/v1/score", {"query": "a", "items": " b", "label_token_ids": [1]}).json()
    assert len(one["scores"]) == 1 and one["usage"]["prompt_tokens"] == 2


def test_no_items_give_no_scores(sim):
    answer = post(sim, "/v1/score", {"query": "q", "items": [], "label_token_ids": [1],
                                     "return_token_logprobs": True}).json()
    assert answer["scores"] == [] and answer["token_logprobs"] == []
    assert answer["usage"]["prompt_tokens"] == 0


@pytest.mark.parametrize("body, message", [
    ({"query": "q", "items": ["a"]},
     "label_token_ids is required for generation (CausalLM) models."),
    ({"query": "q", "label_token_ids": [1]}, "items must be provided"),
    ({"items": ["a"], "label_token_ids": []}, "label_token_ids must be a nonempty list"),
    ({"items": ["a", "b"], "label_token_ids": [[1], [2], [3]]},
     "label_token_ids must have one list per item"),
    ({"items": ["a"], "label_token_ids": [[]]}, "each item must have a nonempty candidate list"),
    ({"items": ["a"], "label_token_ids": [1, -1]},
     "label_token_ids must contain nonnegative integers"),
    ({"items": ["a"], "label_token_ids": [4, 4]},
     "label_token_ids must not contain duplicate tokens"),
    ({"items": ["a"], "label_token_ids": [VOCAB]},
     f"Token ID {VOCAB} is out of vocabulary (vocab size: {VOCAB})"),
    ({"query": [1], "items": ["a"], "label_token_ids": [1]},
     "Invalid combination of query/items types for score_request."),
    ({"items": ["a"], "label_token_ids": [1], "temperature": 2.0},
     "temperature requires apply_softmax=True"),
    ({"items": ["a"], "label_token_ids": [1], "temperature": 0},
     "temperature must be a finite number greater than 0"),
    ({"items": ["a"], "label_token_ids": [1], "return_pooled_hidden_states": True},
     "return_pooled_hidden_states is not supported for CausalLM models. It requires a model "
     "with a task-specific head (e.g. SequenceClassification or RewardModel)."),
    ({"items": ["a"], "label_token_ids": [1], "score_extraction_token": "<|x|>"},
     "score_extraction_token_id requires --disable-radix-cache because pooling positions are "
     "relative to the full prompt."),
    ({"items": ["a"], "label_token_ids": [1], "query_embed_overrides": [[0.5]]},
     "embed_override_token_id is required when query_embed_overrides, item_embed_overrides, "
     "or stacked_query_item_embed_overrides are supplied."),
    ({"query": [9, 1], "items": [[2]], "label_token_ids": [1], "embed_override_token_id": 9,
      "query_embed_overrides": [[0.5], [0.5]]},
     "query contains 1 occurrences of embed_override_token_id=9, but 2 override embeddings "
     "were provided."),
    ({"query": 5, "items": ["a"], "label_token_ids": [1]},
     "query must be a string or a list of token ids"),
    ({"items": ["a", [1]], "label_token_ids": [1]},
     "items must be a string, a list of strings or a list of token-id lists"),
    ({"items": ["a"], "label_token_ids": [1, [2]]},
     "label_token_ids must be a list of token ids or one list of token ids per item"),
])
def test_score_refusals(sim, body, message):
    assert_error(post(sim, "/v1/score", body), 400, message)


def test_embed_overrides_that_match_their_placeholders_are_accepted(sim):
    body = {"query": [9, 1], "items": [[2, 9], [3]], "label_token_ids": [1],
            "embed_override_token_id": 9, "query_embed_overrides": [[0.5, 0.5]],
            "item_embed_overrides": [[[0.1, 0.2]], None]}
    answer = post(sim, "/v1/score", body).json()
    assert answer["usage"]["prompt_tokens"] == 4 + 3 and len(answer["scores"]) == 2


def test_a_prompt_as_long_as_the_context_is_refused(start_sim):
    server = start_sim("--instant", "--context-length", "8")
    body = {"query": list(range(1, 5)), "items": [[1], list(range(4))], "label_token_ids": [1]}
    assert_error(post(server, "/v1/score", body), 400,
                 "The input (8 tokens) is longer than the model's context length (8 tokens).")
    body["items"] = [[1], list(range(3))]
    assert post(server, "/v1/score", body).status_code == 200
    assert post(server, "/v1/score", body, method="put").status_code == 405


def test_an_embedding_model_scores_items_by_their_embeddings(embedder):
    body = {"query": "hello", "items": [" world", " there"]}
    answer = post(embedder, "/v1/score", body).json()
    vectors = post(embedder, "/v1/embeddings",
                   {"input": ["hello world", "hello there"]}).json()["data"]
    assert answer["scores"] == [v["embedding"] for v in vectors]
    assert answer["usage"]["prompt_tokens"] == 4
    soft = post(embedder, "/v1/score", {**body, "apply_softmax": True}).json()["scores"]
    assert all(len(row) == DIM and sum(row) == pytest.approx(1.0) for row in soft)
    assert_error(post(embedder, "/v1/score", {**body, "return_token_logprobs": True}), 400,
                 "return_token_logprobs is only supported for CausalLM models")


def test_a_cross_encoders_one_logit_per_item_fails_scorings_nested_lists(reranker):
    resp = post(reranker, "/v1/score", {"query": "q", "items": ["a", "b"]})
    assert resp.status_code == 400
    error = resp.json()
    assert (error["type"], error["code"]) == ("BadRequest", 400)
    assert error["message"].startswith(
        "4 validation errors for ScoringResponse\nscores.list[list[float]].0\n  Input should be "
        "a valid list [type=list_type, input_value=0.0, input_type=float]")
    assert post(reranker, "/v1/score", {"items": []}).json()["scores"] == []


# -- faults, queueing, metrics ----------------------------------------------------------------


def test_faults_apply_to_rerank_and_score_after_validation(start_sim):
    server = start_sim("--instant", "--is-reranker", "--fault-503-rate", "1.0")
    assert post(server, "/v1/rerank", {"query": "", "documents": ["a"]}).status_code == 400
    resp = post(server, "/v1/rerank", {"query": "q", "documents": ["a"]})
    assert_error(resp, 503, "Service unavailable: injected fault", type_="503")
    assert post(server, "/v1/score", {"items": []}).status_code == 503
    generation = start_sim("--instant", "--fault-500-rate", "1.0")
    resp = post(generation, "/v1/score", {"items": ["a"], "label_token_ids": [1]})
    assert_error(resp, 500, "Internal server error: injected fault", type_="InternalServerError")


def test_slow_start_answers_503(start_sim):
    server = start_sim("--instant", "--is-reranker", "--slow-start-s", "30", ready=False)
    resp = post(server, "/v1/rerank", {"query": "q", "documents": ["a"]})
    assert_error(resp, 503, "The server is starting.", type_="503")
    assert post(server, "/v1/score", {"items": []}).status_code == 503


def test_score_items_queue_prefill_share_the_prefix_cache_and_count(start_sim):
    server = start_sim("--max-running-requests", "1", "--prefill-tokens-per-s", "40")
    query = list(range(1000, 1032))  # 32 tokens, two cache pages shared by both items
    body = {"query": query, "items": [[1] * 8, [2] * 8], "label_token_ids": [1]}
    with ThreadPoolExecutor(1) as pool:
        started = time.monotonic()
        future = pool.submit(post, server, "/v1/score", body)
        wait_until(lambda: server.load()["num_waiting_reqs"] == 1, timeout=5)
        assert server.load()["num_running_reqs"] == 1
        resp = future.result()
    elapsed = time.monotonic() - started
    assert resp.status_code == 200 and resp.json()["usage"]["prompt_tokens"] == 80
    assert elapsed >= 1.0 + 8 / 40  # 40 tokens at 40/s, then 8 uncached ones
    assert server.metric("num_requests_total") == 2
    assert server.metric("prompt_tokens_total") == 80
    assert server.metric("cached_tokens_total") == 32


def test_rerank_pairs_count_in_the_metrics(start_sim):
    server = start_sim("--instant", "--is-reranker")
    results = post(server, "/v1/rerank", {"query": QUERY, "documents": DOCS}).json()
    assert server.metric("num_requests_total") == len(DOCS)
    assert server.metric("prompt_tokens_total") == sum(
        r["meta_info"]["prompt_tokens"] for r in results)
    assert server.load()["num_running_reqs"] == 0


def test_an_aborted_score_request_finds_no_logprobs(start_sim):
    server = start_sim("--prefill-tokens-per-s", "10")
    body = {"items": [list(range(1, 51))], "label_token_ids": [1]}  # 5 s of prefill
    with ThreadPoolExecutor(1) as pool:
        future = pool.submit(post, server, "/v1/score", body)
        wait_until(lambda: server.load()["num_running_reqs"] == 1, timeout=5)
        assert requests.post(server.url + "/abort_request", json={"abort_all": True},
                             timeout=5).status_code == 200
        resp = future.result()
    assert resp.status_code == 500
    assert re.fullmatch(r"Internal server error: output_logprobs is empty for request "
                        r"[0-9a-f]{32}\.", resp.json()["message"])
    assert server.metric("num_aborted_requests_total") == 1
