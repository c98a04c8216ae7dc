"""Reload while serving: on SIGHUP or a changed file, the new config is checked first and then
served by new workers, with no request failing; a bad file is refused and the old one serves.
Runtimes the change adds or removes are started and stopped (issue 15)."""

import os
import re
import signal

import openai
import pytest
import requests

from inferegator.store.store import Store
from tests.gateway_fixtures import UNLIMITED
from tests.support.processes import free_port, wait_until, worker_pids
from tests.support.steady_load import SteadyLoad

pytestmark = pytest.mark.slow


def model_yaml(model_id, sims, price, routing_extra=""):
    backends = ", ".join(f"{{type: sglang, url: '{sim.url}', model: sim-model}}" for sim in sims)
    return (f"  - id: {model_id}\n"
            f"    pricing: {{prompt: {price[0]}, completion: {price[1]}}}\n"
            f"    capabilities: [chat, completions, streaming]\n{routing_extra}"
            f"    backends: [{backends}]\n")


def config_yaml(storage, *models, runtimes="", watch=False):
    """The file watch is off unless asked for: a test sending SIGHUP gets one reload."""
    limits = "".join(f"  {k}: {v}\n" for k, v in UNLIMITED.items())
    return (f"storage: '{storage}'\nserver:\n  health_check_interval_s: 0.5\n"
            f"  graceful_timeout_s: 20\n  reload_on_change: {str(watch).lower()}\n"
            f"ratelimit:\n{limits}{runtimes}models:\n" + "".join(models))


def rewrite(gateway, text):
    with open(gateway.config_path, "w") as f:
        f.write(text)


def reloads_done(gateway):
    return gateway.output().count("inferegator.serve: reloaded")


def ledger_row(storage, request_id):
    store = Store(storage)
    try:
        rows = store.db.query("SELECT model, backend, prompt_tokens, completion_tokens, "
                              "cost_usd FROM usage_ledger WHERE request_id = ?", (request_id,))
        return rows[0] if rows else None
    finally:
        store.db.close()


def test_reload_under_load_adds_a_model_removes_a_backend_and_changes_a_price(
        start_sim, start_gateway, tmp_path):
    fast = ("--decode-ms-per-token", "4")
    sim_a, sim_b = start_sim(*fast), start_sim(*fast)
    storage = f"sqlite:///{tmp_path}/reload.db"
    gateway = start_gateway(config_yaml(storage, model_yaml("acme/chat", [sim_a, sim_b],
                                                            (1.0, 2.0))),
                            "--log-level", "info", storage=storage)
    master = gateway.proc.pid
    old_workers = set(worker_pids(master))
    with SteadyLoad(gateway.url + "/v1", gateway.key, "acme/chat", threads=6) as load:
        load.wait_answers(20)
        # acme/chat loses sim-b and changes its price; acme/new is served by sim-b
        rewrite(gateway, config_yaml(storage, model_yaml("acme/chat", [sim_a], (5.0, 7.0)),
                                     model_yaml("acme/new", [sim_b], (1.0, 1.0))))
        os.kill(master, signal.SIGHUP)
        wait_until(lambda: reloads_done(gateway) == 1, timeout=60, interval=0.1)
        assert not old_workers & set(worker_pids(master))  # every worker is a new one
        load.wait_answers(20)
    assert load.failures == [], load.failures[:5]
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0)
    assert {m.id for m in client.models.list()} == {"acme/chat", "acme/new"}
    raw = client.chat.completions.with_raw_response.create(
        model="acme/chat", messages=[{"role": "user", "content": "price?"}], max_tokens=4)
    usage = raw.parse().usage
    row = wait_until(lambda: ledger_row(storage, raw.headers["x-request-id"]), timeout=10)
    assert row["backend"] == f"sglang:{sim_a.url}"  # the removed backend gets nothing
    assert row["cost_usd"] == pytest.approx(
        (usage.prompt_tokens * 5.0 + usage.completion_tokens * 7.0) / 1e6)
    assert client.chat.completions.create(
        model="acme/new", messages=[{"role": "user", "content": "hi"}]).choices


