"""The prefix index: page hashes, the memory and Redis stores alike, and the
``prefix_index`` policy on real gateways and simulators."""

import pytest
import requests
from inferegator_plugins.routing_prefix_index import prompt_text

from inferegator.prefix_index.pages import page_hashes
from inferegator.prefix_index.stores import MemoryPrefixIndex, RedisPrefixIndex
from tests.gateway_fixtures import MODEL, gateway_yaml, provision

SYSTEM = "You are a careful assistant who answers in full sentences. " * 30


def test_a_next_turn_pages_to_this_turns_pages_and_more():
    first = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi there."}]
    second = first + [{"role": "assistant", "content": "Hello! How can I help?"},
                      {"role": "user", "content": "Tell me about caches. " * 20}]
    one = page_hashes(prompt_text("chat", {"messages": first}), 64, 1000)
    two = page_hashes(prompt_text("chat", {"messages": second}), 64, 1000)
    assert len(one) >= 20 and two[:len(one)] == one and len(two) > len(one)
    other = page_hashes(prompt_text("chat", {"messages": [
        {"role": "system", "content": "Another prompt. " + SYSTEM}]}), 64, 1000)
    assert not set(other) & set(one)  # a change at the start changes every page after it
    assert page_hashes("x" * 1000, 64, 3) == page_hashes("x" * 1000, 64, 1000)[:3]


@pytest.fixture(params=["memory", "redis"])
def index(request):
    if request.param == "memory":
        yield MemoryPrefixIndex()
        return
    server = request.getfixturevalue("redis_server")
    store = RedisPrefixIndex(server.url, prefix=f"test:{request.node.name}:")
    yield store
    store.close()


def test_lookup_finds_each_runtimes_longest_held_prefix(index):
    a, b = list(range(100, 110)), list(range(100, 104)) + list(range(500, 506))
    assert index.lookup(["r1", "r2"], [1000, 1000], a) == [0, 0]
    index.record("r1", 1000, 0, a)
    assert index.lookup(["r1", "r2"], [1000, 1000], a) == [10, 0]
    assert index.lookup(["r1", "r2"], [1000, 1000], b) == [4, 0]
    index.record("r2", 1000, 0, b)
    assert index.lookup(["r1", "r2"], [1000, 1000], b) == [4, 10]
    index.clear("r1")
    assert index.lookup(["r1", "r2"], [1000, 1000], a) == [0, 4]


def test_pages_age_out_as_a_runtime_of_that_capacity_would_evict_them(index):
    capacity = 12
    old, new = list(range(0, 8)), list(range(1000, 1008))
    index.record("r", capacity, 0, old)
    index.record("r", capacity, 0, new)  # 16 pages sent: the last 4 of `old` are gone
    assert index.lookup(["r"], [capacity], new) == [8]
    assert index.lookup(["r"], [capacity], old) == [4]
    index.record("r", capacity, 0, list(range(2000, 2002)))
    assert index.lookup(["r"], [capacity], new) == [8]  # still within the last 12
    held = index.lookup(["r"], [capacity], new)[0]
    index.record("r", capacity, held, new)  # sent again: touched, nothing new counted
    index.record("r", capacity, 0, list(range(3000, 3004)))
    assert index.lookup(["r"], [capacity], new) == [8]


def _chat(gateway, messages, key=None):
    resp = requests.post(gateway.url + "/v1/chat/completions", timeout=30,
                         headers={"Authorization": f"Bearer {key or gateway.key}"},
                         json={"model": MODEL, "messages": messages, "max_tokens": 8})
    assert resp.status_code == 200, resp.text
    return resp.json()


def _served(sims):
    return [sim.metric("num_requests_total") for sim in sims]


def test_two_replicas_sharing_redis_keep_a_conversation_on_one_runtime(
        start_sim, start_gateway, redis_server, tmp_path):
    sims = [start_sim("--instant") for _ in range(3)]
    storage = f"sqlite:///{tmp_path}/shared.db"
    text = gateway_yaml(sims, model_extra=["routing: prefix_index"],
                        ratelimit={"store": redis_server.url})
    one = start_gateway(text, storage=storage)
    two = start_gateway(text, storage=storage)
    for conversation in range(3):
        messages = [{"role": "system", "content": f"Conversation {conversation}. " + SYSTEM}]
        before = _served(sims)
        cached = []
        for turn in range(4):
            messages.append({"role": "user", "content": f"Question {turn}: " + "why? " * 40})
            gateway = (one, two)[turn % 2]  # the turns alternate between the replicas
            answer = _chat(gateway, messages)
            cached.append(answer["usage"].get("prompt_tokens_details", {})
                          .get("cached_tokens", 0))
            messages.append({"role": "assistant",
                             "content": answer["choices"][0]["message"]["content"]})
        grew = [after - start for after, start in zip(_served(sims), before)]
        assert sorted(grew) == [0, 0, 4], grew  # every turn on one runtime
        assert cached[0] == 0 and all(c > 0 for c in cached[1:]), cached


def _grown(sims, before) -> int:
    """The one simulator that served requests since ``before``."""
    grew = [after - start for after, start in zip(_served(sims), before)]
    assert sorted(grew)[:-1] == [0] * (len(sims) - 1), grew
    return grew.index(max(grew))


def test_a_flushed_or_drained_runtime_is_forgotten(start_sim, start_gateway, redis_server):
    sims = [start_sim("--instant") for _ in range(2)]
    gateway = start_gateway(gateway_yaml(sims, model_extra=["routing: prefix_index"],
                                         ratelimit={"store": redis_server.url}))
    ops, _ = provision(gateway.storage, email="ops@example.com", role="admin")
    admin = {"Authorization": f"Bearer {ops}"}
    names = {b["url"]: b["name"] for b in requests.get(
        gateway.url + "/v1/admin/backends", headers=admin, timeout=5).json()["data"]}
    one = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi."}]
    other = [{"role": "system", "content": "Other. " + SYSTEM}, {"role": "user", "content": "?"}]
    first_page = page_hashes(prompt_text("chat", {"messages": one}), 256, 2048)[0]

    def holds(sim) -> bool:
        return redis_server.client.zscore(f"inferegator:px:sim-model@{sim.url}:p",
                                          first_page) is not None

    for action in ("flush_cache", "drain"):
        before = _served(sims)
        _chat(gateway, one)
        sim = sims[_grown(sims, before)]
        assert holds(sim)
        resp = requests.post(f"{gateway.url}/v1/admin/backends/{action}", headers=admin,
                             json={"backend": names[sim.url]}, timeout=5)
        assert resp.status_code == 200, resp.text
        if action == "flush_cache":
            assert sim.load()["num_cached_tokens"] == 0  # the runtime dropped it too
        else:
            requests.post(f"{gateway.url}/v1/admin/backends/undrain", headers=admin,
                          json={"backend": names[sim.url]}, timeout=5).raise_for_status()
        _chat(gateway, other)  # the next request routed clears what the index held there
        assert not holds(sim), action
