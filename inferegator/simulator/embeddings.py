"""/v1/embeddings of an embedding model (``--is-embedding``), as SGLang 0.5.23 serves it.

Validation and wording follow SGLang's serving_embedding.py (``_validate_request``,
``_serialize_embedding``) and tokenizer_manager.py (context length, "not an embedding
model", Matryoshka ``dimensions``). A vector is a deterministic function of the input's
token ids: the same text, or its token ids, always gives the same unit vector.
"""

import base64
import hashlib
import math
import random
import struct
from dataclasses import dataclass

from .engine import SimRequest
from .protocol import SGLangError
from .requests_in import is_token_ids
from .tokenizer import encode

NOT_AN_EMBEDDING_MODEL = (
    "This model does not appear to be an embedding model by default. Please add "
    "`--is-embedding` when launching the server or try another model.")


@dataclass
class EmbeddingCall:
    """A validated embeddings request: the token ids of each input, in order."""

    inputs: list[list[int]]
    encoding_format: str
    dimensions: int | None
    rid: str | None


def _input_error(value) -> str | None:
    """SGLang's _validate_request for ``input`` (the first item decides the list's kind)."""
    if not value:
        return "Input cannot be empty"
    if isinstance(value, str):
        return "Input cannot be empty or whitespace only" if not value.strip() else None
    if not isinstance(value, list):
        return "input must be a string, a list of strings, a list of token ids or a list " \
               "of token-id lists"
    first = value[0]
    if isinstance(first, str):
        for i, item in enumerate(value):
            if not isinstance(item, str):
                return "All items in input list must be strings"
            if not item.strip():
                return f"Input at index {i} cannot be empty or whitespace only"
    elif isinstance(first, int) and not isinstance(first, bool):
        for i, item in enumerate(value):
            if not isinstance(item, int) or isinstance(item, bool):
                return "All items in input list must be integers"
            if item < 0:
                return f"Token ID at index {i} must be non-negative"
    elif isinstance(first, list):
        for i, item in enumerate(value):
            if not is_token_ids(item):
                return f"Input at index {i} must be a list of integers"
            if not item:
                return f"Input at index {i} cannot be empty"
            if any(t < 0 for t in item):
                return f"Input at index {i} contains negative token IDs"
    else:
        return "input must be a string, a list of strings, a list of token ids or a list " \
               "of token-id lists"
    return None


def parse_embeddings(body: dict) -> EmbeddingCall:
    """Validate a /v1/embeddings body (encoding_format first, then input, as SGLang)."""
    encoding_format = body.get("encoding_format")
    if encoding_format is None:
        encoding_format = "float"
    if encoding_format not in ("float", "base64"):
        raise SGLangError(400, "encoding_format must be either 'float' or 'base64', "
                               f"got {encoding_format!r}", param="encoding_format")
    if "input" not in body:
        raise SGLangError(400, "Field required: input", param="input")
    value = body["input"]
    error = _input_error(value)
    if error:
        raise SGLangError(400, error, param="input")
    if isinstance(value, str):
        inputs = [encode(value)]
    elif isinstance(value[0], str):
        inputs = [encode(text) for text in value]
    elif isinstance(value[0], list):
        inputs = value
    else:
        inputs = [value]
    dimensions = body.get("dimensions")
    if dimensions is not None and (not isinstance(dimensions, int)
                                   or isinstance(dimensions, bool)):
        raise SGLangError(400, "dimensions must be int", param="dimensions")
    rid = body.get("rid")
    if rid is not None and not isinstance(rid, str):
        raise SGLangError(400, "rid must be str", param="rid")
    return EmbeddingCall(inputs, encoding_format, dimensions, rid)


def check_embedding_call(call: EmbeddingCall, settings) -> None:
    """What SGLang's tokenizer manager refuses, in its order: length, model kind, dimensions."""
    for ids in call.inputs:
        if len(ids) >= settings.context_length:
            raise SGLangError(400, f"The input ({len(ids)} tokens) is longer than the model's "
                                   f"context length ({settings.context_length} tokens).")
    if not settings.is_embedding:
        raise SGLangError(400, NOT_AN_EMBEDDING_MODEL)
    wanted = call.dimensions
    if wanted is None:
        return
    if not settings.matryoshka:
        raise SGLangError(400, f"Model '{settings.model}' does not support matryoshka "
                               "representation, changing output dimensions will lead to poor "
                               "results.", param="dimensions")
    if wanted < 1:
        raise SGLangError(400, "Requested dimensions must be greater than 0",
                          param="dimensions")
    if wanted > settings.embedding_dim:
        raise SGLangError(400, "Provided dimensions are greater than max embedding dimension: "
                               f"{settings.embedding_dim}", param="dimensions")


def embedding_vector(ids: list[int], dim: int, dimensions: int | None = None) -> list[float]:
    """The unit vector of these token ids, as float32 values.

    A Matryoshka request keeps the first ``dimensions`` components and renormalizes, as
    SGLang's pooler truncates before it normalizes.
    """
    seed = int.from_bytes(hashlib.blake2b(repr(ids).encode(), digest_size=8).digest(), "big")
    rng = random.Random(seed)
    values = [rng.gauss(0.0, 1.0) for _ in range(dim)][:dimensions or dim]
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    packed = struct.pack(f"<{len(values)}f", *(v / norm for v in values))
    return list(struct.unpack(f"<{len(values)}f", packed))


def serialize(vector: list[float], encoding_format: str):
    """A list of floats, or base64 of little-endian float32 (SGLang's _serialize_embedding)."""
    if encoding_format == "float":
        return vector
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")


def embedding_response(model: str, reqs: list[SimRequest], call: EmbeddingCall,
                       dim: int) -> dict:
    """SGLang's EmbeddingResponse: model is the model path, usage counts prompt tokens."""
    data = [{"embedding": serialize(embedding_vector(r.prompt_ids, dim, call.dimensions),
                                    call.encoding_format),
             "index": i, "object": "embedding"} for i, r in enumerate(reqs)]
    prompt = sum(r.prompt_tokens for r in reqs)
    return {"data": data, "model": model, "object": "list",
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt, "completion_tokens": 0,
                      "prompt_tokens_details": None, "reasoning_tokens": 0,
                      "completion_tokens_details": None}}


def encode_result(req: SimRequest, dim: int) -> dict:
    """What /generate returns on an embedding model: SGLang's embedding result dict."""
    return {"embedding": embedding_vector(req.prompt_ids, dim),
            "meta_info": {"id": req.rid, "finish_reason": req.finish_reason,
                          "prompt_tokens": req.prompt_tokens, "weight_version": "default",
                          "e2e_latency": round(req.finished - req.arrived, 6)}}
