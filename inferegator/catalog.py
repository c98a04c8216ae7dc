"""The model catalog: public model ids, their prices and facts, backends and routing policy."""

import time

from .openai_shapes import model_card, model_list
from .routing import split_roles


class CatalogModel:
    """One public model id and everything needed to serve it."""

    def __init__(self, config, backends: list, policy_class):
        self.config = config
        self.id = config.id
        self.owned_by = config.owned_by
        self.pricing = config.pricing
        self.capabilities = config.capabilities
        self.default_max_tokens = config.default_max_tokens
        self.backends = backends
        self.policy = policy_class(self)
        self.discovered_context_length = None

    @property
    def context_length(self) -> int | None:
        """From the YAML, else as the backend reports it (SGLang's server_info)."""
        return self.config.context_length or self.discovered_context_length

    def candidates(self) -> list:
        """Healthy backends: primaries first, then fallbacks, in YAML order."""
        primaries, fallbacks = split_roles([b for b in self.backends if b.healthy])
        return primaries + fallbacks


class Catalog:
    """Public model id -> CatalogModel, with the OpenAI model cards served on /v1/models."""

    def __init__(self, models: list[CatalogModel], created: int | None = None):
        self.models = {m.id: m for m in models}
        self.created = created or int(time.time())

    def get(self, model_id: str) -> CatalogModel | None:
        return self.models.get(model_id)

    def card(self, model: CatalogModel) -> dict:
        return model_card(model, self.created)

    def listing(self) -> dict:
        return model_list([self.card(m) for m in self.models.values()])

    def backends(self):
        for model in self.models.values():
            yield from model.backends
