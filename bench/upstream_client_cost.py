#!/usr/bin/env python3
"""CPU each upstream HTTP client costs the gateway per request, and whether it keeps the
pipeline's promises (issue 14).

The clients, each used the way the pipeline uses an upstream answer (post, status_code,
headers.get("Content-Length"), iter_content, close):
  - requests: the gateway's path before issue 14, ``PreparedPost.send`` on a
    ``pooled_session`` (bench/upstream_contenders.py);
  - urllib3: ``Urllib3Transport`` (bench/upstream_contenders.py), urllib3's pool without requests;
  - geventhttpclient: ``GeventHttpTransport`` (backends/transport.py).

Everything runs in this one process, gevent monkey-patched first, like a gunicorn gevent
worker. Three real simulators are started (``inferegator sim``, one gevent worker each):
  - ``--instant``: the cost passes. For each round, concurrency (1 and 32 greenlets), mode
    (a non-streamed chat completion, max_tokens 16, read whole; a streamed one, every event
    read) and client, interleaved so drift hits every client alike: warm-up requests, then
    N measured ones (a closed loop). CPU per request is this process's CPU time
    (``time.process_time``: user + system, all threads) over the pass divided by N; the
    simulator runs in its own process and is not counted.
  - ``--decode-ms-per-token 5``: events arrive one by one, 5 ms apart; a read timeout at
    the answer's head.
  - ``--decode-ms-per-token 50``: closing a half-read stream aborts the generation (the
    simulator's ``num_aborted_requests_total`` rises, its running count drops to 0); a
    read timeout between two events.
Also checked per client: answer bytes equal to a raw-socket reference (ids and timestamps
blanked), an error answer's body read ahead (``read_error_body`` / ``preload``), a
refused connection reported as refused (also by ``refused_cause``), a connect
timeout (a listener whose accept queue is full), and keep-alive pooling (connections
opened per request).

Output: a markdown table and the checks on stdout; the full record as JSON under
bench/out/ (git-ignored). The simulators are stopped at the end, also on error.

Usage (from the repository root):
  .venv/bin/python bench/upstream_client_cost.py
  .venv/bin/python bench/upstream_client_cost.py --rounds 1 -n1 200 -n32 1000   # quicker
"""

from gevent import monkey

monkey.patch_all()

# ruff: noqa: E402  (the imports below must come after the monkey-patching)
import argparse
import datetime
import json
import logging
import os
import platform
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gevent
import gevent._socket3
import requests
import urllib3

# TCP connections each client opens, counted where all three open them (gevent's socket
# class, which monkey-patching made the socket module's): port -> connects. urllib3 reopens
# a closed connection object in place, so its own connection counts would miss those.
CONNECTS = {}
_connect = gevent._socket3.socket.connect


def _counting_connect(self, address):
    if isinstance(address, tuple):
        CONNECTS[address[1]] = CONNECTS.get(address[1], 0) + 1
    return _connect(self, address)


gevent._socket3.socket.connect = _counting_connect

# urllib3 says "Connection pool is full, discarding connection" at WARNING each time a
# connection beyond pool_size is closed; the pool-overflow check does that on purpose.
logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
sys.path.insert(0, str(ROOT))

from upstream_contenders import (
    PreparedPost,
    Urllib3Transport,
    read_error_body,
)
from upstream_contenders import refused_cause as _refused

from inferegator.backends.base import pooled_session, upstream_request_id
from inferegator.backends.transport import GeventHttpTransport, TransportError
from tests.support.processes import Simulator, free_port, wait_until

OUT_DIR = BENCH_DIR / "out"
PATH = "/v1/chat/completions"
MODEL = "sim-model"
PROMPT = "Summarise in one sentence why a prefix cache helps a chat service."
CLIENTS = ("requests", "urllib3", "geventhttpclient")
MODES = ("json", "stream")
REQUEST_ID = "req-" + "0123456789abcdef" * 2  # the gateway's own id shape
POOL_SIZE = 64  # BackendConfig.pool_size's default
CONNECT_TIMEOUT, READ_TIMEOUT = 3.0, 300.0  # BackendConfig's defaults


def chat_body(stream: bool, max_tokens: int = 16, **extra) -> bytes:
    return json.dumps({"model": MODEL, "messages": [{"role": "user", "content": PROMPT}],
                       "max_tokens": max_tokens, "stream": stream, "seed": 7, **extra}
                      ).encode()


