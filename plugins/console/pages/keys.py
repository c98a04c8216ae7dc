"""API Keys: list, create (the secret shown once), revoke after a confirmation."""

from ..web import Page


class Keys(Page):
    def get(self, ctx):
        ctx.render("error.html", error=None)


class RevokeKey(Page):
    pass
