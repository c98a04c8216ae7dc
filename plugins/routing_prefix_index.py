"""The ``prefix_index`` routing policy: send a prompt where its prefix is cached, unless
that runtime's queue costs more than the prefill it saves.

Every request's prompt is paged (inferegator.prefix_index.pages) and routed through the
prefix index, shared through Redis by every worker and replica (``index: auto`` uses the
rate limiter's Redis when it has one; else each worker keeps its own, in memory). Each
candidate's expected prefill against the others, in tokens, is

    (queued + (load + spread_weight x recent excess) / slots) x mean uncached tokens
        per request - tokens it holds

where slots are its running slots (SGLang's max_running_requests, as it reports them),
queued is how far its load would pass them, load is, with Redis, the requests every
replica has routed there and not yet finished, counted in Redis (in memory, the
backend's load as this worker sees it), and recent excess the requests routed there
lately (decayed, half-life spread_half_life_s) above the runtimes' mean. The cheapest
runtime whose load is under the fairness cap, ceil((1 + balance_epsilon) x (total load +
1) / n), gets the request; equal costs go to the less loaded; a hot prefix that would
push its runtime past the cap goes to the next cheapest, and is recorded there too, so
the prefix then lives on both. The choice and its record are one step in the index (one
Redis script call), so replicas never place a prompt on the strength of stale entries. A
runtime that restarts, is drained or flushed (its ``cache_epoch`` moves) has its entries
cleared. If the index cannot be reached, the policy routes by a bounded-load ring over
the prompt's first page (as ``cache_aware`` does, without state) until it can.

A system prompt that one runtime holds and too many new conversations open with is
copied: the gateway prefills it on the least used runtime without it and records it
there (inferegator.prefix_index.copies says when), so its next users can split.
"""

import json
import logging
import os
import time

import gevent

from inferegator.plugin import (
    CHAT,
    GENERATE,
    RESPONSES,
    Costs,
    HashRing,
    Option,
    RandomizedPolicy,
    Runtime,
    StoreUnavailable,
    content_texts,
    copy_target,
    covered_chars,
    cuts_within,
    first_page_hash,
    hookimpl,
    is_hot,
    open_prefix_index,
    prompt_pages,
    shared_head,
    stable_hash,
)

log = logging.getLogger("inferegator.routing")
NAME = "routing_prefix_index"
DEFAULT_CAPACITY_TOKENS = 1_000_000  # a runtime that does not report its cache size
DEFAULT_SLOTS = 1  # nor its running cap: every request in flight counts as queued
WARN_EVERY_S = 10.0
RETRY_AFTER_S = 1.0  # after the index failed, route by the ring this long before asking again
MIN_COPY_CUTS = 5  # a head shorter than one page (the first four cuts) is not worth a copy


def _messages_text(messages, head: str = "") -> tuple[str, int]:
    """Each message as role, content and tool calls, in order, after ``head``: a
    conversation's next turn renders to this turn's text followed by the new messages.
    With it, where the last answer starts, in bytes (0: none): the previous turn's end."""
    pieces, answer = [head], 0
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = message.get("role")
        if role == "assistant":
            answer = len(pieces)
        pieces.append(f"<|{role}|>{''.join(content_texts(message.get('content')))}")
        calls = message.get("tool_calls")
        if calls:
            pieces.append(json.dumps(calls, sort_keys=True, default=str))
        pieces.append("\n")
    previous = len("".join(pieces[:answer]).encode("utf-8", "surrogatepass")) if answer else 0
    return "".join(pieces), previous


def prompt_text(endpoint: str, body: dict) -> str:
    """The prompt of a request as one text (what the runtime caches, give or take its
    chat template), stable from one turn to the next."""
    return prompt_turn(endpoint, body)[0]


def prompt_turn(endpoint: str, body: dict) -> tuple[str, int]:
    """The prompt's text and where the previous turn's prompt ended in it, in bytes (0:
    not a conversation's later turn)."""
    if endpoint == CHAT:
        return _messages_text(body.get("messages") or ())
    if endpoint == RESPONSES:
        items = body.get("input")
        if isinstance(items, str):
            items = [{"role": "user", "content": items}]
        instructions = body.get("instructions")
        head = f"<|system|>{instructions}\n" if isinstance(instructions, str) else ""
        return _messages_text(items if isinstance(items, list) else (), head)
    return _single_prompt(endpoint, body), 0


