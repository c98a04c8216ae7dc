"""The public model catalog and the API docs, with this deployment's base URL."""

from ..web import Page


class Models(Page):
    signed_in = False


class Docs(Page):
    signed_in = False
