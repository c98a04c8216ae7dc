"""The ``prefix_index`` routing policy: send a prompt where its prefix is cached, unless
that runtime's queue costs more than the prefill it saves.

Every request's prompt is paged (inferegator.prefix_index.pages) and looked up in the
prefix index, shared through Redis by every worker and replica (``index: auto`` uses the
rate limiter's Redis when it has one; else each worker keeps its own, in memory). Each
candidate's expected time to first token is

    (prompt tokens it does not hold + queued x mean uncached tokens per request)
        / prefill_tokens_per_s

where queued is how far its load would pass its running slots (SGLang's
max_running_requests, as it reports them), and load is the runtime's own report of its
running and waiting requests (what every replica reads alike) plus this worker's
requests sent since. Equal costs go to the less loaded runtime. The cheapest runtime whose
load is under the fairness cap, ceil((1 + balance_epsilon) x (total load + 1) / n), gets
the request; a hot prefix that would push its runtime past the cap goes to the next
cheapest, and is recorded there too, so the prefix then lives on both. The pages sent are
recorded for the chosen runtime. A runtime that restarts, is drained or flushed (its
``cache_epoch`` moves) has its entries cleared. If the index cannot be reached, the
policy routes by load alone until it can.
"""

import json
import logging
import math
import time

from inferegator.plugin import (
    CHAT,
    GENERATE,
    RESPONSES,
    Option,
    RandomizedPolicy,
    StoreUnavailable,
    by_load,
    content_texts,
    hookimpl,
    open_prefix_index,
    page_hashes,
)

log = logging.getLogger("inferegator.routing")
NAME = "routing_prefix_index"
DEFAULT_CAPACITY_TOKENS = 1_000_000  # a runtime that does not report its cache size
DEFAULT_SLOTS = 1  # nor its running cap: every request in flight counts as queued
WARN_EVERY_S = 10.0


def _messages_text(messages) -> str:
    """Each message as role, content and tool calls, in order: a conversation's next turn
    renders to this turn's text followed by the new messages."""
    pieces = []
    for message in messages:
        if not isinstance(message, dict):
            continue
        pieces.append(f"<|{message.get('role')}|>{''.join(content_texts(message.get('content')))}")
        calls = message.get("tool_calls")
        if calls:
            pieces.append(json.dumps(calls, sort_keys=True, default=str))
        pieces.append("\n")
    return "".join(pieces)


def prompt_text(endpoint: str, body: dict) -> str:
    """The prompt of a request as one text (what the runtime caches, give or take its
    chat template), stable from one turn to the next."""
    if endpoint == CHAT:
        return _messages_text(body.get("messages") or ())
    if endpoint == RESPONSES:
        items = body.get("input")
        if isinstance(items, str):
            items = [{"role": "user", "content": items}]
        instructions = body.get("instructions")
        head = f"<|system|>{instructions}\n" if isinstance(instructions, str) else ""
        return head + _messages_text(items if isinstance(items, list) else ())
    if endpoint == GENERATE:
        prompt = body.get("text") if body.get("text") is not None else body.get("input_ids")
    elif "query" in body:
        prompt = body.get("query")
    else:
        prompt = body.get("prompt", body.get("input"))
    if isinstance(prompt, list) and prompt:
        prompt = prompt[0] if isinstance(prompt[0], (str, list)) else prompt
        if isinstance(prompt, list):
            return ",".join(map(str, prompt))
    return prompt if isinstance(prompt, str) else ""


