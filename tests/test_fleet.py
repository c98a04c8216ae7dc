"""A fleet as docs/operations.md deploys it: two gateway replicas (two workers each) behind
a real nginx, sharing one PostgreSQL and one Redis. Limits hold exactly across the fleet,
every answered request has its ledger row, a drain set through one replica is obeyed by
both, a replica killed under load costs no request, and one reloads while the other serves.

Real processes only; waits poll a real signal (a port, a process, a database row).
"""

import itertools
import json
import os
import signal
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from inferegator.gateway.request import estimate_prompt_tokens
from inferegator.store.store import Store
from tests.gateway_fixtures import MODEL, gateway_yaml, provision
from tests.support.nginx import Nginx
from tests.support.processes import BIN, ServerProcess, free_port, wait_until, worker_pids
from tests.support.rawhttp import post_many

MESSAGES = [{"role": "user", "content": "Through the fleet, please."}]
PRICES = {"prompt": 1.0, "completion": 2.0}  # as gateway_yaml sets them
_redis_dbs = itertools.count(1)


class Replica(ServerProcess):
    """`inferegator serve --workers 2` on a given port (a restart keeps its place in the
    balancer's upstream), with the fleet's config and its own ledger journal folder."""

    def __init__(self, folder, name: str, port: int, yaml_text: str):
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}"
        self.address = f"127.0.0.1:{port}"
        self.journal = os.path.join(str(folder), f"journal-{name}")
        self.config_path = os.path.join(str(folder), f"replica-{name}.yaml")
        write_atomically(self.config_path,
                         f"ledger_journal: '{self.journal}'\n" + yaml_text)
        super().__init__([os.path.join(BIN, "inferegator"), "serve", "--config",
                          self.config_path, "--bind", self.address, "--workers", "2",
                          "--log-level", "info"], self.url + "/health")
        # /health is one worker's answer; the replica is ready when both serve (and a stop
        # sent while a worker still boots leaves that worker hanging, as of this writing).
        wait_until(lambda: self.workers_serving() == 2, timeout=30, interval=0.05)

    def workers_serving(self) -> int:
        """The replica's own gauge of its workers that serve (summed over them)."""
        for line in requests.get(self.url + "/metrics", timeout=5).text.splitlines():
            if line.startswith("inferegator_workers "):
                return int(float(line.split()[1]))
        return 0

    def kill(self) -> None:
        """SIGKILL the master and its workers at once (its own process group): no flush,
        no goodbye to anything."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


def write_atomically(path: str, text: str) -> None:
    """Replace a file whole, as config management does: a watcher never sees half of it."""
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


class Fleet:
    """Two replicas, nginx in front, one database and one Redis db number; a user key."""

    def __init__(self, folder, postgres, redis_server, sims, *, server=(), ratelimit=None,
                 **key_limits):
        self.folder = folder
        self.storage = postgres.create_database()
        redis_url = redis_server.url.rsplit("/", 1)[0] + f"/{next(_redis_dbs) % 16}"
        self.yaml_text = gateway_yaml(
            sims, server=("load_poll_interval_s: 0.2", *server),
            ratelimit={"store": redis_url, **(ratelimit or {})})
        self.yaml_text = f"storage: '{self.storage}'\n" + self.yaml_text
        self.key, record = provision(self.storage, **key_limits)
        self.key_id = record["id"]
        self.replicas = [None, None]
        with ThreadPoolExecutor(2) as pool:  # both at once: each takes about a second
            starting = [pool.submit(self.start_replica, i, free_port()) for i in range(2)]
        try:
            for future in starting:
                future.result()
        except Exception:
            self.stop()
            raise
        self.nginx = Nginx([r.address for r in self.replicas])
        self.url = self.nginx.url

    def start_replica(self, i: int, port: int, yaml_text=None) -> "Replica":
        self.replicas[i] = Replica(self.folder, "ab"[i], port, yaml_text or self.yaml_text)
        return self.replicas[i]

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.key}"}

    def stop(self) -> None:
        if getattr(self, "nginx", None):
            self.nginx.stop()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda r: r.stop(), [r for r in self.replicas if r is not None]))


@pytest.fixture
def start_fleet(tmp_path, postgres, redis_server):
    fleets = []

    def start(sims, **kwargs):
        fleet = Fleet(tmp_path, postgres, redis_server, sims, **kwargs)
        fleets.append(fleet)
        return fleet

    yield start
    for fleet in fleets:
        fleet.stop()


def ledger(storage: str, sql: str, params=()) -> list[dict]:
    store = Store(storage)
    try:
        return store.db.query(sql, params)
    finally:
        store.db.close()


def wait_for_rows(storage: str, request_ids, timeout=20.0) -> dict:
    """Poll the ledger until every given request id has a row; {request id: [rows]}."""
    wanted = set(request_ids)

    def found():
        rows = ledger(storage, "SELECT * FROM usage_ledger")
        by_id = {}
        for row in rows:
            by_id.setdefault(row["request_id"], []).append(row)
        return by_id if wanted <= by_id.keys() else None

    try:
        return wait_until(found, timeout=timeout, interval=0.1)
    except TimeoutError:
        have = {r["request_id"] for r in ledger(storage, "SELECT request_id FROM usage_ledger")}
        raise AssertionError(f"{len(wanted - have)} of {len(wanted)} answered requests have "
                             f"no ledger row, e.g. {sorted(wanted - have)[:3]}") from None


def chat(max_tokens=5, **extra) -> dict:
    return {"model": MODEL, "messages": MESSAGES, "max_tokens": max_tokens, **extra}


def cost(row, prices=PRICES) -> float:
    return (row["prompt_tokens"] * prices["prompt"]
            + row["completion_tokens"] * prices["completion"]) / 1e6


class ClientLoad:
    """Threads sending requests through the balancer until stopped: JSON chat completions
    and, with ``streams``, streamed ones read to their final [DONE]. Every request carries
    its own X-Request-ID; answered (200, complete) and failed (anything else) are kept.

    No client retries (tests/support/steady_load.py's SDK clients retry a dropped
    connection): whatever the balancer lets through counts as a failure."""

    def __init__(self, url: str, key: str, threads=8, streams=0, max_tokens=5):
        self.url, self.key, self.max_tokens = url, key, max_tokens
        self.answered: list[str] = []
        self.failed: list[tuple[str, str]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(n, n < streams), daemon=True)
                         for n in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self, n: int, stream: bool) -> None:
        session = requests.Session()
        for i in itertools.count():
            if self._stop.is_set():
                return
            rid = f"load-{n}-{i}-{uuid.uuid4().hex[:8]}"
            try:
                resp = session.post(self.url + "/v1/chat/completions", timeout=30,
                                    stream=stream,
                                    headers={"Authorization": f"Bearer {self.key}",
                                             "X-Request-ID": rid},
                                    json=chat(self.max_tokens, stream=stream))
                body = resp.content
                complete = (body.rstrip().endswith(b"data: [DONE]") if stream
                            else b'"finish_reason"' in body)
                if resp.status_code == 200 and complete:
                    self.answered.append(rid)
                else:
                    self.failed.append((rid, f"{resp.status_code}: {body[-300:]!r}"))
            except requests.RequestException as exc:
                self.failed.append((rid, repr(exc)))
                session = requests.Session()

    def wait_answered(self, count: int, timeout=30.0) -> None:
        """Until ``count`` more requests than now have been answered."""
        target = len(self.answered) + count
        wait_until(lambda: len(self.answered) >= target or self.failed, timeout=timeout)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)


def test_limits_are_exact_across_the_fleet(start_sim, start_fleet):
    n = 20
    # Answers take >= 0.3 s, so token reservations are still held when the last request
    # of a burst arrives: what is tested is the shared count, not an early refund.
    sim = start_sim("--decode-ms-per-token", "100", "--output-tokens-min", "3",
                    "--output-tokens-max", "8")
    fleet = start_fleet([sim], requests_per_minute=n)
    answers = post_many(fleet.nginx.port, "/v1/chat/completions", [chat()] * (3 * n),
                        fleet.headers)
    statuses = [a[0] for a in answers]
    assert statuses.count(200) == n and statuses.count(429) == 2 * n, statuses
    assert sim.metric("num_requests_total") == n
    # Both replicas answered (admitted or refused): the count is the fleet's, not a
    # replica's, or each would have admitted n.
    log = wait_until(lambda: _logged(fleet.nginx, len(answers)), timeout=5)
    assert {e["request_id"] for e in log} == {a[1]["x-request-id"] for a in answers}
    assert {e["upstreams"][-1] for e in log} == {r.address for r in fleet.replicas}

    body = chat(max_tokens=40)
    per_request = estimate_prompt_tokens("chat", body) + body["max_tokens"]
    k = 6
    tokens_key, _ = provision(fleet.storage, "tokens@example.com",
                              tokens_per_minute=k * per_request)
    answers = post_many(fleet.nginx.port, "/v1/chat/completions", [body] * (4 * k),
                        {"Authorization": f"Bearer {tokens_key}"})
    statuses = [a[0] for a in answers]
    assert statuses.count(200) == k and statuses.count(429) == 3 * k, statuses
    assert all(b'"tokens"' in a[2] for a in answers if a[0] == 429)


def _logged(nginx, count):
    log = nginx.access_log()
    return log if len(log) >= count else None


def test_every_answered_request_has_its_ledger_row(start_sim, start_fleet):
    sims = [start_sim("--instant"), start_sim("--instant")]
    fleet = start_fleet(sims)
    load = ClientLoad(fleet.url, fleet.key, threads=8, streams=2)
    try:
        load.wait_answered(300)
    finally:
        load.stop()
    assert not load.failed, load.failed[:5]
    rows = wait_for_rows(fleet.storage, load.answered)
    mine = [row for rid in load.answered for row in rows[rid]]
    assert len(mine) == len(load.answered)  # one row each, none twice
    assert all(r["status"] == "completed" and r["key_id"] == fleet.key_id for r in mine)
    assert all(r["cost_usd"] == pytest.approx(cost(r)) for r in mine)
    served = sum(s.metric("num_requests_total") for s in sims)
    assert served == len(load.answered)  # nothing served that the ledger does not show
    log = fleet.nginx.access_log()
    assert {e["upstreams"][-1] for e in log} == {r.address for r in fleet.replicas}


def test_a_drain_set_through_one_replica_is_obeyed_by_both(start_sim, start_fleet):
    first, second = start_sim("--instant"), start_sim("--instant")
    fleet = start_fleet([first, second])
    admin_key, _ = provision(fleet.storage, "ops@example.com", role="admin")
    admin = {"Authorization": f"Bearer {admin_key}"}
    a, b = fleet.replicas
    listed = requests.get(a.url + "/v1/admin/backends", headers=admin, timeout=10).json()
    (name,) = [x["name"] for x in listed["data"] if x["url"].rstrip("/") == first.url]

    def only_second(batch=24) -> bool:
        """A batch through nginx and straight to each replica (each request on its own
        connection, so every worker gets some) touches only the second simulator."""
        before = first.metric("num_requests_total")
        answers = []
        for port in (fleet.nginx.port, a.port, b.port):
            answers += post_many(port, "/v1/chat/completions", [chat(2)] * batch, fleet.headers)
        assert [x[0] for x in answers] == [200] * len(answers)
        return first.metric("num_requests_total") == before

    assert not only_second()  # round robin: both simulators serve before the drain
    resp = requests.post(a.url + "/v1/admin/backends/drain", json={"backend": name},
                         headers=admin, timeout=10)
    assert resp.status_code == 200 and resp.json()["data"][0]["drained"] is True
    drained_at = time.monotonic()
    wait_until(only_second, timeout=10, interval=0)
    # Every worker of both replicas polls the drain within load_poll_interval_s (0.2 s).
    assert time.monotonic() - drained_at < 0.2 + 3.0
    for _ in range(3):
        assert only_second()
    seen = requests.get(b.url + "/v1/admin/backends", headers=admin, timeout=10).json()
    assert [x["drained"] for x in seen["data"] if x["name"] == name] == [True]

    resp = requests.post(b.url + "/v1/admin/backends/undrain", json={"backend": name},
                         headers=admin, timeout=10)
    assert resp.status_code == 200
    wait_until(lambda: not only_second(), timeout=10, interval=0)


def test_a_replica_killed_under_load_fails_no_request_and_loses_no_row(start_sim,
                                                                      start_fleet):
    sims = [start_sim("--decode-ms-per-token", "2"), start_sim("--decode-ms-per-token", "2")]
    # Rows reach the database every 2 s, so the killed replica leaves rows that only its
    # journal holds (answered, not yet written).
    fleet = start_fleet(sims, server=["ledger_flush_interval_s: 2"])
    a, b = fleet.replicas
    load = ClientLoad(fleet.url, fleet.key, threads=8)
    try:
        load.wait_answered(200)
        a.kill()
        killed_at = len(load.answered)
        load.wait_answered(200)
    finally:
        load.stop()
    assert not load.failed, load.failed[:5]
    assert killed_at < len(load.answered)
    log = fleet.nginx.access_log()
    retried = [e for e in log if len(e["upstreams"]) == 2]
    # Requests A had taken, and those sent to it until nginx took it out, went on to B.
    assert retried and all(e["status"] == 200 for e in retried)
    assert all(e["upstreams"] == [a.address, b.address] for e in retried)

    # Answered by A, in its journal, not in the database: only a replay can save them.
    written = {r["request_id"] for r in ledger(fleet.storage,
                                               "SELECT request_id FROM usage_ledger")}
    orphaned = _journal_request_ids(a.journal) - written
    assert orphaned and orphaned <= set(load.answered)
    fleet.start_replica(0, a.port)  # the same journal folder: its workers replay it
    rows = wait_for_rows(fleet.storage, load.answered, timeout=30)
    assert all(r["status"] == "completed" for rid in load.answered for r in rows[rid])
    wait_until(lambda: not _journal_request_ids(a.journal), timeout=10)  # replayed: removed


def _journal_request_ids(folder: str) -> set[str]:
    """The request ids of the rows in a ledger journal folder's segments (each line one
    row, request_id first; a line torn by the kill is skipped, as the replay skips it)."""
    ids = set()
    for name in os.listdir(folder) if os.path.isdir(folder) else ():
        if name.endswith(".jsonl"):
            with open(os.path.join(folder, name), "rb") as f:
                for line in f.read().splitlines():
                    try:
                        ids.add(json.loads(line)[0])
                    except ValueError:
                        pass
    return ids


def test_a_replica_reloads_while_the_other_serves(start_sim, start_fleet):
    sims = [start_sim("--instant"), start_sim("--instant")]
    # SIGHUP is the trigger tested here, not the file watcher.
    fleet = start_fleet(sims, server=["reload_on_change: false"])
    a, b = fleet.replicas
    old_workers = set(worker_pids(a.proc.pid))
    assert len(old_workers) == 2
    new_prices = {"prompt": 3.0, "completion": 7.0}
    with open(a.config_path) as f:
        old_yaml = f.read()
    new_yaml = old_yaml.replace("pricing: {prompt: 1.0, completion: 2.0,",
                                "pricing: {prompt: 3.0, completion: 7.0,")
    assert new_yaml != old_yaml

    load = ClientLoad(fleet.url, fleet.key, threads=8, streams=2)
    try:
        load.wait_answered(100)
        write_atomically(a.config_path, new_yaml)
        os.kill(a.proc.pid, signal.SIGHUP)

        def rolled():
            now = set(worker_pids(a.proc.pid))
            return len(now) == 2 and not now & old_workers

        wait_until(rolled, timeout=30, interval=0.05)
        load.wait_answered(100)
    finally:
        load.stop()
    assert not load.failed, load.failed[:5]
    assert a.proc.poll() is None  # the same master: a reload, not a restart
    # logged once the old workers are reaped, which can come just after the new ones run
    wait_until(lambda: "reloaded" in a.output(), timeout=30)

    straight = {}
    for replica in (a, b):
        ids = [f"straight-{replica.name}-{i}" for i in range(8)]
        answers = [requests.post(replica.url + "/v1/chat/completions", json=chat(), timeout=10,
                                 headers={**fleet.headers, "X-Request-ID": rid})
                   for rid in ids]
        assert [x.status_code for x in answers] == [200] * len(ids)
        straight[replica.name] = ids
    rows = wait_for_rows(fleet.storage, straight["a"] + straight["b"] + load.answered)
    for rid in straight["a"]:  # A's new workers price with the new file...
        (row,) = rows[rid]
        assert row["cost_usd"] == pytest.approx(cost(row, new_prices))
    for rid in straight["b"]:  # ...B keeps its own until it is reloaded too
        (row,) = rows[rid]
        assert row["cost_usd"] == pytest.approx(cost(row))
