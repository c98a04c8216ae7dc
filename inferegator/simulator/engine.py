"""The simulated inference engine: queue, batched prefill and decode rounds, cache.

Each request runs in its own greenlet (the one serving its HTTP request) through
``Engine.generate`` or ``Engine.encode``. One scheduler greenlet per engine runs the
GPU's side as SGLang's scheduler does: round after round it runs either a prefill batch
(new requests, FIFO, up to ``--chunked-prefill-size`` uncached tokens, a longer prompt in
chunks over several rounds) or, when nothing waits to prefill, one decode step for every
running request. The request greenlets wait on the scheduler's signals. The engine's shared
state is only touched between gevent switches, so it needs no locks.
"""

import time
import uuid
from collections import deque
from dataclasses import dataclass, field

import gevent
from gevent.event import Event

from .metrics import LATENCY_BOUNDS, Histogram
from .prefix_cache import PrefixCache
from .textgen import TextGenerator

EOS_TOKEN_ID = 128009  # what SGLang reports as finish_reason.matched for an EOS stop


class Aborted(Exception):
    """The request was aborted (client gone, /abort_request) before it finished."""


class ContextTooLong(ValueError):
    """Prompt plus requested tokens do not fit the context window."""


@dataclass
class SamplingParams:
    """The sampling parameters the simulator honours (others are accepted and ignored)."""

    max_new_tokens: int | None = None
    stop: tuple[str, ...] = ()
    seed: int = 0
    ignore_eos: bool = False
    output: object = None  # an outputs.OutputPlan when the answer is not just free text


@dataclass(eq=False)
class SimRequest:
    """One generation and everything measured about it."""

    prompt_ids: list[int]
    params: SamplingParams
    rid: str = field(default_factory=lambda: uuid.uuid4().hex)
    arrived: float = 0.0
    scheduled: float = 0.0
    first_token: float = 0.0
    finished: float = 0.0
    cached_tokens: int = 0
    output_ids: list[int] = field(default_factory=list)
    token_texts: list[str] = field(default_factory=list)  # the text of each output token
    think_tokens: int = 0  # tokens of the thinking block, when the model thinks first
    text: str = ""
    finish_reason: dict | None = None
    aborted: Event = field(default_factory=Event)
    # The scheduler's side: what it still has to do for the request, and its signals.
    uses_cache: bool = True  # embeddings do not
    decodes: bool = False  # joins the decode batch once prefilled
    prefill_left: int = 0  # uncached prompt tokens not prefilled yet
    cache_lock: list = field(default_factory=list)  # the cache path locked for it
    tokens_ready: int = 0  # tokens the scheduler has produced for it so far
    prefilled: Event = field(default_factory=Event)
    tick: Event = field(default_factory=Event)  # set when tokens_ready grows

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt_ids)

    @property
    def completion_tokens(self) -> int:
        return len(self.output_ids)

    @property
    def reasoning_tokens(self) -> int:
        """Generated tokens up to and including the end of the thinking (SGLang's count)."""
        return min(self.think_tokens, len(self.output_ids))

    def meta_info(self) -> dict:
        """SGLang's meta_info, plus the simulator's own timestamps (wall clock, seconds)."""
        return {
            "id": self.rid,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "reasoning_tokens": self.reasoning_tokens,
            "cached_tokens": self.cached_tokens,
            "e2e_latency": round(self.finished - self.arrived, 6) if self.finished else None,
            "sim_timestamps": {"arrived": self.arrived, "scheduled": self.scheduled,
                               "first_token": self.first_token, "finished": self.finished},
        }


