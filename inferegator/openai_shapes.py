"""OpenAI wire shapes the gateway writes itself: model cards and the models list."""


def model_card(model, created: int) -> dict:
    """GET /v1/models/{id}: OpenAI's Model object plus context_length, pricing, capabilities,
    and the fields of SGLang's own listing that its clients read: ``root`` (the public id)
    and ``max_model_len`` (the context length, null when unknown)."""
    pricing = model.pricing
    return {
        "id": model.id, "object": "model", "created": created, "owned_by": model.owned_by,
        "root": model.id, "max_model_len": model.context_length,
        "context_length": model.context_length,
        "pricing": {"prompt": pricing.prompt, "completion": pricing.completion,
                    "cached_prompt": pricing.cached_prompt, "unit": "USD per 1M tokens"},
        "capabilities": list(model.capabilities),
    }


def model_list(cards: list[dict]) -> dict:
    return {"object": "list", "data": cards}
