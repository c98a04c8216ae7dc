"""Hostile requests cannot stop billing, slip past limits, take a model offline or crash a
route: each test is one finding of the hardening review, through a real gateway."""

import json
import re
import socket

import pytest
import requests

from inferegator.store.store import Store
from tests.gateway_fixtures import MODEL, gateway_yaml, provision
from tests.support.processes import wait_until

GOOD = {"model": MODEL, "messages": [{"role": "user", "content": "Bill me."}], "max_tokens": 4}
OPENAI_TYPES = {"invalid_request_error", "server_error", "insufficient_quota", "requests",
                "tokens"}


def post(gateway, path, raw, key=None, headers=None):
    """POST raw bytes as JSON; the response."""
    return requests.post(gateway.url + path, data=raw, timeout=30, headers={
        "Authorization": f"Bearer {key or gateway.key}", "Content-Type": "application/json",
        **(headers or {})})


def assert_openai_error(resp, status, code=None):
    assert resp.status_code == status, resp.text[:300]
    assert resp.headers["content-type"].startswith("application/json")
    error = (resp.json() if callable(resp.json) else resp.json)["error"]  # requests | falcon
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] in OPENAI_TYPES, error
    if code is not None:
        assert error["code"] == code, error
    return error


def ledger(storage, where="1 = 1", params=()):
    store = Store(storage)
    try:
        return store.db.query(f"SELECT * FROM usage_ledger WHERE {where} ORDER BY id", params)
    finally:
        store.db.close()


def test_a_lone_surrogate_model_cannot_wedge_the_ledger_or_budgets(start_sim, start_gateway):
    """Finding 1: a "\\ud800" model id stopped the worker's ledger, and budgets with it."""
    sim = start_sim("--instant")
    gateway = start_gateway(gateway_yaml([sim]))
    poison = b'{"model": "\\ud800", "messages": [{"role": "user", "content": "x"}]}'
    resp = post(gateway, "/v1/chat/completions", poison)
    assert resp.status_code in (400, 404) and resp.json()["error"]["code"] in (
        "invalid_json", "model_not_found")  # refused at the edge: 400 invalid_json
    for _ in range(40):
        assert post(gateway, "/v1/chat/completions", json.dumps(GOOD)).status_code == 200
    rows = wait_until(lambda: (r := ledger(gateway.storage)) and len(r) >= 41 and r,
                      timeout=10)
    assert len(rows) == 41  # the refused request is recorded as rejected, nothing is held
    assert [r["status"] for r in rows].count("rejected") == 1

    # A budgeted key is refused once its spend reaches the budget, poison or not.
    key, _ = provision(gateway.storage, email="budget@example.com", monthly_budget_usd=0.0002)
    assert post(gateway, "/v1/chat/completions", poison, key=key).status_code == 400
    answers = []

    def refused():
        resp = post(gateway, "/v1/chat/completions", json.dumps(GOOD), key=key)
        answers.append(resp.status_code)
        return resp.status_code == 429 and resp.json()["error"]["code"] == "insufficient_quota"

    wait_until(refused, timeout=20, interval=0.05)
    spent = sum(r["cost_usd"] for r in ledger(gateway.storage, "key_id = ?",
                                              (ledger_key_id(gateway.storage, key),)))
    # Overrun is bounded by the spend cache (1 s) and flush interval, never unbounded.
    assert answers.count(200) <= 60 and spent >= 0.0002


def ledger_key_id(storage, key):
    store = Store(storage)
    try:
        return store.accounts.find_key(key).id
    finally:
        store.db.close()


def in_process(gateway, path, raw, key):
    """POST raw bytes to an in-process gateway (inferegator.testing); falcon's Result."""
    return gateway.client.simulate_post(path, body=raw, headers={
        "Authorization": f"Bearer {key}", "Content-Type": "application/json"})


