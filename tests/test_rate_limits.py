"""Per-key limits that hold exactly, over real Redis, gunicorn workers and the openai SDK."""

import subprocess
import time

import openai
import pytest
import requests

from inferegator.gateway.request import estimate_prompt_tokens
from inferegator.store.store import Store
from tests.gateway_fixtures import MODEL, gateway_yaml, provision, sdk
from tests.support.processes import GatewayServer, wait_until
from tests.support.rawhttp import post_many

MESSAGES = [{"role": "user", "content": "Count me."}]
HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
           "x-ratelimit-reset-requests", "x-ratelimit-limit-tokens",
           "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")


def chat_body(max_tokens=5, **extra):
    return {"model": MODEL, "messages": MESSAGES, "max_tokens": max_tokens, **extra}


def reservation(body):
    return estimate_prompt_tokens("chat", body) + body["max_tokens"]


def two_instances(start_gateway, tmp_path, sim, redis_url, **limits):
    """Two gateways, two workers each, one Redis, one store, one key."""
    yaml_text = gateway_yaml([sim], ratelimit={"store": redis_url, **limits})
    first = start_gateway(yaml_text, "--workers", "2",
                          storage=f"sqlite:///{tmp_path}/shared.db")
    second = GatewayServer(tmp_path, f"storage: '{first.storage}'\n" + yaml_text,
                           "--workers", "2")
    return first, second


def spread(gateways, body, count, key):
    """count concurrent requests, alternating between the gateways; returns answers."""
    import threading

    results = [None] * len(gateways)
    share = [list(range(i, count, len(gateways))) for i in range(len(gateways))]

    def run(i):
        results[i] = post_many(gateways[i].port, "/v1/chat/completions",
                               [body] * len(share[i]), {"Authorization": f"Bearer {key}"})

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(gateways))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return [a for r in results for a in r]


def test_requests_limit_is_exact_across_instances_and_workers(start_sim, start_gateway,
                                                              tmp_path, redis_server):
    n = 25
    sim = start_sim("--instant")
    first, second = two_instances(start_gateway, tmp_path, sim, redis_server.url,
                                  requests_per_minute=n)
    try:
        answers = spread([first, second], chat_body(), 4 * n, first.key)
    finally:
        second.stop()
    statuses = [a[0] for a in answers]
    assert statuses.count(200) == n and statuses.count(429) == 3 * n
    assert sim.metric("num_requests_total") == n
    refused = [a for a in answers if a[0] == 429][0]
    assert b'"code":"rate_limit_exceeded"' in refused[2].replace(b" ", b"")
    assert b'"type":"requests"' in refused[2].replace(b" ", b"")
    assert 0 < int(refused[1]["retry-after-ms"]) <= 60_000
    assert 1 <= int(refused[1]["retry-after"]) <= 60


def test_tokens_limit_is_exact_and_unused_tokens_come_back(start_sim, start_gateway, tmp_path,
                                                           redis_server):
    body = chat_body(max_tokens=40)
    per_request = reservation(body)
    k = 6
    # Slow answers (>= 0.6 s): all 4k requests arrive while the first k still hold their
    # reservations, so what is tested is the reservation, not an early refund.
    sim = start_sim("--decode-ms-per-token", "200", "--output-tokens-min", "3",
                    "--output-tokens-max", "8")
    first, second = two_instances(start_gateway, tmp_path, sim, redis_server.url,
                                  tokens_per_minute=k * per_request)
    try:
        answers = spread([first, second], body, 4 * k, first.key)
        admitted = [a for a in answers if a[0] == 200]
        assert len(admitted) == k  # each reserved per_request; k of them fill the limit
        refused = [a for a in answers if a[0] == 429][0]
        assert b'"type": "tokens"' in refused[2] or b'"type":"tokens"' in refused[2]
        import json

        used = sum(json.loads(a[2])["usage"]["total_tokens"] for a in admitted)
        assert used < k * per_request  # they answered in fewer tokens than reserved...
        resp = requests.post(second.url + "/v1/chat/completions", json=body, timeout=10,
                             headers={"Authorization": f"Bearer {first.key}"})
        assert resp.status_code == 200  # ...and the difference was given back
        remaining = int(resp.headers["x-ratelimit-remaining-tokens"])
        assert remaining == k * per_request - used - per_request
    finally:
        second.stop()


def test_the_sdk_waits_as_told_and_then_succeeds(start_sim, start_gateway):
    sim = start_sim("--instant")
    gateway = start_gateway(gateway_yaml([sim], ratelimit={"requests_per_minute": 2,
                                                           "window_s": 2}))
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key)  # default retries
    for _ in range(2):
        client.chat.completions.create(**chat_body())
    refused = requests.post(gateway.url + "/v1/chat/completions", json=chat_body(), timeout=10,
                            headers={"Authorization": f"Bearer {gateway.key}"})
    assert refused.status_code == 429
    wait_ms = int(refused.headers["retry-after-ms"])
    assert 0 < wait_ms <= 2000 and refused.headers["retry-after"] in ("1", "2")
    started = time.monotonic()
    reply = client.chat.completions.create(**chat_body())
    waited = time.monotonic() - started
    assert reply.choices[0].message.content
    assert 0.2 < waited < 5.0  # it waited for the window, not the SDK's own long backoff
    assert sim.metric("num_requests_total") == 3


