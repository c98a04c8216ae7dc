"""API Keys: list, create (the secret shown once), revoke after a confirmation."""

from inferegator.plugin import GatewayError, NotFound
from inferegator.plugin import validate as check

from ..forms import number
from ..web import Page, not_found_page
from .models import contact_href, first_model, snippets

BUDGET = "monthly_budget_usd"
LABELS = {"name": "the name", "allowed_models": "the allowed models",
          BUDGET: "the monthly budget"}


def _budget(text: str) -> float | None:
    value = number(BUDGET, text, float)
    return None if value is None else check.limit(BUDGET, value, ())


def form_error(error: GatewayError) -> dict:
    """The field at fault and the message, naming the field as the form labels it."""
    field = (error.param or "").split("[")[0]
    message = error.message
    if field in LABELS:
        message = message.replace(f"'{error.param}'", LABELS[field])
    return {"field": field, "message": message}


def owned_key(ctx, key_id: str) -> dict:
    """The signed-in user's key, or the 404 page (someone else's key is "not found" too)."""
    try:
        return ctx.console.store.accounts.get_key(key_id, ctx.user["id"])
    except NotFound:
        raise not_found_page() from None


class Keys(Page):
    """The user's keys with their limits, and the form that creates one."""

    def get(self, ctx):
        self._show(ctx, revoked=ctx.query("revoked") == "1")

    def post(self, ctx):
        catalog = self.console.catalog.models
        name, models = ctx.value("name").strip(), ctx.values("allowed_models")
        try:
            name = check.text(name, "name")
            limits = {"allowed_models": check.allowed_models(models, catalog) if models else None,
                      BUDGET: _budget(ctx.value(BUDGET))}
        except GatewayError as error:
            self._show(ctx, 400, error=form_error(error), form={
                "name": name[:200], "allowed_models": models,
                BUDGET: ctx.value(BUDGET)[:50]})
            return
        accounts = self.console.store.accounts
        carried = accounts.carried_limits(ctx.user["id"])  # only admins set per-minute limits
        secret, key = accounts.create_key(ctx.user["id"], name, **carried, **limits)
        model = (limits["allowed_models"] or [first_model(self.console.catalog)])[0]
        ctx.render("key_created.html", key=key, secret=secret,
                   code=snippets(self.console.base_url(ctx.req), secret, model))

    def _show(self, ctx, status: int = 200, error=None, form=None, revoked=False):
        defaults = self.console.gateway.config.ratelimit
        keys = self.console.store.accounts.list_keys(ctx.user["id"])
        ctx.render("keys.html", status, keys=keys, models=list(self.console.catalog.models),
                   defaults=defaults,
                   support=self.console.config.support_contact,
                   support_href=contact_href(self.console.config.support_contact),
                   error=error, revoked=revoked,
                   form=form or {"name": "", "allowed_models": [], BUDGET: ""})


class RevokeKey(Page):
    """Revoke one of the user's keys, after a confirmation page."""

    def get(self, ctx):
        ctx.render("key_revoke.html", key=owned_key(ctx, ctx.params["key_id"]))

    def post(self, ctx):
        try:
            self.console.store.accounts.revoke_key(ctx.params["key_id"], ctx.user["id"])
        except NotFound:
            raise not_found_page() from None
        ctx.redirect("/keys?revoked=1")
