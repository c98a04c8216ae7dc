"""A hostile backend behind a real gateway: every bad answer ends in a clean, bounded error.

For each way a backend can misbehave (tests/support/hostile_backend.py: answers that
never end, are huge, never separate their events, trickle one byte at a time, or carry
malformed events or usage), one request goes through a real gateway in front of the real
hostile server, and the test checks, all in one run so that a failure lists everything:

- the client gets an OpenAI-shaped answer within ANSWER_WITHIN_S: a 502/504 error before
  the first byte, or, once a stream has started, one ``data: {"error": ...}`` event that
  ends it; a merely odd usage object does not cost the client its answer;
- the gateway worker's RSS stays under RSS_BOUND_MB (sampled before, during and after;
  the peak is printed);
- exactly one usage-ledger row, with the status the client saw;
- afterwards every backend shows ``in_flight`` 0 in GET /v1/admin/backends, the gateway
  has hung up on the hostile server, and once the breaker's open time has passed an
  ordinary request gets through again and the circuit is closed. The hostile request is
  sent as the circuit's half-open trial (a hang-up opened it just before), so a fault path
  that leaves the trial claimed keeps every later request out, and this fails.

The backend limits below (max_response_bytes, max_event_bytes, total_timeout_s) are new
settings; HOSTILE_WITHOUT_NEW_LIMITS=1 leaves them out, to see how a gateway that does not
know them behaves.
"""

import json
import os
import signal
import threading
import time
import uuid
from dataclasses import dataclass

import pytest
import requests

from inferegator.backends.base import upstream_request_id
from inferegator.store.store import Store
from tests.gateway_fixtures import MODEL, gateway_yaml, provision
from tests.support.hostile_backend import HostileBackend
from tests.support.processes import wait_until, worker_pids

MESSAGES = [{"role": "user", "content": "Please answer properly."}]
NEW_LIMITS = ", max_response_bytes: 1048576, max_event_bytes: 65536, total_timeout_s: 2"
LIMITS = ("" if os.environ.get("HOSTILE_WITHOUT_NEW_LIMITS") else NEW_LIMITS) + \
    ", read_timeout_s: 5"
BREAKER_OPEN_S = 1
# One failure opens the circuit: a hang-up opens it before the hostile request, which then
# goes as the half-open trial.
RESILIENCE = f"resilience:\n  breaker_open_s: {BREAKER_OPEN_S}\n  breaker_failures: 1\n"

ANSWER_WITHIN_S = 10.0
RSS_BOUND_MB = 250.0
RUNAWAY_MB = 1500.0  # past this the gateway is killed, to protect the machine running the test
KEEP_BYTES = 2 * 1024 * 1024  # of an answer body, at most, kept by the test client


@dataclass(frozen=True)
class Case:
    mode: str
    stream: bool
    expect: str  # "error": before the first byte; "stream_error": mid-stream; "answer"
    status: int = 200
    codes: tuple = ()

    @property
    def id(self):
        return f"{self.mode}-{'stream' if self.stream else 'json'}"


CASES = [
    Case("endless_json", False, "error", 502, ("upstream_too_large",)),
    Case("huge_json", False, "error", 502, ("upstream_too_large",)),
    Case("trickle", False, "error", 504, ("upstream_timeout",)),
    Case("bad_first_event", False, "error", 502, ("upstream_error",)),  # not JSON
    Case("array_event", False, "error", 502, ("upstream_error",)),  # a JSON array
    Case("bad_usage_json", False, "answer"),
    Case("no_separator", True, "error", 502, ("upstream_too_large",)),
    Case("no_separator_late", True, "stream_error", codes=("upstream_too_large",)),
    Case("trickle", True, "error", 504, ("upstream_timeout",)),
    Case("trickle_late", True, "stream_error", codes=("upstream_timeout",)),
    Case("endless_events", True, "stream_error",
         codes=("upstream_timeout", "upstream_too_large")),
    Case("bad_first_event", True, "error", 502, ("upstream_error",)),
    Case("array_event", True, "error", 502, ("upstream_error",)),
    Case("bad_usage", True, "answer"),
]

# The ledger status that matches what the client saw.
LEDGER_STATUS = {"error": "failed", "stream_error": "upstream_failed", "answer": "completed"}