def test_a_stream_that_would_break_the_token_limit_is_refused_before_any_byte(start_sim,
                                                                             start_gateway):
    sim = start_sim("--instant")
    body = chat_body(max_tokens=50, stream=True)
    gateway = start_gateway(gateway_yaml([sim], ratelimit={
        "tokens_per_minute": reservation(body) + 10}))
    client = sdk(gateway)
    list(client.chat.completions.create(**body))  # fits
    resp = requests.post(gateway.url + "/v1/chat/completions", json=body, stream=True,
                         timeout=10, headers={"Authorization": f"Bearer {gateway.key}"})
    assert resp.status_code == 429
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json()["error"]["type"] == "tokens"
    assert sim.metric("num_requests_total") == 1  # the second never reached the runtime
    too_big = chat_body(max_tokens=10_000, stream=True)
    with pytest.raises(openai.RateLimitError) as err:
        list(client.chat.completions.create(**too_big))
    assert "Request too large" in err.value.message
    assert err.value.response.headers["x-should-retry"] == "false"


def test_headers_on_json_stream_and_error_responses(start_sim, start_gateway):
    sim = start_sim("--instant")
    gateway = start_gateway(gateway_yaml([sim], ratelimit={"requests_per_minute": 10,
                                                           "tokens_per_minute": 100_000}))
    auth = {"Authorization": f"Bearer {gateway.key}"}
    seen = []
    for body in (chat_body(), chat_body(stream=True), chat_body(),
                 {**chat_body(), "regex": "(unclosed"}):  # the runtime refuses it (400)
        resp = requests.post(gateway.url + "/v1/chat/completions", json=body, headers=auth,
                             timeout=10)
        assert all(h in resp.headers for h in HEADERS), resp.headers
        seen.append(resp)
    assert [r.status_code for r in seen] == [200, 200, 200, 400]
    assert seen[1].headers["content-type"].startswith("text/event-stream")
    remaining = [int(r.headers["x-ratelimit-remaining-requests"]) for r in seen]
    assert remaining == [9, 8, 7, 6]  # exactly one per request
    assert all(r.headers["x-ratelimit-limit-requests"] == "10" for r in seen)
    assert all(r.headers["x-ratelimit-limit-tokens"] == "100000" for r in seen)
    assert seen[0].headers["x-ratelimit-reset-requests"].endswith("s")
    tokens = [int(r.headers["x-ratelimit-remaining-tokens"]) for r in seen]
    assert tokens[0] == 100_000 - reservation(chat_body())
    for _ in range(6):
        requests.post(gateway.url + "/v1/chat/completions", json=chat_body(), headers=auth,
                      timeout=10)
    refused = requests.post(gateway.url + "/v1/chat/completions", json=chat_body(),
                            headers=auth, timeout=10)
    assert refused.status_code == 429
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert all(h in refused.headers for h in HEADERS)


def test_per_model_limits_apply_on_top_of_the_keys(start_sim, start_gateway):
    sim = start_sim("--instant")
    extra = f"  models:\n    {MODEL}: {{requests_per_minute: 2}}\n"
    yaml_text = gateway_yaml([sim]).replace("ratelimit:\n", "ratelimit:\n" + extra)
    gateway = start_gateway(yaml_text)
    client = sdk(gateway)
    for _ in range(2):
        client.chat.completions.create(**chat_body())
    with pytest.raises(openai.RateLimitError) as err:
        client.chat.completions.create(**chat_body())
    assert err.value.code == "rate_limit_exceeded"


def test_a_spent_monthly_budget_is_insufficient_quota(start_sim, start_gateway, tmp_path):
    sim = start_sim("--instant")
    storage = f"sqlite:///{tmp_path}/budget.db"
    gateway = start_gateway(gateway_yaml([sim]), storage=storage)
    key, _ = provision(storage, email="thrifty@example.com", monthly_budget_usd=0.00001)
    client = sdk(gateway, key=key)
    client.chat.completions.create(**chat_body(max_tokens=20))  # costs more than the budget

    def refused():
        try:
            client.chat.completions.create(**chat_body())
            return False
        except openai.RateLimitError as exc:
            # It cannot succeed by retrying: the SDK is told not to (x-should-retry: false).
            return exc.code == "insufficient_quota" and \
                exc.response.headers.get("x-should-retry") == "false"

    wait_until(refused, timeout=5, interval=0.1)  # ledger flush + spend cache, ~1.2 s
    store = Store(storage)
    try:
        spent = store.db.query("SELECT SUM(cost_usd) AS s FROM usage_ledger WHERE key_id IN "
                               "(SELECT id FROM api_keys WHERE prefix = ?)",
                               (key[:11] + "…",))[0]["s"]
    finally:
        store.db.close()
    assert spent >= 0.00001


def test_memory_store_refuses_several_workers(tmp_path):
    from tests.support.processes import BIN, free_port

    config = tmp_path / "two.yaml"
    config.write_text(f"storage: 'sqlite:///{tmp_path}/x.db'\n"
                      "models:\n  - id: m\n    backends: [{type: sglang, url: 'http://x:1'}]\n")
    result = subprocess.run([f"{BIN}/inferegator", "serve", "--config", str(config),
                             "--workers", "2", "--bind", f"127.0.0.1:{free_port()}"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "ratelimit.store is 'memory'" in result.stderr and "Redis" in result.stderr


@pytest.mark.parametrize("mode,status", [("closed", 503), ("open", 200)])
def test_redis_unreachable_fails_closed_or_open_as_configured(start_sim, start_gateway, mode,
                                                              status):
    from tests.support.processes import free_port

    sim = start_sim("--instant")
    gateway = start_gateway(gateway_yaml([sim], ratelimit={
        "store": f"redis://127.0.0.1:{free_port()}/0", "on_store_error": mode}))
    resp = requests.post(gateway.url + "/v1/chat/completions", json=chat_body(), timeout=10,
                         headers={"Authorization": f"Bearer {gateway.key}"})
    assert resp.status_code == status
    if status == 503:
        assert resp.json()["error"]["code"] == "rate_limiter_unavailable"
    else:
        assert "rate-limit store unreachable" in gateway.output()
