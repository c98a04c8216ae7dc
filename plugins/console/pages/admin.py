"""Admin: users (disable, make admin), their keys' limits, backends, invitations."""

from urllib.parse import quote

from inferegator.plugin import GatewayError, NotFound, invalid_request
from inferegator.plugin import validate as check

from ..forms import number
from ..web import Page, PageError, not_found_page

USER_ACTIONS = ("disable", "enable", "make_admin", "make_user", "sign_out")
USER_DONE = {"disable": "was disabled and signed out", "enable": "was enabled",
             "make_admin": "is now an admin", "make_user": "is now a user",
             "sign_out": "was signed out of the console everywhere"}
KEY_DONE = {"limits": "The limits of the key{name} were saved.",
            "revoke": "The key{name} was revoked: requests made with it are now refused."}
INT_LIMITS = ("requests_per_minute", "tokens_per_minute")
BUDGET = "monthly_budget_usd"
MODELS = "allowed_models"


def _bad_action():
    return PageError(400, "Unknown action", "This form asked for an action the page does not "
                     "know. Go back, reload the page and try again.")


def _find_user(ctx, user_id: str) -> dict:
    try:
        return ctx.console.store.accounts.get_user(user_id)
    except NotFound:
        raise not_found_page() from None


def _key_counts(keys: list[dict]) -> dict:
    counts = {}
    for key in keys:
        total, revoked = counts.get(key["user_id"], (0, 0))
        counts[key["user_id"]] = (total + 1, revoked + key["revoked"])
    return counts


def _limit_form(key: dict) -> dict:
    """A key's limits as its edit form shows them (empty: the default applies)."""
    limits = key["limits"]
    form = {name: "" if limits[name] is None else str(limits[name]) for name in INT_LIMITS}
    budget = limits[BUDGET]
    form[BUDGET] = "" if budget is None else str(int(budget) if budget.is_integer() else budget)
    form[MODELS] = list(limits[MODELS] or [])
    return form


def parse_limits(ctx, model_ids) -> dict:
    """The limit fields of a key's edit form, validated; an empty field clears a limit."""
    limits = {name: number(name, ctx.value(name), int) for name in INT_LIMITS}
    limits[BUDGET] = number(BUDGET, ctx.value(BUDGET), float)
    limits[MODELS] = ctx.values(MODELS) or None
    return {name: check.limit(name, value, model_ids) for name, value in limits.items()}


def show_users(ctx, status: int = 200, error: str | None = None) -> None:
    accounts = ctx.console.store.accounts
    notice, done = None, ctx.query("done")
    if status == 200 and done in USER_DONE:
        try:
            email = accounts.get_user(ctx.query("user"))["email"] if ctx.query("user") \
                else "The user"
        except NotFound:
            email = "The user"
        notice = f"{email} {USER_DONE[done]}."
    ctx.render("admin_users.html", status, users=accounts.list_users(),
               counts=_key_counts(accounts.list_keys()), error=error, notice=notice)


def show_user(ctx, user: dict, status: int = 200, error=None, edited=None) -> None:
    """The user page; ``edited`` is (key id, the form as posted) when a save was refused,
    and ``error`` then the GatewayError (or a sentence)."""
    console = ctx.console
    keys = console.store.accounts.list_keys(user["id"])
    forms = {key["id"]: _limit_form(key) for key in keys}
    if edited is not None:
        forms[edited[0]] = edited[1]
    done, notice = ctx.query("done"), None
    if status == 200 and done in USER_DONE:
        notice = f"{user['email']} {USER_DONE[done]}."
    elif status == 200 and done in KEY_DONE:
        named = [f" “{k['name']}”" for k in keys if k["id"] == ctx.query("key")]
        notice = KEY_DONE[done].format(name=(named or [""])[0])
    invalid = ""
    if isinstance(error, GatewayError):
        error, invalid = error.message, (error.param or "").split("[")[0]
    ctx.render("admin_user.html", status, shown_user=user, keys=keys,
               forms=forms, edited=edited[0] if edited else None, error=error,
               invalid=invalid, notice=notice,
               models=list(console.catalog.models), defaults=console.gateway.config.ratelimit,
               sessions=console.store.sessions.count(user["id"]),
               is_self=user["id"] == ctx.user["id"])


class AdminHome(Page):
    """/admin: the users page."""

    admin = True

    def get(self, ctx):
        ctx.redirect("/admin/users")