@pytest.fixture(scope="module")
def hostile():
    """One hostile server for the module; each request names its mode in its body."""
    server = HostileBackend("ok")
    yield server
    server.stop()


# -- the gateway worker's memory ----------------------------------------------------------

def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class RssWatch:
    """Samples the largest worker RSS every 20 ms; kills a runaway gateway."""

    def __init__(self, gateway):
        self.gateway = gateway
        self.pids = wait_until(lambda: worker_pids(gateway.proc.pid), timeout=5)
        self.peak = 0.0
        self.killed = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> float:
        value = max((rss_mb(pid) for pid in self.pids), default=0.0)
        self.peak = max(self.peak, value)
        return value

    def _run(self):
        rescan = time.monotonic() + 0.5
        while not self._stop.wait(0.02):
            if time.monotonic() > rescan:  # a worker that died was replaced
                self.pids = worker_pids(self.gateway.proc.pid) or self.pids
                rescan = time.monotonic() + 0.5
            if self.sample() > RUNAWAY_MB:
                self.killed = True
                os.killpg(self.gateway.proc.pid, signal.SIGKILL)
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


# -- the client's view --------------------------------------------------------------------

@dataclass
class Answer:
    status: int = 0
    content_type: str = ""
    received: int = 0
    body: bytes = b""  # the first KEEP_BYTES
    ended: bool = False  # the answer ended on its own (not cut by the test's deadline)
    exception: str | None = None
    elapsed: float = 0.0
    content: str = ""  # SSE: the text of the content deltas
    events: int = 0
    done: bool = False
    errors: tuple = ()  # SSE: the error objects, in order
    after_error: int = 0  # SSE: events after the first error event, [DONE] not counted
    oversized_event: bool = False


def generate(gateway, mode: str, stream: bool, rid: str, deadline_s: float) -> Answer:
    """One chat request through the gateway, read to its end or to deadline_s."""
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 8, "hostile_mode": mode}
    if stream:
        body["stream"] = True
    answer, buffer, errors = Answer(), b"", []
    started = time.monotonic()
    try:
        with requests.post(gateway.url + "/v1/chat/completions", json=body, stream=True,
                           timeout=(5, deadline_s),
                           headers={"Authorization": f"Bearer {gateway.key}",
                                    "X-Request-ID": rid}) as resp:
            answer.status = resp.status_code
            answer.content_type = resp.headers.get("Content-Type", "")
            sse = answer.content_type.startswith("text/event-stream")
            kept = bytearray()
            for data in resp.iter_content(chunk_size=65536):
                answer.received += len(data)
                if len(kept) < KEEP_BYTES:
                    kept += data[:KEEP_BYTES - len(kept)]
                if sse:
                    *events, buffer = (buffer + data).split(b"\n\n")
                    for event in events:
                        _read_event(answer, event, errors)
                    if len(buffer) > KEEP_BYTES:
                        answer.oversized_event, buffer = True, b""
                if time.monotonic() - started > deadline_s:
                    break
            else:
                answer.ended = True
            answer.body = bytes(kept)
    except requests.RequestException as exc:
        answer.exception = f"{exc.__class__.__name__}: {exc}"[:300]
    answer.elapsed = time.monotonic() - started
    answer.errors = tuple(errors)
    return answer


def _read_event(answer: Answer, event: bytes, errors: list) -> None:
    answer.events += 1
    if event.strip() == b"data: [DONE]":
        answer.done = True
        return
    if errors:
        answer.after_error += 1
    if not event.startswith(b"data: "):
        return
    try:
        obj = json.loads(event[len(b"data: "):])
    except ValueError:
        return
    if isinstance(obj, dict) and "error" in obj:
        errors.append(obj["error"])
        return
    for choice in (obj.get("choices") or ()) if isinstance(obj, dict) else ():
        delta = choice.get("delta") or {}
        answer.content += delta.get("content") or ""


def ok_request(gateway, rid: str) -> bool:
    try:
        resp = requests.post(gateway.url + "/v1/chat/completions", timeout=5,
                             headers={"Authorization": f"Bearer {gateway.key}",
                                      "X-Request-ID": rid},
                             json={"model": MODEL, "messages": MESSAGES, "max_tokens": 4})
    except requests.RequestException:
        return False
    return resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"] == "ok"