def test_completions_token_limit_reads_the_prompt_not_messages(make_gateway):
    """Finding 2: `"messages": []` beside a long prompt skipped the token limit."""
    gateway = make_gateway("ratelimit: {tokens_per_minute: 1000}\n")
    key, _ = gateway.user()
    body = {"model": MODEL, "prompt": "word " * 6400, "messages": [], "max_tokens": 5}
    for _ in range(3):
        error = assert_openai_error(in_process(gateway, "/v1/completions", json.dumps(body),
                                               key), 429, "rate_limit_exceeded")
        assert error["type"] == "tokens"
    # Every prompt shape is counted, token-id lists of lists included.
    big = {"model": MODEL, "prompt": [[7] * 600, [8] * 600], "max_tokens": 2}
    assert_openai_error(in_process(gateway, "/v1/completions", json.dumps(big), key), 429)


def test_a_request_that_crashes_runtimes_does_not_open_their_circuits(start_sim,
                                                                      start_gateway):
    """Finding 3: eight requests a runtime answers with 500 opened every circuit."""
    sims = [start_sim("--instant"), start_sim("--instant")]
    gateway = start_gateway(gateway_yaml(sims, extra="resilience: {breaker_failures: 2, "
                                                      "breaker_open_s: 60}\n"))
    # Valid to the gateway; the simulator fails on it (a text part that is not a string).
    poison = dict(GOOD, messages=[{"role": "user", "content": [{"type": "text", "text": 5}]}])
    for _ in range(8):
        error = assert_openai_error(post(gateway, "/v1/chat/completions", json.dumps(poison)),
                                    502, "upstream_error")
        assert "sequence item" not in error["message"]  # the runtime's exception text
        assert error["type"] == "server_error"
    for _ in range(4):
        assert post(gateway, "/v1/chat/completions", json.dumps(GOOD)).status_code == 200
    admin, _ = provision(gateway.storage, email="ops@example.com", role="admin")
    states = requests.get(gateway.url + "/v1/admin/backends", timeout=10,
                          headers={"Authorization": f"Bearer {admin}"}).json()["data"]
    assert [s["circuit"] for s in states] == ["closed", "closed"]


HOSTILE_BODIES = [
    ("/v1/chat/completions", b'{"model": "m", "messages": ' + b"[" * 100_000 + b"]" * 100_000
     + b"}", 400),
    ("/v1/completions", b"[" * 100_000 + b"]" * 100_000, 400),
    ("/v1/admin/users", b'{"email": ' + b"[" * 50_000 + b"]" * 50_000 + b"}", 400),
    ("/v1/completions", json.dumps({"model": MODEL, "prompt": "hi", "max_tokens": 2,
                                    "messages": ["str"]}).encode(), 200),
    ("/v1/chat/completions", b'{"model": "%s", "messages": [{"role": "user", "content": "x"}],'
     b' "max_tokens": %s}' % (MODEL.encode(), b"9" * 4300), 400),
    ("/v1/admin/keys", b'{"user_id": "dev@example.com", "name": "k", "monthly_budget_usd": 1'
     + b"0" * 400 + b"}", 400),
    ("/v1/admin/users", b'{"email": "a@example.com", "password": "\\ud800\\ud800\\ud800'
     b'\\ud800\\ud800\\ud800\\ud800\\ud800\\ud800\\ud800\\ud800\\ud800"}', 400),
    ("/v1/admin/users", b'{"email": "\\udfff@example.com", "password": "long enough pw"}', 400),
    ("/v1/me/keys", b'{"name": "\\ud800"}', 400),
    ("/v1/admin/keys", b'{"user_id": "\\ud800", "name": "k"}', 400),
]


def test_malformed_bodies_get_400_never_500(make_gateway):
    """Finding 6: deep nesting, lone surrogates, huge numbers and odd shapes answered 500."""
    gateway = make_gateway()
    gateway.user(email="dev@example.com")
    admin, _ = gateway.user(email="root@example.com", role="admin")
    for path, raw, status in HOSTILE_BODIES:
        resp = in_process(gateway, path, raw, admin)
        if status == 200:
            assert resp.status_code == 200, (path, resp.text[:300])
        else:
            assert_openai_error(resp, status)
    # The worker is alive and a paired surrogate (an emoji) is still fine.
    emoji = b'{"model": "%s", "messages": [{"role": "user", "content": "\\ud83d\\ude00"}]}' % (
        MODEL.encode())
    assert in_process(gateway, "/v1/chat/completions", emoji, admin).status_code == 200