def _single_prompt(endpoint: str, body: dict) -> str:
    """The prompt of a request that is not a conversation."""
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
    """Primaries by expected prefill under the fairness cap, then those at the cap, then
    fallbacks in YAML order."""

    options = {
        **RandomizedPolicy.options,
        "index": Option("auto", str),
        "page_chars": Option(256, int, 16),
        "max_pages": Option(2048, int, 1),
        "chars_per_token": Option(4.0, float, 0.5),
        "balance_epsilon": Option(0.5, float, 0.0),
        "spread_weight": Option(0.5, float, 0.0),
        "spread_half_life_s": Option(10.0, float, 0.1),
        "copy_hot_prefixes": Option(True, bool),
        "copy_above": Option(0.2, float, 0.0),
        "cache_capacity_tokens": Option(0, int, 0),
        "virtual_nodes": Option(160, int, 1),
    }

    def __init__(self, model):
        super().__init__(model)
        settings = self.settings
        self.page_chars = settings["page_chars"]
        self.max_pages = settings["max_pages"]
        self.chars_per_token = settings["chars_per_token"]
        self.epsilon = settings["balance_epsilon"]
        self.spread_weight = settings["spread_weight"]
        self.spread_half_life_s = settings["spread_half_life_s"]
        self.copy_hot_prefixes = settings["copy_hot_prefixes"]
        self.copy_above = settings["copy_above"]
        primaries = self.split_roles(model.backends)[0]
        self.ring = HashRing(primaries, settings["virtual_nodes"])  # while the index is down
        # A request never released (its replica died) stops counting after its deadline.
        self.lease_s = max((b.total_timeout_s for b in primaries), default=600.0)
        self.index = None  # set at startup (inferegator_startup below)
        self.mean_uncached = 0.0  # tokens per request, a moving average
        self._epochs: dict = {}  # runtime -> the cache_epoch its entries belong to
        self._last_warning = -WARN_EVERY_S
        self._down_until = 0.0

    @staticmethod
    def runtime_name(backend) -> str:
        """The index's name for what a backend's cache holds: its model at its URL."""
        return f"{backend.upstream_model}@{backend.url}"

    def weighed(self, backend, tie: float) -> Runtime:
        """The backend as the index weighs it, from what the runtime last reported."""
        reported = backend.reported_load or {}
        tokens = reported.get("capacity_tokens") or self.settings["cache_capacity_tokens"] \
            or DEFAULT_CAPACITY_TOKENS
        return Runtime(self.runtime_name(backend), max(1, int(tokens * self.chars_per_token)),
                       int(reported.get("slots") or DEFAULT_SLOTS), backend.load, tie)

    def order(self, request, candidates):
        primaries, fallbacks = self.split_roles(candidates)
        if len(primaries) < 2 or self.index is None:
            return primaries + fallbacks
        text, previous_chars = prompt_turn(request.endpoint, request.body)
        pages, ends = prompt_pages(text, self.page_chars, self.max_pages, previous_chars)
        if time.monotonic() < self._down_until:
            return self._by_ring(text, pages, primaries) + fallbacks
        tie = self.random.random
        runtimes = [self.weighed(b, tie()) for b in primaries]
        token = os.urandom(8).hex()  # the request's entry among the runtime's in flight
        costs = Costs(self.page_chars, self.chars_per_token, self.mean_uncached, self.epsilon,
                      self.lease_s, self.spread_weight, self.spread_half_life_s)
        try:
            self._clear_restarted(primaries, runtimes)
            route = self.index.route(runtimes, pages, token, costs, ends)
        except StoreUnavailable as exc:
            self._down_until = time.monotonic() + RETRY_AFTER_S
            self._warn(exc)
            return self._by_ring(text, pages, primaries) + fallbacks
        chosen = route.order[0]
        request.plugin_data[NAME] = (self.index, runtimes[chosen].name, token)
        uncached = max(0, len(text) - route.held_chars[chosen]) / self.chars_per_token
        self.mean_uncached += 0.05 * (uncached - self.mean_uncached)
        if self.copy_hot_prefixes and request.endpoint == CHAT:
            self._copy_if_hot(request.body.get("messages"), pages, route, primaries,
                              runtimes, costs)
        return [primaries[i] for i in route.order] + fallbacks

    def _copy_if_hot(self, messages, pages, route, primaries, runtimes, costs) -> None:
        """Start a copy of the conversation's system prompt to another runtime if its
        holder gets too many requests (inferegator.prefix_index.copies)."""
        if not is_hot(route.recent, route.order[0], self.copy_above):
            return  # the common case, before the head is rendered
        head = shared_head(messages)
        if head is None:
            return
        head_text = _messages_text(head)[0]
        cuts = cuts_within(len(head_text.encode("utf-8", "surrogatepass")), self.page_chars)
        if cuts < MIN_COPY_CUTS or cuts > len(pages):
            return
        target = copy_target(route.held, route.recent, cuts, route.order[0], self.copy_above)
        if target is None:
            return
        runtime = runtimes[target]
        try:  # one copy to a runtime per half-life: the time its counts take to show it
            if not self.index.claim(f"copy:{runtime.name}", self.spread_half_life_s):
                return
        except StoreUnavailable:
            return
        gevent.spawn(self._copy, primaries[target], runtime, head, pages[:cuts], costs,
                     route.recent)

    def _copy(self, backend, runtime: Runtime, head: list, pages: list[int], costs: Costs,
              recent: list[float]) -> None:
        """Prefill the head on the backend (one answer token), then record it there."""
        body = {"model": backend.upstream_model, "messages": head, "max_tokens": 1}
        try:
            response = backend.post(CHAT, body, {})
            try:
                response.preload(None)  # the whole answer: the head is prefilled
            finally:
                response.close()
        except Exception as exc:  # a copy is an optimisation: never worth more than a line
            log.warning("model %s: copying a shared prefix to %s failed: %s",
                        self.model.id, backend.name, exc)
            return
        if response.status_code != 200:
            log.warning("model %s: copying a shared prefix to %s: HTTP %d", self.model.id,
                        backend.name, response.status_code)
            return
        token = os.urandom(8).hex()
        try:
            self.index.route([runtime], pages, token, costs)  # records the pages there
            self.index.release(runtime.name, token)
        except StoreUnavailable:
            return
        log.info("model %s: copied a shared prefix of %d bytes to %s (recent requests per "
                 "runtime %s)", self.model.id, covered_chars(len(pages), self.page_chars),
                 backend.name, ", ".join(f"{r:.1f}" for r in recent))

    def _by_ring(self, text: str, pages: list[int], primaries: list) -> list:
        """The bounded-load ring keyed by the prompt's first page (its hash at the first
        whole page, else at its last cut): a conversation's turns agree on it in every
        replica, with no state."""
        key = first_page_hash(pages) if pages else stable_hash(text)
        return self.ring.order(key, primaries, self.epsilon)

    def _clear_restarted(self, backends: list, runtimes: list[Runtime]) -> None:
        """Forget the pages of a runtime whose cache is gone (restart, flush, drain)."""
        epochs = self._epochs
        for backend, runtime in zip(backends, runtimes):
            epoch = backend.cache_epoch
            known = epochs.get(runtime.name)
            if known != epoch:
                if known is not None:
                    self.index.clear(runtime.name)
                epochs[runtime.name] = epoch

    def _warn(self, exc) -> None:
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY_S:
            self._last_warning = now
            log.warning("model %s: prefix index unavailable (%s); routing by the ring of "
                        "first pages until it is back", self.model.id, exc)


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
def inferegator_request_finished(gateway, outcome):
    """The request's answer is over: it no longer counts as load where it was routed."""
    routed = outcome.request.plugin_data.get(NAME)
    if routed is not None:
        index, runtime, token = routed
        try:
            index.release(runtime, token)
        except StoreUnavailable:
            pass  # its lease ends it


@hookimpl
def inferegator_shutdown(gateway):
    for index in gateway.plugin_state.pop(NAME, {}).values():
        index.close()


@hookimpl(trylast=True)
def inferegator_register_routing_policies():
    return {"prefix_index": PrefixIndexPolicy}
