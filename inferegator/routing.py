"""The routing-policy contract: order a model's candidate backends for one request."""

import random
from typing import NamedTuple

from .errors import GatewayBuildError


class Option(NamedTuple):
    """One setting a policy reads from the model's ``routing_options``."""

    default: object
    kind: type  # int, float, str or bool; a float option also takes an int
    minimum: float | None = None


def split_roles(candidates: list) -> tuple[list, list]:
    """(primaries, fallbacks), each in the order given."""
    primaries = [b for b in candidates if b.role == "primary"]
    if len(primaries) == len(candidates):
        return primaries, []
    return primaries, [b for b in candidates if b.role != "primary"]


class RoutingPolicy:
    """Subclass and register through ``inferegator_register_routing_policies``.

    One instance per model per worker, built when the gateway starts.
    """

    #: The settings this policy takes under ``routing_options`` (name -> Option). When
    #: a subclass declares them, they are checked at build time (unknown names and wrong
    #: types are configuration errors) and found in ``self.settings``; None: not checked.
    options: dict | None = None

    def __init__(self, model):
        self.model = model
        if self.options is not None:
            self.settings = self.read_options()

    def order(self, request, candidates: list) -> list:
        """Return candidates in the order to try them (the first is the choice)."""
        raise NotImplementedError

    # -- shared helpers -----------------------------------------------------------------

    def read_options(self) -> dict:
        """``routing_options`` over the declared defaults; GatewayBuildError if invalid."""
        given = getattr(self.model.config, "routing_options", None) or {}
        declared = self.options or {}
        where = f"model {self.model.id!r}: routing_options"
        unknown = sorted(set(given) - set(declared))
        if unknown:
            known = ", ".join(sorted(declared)) or "none"
            raise GatewayBuildError(f"{where}: unknown option(s) {', '.join(unknown)} for "
                                    f"routing {self.model.config.routing!r} (known: {known})")
        settings = {}
        for name, option in declared.items():
            value = given.get(name, option.default)
            if value is not None and value is not option.default:
                value = _checked(value, option, f"{where}.{name}")
            settings[name] = value
        return settings

    split_roles = staticmethod(split_roles)  # (primaries, fallbacks), each in order


class RandomizedPolicy(RoutingPolicy):
    """A policy that draws at random: ``routing_options.seed`` makes its draws repeatable."""

    options = {"seed": Option(None, int)}

    def __init__(self, model):
        super().__init__(model)
        self.random = random.Random(self.settings["seed"])


IMAGE_URL_TAIL = 64  # a data: URL's tail (or an http URL's) tells images apart cheaply


def content_texts(content):
    """Each piece of a message content as text, for keys and prefix hashes: the string
    itself, or each part's text (an image part: the tail of its URL)."""
    if isinstance(content, str):
        yield content
        return
    if not isinstance(content, list):
        return
    for part in content:
        if not isinstance(part, dict):
            continue
        text = part.get("text")
        if not isinstance(text, str):
            image = part.get("image_url")
            url = image.get("url") if isinstance(image, dict) else image
            text = url[-IMAGE_URL_TAIL:] if isinstance(url, str) else ""
        yield text


def by_load(backends: list, rng) -> list:
    """Backends least loaded first (``backend.load``); equal loads in random order."""
    if len(backends) < 2:
        return list(backends)
    random = rng.random
    return sorted(backends, key=lambda b: (b.load, random()))


def _checked(value, option: Option, where: str):
    kind = option.kind
    ok = isinstance(value, kind) and (kind is bool or not isinstance(value, bool))
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise GatewayBuildError(f"{where}: expected {kind.__name__}, got {value!r}")
    if option.minimum is not None and value < option.minimum:
        raise GatewayBuildError(f"{where}: must be at least {option.minimum}, got {value!r}")
    if kind is str and not value:
        raise GatewayBuildError(f"{where}: must not be empty")
    return value
