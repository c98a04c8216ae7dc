"""The prefix index: page hashes, the memory and Redis stores alike, and the
``prefix_index`` policy on real gateways and simulators."""

import struct
import threading

import pytest
import requests
from inferegator_plugins.routing_prefix_index import prompt_text, prompt_turn

from inferegator.prefix_index.copies import copy_target, shared_head
from inferegator.prefix_index.pages import Ends, cuts_within, page_hashes, prompt_pages
from inferegator.prefix_index.stores import Costs, MemoryPrefixIndex, RedisPrefixIndex, Runtime
from tests.gateway_fixtures import MODEL, gateway_yaml, provision
from tests.support.processes import wait_until
from tests.support.redis_server import RedisServer

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
    # "<|system|>" in common: the cuts at 4 and 8 bytes (64-byte pages), none after them
    assert set(other) & set(one) == set(one[:2])
    assert page_hashes("x" * 1000, 64, 3) == page_hashes("x" * 1000, 64, 1000)[:3]


@pytest.mark.parametrize("page_chars, max_pages", [(64, 1000), (64, 6), (4096, 64)])
def test_a_next_turn_ends_its_previous_part_where_the_last_turn_ended(page_chars, max_pages):
    first = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Hi ☃ there."}]
    second = first + [{"role": "assistant", "content": "Hello! How can I help?"},
                      {"role": "user", "content": "Tell me about caches."}]
    text, previous_chars = prompt_turn("chat", {"messages": first})
    assert previous_chars == 0
    one_pages, one = prompt_pages(text, page_chars, max_pages, previous_chars)
    two_text, two_previous_chars = prompt_turn("chat", {"messages": second})
    two = prompt_pages(two_text, page_chars, max_pages, two_previous_chars)[1]
    assert one.previous == 0 and one.own != 0 and two.own != one.own
    assert (two.previous, two.previous_chars) == (one.own, len(text.encode()))
    assert one_pages == page_hashes(text, page_chars, max_pages)


@pytest.fixture(params=["memory", "redis"])
def index(request):
    if request.param == "memory":
        yield MemoryPrefixIndex()
        return
    server = request.getfixturevalue("redis_server")
    store = RedisPrefixIndex(server.url, prefix=f"test:{request.node.name}:")
    yield store
    store.close()


# 16-byte pages (cuts at 1, 2, 4, 8, 16, 32, 48, ... bytes), a byte a token: a queued
# request costs 100 tokens of prefill; no fairness cap to speak of.
COSTS = Costs(page_chars=16, chars_per_token=1.0, queue_tokens=100.0, epsilon=100.0,
              lease_s=60.0)


class Fleet:
    """Runtimes routed through one index, their loads counted here as the Redis store
    counts them itself (requests routed there and not released), so both stores weigh
    the same loads."""

    def __init__(self, index, names, capacity=1000, slots=1):
        self.index, self.names = index, names
        self.capacity, self.slots = capacity, slots
        self.loads = [0] * len(names)
        self.routed = []  # (runtime index, token) not released yet

    def runtimes(self, prefer=0):
        """The runtimes as the index weighs them; equal choices go to runtime ``prefer``."""
        return [Runtime(name, self.capacity, self.slots, load, 0.0 if i == prefer else 0.5)
                for i, (name, load) in enumerate(zip(self.names, self.loads))]

    def route(self, pages, prefer=0, costs=COSTS):
        """Route pages; equal choices go to runtime ``prefer``. (chosen, held per runtime)."""
        runtimes = self.runtimes(prefer)
        token = f"t{len(self.routed)}-{sum(self.loads)}"
        route = self.index.route(runtimes, pages, token, costs)
        chosen = route.order[0]
        assert route.loads == self.loads  # the Redis store counted what we did
        self.loads[chosen] += 1
        self.routed.append((chosen, token))
        return chosen, route.held

    def release_all(self):
        for chosen, token in self.routed:
            self.index.release(self.names[chosen], token)
            self.loads[chosen] -= 1
        self.routed = []


