"""The OpenAI routes the gateway relays, and everything that differs between them: one table.

Each endpoint's name is also the capability a model declares to serve it and the key
a backend type maps to its own path (``BackendAdapter.endpoint_path``).
"""

from collections.abc import Callable
from dataclasses import dataclass

from .relay import (
    GenerateRelay,
    ResponsesRelay,
    SSERelay,
    fix_completion,
    fix_embeddings,
    fix_nothing,
    fix_rerank,
    fix_response,
    rewrite_json,
    rewrite_native,
)
from .request import (
    CHAT,
    COMPLETIONS,
    EMBEDDINGS,
    GENERATE,
    RERANK,
    RESPONSES,
    SCORE,
    parse_embeddings,
    parse_generate,
    parse_generation,
    parse_rerank,
    parse_responses,
    parse_score,
)


@dataclass(frozen=True)
class Endpoint:
    """One relayed route: how its body is read, bounded, sent upstream and answered."""

    name: str  # CHAT, COMPLETIONS, EMBEDDINGS or RESPONSES
    path: str  # the gateway's route
    parse: Callable  # (GatewayRequest, body) -> GatewayRequest; 400 naming the bad field
    prompt_param: str  # the field the prompt estimate comes from (named by context errors)
    max_tokens_param: str | None  # the field bounding the output; None: nothing generated
    fix_answer: Callable | None  # (answer, GatewayRequest): a JSON answer as OpenAI writes it
    stream_relay: type | None = None  # the relay of its SSE stream; None: never streamed
    stream_usage_option: bool = False  # streams carry usage only if stream_options asks
    rewrite: Callable = rewrite_json  # (bytes, public model, edit, fix, request) -> answer
    names_model: bool = True  # the body's model is the backend's (SGLang's /generate has none)
    gateway_fields: tuple = ()  # fields the gateway applies itself, not sent upstream

    def upstream_body(self, greq) -> dict:
        """The body sent upstream: the client's, with the usage chunk asked for in streams
        that carry one only on request (the gateway meters every request), and without
        the gateway's model field where the backend's route has none."""
        body = dict(greq.body)
        if greq.stream and self.stream_usage_option:
            body["stream_options"] = {**(greq.body.get("stream_options") or {}),
                                      "include_usage": True}
        if not self.names_model:
            body.pop("model", None)
        for name in self.gateway_fields:
            body.pop(name, None)
        return body


ENDPOINTS = {e.name: e for e in (
    Endpoint(CHAT, "/v1/chat/completions", parse_generation, "messages", "max_tokens",
             fix_completion, SSERelay, stream_usage_option=True),
    Endpoint(COMPLETIONS, "/v1/completions", parse_generation, "prompt", "max_tokens",
             fix_completion, SSERelay, stream_usage_option=True),
    Endpoint(EMBEDDINGS, "/v1/embeddings", parse_embeddings, "input", None, fix_embeddings),
    Endpoint(RESPONSES, "/v1/responses", parse_responses, "input", "max_output_tokens",
             fix_response, ResponsesRelay),
    Endpoint(GENERATE, "/generate", parse_generate, "text", "sampling_params.max_new_tokens",
             None, GenerateRelay, rewrite=rewrite_native, names_model=False),
    Endpoint(RERANK, "/v1/rerank", parse_rerank, "documents", None, fix_rerank,
             rewrite=rewrite_native, names_model=False, gateway_fields=("top_n",)),
    Endpoint(SCORE, "/v1/score", parse_score, "items", None, fix_nothing),
)}
