"""Reading the rate-limit windows without admitting: the stores' peek and the limiter's
current_headers (the x-ratelimit-* headers of answers given before admission)."""

import logging
import re
import uuid
from types import SimpleNamespace

import pytest

from inferegator.auth import Principal
from inferegator.config.model import ModelLimits, RateLimitConfig
from inferegator.gateway.request import CHAT, GatewayRequest
from inferegator.ratelimit import stores
from inferegator.ratelimit.limiter import RateLimiter
from inferegator.ratelimit.stores import Limit, MemoryWindowStore, RedisWindowStore
from inferegator.store.accounts import KeyRecord
from tests.support.processes import wait_until

MINUTE_MS = 60_000
MODEL = SimpleNamespace(id="acme/peek-model", default_max_tokens=None)


class FakeClock:
    """Seconds, moved by the test only (starts far from 0, as time.monotonic does)."""

    def __init__(self, now=5_000.0):
        self.now = now

    def __call__(self):
        return self.now


def unique(name="k"):
    return f"{name}-{uuid.uuid4().hex[:12]}"


def limits_of(key_id, requests=1, tokens=0, rpm=3, tpm=100):
    base = f"rl:{{{key_id}}}"
    return [Limit(base + ":requests", rpm, requests), Limit(base + ":tokens", tpm, tokens)]


@pytest.fixture(params=["memory", "redis"])
def store(request):
    if request.param == "memory":
        return MemoryWindowStore(clock=FakeClock())
    return RedisWindowStore(request.getfixturevalue("redis_server").url)


def redis_keys(server, limit):
    """What Redis holds for one limit: members of the sorted set, the hash, the sum."""
    client = server.client
    return (client.zrange(limit.key + ":z", 0, -1), client.hgetall(limit.key + ":h"),
            client.get(limit.key + ":sum"))


# -- the stores ---------------------------------------------------------------------------

def test_peek_changes_no_count(store):
    key = unique()
    asking = limits_of(key, requests=1, tokens=30)  # 3 requests fit, 4 x 30 tokens would not
    for _ in range(20):
        before = store.peek(asking, MINUTE_MS)
        assert (before.used, before.oldest_ms) == ([0, 0], [-1, -1])
        assert before.admitted and before.retry_after_ms == 0
    for i in range(3):
        for _ in range(10):  # amounts asked are ignored, however large: nothing is added
            seen = store.peek(limits_of(key, requests=50, tokens=10_000), MINUTE_MS)
            assert seen.used == [i, 30 * i] and seen.admitted
        assert store.admit(asking, unique("m"), MINUTE_MS).admitted
    for _ in range(10):
        assert store.peek(asking, MINUTE_MS).used == [3, 90]
    refused = store.admit(asking, unique("m"), MINUTE_MS)
    assert not refused.admitted and refused.used == [3, 90]
    assert store.peek(asking, MINUTE_MS).used == [3, 90]


def test_peek_reports_what_admit_reported(store):
    key = unique()
    clock = getattr(store, "clock", None)
    first = store.admit(limits_of(key, tokens=7), unique("m"), MINUTE_MS)
    seen = store.peek(limits_of(key), MINUTE_MS)
    assert (seen.used, seen.oldest_ms) == (first.used, first.oldest_ms) == ([1, 7], [
        first.now_ms, first.now_ms])
    assert seen.now_ms >= first.now_ms
    if isinstance(clock, FakeClock):
        clock.now += 2.5
    second = store.admit(limits_of(key, tokens=11), unique("m"), MINUTE_MS)
    seen = store.peek(limits_of(key), MINUTE_MS)
    assert (seen.used, seen.oldest_ms) == (second.used, second.oldest_ms) == ([2, 18], [
        first.now_ms, first.now_ms])
    if isinstance(clock, FakeClock):
        assert seen.now_ms == second.now_ms == first.now_ms + 2500


def test_peek_of_a_key_never_admitted_creates_nothing(store, request):
    limits = limits_of(unique())
    seen = store.peek(limits, MINUTE_MS)
    assert (seen.used, seen.oldest_ms) == ([0, 0], [-1, -1])
    if isinstance(store, MemoryWindowStore):
        assert all(limit.key not in store._windows for limit in limits)
    else:
        client = request.getfixturevalue("redis_server").client
        assert client.exists(*RedisWindowStore._keys(limits)) == 0