def test_an_invalid_file_is_refused_and_the_old_config_keeps_serving(start_sim, start_gateway,
                                                                   tmp_path):
    sim = start_sim("--instant")
    storage = f"sqlite:///{tmp_path}/refused.db"
    good = config_yaml(storage, model_yaml("acme/chat", [sim], (1.0, 2.0)), watch=True)
    gateway = start_gateway(good, "--log-level", "info", storage=storage)
    master = gateway.proc.pid
    workers = set(worker_pids(master))
    bad = config_yaml(storage, model_yaml("acme/chat", [sim], (1.0, 2.0),
                                          "    routing: cache_aware\n"
                                          "    routing_options: {virtual_nodez: 3}\n"),
                      watch=True)
    rewrite(gateway, bad)  # the watch sends the master its SIGHUP
    wait_until(lambda: "reload refused" in gateway.output(), timeout=30, interval=0.1)
    # the same words check-config has for the file
    assert "routing_options: unknown option(s) virtual_nodez" in gateway.output()
    with SteadyLoad(gateway.url + "/v1", gateway.key, "acme/chat", threads=2) as load:
        load.wait_answers(10)
    assert load.failures == []
    # no worker was replaced (once check-config's child, also the master's, is gone)
    wait_until(lambda: set(worker_pids(master)) == workers, timeout=15, interval=0.1)
    assert reloads_done(gateway) == 0
    # a file edited into shape again is taken, on its change alone (no SIGHUP)
    rewrite(gateway, good.replace("prompt: 1.0, completion: 2.0", "prompt: 3.0, completion: 2.0"))
    wait_until(lambda: reloads_done(gateway) == 1, timeout=60, interval=0.1)


def test_runtimes_added_and_removed_by_a_reload_are_started_and_stopped(start_gateway,
                                                                       tmp_path):
    storage = f"sqlite:///{tmp_path}/runtimes.db"
    ports = {"sim-a": free_port(), "sim-b": free_port()}

    def runtime(name):
        port = ports[name]
        return (f"  - {{name: {name}, command: inferegator sim --instant --port {port}, "
                f"health: 'http://127.0.0.1:{port}/health'}}\n")

    class Url:  # a backend on a runtime's port
        def __init__(self, name):
            self.url = f"http://127.0.0.1:{ports[name]}"

    def yaml(name):
        return config_yaml(storage, model_yaml("acme/chat", [Url(name)], (1.0, 1.0)),
                           runtimes="runtimes:\n" + runtime(name))

    gateway = start_gateway(yaml("sim-a"), "--log-level", "info", storage=storage)

    def pid_of(name):
        found = re.findall(rf"runtime {name} started \(pid (\d+)\)", gateway.output())
        return int(found[-1]) if found else None

    def health(name):
        try:
            return requests.get(Url(name).url + "/health", timeout=1).status_code
        except requests.RequestException:
            return None

    wait_until(lambda: health("sim-a") == 200, timeout=30, interval=0.1)
    first = pid_of("sim-a")
    rewrite(gateway, yaml("sim-b"))
    os.kill(gateway.proc.pid, signal.SIGHUP)
    try:
        wait_until(lambda: reloads_done(gateway) == 1, timeout=60, interval=0.1)
    except TimeoutError:
        raise AssertionError(gateway.output()) from None
    try:
        wait_until(lambda: health("sim-b") == 200, timeout=30, interval=0.1)
    except TimeoutError:
        raise AssertionError(gateway.output()) from None
    assert health("sim-a") is None
    with pytest.raises(ProcessLookupError):
        os.kill(first, 0)
    assert "runtime sim-a stopped (code 0)" in gateway.output()
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0)
    reply = wait_until(lambda: _answer(client), timeout=30, interval=0.1)
    assert reply.choices[0].message.content


def _answer(client):
    try:
        return client.chat.completions.create(model="acme/chat",
                                              messages=[{"role": "user", "content": "hi"}])
    except openai.APIStatusError:
        return None  # sim-b not yet seen healthy by the new worker
