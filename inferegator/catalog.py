"""The model catalog: public model ids, their prices and facts, backends and routing policy."""

import time

from .openai_shapes import model_card, model_list
from .routing import split_roles


def may_use(principal, model_id: str) -> bool:
    """Whether the caller may use the model: a key authenticated by the key store
    (``principal.attributes["key"]``) is held to its ``allowed_models`` (None: every model);
    other principals (JWT and other plugins) have no such list and may use every model."""
    key = principal.attributes.get("key") if principal is not None else None
    allowed = getattr(key, "allowed_models", None)
    return allowed is None or model_id in allowed


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

    def visible(self, model_id: str, principal=None) -> CatalogModel | None:
        """The model if it exists and the caller may use it (None for the public catalog:
        every model); else None, so a forbidden model looks just like an unknown one."""
        model = self.models.get(model_id)
        if model is None or (principal is not None and not may_use(principal, model_id)):
            return None
        return model

    def card(self, model: CatalogModel) -> dict:
        return model_card(model, self.created)

    def listing(self, principal=None) -> dict:
        """GET /v1/models: the models the caller may use (every model when None)."""
        return model_list([self.card(m) for m in self.models.values()
                           if principal is None or may_use(principal, m.id)])

    def backends(self):
        for model in self.models.values():
            yield from model.backends