class Engine:
    """Schedules, times and generates simulated requests; keeps load and cache statistics."""

    def __init__(self, settings, clock=time.time):
        self.settings = settings
        self.clock = clock
        self.cache = PrefixCache(settings.cache_capacity_tokens, settings.page_size)
        self.running: dict[str, SimRequest] = {}  # admitted: prefilling or decoding
        self.waiting: deque[SimRequest] = deque()  # not admitted yet, FIFO
        self.decoding: dict[str, SimRequest] = {}  # the decode batch
        self.live: dict[str, SimRequest] = {}
        self.counters = dict.fromkeys(
            ("prompt_tokens_total", "generation_tokens_total", "cached_tokens_total",
             "num_requests_total", "num_aborted_requests_total"), 0)
        self.histograms = {name: Histogram(LATENCY_BOUNDS) for name in (
            "time_to_first_token_seconds", "inter_token_latency_seconds",
            "e2e_request_latency_seconds", "queue_time_seconds")}
        self._recent_tokens: deque[tuple[int, int]] = deque()  # (second, tokens) for throughput
        self._since_flush = {"prompt": 0, "cached": 0}  # for cache_hit_rate; counters never drop
        self._chunked: SimRequest | None = None  # the request whose prefill goes on next round
        self._work = Event()  # set when the scheduler may have something to do
        self._scheduler = None

    # -- the scheduler (the GPU's side) ---------------------------------------------------

    def _wake(self) -> None:
        """Tell the scheduler there may be work; start it on first use (in this hub)."""
        self._work.set()
        if self._scheduler is None or self._scheduler.dead:
            self._scheduler = gevent.spawn(self._schedule_forever)

    def _schedule_forever(self) -> None:
        """SGLang's event loop: each round a prefill batch if any, else one decode step."""
        while True:
            batch = self._next_prefill_batch()
            if batch:
                self._run_prefill(batch)
            elif self.decoding:
                self._run_decode_step()
            else:
                self._work.clear()
                self._work.wait()

    def _next_prefill_batch(self) -> list[tuple[SimRequest, int]]:
        """(request, tokens this round): the unfinished chunk first, then admitted waiters.

        As SGLang's PrefillAdder: uncached tokens up to --chunked-prefill-size, requests up to
        --max-running-requests; the request that overflows the budget gets a chunk of it.
        """
        budget = self.settings.chunked_prefill_size
        batch = []
        chunked, self._chunked = self._chunked, None
        if chunked is not None:
            batch.append((chunked, min(chunked.prefill_left, budget)))
            budget -= batch[-1][1]
        while budget > 0 and self.waiting and \
                len(self.running) < self.settings.max_running_requests:
            req = self.waiting.popleft()
            if req.aborted.is_set():  # its greenlet is about to leave
                continue
            self._admit(req)
            batch.append((req, min(req.prefill_left, budget)))
            budget -= batch[-1][1]
        return batch

    def _admit(self, req: SimRequest) -> None:
        """Move a waiting request into the running batch: match and lock its cached prefix."""
        self.running[req.rid] = req
        req.scheduled = self.clock()
        if req.uses_cache:
            req.cache_lock = self.cache.match(req.prompt_ids)
            self.cache.lock(req.cache_lock)
            req.cached_tokens = len(req.cache_lock) * self.cache.page_size
        req.prefill_left = req.prompt_tokens - req.cached_tokens

    def _run_prefill(self, batch: list[tuple[SimRequest, int]]) -> None:
        """One prefill forward: all its tokens at --prefill-tokens-per-s; decode waits."""
        s = self.settings
        tokens = sum(n for _, n in batch)
        gevent.sleep(0.0 if s.instant else tokens / s.prefill_tokens_per_s)
        for req, n in batch:
            if self.running.get(req.rid) is not req:  # aborted during the round: it has left
                continue
            req.prefill_left -= n
            if req.prefill_left > 0:
                self._chunked = req
                continue
            if req.decodes:
                self.decoding[req.rid] = req
            self._give_token(req)  # a prefill samples the first token
            req.prefilled.set()

    def _run_decode_step(self) -> None:
        """One decode forward: a token for every request of the decode batch."""
        s = self.settings
        batch = list(self.decoding.values())
        gevent.sleep(s.decode_ms_per_token / 1000.0
                     * (1.0 + s.decode_batch_slope * (len(batch) - 1)))
        for req in batch:
            if req.rid in self.decoding:  # not finished or aborted meanwhile
                self._give_token(req)

    @staticmethod
    def _give_token(req: SimRequest) -> None:
        """Hand the request one more token (its greenlet turns it into text)."""
        req.tokens_ready += 1
        req.tick.set()

    # -- the request's side ---------------------------------------------------------------

    def _prefill(self, req: SimRequest) -> None:
        """Queue the request and wait until the scheduler has prefilled all of it."""
        self.waiting.append(req)
        self._wake()
        gevent.wait([req.prefilled, req.aborted], count=1)
        if not req.prefilled.is_set():
            raise Aborted(req.rid)

    def _await_token(self, req: SimRequest) -> None:
        """Wait for the scheduler to produce the request's next token (at once if instant)."""
        if self.settings.instant:
            if req.aborted.is_set():
                raise Aborted(req.rid)
            return
        while True:
            if req.aborted.is_set():
                raise Aborted(req.rid)
            if req.tokens_ready > len(req.output_ids):
                return
            req.tick.clear()
            gevent.wait([req.tick, req.aborted], count=1)

    def _leave(self, req: SimRequest) -> None:
        """Take the request out of the queue, both batches and the running set, at once."""
        self.live.pop(req.rid, None)
        self.decoding.pop(req.rid, None)
        if self._chunked is req:
            self._chunked = None
        if req in self.waiting:
            self.waiting.remove(req)
        if self.running.pop(req.rid, None) is not None:
            self._wake()  # its place may go to a waiting request

    def abort(self, rid: str) -> int:
        """Abort every waiting or running request whose rid starts with rid (as SGLang)."""
        found = [r for r in self.live.values() if r.rid.startswith(rid)]
        for req in found:
            req.aborted.set()
        return len(found)

    def abort_all(self) -> int:
        for req in list(self.live.values()):
            req.aborted.set()
        return len(self.live)

    # -- generation -----------------------------------------------------------------------

    def check_fits(self, prompt_tokens: int, max_new_tokens: int | None) -> None:
        """Raise ContextTooLong when a request cannot fit the context window."""
        limit = self.settings.context_length
        wanted = prompt_tokens + (max_new_tokens or 0)
        if prompt_tokens >= limit or wanted > limit:
            raise ContextTooLong(
                f"Requested token count exceeds the model's maximum context length of {limit} "
                f"tokens. You requested a total of {wanted} tokens: {prompt_tokens} tokens "
                f"from the input messages and {max_new_tokens or 0} tokens for the completion. "
                f"Please reduce the number of tokens in the input messages or the completion "
                f"to fit within the limit.")

    def _token_limit(self, req: SimRequest) -> int:
        """The most tokens the request may generate (max_new_tokens, else the context left)."""
        limit = req.params.max_new_tokens
        return self.settings.context_length - req.prompt_tokens if limit is None else limit

    def generate(self, req: SimRequest):
        """Run one request to the end.

        Yields one text delta per generated token ("" while a possible stop string is
        held back). Raises Aborted if the request is aborted; the request leaves the running batch
        (and the queue) at once either way.
        """
        req.arrived = self.clock()
        req.decodes = self._token_limit(req) > 0 and not self.settings.instant
        self.live[req.rid] = req
        try:
            self._prefill(req)
            full_path = self.cache.insert(req.prompt_ids)
            self.cache.lock(full_path)
            self.cache.unlock(req.cache_lock)
            req.cache_lock = full_path
            self.cache.evict()
            yield from self._decode(req)
            req.finished = self.clock()
            self._record_finished(req)
        except (Aborted, GeneratorExit):  # GeneratorExit: the consumer went away mid-answer
            self._record_aborted(req)
            raise
        finally:
            self._leave(req)
            self.cache.unlock(req.cache_lock)
            if req.output_ids:
                # Like SGLang, keep the whole sequence so a conversation's next turn hits.
                self.cache.insert(req.prompt_ids + req.output_ids)
                self.cache.evict()

    def encode(self, req: SimRequest) -> None:
        """Run one embedding request: queue and prefill of the whole prompt, no decode.

        Embeddings do not use the prefix cache. Raises Aborted if the request is aborted.
        """
        req.arrived = self.clock()
        req.uses_cache = False
        self.live[req.rid] = req
        try:
            self._prefill(req)
            req.finished = self.clock()
            req.finish_reason = {"type": "length", "length": 0}
            self._record_finished(req)
        except Aborted:
            self._record_aborted(req)
            raise
        finally:
            self._leave(req)


    def _record_aborted(self, req: SimRequest) -> None:
        req.finished = self.clock()
        req.finish_reason = {"type": "abort", "message": "Abort request " + req.rid}
        self.counters["num_aborted_requests_total"] += 1
        self.counters["generation_tokens_total"] += req.completion_tokens

    def _decode(self, req: SimRequest):
        """Yield the request's text deltas, one per token the scheduler gives it."""
        s = self.settings
        p = req.params
        limit = self._token_limit(req)
        if p.output is None:
            gen = TextGenerator(req.prompt_ids, p.seed, s.output_tokens_min,
                                s.output_tokens_max)
        else:
            gen = p.output.source(req.prompt_ids, p.seed, s.output_tokens_min,
                                  s.output_tokens_max, p.ignore_eos)
            req.think_tokens = gen.think_tokens
        forced_end = getattr(gen, "forced_end", False)  # a finished structure ends it
        eos_at = None if p.ignore_eos and not forced_end else gen.natural_length
        full = visible = ""
        previous = req.scheduled
        while True:
            req.finish_reason = _length_end(len(req.output_ids), eos_at, limit)
            if req.finish_reason is not None:
                break
            self._await_token(req)
            text, tid = gen.next_token()
            req.output_ids.append(tid)
            req.token_texts.append(text)
            now = self.clock()
            if req.first_token:
                self.histograms["inter_token_latency_seconds"].observe(now - previous)
            else:
                req.first_token = now
            previous = now
            full += text
            shown = len(visible)
            visible, stop = _apply_stops(full, len(full) - len(text), p.stop)
            if stop is not None or _length_end(len(req.output_ids), eos_at, limit):
                # Its last token: leave the decode batch before the consumer runs.
                self.decoding.pop(req.rid, None)
            yield visible[shown:]
            if stop is not None:
                req.finish_reason = {"type": "stop", "matched": stop}
                req.text = visible
                return
        if len(full) > len(visible):
            yield full[len(visible):]  # a held-back partial stop string that never completed
        req.text = full

    def _record_finished(self, req: SimRequest) -> None:
        c = self.counters
        c["num_requests_total"] += 1
        c["prompt_tokens_total"] += req.prompt_tokens
        c["cached_tokens_total"] += req.cached_tokens
        c["generation_tokens_total"] += req.completion_tokens
        self._since_flush["prompt"] += req.prompt_tokens
        self._since_flush["cached"] += req.cached_tokens
        h = self.histograms
        h["queue_time_seconds"].observe(req.scheduled - req.arrived)
        h["e2e_request_latency_seconds"].observe(req.finished - req.arrived)
        if req.first_token:
            h["time_to_first_token_seconds"].observe(req.first_token - req.arrived)
        second = int(req.finished)
        if self._recent_tokens and self._recent_tokens[-1][0] == second:
            self._recent_tokens[-1] = (second, self._recent_tokens[-1][1] + req.completion_tokens)
        else:
            self._recent_tokens.append((second, req.completion_tokens))

    # -- observation ----------------------------------------------------------------------

    @property
    def cache_hit_rate(self) -> float:
        """Cached prompt tokens over prompt tokens, for finished requests since the last flush."""
        prompt = self._since_flush["prompt"]
        return self._since_flush["cached"] / prompt if prompt else 0.0

    @property
    def gen_throughput(self) -> float:
        """Generated tokens per second over the last 5 seconds."""
        horizon = int(self.clock()) - 4  # the current second and the four before it
        while self._recent_tokens and self._recent_tokens[0][0] < horizon:
            self._recent_tokens.popleft()
        return sum(n for _, n in self._recent_tokens) / 5.0

    def used_tokens(self) -> int:
        """KV tokens held by running requests."""
        return sum(r.prompt_tokens + r.completion_tokens for r in self.running.values())

    def flush_cache(self) -> bool:
        """Empty the prefix cache; refused (False) while requests are live, as in SGLang."""
        if self.live:
            return False
        self.cache.flush()
        self._since_flush = {"prompt": 0, "cached": 0}
        return True


def _length_end(produced: int, eos_at: int | None, limit: int) -> dict | None:
    """The finish reason once produced tokens reach the EOS point or the limit, else None."""
    if produced == eos_at:
        return {"type": "stop", "matched": EOS_TOKEN_ID}
    if produced >= limit:
        return {"type": "length", "length": limit}
    return None


def _apply_stops(text: str, new_from: int, stops: tuple[str, ...]):
    """Cut text at the first stop string; otherwise hold back a possible partial stop.

    Returns (text safe to show, matched stop or None).
    """
    if not stops:
        return text, None
    for stop in stops:
        at = text.find(stop, max(0, new_from - len(stop) + 1))
        if at >= 0:
            return text[:at], stop
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:k]):
                hold = k
                break
    return text[:len(text) - hold], None