def admin_backends(gateway, admin_key) -> list[dict]:
    """Every backend as the admin API shows it; [{"error": ...}] if it could not be read."""
    try:
        resp = requests.get(gateway.url + "/v1/admin/backends", timeout=5,
                            headers={"Authorization": f"Bearer {admin_key}"})
        resp.raise_for_status()
        return resp.json()["data"]
    except (requests.RequestException, ValueError, KeyError) as exc:
        return [{"error": f"GET /v1/admin/backends failed: {exc}"[:200]}]


@pytest.fixture
def ledger_of():
    """ledger_of(gateway, request_id): that request's usage-ledger rows, read now."""
    stores = {}

    def rows(gateway, request_id):
        store = stores.get(gateway.storage) or stores.setdefault(gateway.storage,
                                                                 Store(gateway.storage))
        return store.db.query("SELECT * FROM usage_ledger WHERE request_id = ?", (request_id,))

    yield rows
    for store in stores.values():
        store.db.close()


# -- what the client must see -------------------------------------------------------------

def answer_problems(case: Case, answer: Answer) -> list[str]:
    seen = (f"status {answer.status} {answer.content_type!r}, {answer.received} bytes in "
            f"{answer.elapsed:.1f}s, ended={answer.ended}, exception={answer.exception}, "
            f"body starts {answer.body[:200]!r}")
    problems = []
    if answer.exception or not answer.ended:
        problems.append(f"no complete answer within {ANSWER_WITHIN_S:g}s: {seen}")
    elif answer.elapsed >= ANSWER_WITHIN_S:
        problems.append(f"answer took {answer.elapsed:.1f}s")
    if case.expect == "error" and answer.status:
        try:
            error = json.loads(answer.body)["error"]
            assert answer.status == case.status
            assert set(error) == {"message", "type", "param", "code"}
            assert error["type"] == "server_error" and error["code"] in case.codes
            assert isinstance(error["message"], str) and error["message"]
        except (ValueError, KeyError, TypeError, AssertionError):
            problems.append(f"expected HTTP {case.status} with an OpenAI error, code "
                            f"{case.codes[0]}: {seen}")
    elif case.expect == "stream_error":
        if answer.status != 200 or not answer.content_type.startswith("text/event-stream"):
            problems.append(f"expected a started SSE stream: {seen}")
        kinds = [(e.get("type"), e.get("code")) if isinstance(e, dict) else e
                 for e in answer.errors]
        if len(kinds) != 1 or kinds[0] not in [("server_error", c) for c in case.codes]:
            problems.append(f"expected one error event with code in {case.codes}, got "
                            f"{list(answer.errors)} ({answer.events} events)")
        if answer.after_error:
            problems.append(f"{answer.after_error} events followed the error event")
        if not answer.content:
            problems.append("no content event came before the error")
    else:
        if answer.status != 200:
            problems.append(f"expected the answer (200): {seen}")
        elif case.stream:
            if answer.content != "ok" or not answer.done or answer.errors:
                problems.append(f"expected content 'ok' then [DONE] and no error: content "
                                f"{answer.content!r}, done={answer.done}, errors "
                                f"{list(answer.errors)}")
        else:
            try:
                assert json.loads(answer.body)["choices"][0]["message"]["content"] == "ok"
            except (ValueError, KeyError, TypeError, IndexError, AssertionError):
                problems.append(f"expected a chat completion saying 'ok': {seen}")
    return problems


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_backend_gets_a_clean_bounded_answer(case, hostile, start_gateway, ledger_of):
    gateway = start_gateway(gateway_yaml([hostile], backend_extra=LIMITS, extra=RESILIENCE))
    admin_key, _ = provision(gateway.storage, email="admin@example.com", role="admin")
    assert ok_request(gateway, "hostile-warmup-" + uuid.uuid4().hex)  # in rotation, warm
    make_half_open(gateway, admin_key)
    rid = "hostile-" + uuid.uuid4().hex
    problems, figures = [], {"case": case.id}
    with RssWatch(gateway) as rss:
        figures["rss_before_mb"] = round(rss.sample(), 1)
        answer = generate(gateway, case.mode, case.stream, rid, ANSWER_WITHIN_S)
        figures["answer"] = (f"{answer.status} in {answer.elapsed:.2f}s, {answer.received} "
                             f"bytes, errors {[e.get('code') for e in answer.errors]}")
        problems += answer_problems(case, answer)
        if not rss.killed:
            problems += _aftermath(case, gateway, hostile, admin_key, rid, figures, ledger_of)
        figures["rss_after_mb"] = round(rss.sample(), 1)
    figures["rss_peak_mb"] = round(rss.peak, 1)
    print(figures)
    if rss.killed:
        problems.append(f"worker RSS passed {RUNAWAY_MB:g} MB: the gateway was killed")
    elif rss.peak >= RSS_BOUND_MB:
        problems.append(f"worker RSS peaked at {rss.peak:.0f} MB (bound {RSS_BOUND_MB:g} MB)")
    assert not problems, f"{case.id}: " + "; ".join(problems) + f" -- {figures}"


