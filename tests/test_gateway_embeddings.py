"""/v1/embeddings through a real gateway in front of a real embedding simulator.

The openai SDK (float and its default base64), LangChain's OpenAIEmbeddings and
LiteLLM's embedding() all work unchanged; every input shape is accepted; usage is
metered and priced on input tokens only; the answer validates against OpenAI's schema.
"""

import base64
import math
import os
import struct

import openai
import pytest
import requests

from tests.gateway_fixtures import UNLIMITED, launch_gateway, provision, sdk
from tests.support.processes import Simulator
from tests.test_gateway_openapi import assert_valid, validator_for  # noqa: F401
from tests.test_upstream_interop import ledger_row

EMBED = "acme/sim-embed"
CHAT_MODEL = "acme/sim-chat"
DIM = 64
PROMPT_PRICE = 0.02  # USD per 1M input tokens


def embedding_yaml(embed_sim, chat_sim) -> str:
    limits = "\n".join(f"  {k}: {v}" for k, v in UNLIMITED.items())
    return f"""server:
  health_check_interval_s: 0.5
ratelimit:
{limits}
models:
  - id: {EMBED}
    pricing: {{prompt: {PROMPT_PRICE}, completion: 0}}
    capabilities: [embeddings]
    backends:
      - {{type: sglang, url: '{embed_sim.url}', model: sim-embed}}
  - id: {CHAT_MODEL}
    capabilities: [chat, completions, streaming]
    backends:
      - {{type: sglang, url: '{chat_sim.url}', model: sim-model}}
"""


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    embed_sim = Simulator("--instant", "--is-embedding", "--embedding-dim", DIM,
                          model="sim-embed")
    chat_sim = Simulator("--instant")
    server = launch_gateway(tmp_path_factory.mktemp("gw"), embedding_yaml(embed_sim, chat_sim))
    yield server
    server.stop()
    embed_sim.stop()
    chat_sim.stop()


def norm(vector) -> float:
    return math.sqrt(sum(v * v for v in vector))


def post(gateway, body, key=None):
    return requests.post(gateway.url + "/v1/embeddings", json=body, timeout=10,
                         headers={"Authorization": f"Bearer {key or gateway.key}"})


def test_the_sdk_gets_float_vectors_with_usage_and_the_public_model(gateway):
    answer = sdk(gateway).embeddings.create(model=EMBED, input="The quick brown fox.",
                                            encoding_format="float")
    assert answer.model == EMBED
    assert [item.index for item in answer.data] == [0]
    vector = answer.data[0].embedding
    assert len(vector) == DIM and math.isclose(norm(vector), 1.0, rel_tol=1e-4)
    assert answer.usage.prompt_tokens > 0
    assert answer.usage.total_tokens == answer.usage.prompt_tokens


def test_base64_the_sdks_default_decodes_to_the_same_vectors(gateway):
    client = sdk(gateway)
    texts = ["first text", "second, longer text"]
    floats = client.embeddings.create(model=EMBED, input=texts, encoding_format="float")
    decoded = client.embeddings.create(model=EMBED, input=texts)  # the SDK asks base64
    assert len(decoded.data) == 2
    for f, d in zip(floats.data, decoded.data):
        assert d.embedding == pytest.approx(f.embedding, rel=1e-6, abs=1e-7)
    assert floats.data[0].embedding != floats.data[1].embedding
    raw = post(gateway, {"model": EMBED, "input": texts, "encoding_format": "base64"})
    assert raw.status_code == 200
    packed = base64.b64decode(raw.json()["data"][0]["embedding"])
    assert len(packed) == 4 * DIM  # little-endian float32, as OpenAI encodes it
    assert list(struct.unpack(f"<{DIM}f", packed)) == pytest.approx(
        floats.data[0].embedding, rel=1e-6, abs=1e-7)


@pytest.mark.parametrize("given, count", [
    ("one string", 1),
    (["a", "b", "c"], 3),
    ([101, 2023, 2003], 1),
    ([[101, 2023], [101, 2003, 1037]], 2),
])
def test_every_input_shape_is_accepted(gateway, given, count):
    answer = sdk(gateway).embeddings.create(model=EMBED, input=given, encoding_format="float")
    assert [item.index for item in answer.data] == list(range(count))
    assert all(len(item.embedding) == DIM for item in answer.data)
    if isinstance(given, list) and isinstance(given[0], list):
        assert answer.usage.prompt_tokens == sum(len(ids) for ids in given)


