"""Deterministic token logprobs, in the shapes SGLang 0.5.23 writes them.

Every generated token gets a logprob from a generator seeded by its id, its position and
the request's seed; it is always the most likely token (probability > 1/2), and its
alternatives (other tokens of the simulator's vocabulary, each less likely than the one
before, all together less than the rest of the probability) follow in decreasing order.
So logprobs are <= 0, top_logprobs are sorted, and exp() of a list sums to less than 1.

Chat (``ChoiceLogprobs``, serving_chat._build_token_logprobs_from_raw):
``{"content": [{"token", "bytes", "logprob", "top_logprobs": [{"token", "bytes",
"logprob"}]}]}`` with ``top_logprobs`` the chosen token and ``top_logprobs - 1``
alternatives (empty when top_logprobs is 0 or unset). Completions (``LogProbs``,
utils.to_openai_style_logprobs): ``{"text_offset", "token_logprobs", "tokens",
"top_logprobs"}``, ``text_offset`` -1 for every token (SGLang does not compute it),
``top_logprobs`` one ``{token: logprob}`` per token, or ``[]`` when ``logprobs`` is 0.
"""

import math
import random

from .textgen import _WORDS

MAX_TOP = 1024  # alternatives per token at most (SGLang has no bound; its top-k is the GPU's)

_ALTERNATIVES = tuple(dict.fromkeys(
    list(_WORDS) + [w.capitalize() for w in _WORDS] + list(".,;:!?-")))


def _alternatives(chosen: str, rng: random.Random, count: int) -> list[str]:
    """count distinct tokens other than chosen, spelled like it (leading space or not)."""
    space = " " if chosen.startswith(" ") else ""
    pool = [space + w for w in _ALTERNATIVES if space + w != chosen]
    picked = rng.sample(pool, min(count, len(pool)))
    n = 0
    while len(picked) < count:  # more than the word list: the vocabulary's other tokens
        picked.append(f"{space}<tok{n}>")
        n += 1
    return picked


def token_logprobs(token: str, token_id: int, position: int, seed: int,
                   top: int) -> tuple[float, list[tuple[str, float]]]:
    """(logprob of the token, top-`top` [(token, logprob)] with the token first)."""
    rng = random.Random((token_id * 1_000_003 + position) * 7919 + seed)
    chosen = rng.uniform(0.5, 0.9999)
    logprob = _log(chosen)
    top = max(0, min(top, MAX_TOP))
    if top == 0:
        return logprob, []
    ranked = [(token, logprob)]
    rest = 1.0 - chosen
    for alternative in _alternatives(token, rng, top - 1):
        p = rest * rng.uniform(0.4, 0.6)  # each takes part of what is left: decreasing
        rest -= p
        ranked.append((alternative, _log(p)))
    return logprob, ranked


def _log(p: float) -> float:
    """ln(p), rounded down to 6 decimals (so that a ranked list never sums above 1)."""
    return math.floor(math.log(max(p, 1e-300)) * 1e6) / 1e6


def _bytes(token: str) -> list[int]:
    return list(token.encode("utf-8"))


def chat_entries(tokens: list[tuple[str, int]], start: int, seed: int, top: int) -> list:
    """ChatCompletionTokenLogprob dicts for tokens [(text, id)] at positions start, ..."""
    entries = []
    for offset, (text, tid) in enumerate(tokens):
        logprob, ranked = token_logprobs(text, tid, start + offset, seed, top)
        entries.append({"token": text, "bytes": _bytes(text), "logprob": logprob,
                        "top_logprobs": [{"token": t, "bytes": _bytes(t), "logprob": lp}
                                         for t, lp in ranked]})
    return entries


def completion_logprobs(tokens: list[tuple[str, int]], start: int, seed: int,
                        top: int) -> dict:
    """A LogProbs object for tokens [(text, id)] at positions start, ..."""
    result = {"text_offset": [], "token_logprobs": [], "tokens": [], "top_logprobs": []}
    for offset, (text, tid) in enumerate(tokens):
        logprob, ranked = token_logprobs(text, tid, start + offset, seed, top)
        result["text_offset"].append(-1)
        result["token_logprobs"].append(logprob)
        result["tokens"].append(text)
        if top > 0:
            result["top_logprobs"].append(dict(ranked))
    return result
