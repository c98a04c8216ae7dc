"""Health, circuit breakers, retries and drains against real gateways and simulators."""

import json
import os
import signal
import threading
import time

import openai
import requests

from inferegator.config import parse_config
from inferegator.factory import build_gateway
from inferegator.store.store import Store
from tests.gateway_fixtures import MODEL, gateway_yaml, provision, sdk
from tests.support.processes import wait_until

MESSAGES = [{"role": "user", "content": "hello"}]


def resilient_yaml(sims, **resilience):
    settings = {"breaker_failures": 3, "breaker_open_s": 1.0, "unhealthy_after": 2,
                "healthy_after": 1, **resilience}
    text = gateway_yaml(sims, backend_extra=", read_timeout_s: 0.5, connect_timeout_s: 0.5",
                        server=["load_poll_interval_s: 0.2"])
    text = text.replace("health_check_interval_s: 0.5", "health_check_interval_s: 0.2")
    return text + "resilience:\n" + "".join(f"  {k}: {v}\n" for k, v in settings.items())


def admin_key(gateway):
    key, _ = provision(gateway.storage, email="ops@example.com", role="admin")
    return key


def backend_states(gateway, key):
    resp = requests.get(gateway.url + "/v1/admin/backends", timeout=5,
                        headers={"Authorization": f"Bearer {key}"})
    assert resp.status_code == 200, resp.text
    return {b["url"]: b for b in resp.json()["data"]}


def ask(gateway, **kw):
    return sdk(gateway, timeout=10).chat.completions.create(model=MODEL, messages=MESSAGES,
                                                             max_tokens=3, **kw)


def test_hanging_runtime_times_out_then_its_circuit_opens_then_recovers(start_sim,
                                                                        start_gateway):
    hung = start_sim("--instant", "--fault-hang-rate", "1.0")
    good = start_sim("--instant")
    gateway = start_gateway(resilient_yaml([hung, good]))
    ops = admin_key(gateway)
    slow = 0
    for _ in range(8):  # round robin: every other request tries the hung runtime first
        started = time.monotonic()
        assert ask(gateway).choices[0].message.content  # failover hides the timeout
        slow += time.monotonic() - started >= 0.45
    assert slow == 3  # three read timeouts, then the circuit opened
    assert backend_states(gateway, ops)[hung.url]["circuit"] == "open"
    for _ in range(4):
        started = time.monotonic()
        ask(gateway)
        assert time.monotonic() - started < 0.45  # no more waiting on the hung runtime
    # Recovery: the runtime comes back healthy on the same port.
    port = hung.port
    hung.stop()
    back = start_sim("--instant", port=port)
    wait_until(lambda: backend_states(gateway, ops)[back.url]["circuit"] == "half_open",
               timeout=10, interval=0.05)
    wait_until(lambda: backend_states(gateway, ops)[back.url]["probe_ok"], timeout=10,
               interval=0.05)
    for _ in range(4):
        ask(gateway)
    state = backend_states(gateway, ops)[back.url]
    assert state["circuit"] == "closed" and state["healthy"]
    assert back.metric("num_requests_total") >= 1  # the half-open trial, then more


def test_killed_runtime_no_client_error_and_circuit_open(start_sim, start_gateway):
    a, b = start_sim("--instant"), start_sim("--instant")
    gateway = start_gateway(resilient_yaml([a, b]))
    ops = admin_key(gateway)
    for _ in range(4):
        ask(gateway)
    a.stop()
    for _ in range(20):
        ask(gateway)  # the refused connection fails over before any byte: no error
    state = backend_states(gateway, ops)[a.url]
    # Out of rotation: by its open circuit (a request met the refusal first) or by its
    # failed probes (the health check did), whichever came first.
    assert state["circuit"] in ("open", "half_open") or state["probe_ok"] is False
    assert not state["healthy"]


def test_a_slow_starter_joins_when_ready_without_blocking_start(start_sim, start_gateway):
    ready = start_sim("--instant")
    starting = start_sim("--instant", "--slow-start-s", "2", ready=False)
    gateway = start_gateway(resilient_yaml([ready, starting]))
    assert requests.get(starting.url + "/health", timeout=5).status_code == 503
    for _ in range(6):
        ask(gateway)  # served while the second runtime is still starting

    def joined():
        ask(gateway)
        return starting.metric("num_requests_total") > 0

    wait_until(joined, timeout=15, interval=0.05)
    assert requests.get(starting.url + "/health", timeout=5).status_code == 200


def test_a_retry_never_mixes_two_backends_bytes_in_one_stream(start_sim, start_gateway):
    dropping = start_sim("--instant", "--fault-drop-rate", "1.0")
    good = start_sim("--instant")
    gateway = start_gateway(resilient_yaml([dropping, good], breaker_failures=1000))
    completed = failed = 0
    for _ in range(10):
        resp = requests.post(gateway.url + "/v1/chat/completions", stream=True, timeout=10,
                             headers={"Authorization": f"Bearer {gateway.key}"},
                             json={"model": MODEL, "messages": MESSAGES, "max_tokens": 30,
                                   "ignore_eos": True, "stream": True})
        events = [line[6:] for line in resp.iter_lines() if line.startswith(b"data: ")]
        chunks = [json.loads(e) for e in events if e != b"[DONE]"]
        content = [c for c in chunks if "error" not in c]
        assert len({c["id"] for c in content}) == 1  # one backend's answer, never two
        if events[-1] == b"[DONE]":
            completed += 1
        else:
            failed += 1
            assert "error" in chunks[-1]  # the stream ends with the error, not a retry
    assert completed and failed
    assert good.metric("num_requests_total") == completed  # nothing was retried there


