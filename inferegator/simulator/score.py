"""/v1/score, as SGLang 0.5.23 serves it (serving_score.py, ScoringRequest, and
TokenizerManagerScoreMixin.score_request in tokenizer_manager_score_mixin.py).

On a generation model each item becomes one prompt, ``query + item`` (``item + query`` with
``item_first``), run as a prefill-only request (``max_new_tokens: 0``); the scores of an
item are the probabilities of the label tokens as the next token, or their softmax with
``apply_softmax``. The simulated next-token distribution is a copy model (see
:func:`next_token_logprobs`). ``usage.prompt_tokens`` sums the prompts' tokens.

On an ``--is-embedding`` model the prompts run as embeddings and each item's scores are its
embedding (label_token_ids unused), as SGLang returns the pooled output; an
``--is-reranker`` model's one logit per item does not fit ScoringResponse's nested lists and
SGLang answers 400 with pydantic's message. Not simulated: ``--enable-mis`` (multi-item
scoring), setwise readout (``score_extraction_token`` is refused as SGLang refuses it with
its radix cache on), pooled hidden states (always null), image inputs; embedding
overrides are checked as SGLang checks them, then ignored.
"""

import math
import struct
from collections import Counter
from dataclasses import dataclass

from .embedding_routes import run_all, run_embeddings
from .embeddings import embedding_vector
from .engine import SamplingParams, SimRequest
from .protocol import SGLangError
from .requests_in import get_field, parse_json
from .rerank import RERANKER_MODEL_INFO
from .tokenizer import VOCAB_SIZE, encode

COPY_MASS = 0.9  # the share of the next-token probability on the prompt's own tokens
_CAUSAL_LM = ["LlamaForCausalLM"]  # what /model_info reports for the other kinds


@dataclass
class ScoreCall:
    """A ScoringRequest with the fields the simulator acts on, typed as pydantic checks."""

    query: object
    items: object
    label_token_ids: list | None
    apply_softmax: bool
    temperature: float
    return_token_logprobs: bool
    item_first: bool
    return_pooled_hidden_states: bool
    score_extraction_token: str | None
    embed_override_token_id: int | None
    query_embed_overrides: list | None
    item_embed_overrides: list | None
    model: str


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_ids(value) -> bool:
    return isinstance(value, list) and all(_is_int(t) for t in value)


def _is_vectors(value) -> bool:
    return isinstance(value, list) and all(
        isinstance(row, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                      for v in row) for row in value)


def parse_score(body: dict) -> ScoreCall:
    """ScoringRequest's field types (a 400 where pydantic would refuse)."""
    query = body.get("query")
    if query is not None and not isinstance(query, str) and not _is_ids(query):
        raise SGLangError(400, "query must be a string or a list of token ids", param="query")
    items = body.get("items")
    if items is not None and not (
            isinstance(items, str)
            or (isinstance(items, list) and (all(isinstance(i, str) for i in items)
                                             or all(_is_ids(i) for i in items)))):
        raise SGLangError(400, "items must be a string, a list of strings or a list of "
                               "token-id lists", param="items")
    labels = body.get("label_token_ids")
    if labels is not None and not (_is_ids(labels) or (
            isinstance(labels, list) and all(_is_ids(one) for one in labels))):
        raise SGLangError(400, "label_token_ids must be a list of token ids or one list of "
                               "token ids per item", param="label_token_ids")
    temperature = get_field(body, "temperature", (int, float), 1.0)
    if not math.isfinite(temperature) or temperature <= 0:
        raise SGLangError(400, "temperature must be a finite number greater than 0",
                          param="temperature")
    query_overrides = body.get("query_embed_overrides")
    if query_overrides is not None and not _is_vectors(query_overrides):
        raise SGLangError(400, "query_embed_overrides must be a list of vectors",
                          param="query_embed_overrides")
    item_overrides = body.get("item_embed_overrides")
    if item_overrides is not None and not (isinstance(item_overrides, list) and all(
            one is None or _is_vectors(one) for one in item_overrides)):
        raise SGLangError(400, "item_embed_overrides must be a list of null or lists of "
                               "vectors", param="item_embed_overrides")
    return ScoreCall(
        query=query, items=items, label_token_ids=labels,
        apply_softmax=get_field(body, "apply_softmax", bool, False),
        temperature=float(temperature),
        return_token_logprobs=get_field(body, "return_token_logprobs", bool, False),
        item_first=get_field(body, "item_first", bool, False),
        return_pooled_hidden_states=get_field(body, "return_pooled_hidden_states", bool,
                                              False),
        score_extraction_token=get_field(body, "score_extraction_token", str, None),
        embed_override_token_id=get_field(body, "embed_override_token_id", int, None),
        query_embed_overrides=query_overrides, item_embed_overrides=item_overrides,
        model=get_field(body, "model", str, "default"),
    )