def test_route_finds_each_runtimes_longest_prefix_and_weighs_its_queue(index):
    fleet = Fleet(index, ["r1", "r2"])
    a = list(range(100, 110))
    b = list(range(100, 104)) + list(range(500, 506))
    assert fleet.route(a, prefer=0) == (0, [0, 0])  # nothing held: the preferred one
    fleet.release_all()
    assert fleet.route(a, prefer=1) == (0, [10, 0])  # held beats the tie break
    # r1 is still running `a` in its one slot: 6 pages it lacks + 100 queued > 10 on r2
    assert fleet.route(b, prefer=0) == (1, [4, 0])
    fleet.release_all()
    assert fleet.route(a, prefer=1) == (0, [10, 4])
    assert fleet.route(b, prefer=0) == (1, [4, 10])
    fleet.release_all()
    index.clear("r1")
    assert fleet.route(a, prefer=1) == (1, [0, 4])


def test_pages_age_out_as_a_runtime_of_that_capacity_would_evict_them(index):
    fleet = Fleet(index, ["r"], capacity=96)  # bytes of text
    old, new = list(range(0, 8)), list(range(1000, 1008))  # 8 cuts: 64 bytes each
    assert fleet.route(old)[1] == [0]
    assert fleet.route(new)[1] == [0]  # 128 bytes sent: old's last 32 (2 pages) are gone
    assert fleet.route(new)[1] == [8]  # sent again: touched, nothing new counted
    assert fleet.route(old)[1] == [6]  # its 2 lost pages are sent again
    assert fleet.route(new)[1] == [8]  # still within the last 96 bytes
    assert fleet.route(list(range(2000, 2012)))[1] == [0]  # 128 new bytes: all else aged
    assert fleet.route(new)[1] == [0]


def test_recent_requests_lean_the_choice_between_equal_holders(index):
    fleet = Fleet(index, ["r1", "r2"], slots=8)
    system = list(range(300, 306))  # a shared system prompt's cuts

    def sequence(costs, prompts):
        chosen = []
        for pages in prompts:
            chosen.append(fleet.route(pages, prefer=0, costs=costs)[0])
            fleet.release_all()
        return chosen

    # Without the lean, equal choices all go to the tie break's favourite.
    assert sequence(COSTS, [list(range(i * 10, i * 10 + 3)) for i in range(4)]) == [0] * 4
    assert sequence(COSTS, [system]) == [0]
    # With it, a recent request above the mean weighs 100 / 8 tokens: new prompts go
    # where fewer went.
    lean = COSTS._replace(spread_weight=1.0)
    assert sequence(lean, [list(range(900, 903)), list(range(910, 913))]) == [1, 1]
    # r1 alone holds the system prompt: the lean does not take its users elsewhere.
    assert sequence(lean, [system + [1000]]) == [0]  # 6 to r1, 2 to r2
    # Once r2 holds it too (a copy: 6 to r1, 3 to r2), its new users go where fewer went
    # until the counts are even, then alternate.
    copy = index.route([Runtime("r2", 1000, 8, 0, 0.0)], system, "copy", lean)
    index.release("r2", "copy")
    assert copy.held == [0]
    chosen = sequence(lean, [system + [1100 + i] for i in range(6)])
    assert chosen[:3] == [1, 1, 1] and sorted(chosen[3:]) == [0, 0, 1], chosen
    # A conversation's history (held by r1 alone) outweighs the lean.
    history = system + list(range(2000, 2010))
    assert sequence(COSTS, [history]) == [0]
    assert sequence(lean, [history + [7], history + [7, 8]]) == [0, 0]