def test_input_is_not_echoed_or_stored_without_bound(make_gateway):
    """Finding 7: a 9.8 MB model id came back as a 29 MB 404 and a 9.8 MB ledger row."""
    gateway = make_gateway()
    key, _ = gateway.user()
    admin, _ = gateway.user(email="root@example.com", role="admin")
    huge = json.dumps({"model": "é" * 4_900_000, "messages": [{"role": "u", "content": "x"}]},
                      ensure_ascii=False).encode()
    for path, raw, who in (
            ("/v1/chat/completions", huge, key),
            ("/v1/admin/users", json.dumps({"email": "x@example.com", "password": "long enough "
                                            "pw", "role": "é" * 1_000_000}), admin),
            ("/v1/admin/users", json.dumps({"é" * 100_000: 1}), admin)):
        resp = in_process(gateway, path, raw, who)
        assert_openai_error(resp, 400)
        assert len(resp.content) < 2048
    rows = gateway.ledger()
    assert len(rows) == 1 and len(rows[0]["model"]) <= 256


def test_a_chunked_request_body_is_read(start_sim, start_gateway):
    """Finding 10: a Transfer-Encoding: chunked body was read as empty (400 invalid_json)."""
    sim = start_sim("--instant")
    gateway = start_gateway(gateway_yaml([sim]))
    payload = json.dumps(GOOD).encode()

    def chunks():
        for i in range(0, len(payload), 16):
            yield payload[i:i + 16]

    resp = requests.post(gateway.url + "/v1/chat/completions", data=chunks(), timeout=30,
                         headers={"Authorization": f"Bearer {gateway.key}",
                                  "Content-Type": "application/json"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["object"] == "chat.completion"


def test_a_body_that_never_arrives_gets_408(start_sim, start_gateway):
    """Slow bodies are timed out by the app: 408 in OpenAI's shape, the worker free again."""
    sim = start_sim("--instant")
    gateway = start_gateway(gateway_yaml([sim], server=["body_timeout_s: 1"]))
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                     b"Authorization: Bearer " + gateway.key.encode() + b"\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 500\r\n\r\n{\"mo")
        answer = b""
        while b"\r\n\r\n" not in answer or len(answer.partition(b"\r\n\r\n")[2]) < int(
                re.search(rb"(?i)content-length: (\d+)", answer).group(1)):
            data = sock.recv(65536)
            assert data, answer  # closed before the whole answer
            answer += data
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:200]
    assert json.loads(body)["error"]["code"] == "request_timeout"


@pytest.mark.parametrize("dialect", ["sqlite", "postgresql"])
def test_a_row_the_database_refuses_is_dead_lettered_and_the_rest_written(dialect, tmp_path,
                                                                          request):
    """The ledger retries a refused batch row by row; only the refused row is set aside."""
    if dialect == "sqlite":
        url = f"sqlite:///{tmp_path}/ledger.db"
    else:
        url = request.getfixturevalue("postgres").create_database()
    store = Store(url, ledger_journal=str(tmp_path / "journal"))
    try:
        if dialect == "sqlite":
            store.db.execute("CREATE TRIGGER poison BEFORE INSERT ON usage_ledger "
                             "WHEN NEW.model = 'poison' BEGIN SELECT RAISE(ABORT, 'no'); END")
        else:
            store.db.execute("ALTER TABLE usage_ledger ADD CONSTRAINT poison "
                             "CHECK (model <> 'poison')")
        for i, model in enumerate(["a", "b", "poison", "c", "\ud800"]):
            store.ledger.record({"request_id": f"r{i}", "key_id": None, "user_id": None,
                                 "model": model, "backend": None, "prompt_tokens": 1,
                                 "completion_tokens": 2, "cached_tokens": 0, "cost_usd": 0.0,
                                 "status": "completed", "http_status": 200, "latency_ms": 1.0,
                                 "ttft_ms": None, "created": 1.7e9})
        assert store.ledger.flush() == 4
        assert store.ledger.dead_letters == 1 and store.ledger.pending == 0
        rows = store.db.query("SELECT request_id, model FROM usage_ledger ORDER BY id")
        assert [r["request_id"] for r in rows] == ["r0", "r1", "r3", "r4"]
        assert rows[3]["model"] == "?"  # the surrogate replaced, the usage kept
        assert list((tmp_path / "journal").iterdir()) == []  # nothing left to replay
    finally:
        store.db.close()