def test_the_retry_budget_bounds_extra_load(start_sim, start_gateway):
    refusing = start_sim("--instant", "--fault-503-rate", "1.0")
    good = start_sim("--instant")
    no_budget = start_gateway(resilient_yaml([refusing, good], retry_budget_ratio=0,
                                             retry_budget_min_per_s=0, breaker_failures=1000))
    outcomes = []
    for _ in range(6):
        try:
            ask(no_budget)
            outcomes.append("ok")
        except openai.InternalServerError:
            outcomes.append("503")
    assert outcomes.count("503") == 3  # those sent to the refusing runtime first
    with_budget = start_gateway(resilient_yaml([refusing, good], breaker_failures=1000))
    for _ in range(6):
        ask(with_budget)  # retried on the other runtime


def test_drain_and_undrain_at_run_time(start_sim, start_gateway):
    a, b = start_sim("--instant"), start_sim("--instant")
    gateway = start_gateway(resilient_yaml([a, b]))
    ops = admin_key(gateway)
    name = backend_states(gateway, ops)[a.url]["name"]
    auth = {"Authorization": f"Bearer {ops}"}
    resp = requests.post(gateway.url + "/v1/admin/backends/drain", json={"backend": name},
                         headers=auth, timeout=5)
    assert resp.status_code == 200 and resp.json()["data"][0]["drained"]
    before = a.metric("num_requests_total")
    for _ in range(6):
        ask(gateway)
    assert a.metric("num_requests_total") == before
    requests.post(gateway.url + "/v1/admin/backends/undrain", json={"backend": name},
                  headers=auth, timeout=5)
    for _ in range(6):
        ask(gateway)
    assert a.metric("num_requests_total") > before
    bad = requests.post(gateway.url + "/v1/admin/backends/drain", json={"backend": "nope"},
                        headers=auth, timeout=5)
    assert bad.status_code == 404 and bad.json()["error"]["param"] == "backend"
    user = requests.get(gateway.url + "/v1/admin/backends", timeout=5,
                        headers={"Authorization": f"Bearer {gateway.key}"})
    assert user.status_code == 403


def test_a_drain_reaches_every_worker(start_sim, start_gateway, redis_server):
    a, b = start_sim("--instant"), start_sim("--instant")
    text = resilient_yaml([a, b]).replace("ratelimit:\n",
                                          f"ratelimit:\n  store: {redis_server.url}\n")
    gateway = start_gateway(text, "--workers", "2")
    ops = admin_key(gateway)
    name = backend_states(gateway, ops)[a.url]["name"]
    requests.post(gateway.url + "/v1/admin/backends/drain", json={"backend": name},
                  headers={"Authorization": f"Bearer {ops}"}, timeout=5)
    before = a.metric("num_requests_total")

    def all_avoid_a():
        start = a.metric("num_requests_total")
        for _ in range(8):
            requests.post(gateway.url + "/v1/chat/completions", timeout=10,
                          headers={"Authorization": f"Bearer {gateway.key}",
                                   "Connection": "close"},
                          json={"model": MODEL, "messages": MESSAGES, "max_tokens": 2})
        return a.metric("num_requests_total") == start

    wait_until(all_avoid_a, timeout=10, interval=0.05)
    assert a.metric("num_requests_total") >= before


def _connected_to(port: int) -> bool:
    """Has some socket here an established TCP connection to 127.0.0.1:``port``?"""
    with open("/proc/net/tcp") as table:
        rows = [line.split() for line in table.readlines()[1:]]
    return any(row[2] == f"0100007F:{port:04X}" and row[3] == "01" for row in rows)


def test_a_probe_outrun_by_an_answered_request_leaves_the_backend_in(start_sim, tmp_path):
    """A first probe sent while the runtime could not answer yet (booting, on a slow
    machine) times out after a request to it was answered: the probe is stale and must not
    take the backend out; a probe that no answer outran still does."""
    sim = start_sim("--instant")
    config = parse_config(
        "models:\n  - id: m\n    backends:\n"
        f"      - {{type: sglang, url: '{sim.url}', model: sim-model}}\n"
        "resilience: {health_check_timeout_s: 1.0}\n"
        "plugins:\n  console: {enabled: false}\n")
    gateway = build_gateway(config, store=Store(f"sqlite:///{tmp_path}/s.db"),
                            entry_points=False)
    backend = next(iter(gateway.catalog.backends()))
    os.killpg(sim.proc.pid, signal.SIGSTOP)  # connections queue; nothing answers
    try:
        probing = threading.Thread(target=gateway.check_health)
        probing.start()
        wait_until(lambda: _connected_to(sim.port), timeout=10)  # the probe is out
        lease = backend.lease()  # a request the runtime answers meanwhile
        lease.succeeded()
        lease.close()
        probing.join()
        assert backend.probe_ok is None and backend.healthy
        gateway.check_health()  # no answer outran this one
        assert backend.probe_ok is False and not backend.healthy
    finally:
        os.killpg(sim.proc.pid, signal.SIGCONT)
    try:
        gateway.check_health()
        assert backend.probe_ok is True and backend.healthy
    finally:
        gateway.close()
