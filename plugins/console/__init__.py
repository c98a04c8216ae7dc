"""The web console: sign up, sign in, API keys, models, usage, playground, docs and admin.

A built-in plugin on the public hooks: it builds its per-worker state at startup and adds
its pages under ``console.prefix`` (``/console``), so the API's routes and hot path are
untouched; ``console: {enabled: false}`` in the YAML leaves it out. Pages are rendered on
the server (Jinja2) and work without JavaScript, but for the Playground, which streams
through the public API with one of the user's keys.
"""

from inferegator.plugin import hookimpl

from .console import Console
from .pages import account, admin, keys, models, playground, usage
from .web import SECURITY_HEADERS, Page, not_found_page

NAME = "console"


class Static(Page):
    """The console's own CSS and JavaScript (shipped in the package, nothing external)."""

    signed_in = False

    def on_get(self, req, resp, name):
        found = self.console.static.get(name)
        if found is None:
            self._serve("get", req, resp, {"name": name})  # answers the 404 page
            return
        data, content_type = found
        resp.data, resp.content_type = data, content_type
        resp.set_header("Cache-Control", "public, max-age=86400")
        resp.set_headers(SECURITY_HEADERS)

    def get(self, ctx):
        raise not_found_page()


class Missing(Page):
    """Any other path under the prefix: the console's own 404 page."""

    signed_in = False

    def get(self, ctx):
        raise not_found_page()

    post = get


def routes(console: Console) -> list[tuple[str, object]]:
    pages = {
        "": account.Start, "/signup": account.SignUp, "/signin": account.SignIn,
        "/signout": account.SignOut, "/account": account.AccountPage,
        "/keys": keys.Keys, "/keys/{key_id}/revoke": keys.RevokeKey,
        "/models": models.Models, "/usage": usage.Usage, "/usage.csv": usage.UsageCsv,
        "/playground": playground.Playground, "/docs": models.Docs,
        "/admin": admin.AdminHome, "/admin/users": admin.Users,
        "/admin/users/{user_id}": admin.User, "/admin/keys/{key_id}": admin.Key,
        "/admin/backends": admin.Backends, "/admin/invites": admin.Invites,
        "/static/{name}": Static, "/{rest:path}": Missing,
    }
    return [(console.prefix + path, page(console)) for path, page in pages.items()]


@hookimpl(trylast=True)
def inferegator_startup(gateway):
    gateway.plugin_state[NAME] = Console(gateway)


@hookimpl(trylast=True)
def inferegator_register_routes(gateway):
    return routes(gateway.plugin_state[NAME])
