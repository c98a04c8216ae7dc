"""Usage: requests, tokens and cost per day, by model and by key; CSV download."""

from ..web import Page


class Usage(Page):
    pass


class UsageCsv(Page):
    pass