def test_a_previous_turn_is_found_by_its_end_within_a_page(index):
    fleet = Fleet(index, ["r1", "r2"], slots=8)
    lean = COSTS._replace(spread_weight=1.0)
    system = list(range(300, 306))  # 6 cuts: 32 bytes (16-byte pages)
    for runtime in ("r1", "r2"):  # both hold the system prompt
        index.route([Runtime(runtime, 1000, 8, 0, 0.0)], system, "copy", lean)
        index.release(runtime, "copy")
    # Turn one, 10 bytes past the system prompt's last cut, goes to r1 (the tie), which
    # records where it ended.
    turn_one = Ends(own=77, previous=0, previous_chars=0)
    assert index.route(fleet.runtimes(prefer=0), system, "t1", lean, turn_one).order[0] == 0
    index.release("r1", "t1")
    # Turn two (which cuts the same 6 pages) finds turn one's end on r1 alone: r1 holds
    # 42 bytes, r2 32, so the lean toward r2 (fewer requests lately) no longer decides.
    turn_two = Ends(own=78, previous=77, previous_chars=42)
    route = index.route(fleet.runtimes(prefer=1), system, "t2", lean, turn_two)
    assert route.held == [6, 6] and route.held_chars == [42, 32] and route.order[0] == 0
    index.release("r1", "t2")
    # Where the previous turn is not known, equal holders: the lean sends it to r2.
    other = Ends(own=79, previous=1234, previous_chars=42)
    route = index.route(fleet.runtimes(prefer=0), system, "t3", lean, other)
    assert route.held_chars == [32, 32] and route.order[0] == 1
    index.release("r2", "t3")


def test_the_fairness_cap_passes_over_the_holder(index):
    fleet = Fleet(index, ["r1", "r2", "r3"], slots=8)
    hot = list(range(50))
    capped = COSTS._replace(epsilon=0.5)
    chosen = [fleet.route(hot, prefer=0, costs=capped)[0] for _ in range(12)]
    # Loads 12 in all: none past ceil(1.5 x 12 / 3) = 6, the holder first until its cap
    assert max(fleet.loads) <= 6 and sorted(fleet.loads) != [0, 0, 12], fleet.loads
    assert chosen[0] == 0 and chosen.count(0) == max(fleet.loads)


def test_replicas_sharing_redis_count_each_others_requests(redis_server):
    one, two = (RedisPrefixIndex(redis_server.url, prefix="test:shared:") for _ in range(2))
    try:
        runtimes = [Runtime("r1", 100, 1, 0, 0.0), Runtime("r2", 100, 1, 0, 0.5)]
        first = one.route(runtimes, [1, 2, 3], "req-1", COSTS)
        assert first.order == [0, 1] and first.loads == [0, 0]
        second = two.route(runtimes, [7, 8, 9], "req-2", COSTS)
        assert second.order == [1, 0] and second.loads == [1, 0]  # one's request counted
        one.release("r1", "req-1")
        assert two.route(runtimes, [1, 2], "req-3", COSTS).loads == [0, 1]
        # A request never released (its replica died) stops counting when its lease ends.
        one.route(runtimes, [], "lost", COSTS._replace(lease_s=0.2))
        two.release("r2", "req-2")
        two.release("r1", "req-3")

        def counted():
            route = two.route(runtimes, [], "probe", COSTS)
            two.release(runtimes[route.order[0]].name, "probe")
            return route.loads

        assert sum(counted()) == 1
        wait_until(lambda: counted() == [0, 0], timeout=10, interval=0.05)
    finally:
        one.close()
        two.close()


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
        for turn in range(6):
            messages.append({"role": "user", "content": f"Question {turn}: " + "why? " * 40})
            gateway = (one, two)[turn % 2]  # the turns alternate between the replicas
            answer = _chat(gateway, messages)
            cached.append(answer["usage"].get("prompt_tokens_details", {})
                          .get("cached_tokens", 0))
            messages.append({"role": "assistant",
                             "content": answer["choices"][0]["message"]["content"]})
        grew = [after - start for after, start in zip(_served(sims), before)]
        assert sorted(grew) == [0, 0, 6], grew  # every turn on one runtime
        assert cached[0] == 0 and all(c > 0 for c in cached[1:]), cached


def _grown(sims, before) -> int:
    """The one simulator that served requests since ``before``."""
    grew = [after - start for after, start in zip(_served(sims), before)]
    assert sorted(grew)[:-1] == [0] * (len(sims) - 1), grew
    return grew.index(max(grew))