def _labels_per_item(call: ScoreCall, num_items: int) -> list[list[int]]:
    """score_request's checks of label_token_ids on a generation model, in its order."""
    labels = call.label_token_ids
    if not isinstance(labels, list) or not labels:
        raise SGLangError(400, "label_token_ids must be a nonempty list")
    if isinstance(labels[0], list):
        if len(labels) != num_items:
            raise SGLangError(400, "label_token_ids must have one list per item")
    else:
        labels = [labels] * num_items
    for one in labels:
        if not isinstance(one, list) or not one:
            raise SGLangError(400, "each item must have a nonempty candidate list")
        if any(not _is_int(t) or t < 0 for t in one):
            raise SGLangError(400, "label_token_ids must contain nonnegative integers")
        if len(set(one)) != len(one):
            raise SGLangError(400, "label_token_ids must not contain duplicate tokens")
        for token in one:
            if token >= VOCAB_SIZE:
                raise SGLangError(400, f"Token ID {token} is out of vocabulary (vocab size: "
                                       f"{VOCAB_SIZE})")
    return labels


def _check_overrides(label: str, ids: list[int], vectors, token_id: int) -> None:
    if vectors is None:
        return
    found = sum(1 for t in ids if t == token_id)
    if found != len(vectors):
        raise SGLangError(400, f"{label} contains {found} occurrences of "
                               f"embed_override_token_id={token_id}, but {len(vectors)} "
                               "override embeddings were provided.")


