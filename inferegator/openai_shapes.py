"""OpenAI wire shapes the gateway writes itself: model cards and the models list."""

from .gateway.features import supported_parameters


def model_card(model, created: int) -> dict:
    """GET /v1/models/{id}: OpenAI's Model object plus context_length, pricing, capabilities,
    the fields of SGLang's own listing that its clients read (``root``, the public id, and
    ``max_model_len``, the context length, null when unknown) and OpenRouter's
    (``supported_parameters``, ``architecture`` modalities, ``max_completion_tokens``)."""
    pricing = model.pricing
    return {
        "id": model.id, "object": "model", "created": created, "owned_by": model.owned_by,
        "root": model.id, "max_model_len": model.context_length,
        "context_length": model.context_length,
        "pricing": {"prompt": pricing.prompt, "completion": pricing.completion,
                    "cached_prompt": pricing.cached_prompt, "unit": "USD per 1M tokens"},
        "capabilities": list(model.capabilities),
        # OpenRouter's fields, which model pickers and routers read
        "supported_parameters": supported_parameters(model.capabilities),
        "architecture": {
            "input_modalities": ["text", "image"] if "vision" in model.capabilities
            else ["text"],
            "output_modalities": ["text"] if set(model.capabilities) - {"embeddings",
                                                                       "rerank", "score"}
            else ["embeddings"]},
        "max_completion_tokens": model.config.max_completion_tokens,
    }


def model_list(cards: list[dict]) -> dict:
    return {"object": "list", "data": cards}