class PrefixIndexPolicy(RandomizedPolicy):
    """Primaries by expected time to first token under the fairness cap, then those at
    the cap, then fallbacks in YAML order."""

    options = {
        **RandomizedPolicy.options,
        "index": Option("auto", str),
        "page_chars": Option(256, int, 16),
        "max_pages": Option(2048, int, 1),
        "chars_per_token": Option(4.0, float, 0.5),
        "prefill_tokens_per_s": Option(20000.0, float, 1.0),
        "balance_epsilon": Option(0.5, float, 0.0),
        "cache_capacity_tokens": Option(0, int, 0),
    }

    def __init__(self, model):
        super().__init__(model)
        settings = self.settings
        self.page_chars = settings["page_chars"]
        self.max_pages = settings["max_pages"]
        self.tokens_per_page = settings["page_chars"] / settings["chars_per_token"]
        self.prefill_rate = settings["prefill_tokens_per_s"]
        self.epsilon = settings["balance_epsilon"]
        self.index = None  # set at startup (inferegator_startup below)
        self.mean_uncached = 0.0  # tokens per request, a moving average
        self._epochs: dict = {}  # runtime -> the cache_epoch its entries belong to
        self._last_warning = -WARN_EVERY_S

    @staticmethod
    def runtime(backend) -> str:
        """The index's name for what a backend's cache holds: its model at its URL."""
        return f"{backend.upstream_model}@{backend.url}"

    def capacity_pages(self, backend) -> int:
        reported = backend.reported_load or {}
        tokens = reported.get("capacity_tokens") or self.settings["cache_capacity_tokens"] \
            or DEFAULT_CAPACITY_TOKENS
        return max(1, int(tokens / self.tokens_per_page))

    def order(self, request, candidates):
        primaries, fallbacks = self.split_roles(candidates)
        if len(primaries) < 2 or self.index is None:
            return primaries + fallbacks
        pages = page_hashes(prompt_text(request.endpoint, request.body), self.page_chars,
                            self.max_pages)
        runtimes = [self.runtime(b) for b in primaries]
        capacities = [self.capacity_pages(b) for b in primaries]
        try:
            self._clear_restarted(primaries, runtimes)
            held = self.index.lookup(runtimes, capacities, pages) if pages else \
                [0] * len(primaries)
        except StoreUnavailable as exc:
            self._warn(exc)
            return by_load(primaries, self.random) + fallbacks
        ordered = self.rank(primaries, held, len(pages))
        chosen = primaries.index(ordered[0])
        try:
            if pages:
                self.index.record(runtimes[chosen], capacities[chosen], held[chosen], pages)
        except StoreUnavailable as exc:
            self._warn(exc)
        return ordered + fallbacks

    def rank(self, backends: list, held: list[int], pages: int) -> list:
        """Backends by expected time to first token, those under the load cap first."""
        loads = [b.load for b in backends]
        bound = math.ceil((1.0 + self.epsilon) * (sum(loads) + 1) / len(backends) - 1e-9)
        queued = self.mean_uncached
        rate = self.prefill_rate
        tie = self.random.random
        keyed = []
        for backend, load, have in zip(backends, loads, held):
            uncached = (pages - have) * self.tokens_per_page
            # A request finds a running slot free until the runtime's slots are taken;
            # past that it waits behind the queue (each about one mean prefill).
            slots = (backend.reported_load or {}).get("slots") or DEFAULT_SLOTS
            cost = (uncached + max(0.0, load + 1 - slots) * queued) / rate
            keyed.append((load >= bound, cost, load, tie(), backend, uncached))
        keyed.sort(key=lambda entry: entry[:4])
        first_uncached = keyed[0][5]
        self.mean_uncached += 0.05 * (first_uncached - self.mean_uncached)
        return [entry[4] for entry in keyed]

    def _clear_restarted(self, backends: list, runtimes: list[str]) -> None:
        """Forget the pages of a runtime whose cache is gone (restart, flush, drain)."""
        epochs = self._epochs
        for backend, runtime in zip(backends, runtimes):
            epoch = backend.cache_epoch
            known = epochs.get(runtime)
            if known != epoch:
                if known is not None:
                    self.index.clear(runtime)
                epochs[runtime] = epoch

    def _warn(self, exc) -> None:
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY_S:
            self._last_warning = now
            log.warning("model %s: prefix index unavailable (%s); routing by load",
                        self.model.id, exc)


def _index_url(setting: str, config) -> str:
    if setting != "auto":
        return setting
    store = config.ratelimit.store
    return store if store.partition("://")[0] in ("redis", "rediss", "unix") else "memory"


@hookimpl
def inferegator_startup(gateway):
    """One index per URL in this worker, given to every model routed by this policy."""
    indexes = {}
    for model in gateway.catalog.models.values():
        policy = model.policy
        if isinstance(policy, PrefixIndexPolicy):
            url = _index_url(policy.settings["index"], gateway.config)
            if url not in indexes:
                indexes[url] = open_prefix_index(url)
            policy.index = indexes[url]
    gateway.plugin_state[NAME] = indexes


@hookimpl
def inferegator_shutdown(gateway):
    for index in gateway.plugin_state.pop(NAME, {}).values():
        index.close()


@hookimpl(trylast=True)
def inferegator_register_routing_policies():
    return {"prefix_index": PrefixIndexPolicy}