def score_prompts(call: ScoreCall, settings) -> tuple[list[list[int]], list | None]:
    """The token ids of each item's prompt and, on a generation model, its label ids.

    Raises SGLangError with score_request's refusals, in its order (no prompts: no items).
    """
    generation = not settings.is_embedding
    if call.temperature != 1.0 and not call.apply_softmax:
        raise SGLangError(400, "temperature requires apply_softmax=True")
    if call.return_token_logprobs and not generation:
        raise SGLangError(400, "return_token_logprobs is only supported for CausalLM models")
    if generation and call.label_token_ids is None:
        raise SGLangError(400, "label_token_ids is required for generation (CausalLM) "
                               "models.")
    items = call.items
    if items is None:
        raise SGLangError(400, "items must be provided")
    if not items:
        return [], None
    items_list = [items] if isinstance(items, str) else items
    labels = _labels_per_item(call, len(items_list)) if generation else None
    query = call.query
    if query is None:
        query = [] if isinstance(items_list[0], list) else ""
    has_embeds = call.query_embed_overrides is not None or call.item_embed_overrides is not None
    if has_embeds and call.embed_override_token_id is None:
        raise SGLangError(400, "embed_override_token_id is required when "
                               "query_embed_overrides, item_embed_overrides, or "
                               "stacked_query_item_embed_overrides are supplied.")
    if call.item_first and has_embeds:
        raise SGLangError(400, "item_first is not supported when embeddings are supplied")
    if call.item_embed_overrides is not None and len(call.item_embed_overrides) != len(items):
        raise SGLangError(400, f"item_embed_overrides length ({len(call.item_embed_overrides)}"
                               f") must match items length ({len(items)}).")
    if call.score_extraction_token is not None:
        _refuse_score_extraction(call, settings)
    if isinstance(query, str) and not has_embeds:
        # One text per item; a token-id item is pasted in as its Python repr, as SGLang does.
        texts = [f"{item}{query}" if call.item_first else f"{query}{item}"
                 for item in items_list]
        prompts = [encode(text) for text in texts]
    elif (isinstance(query, list) and isinstance(items_list[0], list)) or has_embeds:
        query_ids = encode(query) if isinstance(query, str) else list(query)
        items_ids = [encode(item) if isinstance(item, str) else list(item)
                     for item in items_list]
        if has_embeds:
            token_id = call.embed_override_token_id
            _check_overrides("query", query_ids, call.query_embed_overrides, token_id)
            for i, item_ids in enumerate(items_ids):
                vectors = call.item_embed_overrides[i] if call.item_embed_overrides else None
                _check_overrides(f"items[{i}]", item_ids, vectors, token_id)
        prompts = [item_ids + query_ids if call.item_first else query_ids + item_ids
                   for item_ids in items_ids]
    else:
        raise SGLangError(400, "Invalid combination of query/items types for score_request.")
    if call.return_pooled_hidden_states:
        if generation:
            raise SGLangError(400, "return_pooled_hidden_states is not supported for CausalLM "
                                   "models. It requires a model with a task-specific head "
                                   "(e.g. SequenceClassification or RewardModel).")
        if settings.is_reranker:
            raise SGLangError(400, "return_pooled_hidden_states is not supported for "
                                   f"{RERANKER_MODEL_INFO['architectures'][0]}. This model "
                                   "uses CrossEncodingPooler which does not expose pre-head "
                                   "hidden states.")
    for ids in prompts:
        if len(ids) >= settings.context_length:
            raise SGLangError(400, f"The input ({len(ids)} tokens) is longer than the model's "
                                   f"context length ({settings.context_length} tokens).")
    return prompts, labels


def _refuse_score_extraction(call: ScoreCall, settings) -> None:
    """_validate_score_extraction: no simulated model pools per position, and a generation
    model needs --disable-radix-cache, which the simulator (always caching) lacks."""
    if settings.is_embedding:
        archs = RERANKER_MODEL_INFO["architectures"] if settings.is_reranker else _CAUSAL_LM
        raise SGLangError(400, "score_extraction_token_id is only supported for "
                               "SequenceClassification models that pool the head per position "
                               f"(score_and_pool); model architecture(s) {archs} do not "
                               "(cross-encoder, reward, and embedding models pool a single "
                               "vector and ignore the readout positions).")
    if call.item_first:
        raise SGLangError(400, "item_first is not supported with score_extraction_token_id.")
    raise SGLangError(400, "score_extraction_token_id requires --disable-radix-cache because "
                           "pooling positions are relative to the full prompt.")


def _float32(value: float) -> float:
    return struct.unpack("<f", struct.pack("<f", value))[0]


def next_token_logprobs(prompt: list[int], tokens: list[int]) -> list[float]:
    """The simulated model's next-token log-probabilities of these tokens after a prompt.

    A copy model: COPY_MASS of the probability goes to the prompt's own tokens, in
    proportion to how often each occurs in it, and the rest is spread evenly over the
    vocabulary (an empty prompt: all of it). So over the whole vocabulary it sums to 1, and
    a label token the prompt uses more often scores higher. Values are float32, as a
    model's logprobs are.
    """
    if not prompt:
        return [_float32(-math.log(VOCAB_SIZE)) for _ in tokens]
    counts = Counter(prompt)
    rest = (1.0 - COPY_MASS) / VOCAB_SIZE
    return [_float32(math.log(COPY_MASS * counts[t] / len(prompt) + rest)) for t in tokens]


def label_scores(logprobs: list[float], apply_softmax: bool, temperature: float) -> list[float]:
    """_convert_logprobs_to_scores: probabilities, or a softmax over the labels."""
    if not apply_softmax:
        return [math.exp(lp) for lp in logprobs]
    return _softmax(logprobs, temperature)