def test_a_flushed_drained_or_restarted_runtime_is_forgotten(start_sim, start_gateway,
                                                             redis_server):
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
        return redis_server.client.hget(f"inferegator:px2:sim-model@{sim.url}:p",
                                        struct.pack(">Q", first_page)) is not None

    def healthy(url) -> bool:
        return {b["url"]: b for b in requests.get(
            gateway.url + "/v1/admin/backends", headers=admin, timeout=5).json()["data"]
        }[url]["healthy"]

    for action in ("flush_cache", "drain", "restart"):
        before = _served(sims)
        _chat(gateway, one)
        sim = sims[_grown(sims, before)]
        assert holds(sim)
        if action == "restart":  # a new process on the same port: its cache is empty
            sim.stop()
            url = sim.url
            wait_until(lambda: not healthy(url), timeout=15, interval=0.05)  # noqa: B023
            sims[sims.index(sim)] = start_sim("--instant", port=sim.port)
            wait_until(lambda: healthy(url), timeout=15, interval=0.05)  # noqa: B023
            _chat(gateway, other)
            assert not holds(sim), action
            continue
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


def test_redis_down_routes_by_the_ring_with_one_warning(start_sim, start_gateway):
    redis = RedisServer()
    try:
        sims = [start_sim("--instant") for _ in range(3)]
        gateway = start_gateway(gateway_yaml(sims, model_extra=[
            "routing: prefix_index", f"routing_options: {{index: '{redis.url}'}}"]))
        _chat(gateway, [{"role": "user", "content": "Before. " + SYSTEM}])
    finally:
        redis.stop()
    for conversation in range(4):
        messages = [{"role": "system", "content": f"Conversation {conversation}. " + SYSTEM}]
        before = _served(sims)
        for turn in range(3):
            messages.append({"role": "user", "content": f"Question {turn}?"})
            answer = _chat(gateway, messages)  # 200: no request fails for the index
            messages.append({"role": "assistant",
                             "content": answer["choices"][0]["message"]["content"]})
        _grown(sims, before)  # the ring keeps a conversation's turns together too
    warnings = [line for line in gateway.output().splitlines()
                if "prefix index unavailable" in line]
    assert len(warnings) == 1, warnings
    assert "routing by the ring" in warnings[0]


def test_the_fairness_cap_holds_under_a_hot_prefix_across_replicas(
        start_sim, start_gateway, redis_server, tmp_path):
    # Realistic timing: 200 tokens at ~12 ms each keep every request running for seconds.
    sims = [start_sim() for _ in range(3)]
    storage = f"sqlite:///{tmp_path}/shared.db"
    text = gateway_yaml(sims, model_extra=["routing: prefix_index"],
                        ratelimit={"store": redis_server.url})
    replicas = [start_gateway(text, storage=storage) for _ in range(2)]
    barrier = threading.Barrier(12)
    statuses = []

    def ask(i):
        barrier.wait()
        resp = requests.post(
            replicas[i % 2].url + "/v1/chat/completions", timeout=60,
            headers={"Authorization": f"Bearer {replicas[i % 2].key}"},
            json={"model": MODEL, "max_tokens": 200, "ignore_eos": True, "messages": [
                {"role": "system", "content": "The hot prompt. " + SYSTEM},
                {"role": "user", "content": f"Question {i}?"}]})
        statuses.append(resp.status_code)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()

    def all_in_flight():
        """Each runtime's requests once all 12 are there, as the runtimes report them."""
        loads = [load["num_running_reqs"] + load["num_waiting_reqs"]
                 for load in (sim.load() for sim in sims)]
        return loads if sum(loads) == 12 else None

    running = wait_until(all_in_flight, timeout=30, interval=0.02)
    for thread in threads:
        thread.join()
    assert statuses == [200] * 12
    # 12 in flight over 3 runtimes, epsilon 0.5: none past ceil(1.5 x 12 / 3) = 6, so the
    # hot prefix lives on at least two runtimes.
    assert max(running) <= 6 and sorted(running)[-2] > 0, running