def make_half_open(gateway, admin_key) -> None:
    """Open the backend's circuit with a request the backend hangs up on; wait for half-open."""
    opener = generate(gateway, "hang_up", False, "hostile-opener-" + uuid.uuid4().hex, 5)
    assert opener.status >= 500, opener
    wait_until(lambda: [b.get("circuit") for b in admin_backends(gateway, admin_key)]
               == ["half_open"], timeout=BREAKER_OPEN_S + 5, interval=0.05)


def _aftermath(case, gateway, hostile, admin_key, rid, figures, ledger) -> list[str]:
    """Ledger, in-flight counts, the upstream connection and the circuit, after the answer."""
    problems = []
    try:
        wait_until(lambda: all(b.get("in_flight") == 0
                               for b in admin_backends(gateway, admin_key)),
                   timeout=5, interval=0.05)
    except TimeoutError:
        problems.append("in_flight stuck at " + str(
            [b.get("in_flight", b.get("error")) for b in admin_backends(gateway, admin_key)]))
    try:
        upstream_rid = upstream_request_id(rid)  # what the backend saw
        wait_until(lambda: upstream_rid not in hostile.stats()["active"], timeout=5,
                   interval=0.05)
    except TimeoutError:
        problems.append("the gateway kept the connection to the hostile backend open")
    try:
        rows = wait_until(lambda: ledger(gateway, rid), timeout=5, interval=0.05)
    except TimeoutError:
        rows = []
    # The breaker opened (or not) on the failure; after its open time an ordinary request
    # must get through, as the half-open trial.
    ok_rid = "hostile-ok-" + uuid.uuid4().hex
    try:
        wait_until(lambda: ok_request(gateway, ok_rid), timeout=BREAKER_OPEN_S + 6,
                   interval=0.1)
    except TimeoutError:
        problems.append("an ordinary request did not get through after the breaker's open "
                        f"time: {admin_backends(gateway, admin_key)}")
    else:
        # Rows are written in order: once the later request's row is there, a second row
        # for the hostile request would be too.
        try:
            wait_until(lambda: ledger(gateway, ok_rid), timeout=5, interval=0.05)
        except TimeoutError:
            problems.append("no ledger row for the ordinary request")
        rows = ledger(gateway, rid)
    backends = admin_backends(gateway, admin_key)
    figures["backends"] = [(b.get("circuit"), b.get("in_flight", b.get("error")))
                           for b in backends]
    if any(b.get("in_flight") != 0 or b.get("circuit") != "closed" for b in backends):
        problems.append(f"afterwards circuit/in_flight {figures['backends']}")
    figures["ledger"] = [(r["status"], r["http_status"], r["prompt_tokens"],
                          r["completion_tokens"]) for r in rows]
    if not rows:
        problems.append("no ledger row")
    elif len(rows) > 1:
        problems.append(f"{len(rows)} ledger rows for one request: {figures['ledger']}")
    if rows:
        row = rows[0]
        want_http = case.status if case.expect == "error" else 200
        if row["status"] != LEDGER_STATUS[case.expect] or row["http_status"] != want_http:
            problems.append(f"ledger row {row['status']}/{row['http_status']}, expected "
                            f"{LEDGER_STATUS[case.expect]}/{want_http}")
        if case.expect == "answer" and not (row["prompt_tokens"] == 0 ==
                                            row["completion_tokens"] and row["cost_usd"] == 0):
            problems.append("usage that is not numbers must be billed as unknown (0 tokens), "
                            f"got {figures['ledger']} cost {row['cost_usd']}")
    return problems
