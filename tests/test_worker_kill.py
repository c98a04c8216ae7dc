"""A gateway worker killed with SIGKILL under load loses no ledger row of an answered request.

Eight clients (half JSON, half streams), each request with its own X-Request-ID, keep a
one-worker gateway in front of an instant simulator busy; meanwhile the worker is killed
with SIGKILL and gunicorn starts a new one. After a graceful stop, every request whose
answer reached its client (a JSON body that parsed, a stream that got ``data: [DONE]``,
or a 4xx error) has exactly one row, and no request id has two. Requests cut by the kill
may or may not have a row.
"""

import json
import os
import signal
import threading
import time
from collections import Counter

import requests

from inferegator.store.store import Store
from tests.gateway_fixtures import MODEL, gateway_yaml
from tests.support.processes import wait_until, worker_pids

CLIENTS = 8
KILL_AFTER_S = 1.5
RUN_S = 4.0
MESSAGES = [{"role": "user", "content": "Count me, even if my worker dies."}]


def ask(session, gateway, rid: str, stream: bool) -> str:
    """'answered', 'error' (no complete answer) for one request."""
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4}
    if stream:
        body["stream"] = True
    with session.post(gateway.url + "/v1/chat/completions", json=body, stream=stream,
                      timeout=10, headers={"Authorization": f"Bearer {gateway.key}",
                                           "X-Request-ID": rid}) as resp:
        if 400 <= resp.status_code < 500:
            resp.content  # noqa: B018  (read to the end: the answer reached the client)
            return "answered"
        if resp.status_code != 200:
            return "error"
        if not stream:
            return "answered" if json.loads(resp.content)["choices"] else "error"
        for line in resp.iter_lines():
            if line == b"data: [DONE]":
                return "answered"
        return "error"


def test_sigkilled_worker_loses_no_row_of_an_answered_request(start_sim, start_gateway,
                                                              tmp_path):
    storage = f"sqlite:///{tmp_path}/kill.db"
    sim = start_sim("--instant")
    gateway = start_gateway(gateway_yaml([sim]), "--workers", "1", storage=storage)
    (victim,) = wait_until(lambda: worker_pids(gateway.proc.pid), timeout=5)
    answered, errors, stop = [], [], threading.Event()
    killed_at = []  # len(answered) when the worker was killed

    def client(n):
        session = requests.Session()
        i = 0
        while not stop.is_set():
            i += 1
            rid = f"kill-{n}-{i}"
            try:
                result = ask(session, gateway, rid, stream=n % 2 == 1)
            except (requests.RequestException, ValueError, KeyError):
                result = "error"
                session.close()
                session = requests.Session()
            (answered if result == "answered" else errors).append(rid)
        session.close()  # an idle keep-alive connection would hold up the graceful stop

    started = time.monotonic()
    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: time.monotonic() - started >= KILL_AFTER_S and len(answered) >= 20,
                   timeout=30)
        os.kill(victim, signal.SIGKILL)
        killed_at.append(len(answered))
        # gunicorn replaces it; the clients keep going until it has answered some too.
        wait_until(lambda: [p for p in worker_pids(gateway.proc.pid) if p != victim],
                   timeout=15)
        wait_until(lambda: time.monotonic() - started >= RUN_S
                   and len(answered) >= killed_at[0] + 20, timeout=30)
    finally:
        stop.set()
        for t in threads:
            t.join()
    os.kill(gateway.proc.pid, signal.SIGTERM)  # graceful: the new worker flushes and exits
    gateway.proc.wait(timeout=60)
    store = Store(storage)
    try:
        counts = Counter(r["request_id"] for r in store.db.query(
            "SELECT request_id FROM usage_ledger WHERE request_id LIKE 'kill-%'"))
    finally:
        store.db.close()
    missing = sorted(set(answered) - set(counts))
    twice = {rid: n for rid, n in counts.items() if n > 1}
    report = (f"{len(answered)} answered ({killed_at[0]} before the kill), "
              f"{len(errors)} without an answer; {sum(counts.values())} rows written for "
              f"{len(counts)} request ids; {len(set(answered) & set(counts))} of the "
              f"{len(answered)} answered have a row, {len(missing)} missing "
              f"(e.g. {missing[:5]}), {len(twice)} ids twice")
    print(report)
    assert len(answered) > killed_at[0]  # the replacement worker served
    assert not twice, report
    assert not missing, report
