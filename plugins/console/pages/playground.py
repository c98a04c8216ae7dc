"""The Playground: chat with streaming through the public API with one of the user's keys."""

from ..web import Page


class Playground(Page):
    """The chat page; playground.js calls /v1 from the browser with a key the user pastes."""

    def get(self, ctx):
        catalog = self.console.catalog
        models = [(model, catalog.card(model)["pricing"]) for model in catalog.models.values()]
        keys = self.console.store.accounts.list_keys(ctx.user["id"])
        ctx.render("playground.html", models=models, api_base="/v1",
                   has_keys=any(not key["revoked"] for key in keys))