class Users(Page):
    """Every user with role, status and keys; disable, enable, promote, demote."""

    admin = True

    def get(self, ctx):
        show_users(ctx)


class User(Page):
    """One user and all their keys (limits, revoke); POST: the user actions."""

    admin = True

    def get(self, ctx):
        show_user(ctx, _find_user(ctx, ctx.params["user_id"]))

    def post(self, ctx):
        user = _find_user(ctx, ctx.params["user_id"])
        action, back = ctx.value("action"), ctx.value("back") == "user"
        if action not in USER_ACTIONS:
            raise _bad_action()
        if user["id"] == ctx.user["id"] and action in ("disable", "make_user"):
            error = ("You cannot disable your own account." if action == "disable" else
                     "You cannot remove your own admin role; another admin can.")
            if back:
                show_user(ctx, user, 400, error=error)
            else:
                show_users(ctx, 400, error=error)
            return
        store = self.console.store
        if action in ("disable", "enable"):
            store.accounts.set_user_disabled(user["id"], action == "disable")
        elif action in ("make_admin", "make_user"):
            store.accounts.set_user_role(user["id"], action.removeprefix("make_"))
        if action in ("disable", "sign_out"):
            store.sessions.end_all(user["id"])
        ctx.redirect(f"/admin/users/{user['id']}?done={action}" if back else
                     f"/admin/users?done={action}&user={user['id']}")


class Key(Page):
    """POST: save a key's limits, or revoke it; back to its owner's page."""

    admin = True

    def post(self, ctx):
        accounts = self.console.store.accounts
        try:
            key = accounts.get_key(ctx.params["key_id"])
        except NotFound:
            raise not_found_page() from None
        action = ctx.value("action")
        if action == "limits":
            owner = _find_user(ctx, key["user_id"])
            try:
                if key["revoked"]:
                    raise invalid_request("This key is revoked: its limits can no longer be "
                                          "changed.", None, "invalid_value")
                limits = parse_limits(ctx, self.console.catalog.models)
            except GatewayError as error:
                form = {name: ctx.value(name)[:50] for name in (*INT_LIMITS, BUDGET)}
                form[MODELS] = ctx.values(MODELS)
                show_user(ctx, owner, 400, error=error, edited=(key["id"], form))
                return
            accounts.set_key_limits(key["id"], **limits)
        elif action == "revoke":
            accounts.revoke_key(key["id"])
        else:
            raise _bad_action()
        ctx.redirect(f"/admin/users/{key['user_id']}?done={action}&key={key['id']}")


class Backends(Page):
    """Every model's backends as this worker sees them; drain and undrain."""

    admin = True

    def get(self, ctx):
        notice, done, name = None, ctx.query("done"), ctx.query("backend")
        if done in ("drain", "undrain") and any(
                b.name == name for b in self.console.catalog.backends()):
            notice = (f"{name} was drained: it gets no new requests." if done == "drain"
                      else f"{name} is back in rotation.")
        self._show(ctx, notice=notice)

    def _show(self, ctx, status: int = 200, error=None, notice=None):
        rows = [{"model": model.id, **backend.state(), "load": backend.load}
                for model in self.console.catalog.models.values()
                for backend in model.backends]
        ctx.render("admin_backends.html", status, backends=rows, error=error,
                   notice=notice,
                   poll_s=self.console.gateway.config.server.load_poll_interval_s)

    def post(self, ctx):
        action, name = ctx.value("action"), ctx.value("backend")
        if action not in ("drain", "undrain"):
            raise _bad_action()
        matches = [b for b in self.console.catalog.backends() if b.name == name]
        if not matches:
            self._show(ctx, 400, error="There is no backend of that name.")
            return
        drained = action == "drain"
        self.console.store.set_drained(name, drained)
        for backend in matches:
            backend.drained = drained
        ctx.redirect(f"/admin/backends?done={action}&backend={quote(name, safe='')}")


class Invites(Page):
    """Invitation codes for registration ``invite``: list them and make one."""

    admin = True

    def get(self, ctx):
        self._show(ctx)

    def post(self, ctx):
        ttl_s = self.console.config.invite_ttl_days * 86400
        code = self.console.store.invites.create(ctx.user["id"], ttl_s)
        self._show(ctx, code=code)

    def _show(self, ctx, code=None):
        ctx.render("admin_invites.html", invites=self.console.store.invites.list(),
                   code=code, now=self.console.now(), ttl_days=self.console.config.invite_ttl_days)