# -- the clients under test -------------------------------------------------------------------

class RequestsClient:
    """Today's hot path: PreparedPost.send on a pooled session, with its timeout tuple."""

    def __init__(self, base_url: str, pool_size: int = POOL_SIZE):
        self.url = base_url
        self.session = pooled_session(pool_size)
        self.connects_before = CONNECTS.get(urllib3.util.parse_url(base_url).port, 0)
        self.posts = {}

    def post(self, path, body, headers, stream, connect_timeout=CONNECT_TIMEOUT,
             read_timeout=READ_TIMEOUT):
        post = self.posts.get(path)
        if post is None:
            post = self.posts[path] = PreparedPost(self.session, self.url + path, {})
        return post.send(body, headers, stream, (connect_timeout, read_timeout))

    @property
    def connections_opened(self) -> int:
        return CONNECTS.get(urllib3.util.parse_url(self.url).port, 0) - self.connects_before

    def read_error_body(self, response) -> bytes:
        return read_error_body(response)

    def close(self):
        self.session.close()


class TransportClient:
    """A transport from backends/transport.py, given the request id as base.py would."""

    def __init__(self, transport_class, base_url: str, pool_size: int = POOL_SIZE,
                 ca_certs: str | None = None):
        self.transport = transport_class(base_url, pool_size=pool_size,
                                         connect_timeout=CONNECT_TIMEOUT,
                                         read_timeout=READ_TIMEOUT, ca_certs=ca_certs)
        self.connects_before = CONNECTS.get(self.transport.port, 0)

    def post(self, path, body, headers, stream, connect_timeout=None, read_timeout=None):
        rid = headers.get("X-Request-ID")
        if rid is not None:
            headers = {**headers, "X-Request-ID": upstream_request_id(rid)}
        return self.transport.post(path, body, headers, stream, connect_timeout,
                                   read_timeout)

    @property
    def connections_opened(self) -> int:
        """TCP connects seen at the socket; the transport's own count must agree."""
        seen = CONNECTS.get(self.transport.port, 0) - self.connects_before
        if seen != self.transport.connections_opened:
            raise AssertionError(f"{self.transport.connections_opened} connections counted "
                                 f"by the transport, {seen} at the socket")
        return seen

    def read_error_body(self, response) -> bytes:
        return response.preload(65536)

    def close(self):
        self.transport.close()


def make_client(name: str, base_url: str, pool_size: int = POOL_SIZE,
                ca_certs: str | None = None):
    if name == "requests":
        return RequestsClient(base_url, pool_size)
    return TransportClient(Urllib3Transport if name == "urllib3" else GeventHttpTransport,
                           base_url, pool_size, ca_certs)


def classify(exc: BaseException) -> str:
    """What failed, in TransportError's words, for any client's exception."""
    if isinstance(exc, TransportError):
        return exc.kind
    if isinstance(exc, requests.exceptions.SSLError):
        return "connect"
    if isinstance(exc, requests.ConnectTimeout):
        return "connect_timeout"
    if isinstance(exc, requests.ReadTimeout):
        return "read_timeout"
    if _refused(exc):
        return "refused"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "broken"
    stack, seen = [exc], 0
    while stack and seen < 12:  # requests wraps a mid-body read timeout in ConnectionError
        error = stack.pop()
        seen += 1
        if isinstance(error, urllib3.exceptions.ReadTimeoutError):
            return "read_timeout"
        if isinstance(error, urllib3.exceptions.ProtocolError):
            return "broken"
        stack.extend(c for c in (error.__cause__, error.__context__, *error.args)
                     if isinstance(c, BaseException))
    return f"other ({exc.__class__.__name__})"


# -- the cost passes --------------------------------------------------------------------------

def one_request(client, body: bytes, stream: bool, pieces: list | None = None) -> int:
    """One request read the way the pipeline reads it; returns the body's size and adds
    the number of pieces iter_content yielded to ``pieces[0]``."""
    response = client.post(PATH, body, {"X-Request-ID": REQUEST_ID}, stream)
    try:
        if response.status_code != 200:
            raise RuntimeError(f"HTTP {response.status_code}")
        response.headers.get("Content-Length")
        size = count = 0
        for data in response.iter_content(None if stream else 65536):
            size += len(data)
            count += 1
        if pieces is not None:
            pieces[0] += count
        return size
    finally:
        response.close()