def test_a_request_stops_counting_as_load_when_its_client_leaves(start_sim, start_gateway,
                                                                  redis_server):
    sims = [start_sim() for _ in range(2)]  # real timing: 200 tokens take seconds
    gateway = start_gateway(gateway_yaml(sims, model_extra=["routing: prefix_index"],
                                         ratelimit={"store": redis_server.url}))
    keys = [f"inferegator:px2:sim-model@{sim.url}:f" for sim in sims]

    def in_flight() -> int:
        return sum(redis_server.client.zcard(key) for key in keys)

    resp = requests.post(gateway.url + "/v1/chat/completions", stream=True, timeout=30,
                         headers={"Authorization": f"Bearer {gateway.key}"},
                         json={"model": MODEL, "max_tokens": 200, "ignore_eos": True,
                               "stream": True,
                               "messages": [{"role": "user", "content": "Count slowly."}]})
    assert resp.status_code == 200
    next(resp.iter_lines())  # the stream has begun: the request counts where it went
    assert in_flight() == 1
    resp.close()  # the client leaves mid-stream
    wait_until(lambda: in_flight() == 0, timeout=10, interval=0.05)
    _chat(gateway, [{"role": "user", "content": "And a whole answer."}])
    # Released once its answer ends (the hook runs after the last byte; the ZREM is sent).
    wait_until(lambda: in_flight() == 0, timeout=10, interval=0.05)


def test_a_hot_system_prompt_is_copied_only_from_a_holder_past_its_share():
    system = {"role": "system", "content": "Shared."}
    user = {"role": "user", "content": "Hi."}
    assert shared_head([system, user]) == [system]
    assert shared_head([system, {"role": "developer", "content": "x"}, user])[1]["role"] \
        == "developer"
    # Not a first turn, no system prompt, nothing after it: nothing shared to copy.
    assert shared_head([system, user, {"role": "assistant", "content": "Hello."}, user]) \
        is None
    assert shared_head([user]) is None and shared_head([system]) is None
    assert shared_head("text") is None
    # r0 alone holds the 6-cut head and got 5 of 6 recent requests (mean 2): copy it to
    # the runtime without it that got the fewest.
    assert copy_target([6, 0, 0], [5.0, 1.0, 0.0], 6, 0, 0.2) == 2
    assert copy_target([6, 0, 0], [2.0, 2.0, 2.0], 6, 0, 0.2) is None  # its share
    assert copy_target([6, 6, 0], [5.0, 1.0, 0.0], 6, 1, 0.2) is None  # r1, chosen, has room
    assert copy_target([3, 0, 0], [5.0, 1.0, 0.0], 6, 0, 0.2) is None  # not held: new
    assert copy_target([6, 6, 6], [9.0, 9.0, 0.0], 6, 0, 0.2) is None  # held everywhere
    assert cuts_within(0, 256) == 0 and cuts_within(16, 256) == 1
    assert cuts_within(255, 256) == 4 and cuts_within(256, 256) == 5
    assert cuts_within(1000, 256) == 7


def test_a_claim_is_held_once_until_it_ends(index):
    assert index.claim("r1:abc", 30.0)
    assert not index.claim("r1:abc", 30.0)
    assert index.claim("r2:abc", 0.05)
    wait_until(lambda: index.claim("r2:abc", 30.0), timeout=10, interval=0.02)


def test_a_hot_system_prompt_is_copied_and_its_next_users_split(start_sim, start_gateway,
                                                                 redis_server):
    sims = [start_sim("--instant") for _ in range(3)]
    gateway = start_gateway(gateway_yaml(sims, model_extra=["routing: prefix_index"],
                                         ratelimit={"store": redis_server.url}),
                            "--log-level", "info")
    system = {"role": "system", "content": "The hot prompt. " + SYSTEM}
    before = _served(sims)

    def first_turn(user):
        answer = _chat(gateway, [system, {"role": "user", "content": f"User {user} asks."}])
        return answer["usage"].get("prompt_tokens_details", {}).get("cached_tokens", 0)

    def copies():
        return [line for line in gateway.output().splitlines()
                if "copied a shared prefix" in line]

    cached = [first_turn(user) for user in range(3)]  # the third finds its holder busy
    wait_until(copies, timeout=30, interval=0.05)
    cached += [first_turn(user) for user in range(3, 9)]
    # Nobody after the first paid for the system prompt: the copies were the gateway's.
    assert cached[0] == 0 and cached[1] > 0 and set(cached[1:]) == {cached[1]}, cached
    grew = [after - start for after, start in zip(_served(sims), before)]
    assert sum(grew) == 9 + len(copies()), (grew, copies())
    assert sorted(grew)[-2] >= 2, grew  # the users split over the prompt's holders