def test_memory_peek_does_not_count_expired_admissions():
    clock = FakeClock()
    store = MemoryWindowStore(clock=clock)
    key, window_ms = unique(), 1000
    start = int(clock.now * 1000)
    assert store.admit(limits_of(key, tokens=7), "a", window_ms).admitted
    clock.now += 0.5
    assert store.admit(limits_of(key, tokens=11), "b", window_ms).admitted
    clock.now += 0.499
    seen = store.peek(limits_of(key), window_ms)
    assert (seen.used, seen.oldest_ms) == ([2, 18], [start, start])
    clock.now += 0.001  # a is window_ms old: out
    seen = store.peek(limits_of(key), window_ms)
    assert (seen.used, seen.oldest_ms) == ([1, 11], [start + 500, start + 500])
    clock.now += 0.5
    seen = store.peek(limits_of(key), window_ms)
    assert (seen.used, seen.oldest_ms, seen.now_ms) == ([0, 0], [-1, -1], start + 1500)
    # what peek pruned is gone for admissions too: 3 fit again, the 4th does not
    assert [store.admit(limits_of(key), f"c{i}", window_ms).admitted
            for i in range(4)] == [True, True, True, False]


def test_redis_peek_does_not_count_expired_admissions(redis_server):
    store = RedisWindowStore(redis_server.url)
    key = unique()
    requests_limit, tokens_limit = limits_of(key)
    # admitted on a long window, so the admissions themselves never prune each other
    a = store.admit(limits_of(key, tokens=7), "a", MINUTE_MS)
    wait_until(lambda: store.peek(limits_of(key), MINUTE_MS).now_ms >= a.now_ms + 300,
               timeout=10)
    b = store.admit(limits_of(key, tokens=11), "b", MINUTE_MS)
    assert a.admitted and b.admitted and b.used == [2, 18]

    # Read on a 600 ms window: a leaves it at a + 600, b not before a + 900.
    window_ms = 600
    seen = wait_until(lambda: (d := store.peek(limits_of(key), window_ms)).used[0] < 2 and d,
                      timeout=10)
    assert seen.now_ms >= a.now_ms + window_ms and seen.now_ms < b.now_ms + window_ms
    assert (seen.used, seen.oldest_ms) == ([1, 11], [b.now_ms, b.now_ms])
    # expired members are removed (so the sum is right), the rest untouched
    assert redis_keys(redis_server, tokens_limit) == ([b"b"], {b"b": b"11"}, b"11")
    assert redis_keys(redis_server, requests_limit) == ([b"b"], {b"b": b"1"}, b"1")

    seen = wait_until(lambda: (d := store.peek(limits_of(key), window_ms)).used == [0, 0] and d,
                      timeout=10)
    assert seen.oldest_ms == [-1, -1] and seen.now_ms >= b.now_ms + window_ms
    assert redis_keys(redis_server, tokens_limit) == ([], {}, b"0")
    # nothing was added by any peek: 3 requests fit again, the 4th does not
    assert [store.admit(limits_of(key), f"c{i}", MINUTE_MS).admitted
            for i in range(4)] == [True, True, True, False]


# -- the limiter's current headers --------------------------------------------------------

def key_record(key_id, rpm=None, tpm=None):
    return KeyRecord(id=key_id, user_id="u", name="peek", prefix="sk-inf-peek", revoked=False,
                     user_disabled=False, role="user", requests_per_minute=rpm,
                     tokens_per_minute=tpm, monthly_budget_usd=None, allowed_models=None)


def principal_of(key_id, **limits):
    return Principal(key_id=key_id, owner="u", attributes={"key": key_record(key_id, **limits)})


def chat(prompt_estimate=10, max_tokens=20):
    return GatewayRequest(CHAT, None, unique("req"), max_tokens=max_tokens,
                          prompt_estimate=prompt_estimate)


def headers(rpm, remaining_requests, reset_requests, tpm, remaining_tokens, reset_tokens):
    return {"x-ratelimit-limit-requests": str(rpm),
            "x-ratelimit-remaining-requests": str(remaining_requests),
            "x-ratelimit-reset-requests": reset_requests,
            "x-ratelimit-limit-tokens": str(tpm),
            "x-ratelimit-remaining-tokens": str(remaining_tokens),
            "x-ratelimit-reset-tokens": reset_tokens}


def seconds(duration: str) -> float:
    """An x-ratelimit-reset-* value (12ms, 1.5s, 1m0s) in seconds."""
    match = re.fullmatch(r"(?:(\d+)m)?(?:([\d.]+)s)?|(\d+)ms", duration)
    assert match, duration
    if match.group(3):
        return int(match.group(3)) / 1000
    return int(match.group(1) or 0) * 60 + float(match.group(2) or 0)


def test_base_limits_are_the_first_two_of_every_admission():
    config = RateLimitConfig(requests_per_minute=50, tokens_per_minute=5000,
                             models={MODEL.id: ModelLimits(requests_per_minute=2)})
    limiter = RateLimiter(config, MemoryWindowStore(), spend_of=lambda key_id: 0.0)
    for principal, (rpm, tpm) in [(principal_of("own", rpm=3, tpm=100), (3, 100)),
                                  (principal_of("defaults"), (50, 5000)),
                                  (Principal(key_id="no-record", owner="u"), (50, 5000))]:
        limits, tokens = limiter.limits_for(principal, MODEL, chat())
        assert tokens == 30 and len(limits) == 3  # the model's own limit comes after
        assert limits[:2] == limiter.base_limits(principal, 1, tokens)
        assert [(limit.maximum, limit.amount) for limit in limits[:2]] == [(rpm, 1), (tpm, 30)]
        assert limiter.current_headers(principal) == headers(rpm, rpm, "0ms", tpm, tpm, "0ms")


