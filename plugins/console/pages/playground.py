"""The Playground: chat with streaming through the public API with one of the user's keys."""

from ..web import Page


class Playground(Page):
    pass