def _softmax(values: list[float], temperature: float) -> list[float]:
    """Softmax with a temperature, centred on the maximum first (as SGLang computes it)."""
    top = max(values)
    weights = [math.exp((v - top) / temperature) for v in values]
    total = sum(weights)
    return [w / total for w in weights]


def _list_errors(scores: list[float]) -> str:
    """pydantic's message for flat floats in ScoringResponse.scores (no documentation links)."""
    lines = [f"{2 * len(scores)} validation errors for ScoringResponse"]
    for branch in ("list[list[float]]", "list[list[list[float]]]"):
        for i, score in enumerate(scores):
            lines += [f"scores.{branch}.{i}",
                      f"  Input should be a valid list [type=list_type, input_value={score!r}, "
                      "input_type=float]"]
    return "\n".join(lines)


def run_prefills(engine, reqs: list[SimRequest], environ) -> None:
    """Run prefill-only generation requests (concurrently); a client that hangs up aborts
    them."""
    def prefill(req):
        for _ in engine.generate(req):
            pass

    run_all(reqs, environ, prefill)


def scoring_response(call: ScoreCall, scores: list, prompt_tokens: int,
                     token_logprobs: list | None) -> dict:
    """ScoringResponse.model_dump(): usage is UsageInfo(prompt_tokens=total_tokens=P)."""
    return {"scores": scores, "pooled_hidden_states": None, "token_logprobs": token_logprobs,
            "model": call.model,
            "usage": {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens,
                      "completion_tokens": 0, "prompt_tokens_details": None,
                      "reasoning_tokens": 0, "completion_tokens_details": None},
            "object": "scoring"}


class Score:
    """POST /v1/score."""

    def __init__(self, runner, settings):
        self.runner = runner
        self.settings = settings

    def on_post(self, req, resp):
        call = parse_score(parse_json(req.bounded_stream.read()))
        self.runner.check_started()
        prompts, labels = score_prompts(call, self.settings)
        _, go_on = self.runner.draw_fault(req.env, stream=False)
        if not go_on:
            return
        engine = self.runner.engine
        reqs = [SimRequest(ids, SamplingParams(max_new_tokens=0)) for ids in prompts]
        if not self.settings.is_embedding:
            run_prefills(engine, reqs, req.env)
            resp.media = self._generation_answer(call, reqs, labels)
            return
        if reqs:
            run_embeddings(engine, reqs, req.env)
        prompt_tokens = sum(r.prompt_tokens for r in reqs)
        if self.settings.is_reranker:
            if reqs:  # one float per item: not the nested lists ScoringResponse wants
                scores = [1.0 if call.apply_softmax else 0.0 for _ in reqs]
                raise SGLangError(400, _list_errors(scores), type="BadRequest")
            resp.media = scoring_response(call, [], 0, None)
            return
        scores = []
        for r in reqs:
            vector = embedding_vector(r.prompt_ids, self.settings.embedding_dim)
            scores.append(_softmax(vector, call.temperature) if call.apply_softmax else vector)
        resp.media = scoring_response(call, scores, prompt_tokens, None)

    @staticmethod
    def _generation_answer(call: ScoreCall, reqs: list[SimRequest], labels) -> dict:
        scores, token_logprobs = [], [] if call.return_token_logprobs else None
        for r, one in zip(reqs, labels or []):
            if (r.finish_reason or {}).get("type") == "abort":
                # No logprobs come back for an aborted request: score_request's RuntimeError.
                raise SGLangError(500, "Internal server error: output_logprobs is empty for "
                                       f"request {r.rid}.", type="InternalServerError")
            logprobs = next_token_logprobs(r.prompt_ids, one)
            scores.append(label_scores(logprobs, call.apply_softmax, call.temperature))
            if token_logprobs is not None:
                token_logprobs.append(logprobs)
        return scoring_response(call, scores, sum(r.prompt_tokens for r in reqs),
                                token_logprobs)