def test_current_headers_before_and_after_admissions():
    clock = FakeClock()
    config = RateLimitConfig(requests_per_minute=50, tokens_per_minute=5000)
    limiter = RateLimiter(config, MemoryWindowStore(clock=clock), spend_of=lambda k: 0.0,
                          clock=clock)
    principal = principal_of(unique(), rpm=3, tpm=100)
    assert limiter.current_headers(principal) == headers(3, 3, "0ms", 100, 100, "0ms")

    first = chat()  # 10 + 20 tokens
    assert limiter.admit(principal, MODEL, first) is None
    assert first.response_headers == headers(3, 2, "1m0s", 100, 70, "1m0s")
    assert limiter.current_headers(principal) == first.response_headers
    clock.now += 1.5
    now = headers(3, 2, "58.5s", 100, 70, "58.5s")
    assert limiter.current_headers(principal) == now

    # remaining is what the next admission finds free: 71 tokens do not fit, 70 do
    too_many = chat(prompt_estimate=11, max_tokens=60)
    refused = limiter.admit(principal, MODEL, too_many)
    assert refused is not None and refused.status == 429 and "used 30" in refused.message
    assert limiter.current_headers(principal) == now  # a refusal reserves nothing
    exactly = chat(prompt_estimate=10, max_tokens=60)
    assert limiter.admit(principal, MODEL, exactly) is None
    assert limiter.current_headers(principal) == headers(3, 1, "58.5s", 100, 0, "58.5s")
    assert limiter.admit(principal, MODEL, chat(prompt_estimate=0, max_tokens=1)) is not None

    clock.now += 58.5  # the first admission leaves the window; the second is 1.5 s younger
    assert limiter.current_headers(principal) == headers(3, 2, "1.5s", 100, 30, "1.5s")
    clock.now += 1.5
    assert limiter.current_headers(principal) == headers(3, 3, "0ms", 100, 100, "0ms")


def test_current_headers_over_redis(redis_server):
    config = RateLimitConfig(requests_per_minute=3, tokens_per_minute=100)
    limiter = RateLimiter(config, RedisWindowStore(redis_server.url), spend_of=lambda k: 0.0)
    principal = principal_of(unique())  # the configured defaults
    assert limiter.current_headers(principal) == headers(3, 3, "0ms", 100, 100, "0ms")
    first = chat()
    assert limiter.admit(principal, MODEL, first) is None
    current = limiter.current_headers(principal)
    resets = [current.pop(name) for name in ("x-ratelimit-reset-requests",
                                             "x-ratelimit-reset-tokens")]
    assert current == {name: value for name, value in headers(3, 2, "", 100, 70, "").items()
                       if not name.startswith("x-ratelimit-reset")}
    assert all(55 < seconds(reset) <= 60 for reset in resets), resets
    assert limiter.admit(principal, MODEL, chat(prompt_estimate=11, max_tokens=60)) is not None
    assert limiter.admit(principal, MODEL, chat(prompt_estimate=10, max_tokens=60)) is None
    current = limiter.current_headers(principal)
    assert (current["x-ratelimit-remaining-requests"],
            current["x-ratelimit-remaining-tokens"]) == ("1", "0")


def test_current_headers_are_empty_when_redis_is_down(caplog):
    from tests.support.redis_server import RedisServer

    server = RedisServer()  # private: this test stops it
    clock = FakeClock()
    try:
        limiter = RateLimiter(RateLimitConfig(requests_per_minute=3, tokens_per_minute=100),
                              RedisWindowStore(server.url), spend_of=lambda k: 0.0,
                              clock=clock)
        principal = principal_of(unique())
        assert limiter.admit(principal, MODEL, chat()) is None
        assert limiter.current_headers(principal)["x-ratelimit-remaining-requests"] == "2"
    finally:
        server.stop()
    with pytest.raises(stores.StoreUnavailable):
        limiter.store.peek(limiter.base_limits(principal), limiter.window_ms)

    def warnings():
        return [r for r in caplog.records
                if r.name == "inferegator.ratelimit" and r.levelno == logging.WARNING]

    with caplog.at_level(logging.WARNING, logger="inferegator.ratelimit"):
        assert [limiter.current_headers(principal) for _ in range(3)] == [{}, {}, {}]
        assert len(warnings()) == 1 and "x-ratelimit headers" in warnings()[0].getMessage()
        clock.now += 10.5
        assert limiter.current_headers(principal) == {}
        assert len(warnings()) == 2
