"""/v1/rerank, as SGLang 0.5.23 serves it (serving_rerank.py, V1RerankReqInput).

SGLang reranks with a cross-encoder: a ``*ForSequenceClassification`` model (such as
BAAI/bge-reranker-v2-m3), which it serves as a non-generation model. Each (query, document)
pair becomes one engine request of an embedding batch; the model's one logit is the
document's score, and every result carries that request's ``meta_info`` (where its token
count is). The answer is a bare JSON list, best score first; it has no ``usage`` and no
``model``, and the request has no ``model`` field (one sent is ignored).

What the simulator answers, by kind of model:

- ``--is-reranker`` (a cross-encoder): the score is the share of the query's distinct words
  that also occur in the document (see :func:`relevance`), so a document that shares words
  with the query ranks higher;
- ``--is-embedding`` only (an embedding model, not a cross-encoder): SGLang still runs the
  pairs through the model and takes the first component of each pair's embedding as its
  score; so does the simulator;
- a generation model: SGLang's 400 "This model does not appear to be an embedding model".
  (SGLang's other path, a Qwen3 decoder reranker recognized by its chat template, is not
  simulated.)
"""

import re
import struct
from dataclasses import dataclass

from .embedding_routes import run_embeddings
from .embeddings import EmbeddingCall, check_embedding_call, embedding_vector
from .engine import SamplingParams, SimRequest
from .protocol import SGLangError
from .requests_in import get_field, parse_json
from .tokenizer import encode, tokenize

# What /model_info reports for an --is-reranker simulator (bge-reranker-v2-m3's config).
RERANKER_MODEL_INFO = {"model_type": "xlm-roberta",
                       "architectures": ["XLMRobertaForSequenceClassification"]}

_PART_FIELDS = {"text": "text", "image_url": "image_url", "video_url": "video_url"}
_WORD = re.compile(r"\w+")


@dataclass
class RerankCall:
    """A validated rerank request: each document's content as given, and the pair texts."""

    query: str
    documents: list
    texts: list[str]
    top_n: int | None
    return_documents: bool


def _content(value, name: str):
    """A string or a list of content parts (text, image_url, video_url), else a 400."""
    if isinstance(value, str):
        return value
    ok = isinstance(value, list) and all(
        isinstance(part, dict) and part.get("type") in _PART_FIELDS
        and _PART_FIELDS[part["type"]] in part
        and (part["type"] != "text" or isinstance(part["text"], str))
        for part in value)
    if not ok:
        raise SGLangError(400, f"{name} must be a string or a list of content parts "
                               "(text, image_url, video_url)", param=name.split("[")[0])
    return value


def content_text(content) -> str:
    """The text a cross-encoder reads: the string, or the text parts joined by spaces."""
    if isinstance(content, str):
        return content
    return " ".join(part["text"] for part in content if part.get("type") == "text")


def parse_rerank(body: dict) -> RerankCall:
    """V1RerankReqInput's fields, then OpenAIServingRerank._validate_request, in its order."""
    query = _content(get_field(body, "query", (str, list)), "query")
    documents = get_field(body, "documents", list)
    documents = [_content(doc, f"documents[{i}]") for i, doc in enumerate(documents)]
    get_field(body, "instruct", str, None)  # for Qwen3 decoder rerankers; cross-encoders ignore it
    top_n = get_field(body, "top_n", int, None)
    if top_n is not None and top_n < 1:
        raise SGLangError(400, "Value error, parameter top_n should be larger than 0.",
                          param="top_n")
    return_documents = get_field(body, "return_documents", bool, True)
    if not query:
        raise SGLangError(400, "Query cannot be empty", param="query")
    if isinstance(query, str) and not query.strip():
        raise SGLangError(400, "Query cannot be empty or whitespace only", param="query")
    if not documents:
        raise SGLangError(400, "Documents cannot be empty", param="documents")
    for doc in documents:
        if not doc:
            raise SGLangError(400, "Each document must be a non-empty string",
                              param="documents")
        if isinstance(doc, str) and not doc.strip():
            raise SGLangError(400, "Each document cannot be empty or whitespace only",
                              param="documents")
    return RerankCall(content_text(query), documents, [content_text(d) for d in documents],
                      top_n, return_documents)


def words(text: str) -> set[str]:
    """The distinct words of a text: its word tokens, lower-cased, without their spaces."""
    found = set()
    for token in tokenize(text):
        word = token.strip().lower()
        if _WORD.fullmatch(word):
            found.add(word)
    return found


def float32(value: float) -> float:
    """The value as the model's float32 output would carry it."""
    return struct.unpack("<f", struct.pack("<f", value))[0]


def relevance(query: str, document: str) -> float:
    """A simulated cross-encoder's score: |query words ∩ document words| / |query words|.

    In [0, 1] (a reranker whose config applies a sigmoid); 0.0 when the query has no words.
    """
    wanted = words(query)
    if not wanted:
        return 0.0
    return float32(len(wanted & words(document)) / len(wanted))


def pair_ids(query: str, document: str) -> list[int]:
    """The token ids of a (query, document) pair: the query's, then the document's."""
    return encode(query) + encode(document)


def result_meta_info(req: SimRequest) -> dict:
    """The embedding result's meta_info that SGLang attaches to each rerank result."""
    return {"id": req.rid, "finish_reason": req.finish_reason,
            "prompt_tokens": req.prompt_tokens, "weight_version": "default",
            "num_retractions": 0, "e2e_latency": round(req.finished - req.arrived, 6)}


def _document_error(document) -> SGLangError:
    # RerankResponse.document is Optional[str]: returning a list of parts fails pydantic's
    # validation, a ValueError that handle_request answers with 400 "BadRequest".
    return SGLangError(400, "1 validation error for RerankResponse\ndocument\n  Input should "
                            f"be a valid string [type=string_type, input_value={document!r}, "
                            "input_type=list]", type="BadRequest")


def rerank_response(call: RerankCall, reqs: list[SimRequest], scores: list[float]) -> list:
    """RerankResponse items, best first (a stable sort: ties keep the documents' order), the
    first top_n of them when it is set; ``document`` only with return_documents."""
    results = []
    for index, (req, score) in enumerate(zip(reqs, scores)):
        item = {"score": score}
        if call.return_documents:
            document = call.documents[index]
            if not isinstance(document, str):
                raise _document_error(document)
            item["document"] = document
        item["index"] = index
        item["meta_info"] = result_meta_info(req)
        results.append(item)
    results.sort(key=lambda item: item["score"], reverse=True)
    return results if call.top_n is None else results[:call.top_n]


class Rerank:
    """POST (or PUT) /v1/rerank."""

    def __init__(self, runner, settings):
        self.runner = runner
        self.settings = settings

    def on_post(self, req, resp):
        call = parse_rerank(parse_json(req.bounded_stream.read()))
        self.runner.check_started()
        pairs = [pair_ids(call.query, text) for text in call.texts]
        # The tokenizer manager's checks of the embedding batch: length, then model kind.
        check_embedding_call(EmbeddingCall(pairs, "float", None, None), self.settings)
        _, go_on = self.runner.draw_fault(req.env, stream=False)
        if not go_on:
            return
        reqs = [SimRequest(ids, SamplingParams(max_new_tokens=0)) for ids in pairs]
        run_embeddings(self.runner.engine, reqs, req.env)
        if self.settings.is_reranker:
            scores = [relevance(call.query, text) for text in call.texts]
        else:
            scores = [embedding_vector(r.prompt_ids, self.settings.embedding_dim)[0]
                      for r in reqs]
        resp.media = rerank_response(call, reqs, scores)

    on_put = on_post