@pytest.mark.parametrize("body, param, code", [
    ({"model": EMBED}, "input", "missing_required_parameter"),
    ({"model": EMBED, "input": []}, "input", "invalid_type"),
    ({"model": EMBED, "input": [1, "a"]}, "input", "invalid_type"),
    ({"model": EMBED, "input": "x", "encoding_format": "int8"}, "encoding_format",
     "invalid_value"),
    ({"model": EMBED, "input": "x", "dimensions": 0}, "dimensions", "invalid_value"),
])
def test_bad_input_gets_the_gateways_400_naming_the_field(gateway, body, param, code):
    resp = post(gateway, body)
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert (error["param"], error["code"]) == (param, code)
    assert resp.headers["x-request-id"]


def test_a_model_without_the_capability_refuses_the_endpoint(gateway):
    client = sdk(gateway)
    with pytest.raises(openai.NotFoundError) as caught:
        client.embeddings.create(model=CHAT_MODEL, input="hi", encoding_format="float")
    assert caught.value.code == "unsupported_endpoint"
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model=EMBED,
                                       messages=[{"role": "user", "content": "hi"}])
    assert caught.value.code == "unsupported_endpoint"


def test_usage_is_metered_and_priced_on_input_tokens(gateway):
    raw = sdk(gateway).embeddings.with_raw_response.create(
        model=EMBED, input=["metered text one", "metered text two"], encoding_format="float")
    answer = raw.parse()
    row = ledger_row(gateway, raw.headers["x-request-id"])
    assert row["model"] == EMBED and row["status"] == "completed"
    assert row["prompt_tokens"] == answer.usage.prompt_tokens > 0
    assert row["completion_tokens"] == 0
    assert row["cost_usd"] == pytest.approx(answer.usage.prompt_tokens * PROMPT_PRICE / 1e6)


def test_the_answer_validates_against_openais_schema(gateway, validator_for):  # noqa: F811
    resp = post(gateway, {"model": EMBED, "input": ["schema", "check"],
                          "encoding_format": "float"})
    assert resp.status_code == 200
    assert_valid(validator_for("CreateEmbeddingResponse"), resp.json())


def test_langchain_openai_embeddings_work_unchanged(gateway):
    from langchain_openai import OpenAIEmbeddings

    # check_embedding_ctx_length=False: LangChain would otherwise tokenize with tiktoken,
    # whose vocabularies are downloaded at run time.
    embedder = OpenAIEmbeddings(model=EMBED, base_url=gateway.url + "/v1", api_key=gateway.key,
                                check_embedding_ctx_length=False, max_retries=0)
    documents = embedder.embed_documents(["LangChain document one", "document two"])
    query = embedder.embed_query("LangChain document one")
    assert len(documents) == 2 and all(len(v) == DIM for v in documents)
    assert query == pytest.approx(documents[0], rel=1e-6, abs=1e-7)


def test_litellm_embedding_works_unchanged(gateway):
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no download at import
    import litellm

    answer = litellm.embedding(model=f"openai/{EMBED}", input=["LiteLLM text"],
                               api_base=gateway.url + "/v1", api_key=gateway.key,
                               encoding_format="float")
    vector = answer.data[0]["embedding"]
    assert len(vector) == DIM and math.isclose(norm(vector), 1.0, rel_tol=1e-4)
    assert answer.usage.prompt_tokens > 0


def test_the_keys_limits_apply_and_reserve_no_output(gateway):
    key, _ = provision(gateway.storage, "embed-limited@example.com", requests_per_minute=1,
                       tokens_per_minute=1000)
    client = sdk(gateway, key=key)
    first = client.embeddings.with_raw_response.create(model=EMBED, input="x" * 400,
                                                       encoding_format="float")
    # 400 characters are about 101 tokens; nothing is reserved for output.
    assert 1000 - int(first.headers["x-ratelimit-remaining-tokens"]) <= 101
    with pytest.raises(openai.RateLimitError):
        client.embeddings.create(model=EMBED, input="again", encoding_format="float")