def run_pass(client, body: bytes, stream: bool, concurrency: int, n: int) -> dict:
    left, pieces = [n], [0]

    def worker():
        while left[0] > 0:
            left[0] -= 1
            if not one_request(client, body, stream, pieces):
                raise RuntimeError("empty answer")

    cpu0, wall0 = time.process_time(), time.perf_counter()
    gevent.joinall([gevent.spawn(worker) for _ in range(concurrency)], raise_error=True)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    # A stream's events come in fewer, larger pieces when the reader falls behind; each
    # piece is a wake-up and a recv, so CPU per request depends on it: recorded too.
    return {"n": n, "cpu_s": cpu, "wall_s": wall, "cpu_us_per_req": cpu / n * 1e6,
            "req_per_s": n / wall, "pieces_per_req": pieces[0] / n}


def machine_busy() -> tuple[int, int]:
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]
    total = sum(values[:8])
    return total - idle, total


def cost_passes(sim, args) -> list[dict]:
    clients = {name: make_client(name, sim.url) for name in CLIENTS}
    bodies = {"json": chat_body(False), "stream": chat_body(True)}
    connects = dict.fromkeys(CLIENTS, 0)  # TCP connects per client, pass by pass
    records = []
    try:
        for round_no in range(args.rounds):
            for concurrency, n in ((1, args.n1), (32, args.n32)):
                for mode in MODES:
                    for name in CLIENTS:
                        stream = mode == "stream"
                        before = CONNECTS.get(sim.port, 0)
                        run_pass(clients[name], bodies[mode], stream, concurrency,
                                 max(concurrency * 4, n // 10))  # warm-up
                        busy0 = machine_busy()
                        result = run_pass(clients[name], bodies[mode], stream, concurrency, n)
                        busy1 = machine_busy()
                        connects[name] += CONNECTS.get(sim.port, 0) - before
                        result.update(round=round_no, client=name, mode=mode,
                                      concurrency=concurrency,
                                      machine_busy=(busy1[0] - busy0[0])
                                      / max(busy1[1] - busy0[1], 1))
                        records.append(result)
                        print(f"# round {round_no} c={concurrency} {mode:6} {name:16} "
                              f"{result['cpu_us_per_req']:7.0f} us/req "
                              f"{result['req_per_s']:7.0f} req/s "
                              f"{result['pieces_per_req']:5.1f} pieces/req", file=sys.stderr)
        for name, client in clients.items():
            own = getattr(client, "transport", None)
            records.append({"client": name, "connections_opened": connects[name],
                            "counted_by_transport": own and own.connections_opened})
    finally:
        for client in clients.values():
            client.close()
    return records


# -- the checks -------------------------------------------------------------------------------

_ID = re.compile(rb'("id": ?")[^"]*(")')
_CREATED = re.compile(rb'("created": ?)\d+')


def normalized(content: bytes) -> bytes:
    return _CREATED.sub(rb"\g<1>0", _ID.sub(rb"\1-\2", content))


def raw_answer(port: int, body: bytes) -> bytes:
    """The answer's body as the server sent it, read on a plain socket (chunks decoded)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"POST %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json"
                     b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s"
                     % (PATH.encode(), len(body), body))
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    if b"transfer-encoding: chunked" not in head.lower():
        return rest
    out = b""
    while True:
        line, _, rest = rest.partition(b"\r\n")
        size = int(line.split(b";")[0], 16)
        if size == 0:
            return out
        out, rest = out + rest[:size], rest[size + 2:]


def check(name: str, fn) -> dict:
    """Run one check; its record: ok, what was seen, and any unexpected exception."""
    try:
        ok, seen = fn()
    except Exception as exc:  # a check that crashed has failed, the others still run
        ok, seen = False, f"raised {exc.__class__.__name__}: {exc}"
    return {"check": name, "ok": bool(ok), "seen": seen}


def expect_error(fn, kind: str, low: float = 0.0, high: float = 1e9):
    start = time.perf_counter()
    try:
        fn()
    except Exception as exc:
        elapsed = time.perf_counter() - start
        got = classify(exc)
        return (got == kind and low <= elapsed <= high,
                f"{got} after {elapsed * 1000:.0f} ms ({exc.__class__.__name__}"
                f"{', refused_cause: ' + str(_refused(exc)) if kind == 'refused' else ''})")
    return False, "no error"


def answer_bytes(client, sim, stream: bool):
    body = chat_body(stream)
    raw_answer(sim.port, body)  # the prompt is in the prefix cache from here on
    reference = normalized(raw_answer(sim.port, body))
    response = client.post(PATH, body, {"X-Request-ID": REQUEST_ID}, stream)
    got = normalized(b"".join(response.iter_content(None if stream else 65536)))
    response.close()
    return got == reference, f"{len(got)} bytes, reference {len(reference)}"


def error_body(client, sim):
    body = json.dumps({"model": MODEL}).encode()  # no messages: 400 with a JSON error
    reference = raw_answer(sim.port, body)
    response = client.post(PATH, body, {}, False)
    ahead = client.read_error_body(response)
    again = b"".join(response.iter_content(8192))
    response.close()
    return (response.status_code == 400 and ahead == reference == again,
            f"HTTP {response.status_code}, {len(ahead)} bytes read ahead, "
            f"{len(again)} from iter_content after")


def events_one_by_one(client, sim):
    start = time.perf_counter()
    response = client.post(PATH, chat_body(True), {}, True)
    arrivals = []
    for data in response.iter_content(None):
        arrivals.append((time.perf_counter() - start, data.count(b"data: ")))
    response.close()
    events = sum(count for _, count in arrivals)
    span = arrivals[-1][0] - arrivals[0][0]
    # 16 tokens 5 ms apart: the first and last events are >= 60 ms apart if none waits
    return (span > 0.06 and len(arrivals) >= events - 3,
            f"{events} events in {len(arrivals)} pieces, first->last {span * 1000:.0f} ms")


def abort_on_close(client, sim):
    before = sim.metric("num_aborted_requests_total")
    response = client.post(PATH, chat_body(True, 500, ignore_eos=True), {}, True)
    chunks = response.iter_content(None)
    seen = b""
    while seen.count(b"data: ") < 2:
        seen += next(chunks)
    running = sim.load()["num_running_reqs"]
    closed = time.perf_counter()
    response.close()
    wait_until(lambda: sim.metric("num_aborted_requests_total") >= before + 1, timeout=3)
    aborted_ms = (time.perf_counter() - closed) * 1000
    wait_until(lambda: sim.load()["num_running_reqs"] == 0, timeout=3)
    again = one_request(client, chat_body(False), False)  # the pool still serves
    return (running == 1 and again > 0,
            f"running {running} before close, aborted after {aborted_ms:.0f} ms, "
            f"next request on the same client: {again} bytes")


def connect_timeout_check(client_name):
    """A listener that never accepts, its queue filled: a SYN to it is dropped (Linux)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        gevent.sleep(0.05)
        client = make_client(client_name, f"http://127.0.0.1:{port}")
        return expect_error(lambda: client.post(PATH, b"{}", {}, False, connect_timeout=0.3),
                            "connect_timeout", 0.25, 2.0)
    finally:
        for filler in fillers:
            filler.close()
        listener.close()


class StubBackend:
    """A misbehaving upstream the simulator cannot imitate, served in this process: by path,
    ``/stall`` (a chunked stream: one event, then 2 s of silence), ``/close-delimited`` (an
    SSE stream with neither length nor chunks, ended by closing: 5 events 20 ms apart),
    ``/cut`` (a chunked stream cut after one event, no terminating chunk)."""

    EVENT = b'data: {"choices":[{"index":0,"delta":{"content":"x"}}]}\n\n'

    def __init__(self):
        from gevent.server import StreamServer

        self.server = StreamServer(("127.0.0.1", 0), self.handle)
        self.server.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    @staticmethod
    def chunk(data: bytes) -> bytes:
        return b"%x\r\n%s\r\n" % (len(data), data)

    def handle(self, sock, _address):
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                data += sock.recv(65536)
            path = data.split(b" ", 2)[1]
            head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            if path == b"/close-delimited":
                sock.sendall(head + b"Connection: close\r\n\r\n")
                for _ in range(5):
                    gevent.sleep(0.02)
                    sock.sendall(self.EVENT)
                return
            sock.sendall(head + b"Transfer-Encoding: chunked\r\n\r\n" + self.chunk(self.EVENT))
            if path == b"/stall":
                gevent.sleep(2)
                sock.sendall(self.chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        except OSError:
            pass
        finally:
            sock.close()

    def stop(self):
        self.server.stop(timeout=1)


def stub_stream(client, path: str, read_timeout: float = READ_TIMEOUT):
    """(arrival seconds, bytes) of each piece of a stub stream; raises what the client
    raises."""
    start = time.perf_counter()
    response = client.post(path, b"{}", {}, True, read_timeout=read_timeout)
    arrivals = []
    try:
        for data in response.iter_content(None):
            arrivals.append((time.perf_counter() - start, len(data)))
    finally:
        response.close()
    return arrivals


def stall_timeout(client):
    first = []

    def run():
        start = time.perf_counter()
        response = client.post("/stall", b"{}", {}, True, read_timeout=0.3)
        try:
            for _ in response.iter_content(None):
                first.append(time.perf_counter() - start)
        finally:
            response.close()

    ok, seen = expect_error(run, "read_timeout", 0.25, 1.5)
    return ok and len(first) == 1, f"{seen}, first event read {len(first)}"


def close_delimited(client):
    arrivals = stub_stream(client, "/close-delimited")
    span = arrivals[-1][0] - arrivals[0][0]
    total = sum(size for _, size in arrivals)
    return (len(arrivals) == 5 and total == 5 * len(StubBackend.EVENT),
            f"{total} bytes in {len(arrivals)} pieces, first->last {span * 1000:.0f} ms")


def cut_stream(client):
    got = []

    def run():
        response = client.post("/cut", b"{}", {}, True)
        try:
            for data in response.iter_content(None):
                got.append(data)
        finally:
            response.close()

    ok, seen = expect_error(run, "broken")
    return ok and len(got) == 1, f"{seen}, after {len(got)} piece(s)"


class Killed(ConnectionResetError):
    """Raised into a waiting greenlet, as the client watch raises ClientDisconnected (also
    a ConnectionResetError, so a client may report it as its own connection error: the
    pipeline checks ``watch.gone`` first either way)."""


def killed_while_waiting(client, sim, stream: bool):
    """A greenlet killed while it waits upstream (the client watch's gevent.kill), its
    response then closed as the lease does: the runtime sees the disconnect and aborts,
    and the client's pool still serves. What the kill came out as is reported."""
    before = sim.metric("num_aborted_requests_total")
    holder, outcome = [], []

    def run():
        try:
            response = client.post(PATH, chat_body(stream, 200, ignore_eos=True), {},
                                   stream)
            holder.append(response)
            for _ in response.iter_content(None):
                pass
        except Killed as exc:  # caught here, or the hub prints it
            outcome.append(exc)
        except Exception as exc:  # a client that turned the kill into its own error
            outcome.append(exc)

    greenlet = gevent.spawn(run)
    gevent.sleep(0.3)
    running = sim.load()["num_running_reqs"]
    greenlet.kill(Killed(), block=True)
    for response in holder:
        response.close()
    wait_until(lambda: sim.metric("num_aborted_requests_total") >= before + 1, timeout=3)
    wait_until(lambda: sim.load()["num_running_reqs"] == 0, timeout=3)
    again = one_request(client, chat_body(False), False)
    got = type(outcome[0]).__name__ if outcome else "nothing"
    return (running == 1 and outcome and again > 0,
            f"running {running}, the kill came out as {got}, "
            f"aborted; next request {again} bytes")


def pool_overflow(name, sim):
    """pool_size 2, 8 requests at once: none waits for a pooled connection (requests'
    non-blocking pool); at most 2 stay idle afterwards, so the next 2 reuse them."""
    client = make_client(name, sim.url, pool_size=2)
    try:
        start = time.perf_counter()
        gevent.joinall([gevent.spawn(one_request, client, chat_body(False), False)
                        for _ in range(8)], raise_error=True)
        wall = time.perf_counter() - start
        opened = client.connections_opened
        gevent.joinall([gevent.spawn(one_request, client, chat_body(False), False)
                        for _ in range(2)], raise_error=True)
        reused = client.connections_opened == opened
        # 16 tokens at 5 ms each: ~0.1 s at once; 4 waves of 2 would take ~0.4 s
        return (wall < 0.3 and opened == 8 and reused,
                f"8 at once in {wall * 1000:.0f} ms, {opened} opened, then 2 reused: {reused}")
    finally:
        client.close()


class TlsBackend:
    """An https server in this process (gevent's WSGI server) with a self-signed
    certificate for 127.0.0.1 made by ``openssl``; answers any POST with a small JSON."""

    def __init__(self, folder: str):
        from gevent.pywsgi import WSGIServer

        self.cert, key = os.path.join(folder, "tls.crt"), os.path.join(folder, "tls.key")
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                        key, "-out", self.cert, "-days", "1", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, capture_output=True)

        def app(environ, start_response):
            size = len(environ["wsgi.input"].read())
            start_response("200 OK", [("Content-Type", "application/json")])
            return [b'{"received": %d}' % size]

        self.server = WSGIServer(("127.0.0.1", 0), app, keyfile=key, certfile=self.cert,
                                 log=None, error_log=None)
        self.server.start()
        self.url = f"https://127.0.0.1:{self.server.server_port}"
        # the handshakes the check makes fail on purpose; the hub need not print them
        hub = gevent.get_hub()
        hub.NOT_ERROR = (*hub.NOT_ERROR, ssl.SSLError)

    def stop(self):
        self.server.stop(timeout=1)


def tls_check(name: str, tls):
    """3 requests over one verified TLS connection (CA given); the default trust store
    refuses the self-signed certificate as a connect error."""
    if tls is None:
        return True, "skipped (no openssl)"
    rejected, seen = expect_error(lambda: make_client(name, tls.url).post(
        "/x", b"{}", {}, False), "connect")
    if name == "requests":  # PreparedPost calls adapter.send, which verifies with certifi
        return rejected, f"default trust store: {seen}; a custom CA: not possible"
    client = make_client(name, tls.url, ca_certs=tls.cert)
    try:
        answers = [b"".join(client.post("/x", b"hello", {}, False).iter_content())
                   for _ in range(3)]
        return (rejected and answers == [b'{"received": 5}'] * 3
                and client.connections_opened == 1,
                f"CA given: 3 answers on {client.connections_opened} connection(s); "
                f"default trust store: {seen}")
    finally:
        client.close()


def checks(name: str, sims: dict, stub: StubBackend, tls) -> list[dict]:
    instant, slow5, slow50 = sims["instant"], sims["slow5"], sims["slow50"]
    out = []
    on_instant = make_client(name, instant.url)
    on_slow5 = make_client(name, slow5.url)
    on_slow50 = make_client(name, slow50.url)
    on_stub = make_client(name, stub.url)
    refused_port = free_port()
    try:
        out.append(check("same answer bytes (JSON)",
                         lambda: answer_bytes(on_instant, instant, False)))
        out.append(check("same answer bytes (stream)",
                         lambda: answer_bytes(on_instant, instant, True)))
        out.append(check("error answer read ahead, then again",
                         lambda: error_body(on_instant, instant)))
        out.append(check("stream events one by one",
                         lambda: events_one_by_one(on_slow5, slow5)))
        out.append(check("closing a half-read stream aborts",
                         lambda: abort_on_close(on_slow50, slow50)))
        out.append(check("killed while waiting for a JSON answer",
                         lambda: killed_while_waiting(on_slow50, slow50, False)))
        out.append(check("killed while waiting inside a stream",
                         lambda: killed_while_waiting(on_slow50, slow50, True)))
        out.append(check("refused connection", lambda: expect_error(
            lambda: make_client(name, f"http://127.0.0.1:{refused_port}").post(
                PATH, b"{}", {}, False), "refused")))
        out.append(check("connect timeout (0.3 s)", lambda: connect_timeout_check(name)))
        out.append(check("read timeout at the head (0.3 s)", lambda: expect_error(
            lambda: one_request_timed(on_slow5, False, 0.3), "read_timeout", 0.25, 1.5)))
        out.append(check("read timeout between events (0.3 s)",
                         lambda: stall_timeout(on_stub)))
        out.append(check("stream cut without its last chunk: an error",
                         lambda: cut_stream(on_stub)))
        out.append(check("close-delimited stream (no length, no chunks): one by one",
                         lambda: close_delimited(on_stub)))
        out.append(check("keep-alive: 1 connection for 20 sequential requests",
                         lambda: pooled(name, instant)))
        out.append(check("pool of 2, 8 at once: nobody waits",
                         lambda: pool_overflow(name, slow5)))
        out.append(check("https: verified, pooled; unknown CA refused",
                         lambda: tls_check(name, tls)))
    finally:
        for client in (on_instant, on_slow5, on_slow50, on_stub):
            client.close()
    return out


def one_request_timed(client, stream: bool, read_timeout: float):
    """A long answer (200 tokens) under a short read timeout; raises when it fires."""
    response = client.post(PATH, chat_body(stream, 200, ignore_eos=True), {}, stream,
                           read_timeout=read_timeout)
    try:
        for _ in response.iter_content(None):
            pass
    finally:
        response.close()


def pooled(name, sim):
    client = make_client(name, sim.url)
    try:
        for i in range(20):
            one_request(client, chat_body(i % 2 == 1), i % 2 == 1)
        return client.connections_opened == 1, f"{client.connections_opened} opened"
    finally:
        client.close()


# -- main -------------------------------------------------------------------------------------

def table(records: list[dict]) -> str:
    passes = [r for r in records if "cpu_us_per_req" in r]
    lines = ["| concurrency | mode | client | CPU µs/req (median) | min | req/s (median) |"
             " pieces/req | vs requests |",
             "|---:|---|---|---:|---:|---:|---:|---:|"]
    base = {}
    for concurrency in (1, 32):
        for mode in MODES:
            for name in CLIENTS:
                rows = [r for r in passes if (r["concurrency"], r["mode"], r["client"])
                        == (concurrency, mode, name)]
                if not rows:
                    continue
                cpu = statistics.median(r["cpu_us_per_req"] for r in rows)
                if name == "requests":
                    base[concurrency, mode] = cpu
                ratio = cpu / base[concurrency, mode] if (concurrency, mode) in base else 1
                lines.append(f"| {concurrency} | {mode} | {name} | {cpu:.0f} | "
                             f"{min(r['cpu_us_per_req'] for r in rows):.0f} | "
                             f"{statistics.median(r['req_per_s'] for r in rows):.0f} | "
                             f"{statistics.median(r['pieces_per_req'] for r in rows):.1f} | "
                             f"{ratio:.2f}× |")
    return "\n".join(lines)


def versions() -> dict:
    import geventhttpclient

    return {"python": platform.python_version(), "gevent": gevent.__version__,
            "requests": requests.__version__, "urllib3": urllib3.__version__,
            "geventhttpclient": geventhttpclient.__version__}


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("-n1", type=int, default=400, help="measured requests per pass, c=1")
    parser.add_argument("-n32", type=int, default=2000, help="measured requests per pass, c=32")
    parser.add_argument("--skip-checks", action="store_true")
    parser.add_argument("--out", type=Path, default=OUT_DIR)
    args = parser.parse_args()

    started = datetime.datetime.now(datetime.timezone.utc)
    sims, stub, tls = {}, None, None
    folder = tempfile.mkdtemp(prefix="upstream-client-cost-")
    try:
        stub = StubBackend()
        if shutil.which("openssl"):
            tls = TlsBackend(folder)
        sims["instant"] = Simulator("--instant")
        sims["slow5"] = Simulator("--decode-ms-per-token", "5")
        sims["slow50"] = Simulator("--decode-ms-per-token", "50")
        results = {} if args.skip_checks else {name: checks(name, sims, stub, tls)
                                                for name in CLIENTS}
        records = cost_passes(sims["instant"], args)
    finally:
        for sim in sims.values():
            sim.stop()
        if stub is not None:
            stub.stop()
        if tls is not None:
            tls.stop()
        shutil.rmtree(folder, ignore_errors=True)

    print(table(records))
    print()
    pools = {r["client"]: r["connections_opened"] for r in records
             if "connections_opened" in r}
    print("Connections opened over all passes: "
          + ", ".join(f"{name} {count}" for name, count in pools.items()))
    failed = 0
    if results:
        print()
        print("| check | " + " | ".join(CLIENTS) + " |")
        print("|---|" + "---|" * len(CLIENTS))
        for i, item in enumerate(results[CLIENTS[0]]):
            cells = []
            for name in CLIENTS:
                result = results[name][i]
                failed += not result["ok"] and name != "requests"  # requests: today's
                cells.append(f"{'ok' if result['ok'] else 'FAIL'}: {result['seen']}")
            print(f"| {item['check']} | " + " | ".join(cells) + " |")

    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"upstream_client_cost-{started.strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps({
        "started": started.isoformat(timespec="seconds"), "commit": git_commit(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "loadavg": os.getloadavg()},
        "versions": versions(), "args": {k: str(v) for k, v in vars(args).items()},
        "passes": records, "checks": results}, indent=2))
    print(f"\nwritten: {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
