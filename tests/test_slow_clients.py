"""Slow, surplus and malformed clients meet the server's own limits, over real processes:
cut off after header_timeout_s, refused at once beyond worker_connections, and answered in
OpenAI's error shape (never HTML) for what gunicorn rejects before the app sees it."""

import json
import select
import selectors
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx2
import openai
import pytest

from tests.gateway_fixtures import MODEL, gateway_yaml
from tests.support.processes import wait_until

MESSAGES = [{"role": "user", "content": "hello"}]
# A request head that never ends: the last header's value grows by one byte per tick.
SLOW_HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Trickle: "


def exchange(port: int, payload: bytes, timeout: float = 5.0):
    """Send payload on a fresh connection; (status, headers, body, seconds) once the server
    closes it."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(payload)
        raw = b""
        while chunk := sock.recv(65536):
            raw += chunk
    return (*parse(raw), time.monotonic() - start)


def parse(raw: bytes):
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines[0] else 0
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def assert_openai_error(status, headers, body, expected_status, code, type_):
    assert status == expected_status, body
    assert headers["content-type"] == "application/json", (headers, body)
    assert headers["connection"] == "close"
    assert int(headers["content-length"]) == len(body)
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"], error["param"]) == (type_, code, None)
    assert error["message"]


class SlowClients:
    """``count`` connections that each send a partial request head, then one more byte per
    ``tick`` seconds; records what the server answered and when it closed each one."""

    def __init__(self, port: int, count: int, tick: float):
        self.tick = tick
        self.socks, self.opened = [], []
        self.received = [b""] * count
        self.closed_after: dict[int, float] = {}  # index -> seconds from open to close
        for _ in range(count):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(SLOW_HEAD)
            sock.setblocking(False)
            self.socks.append(sock)
            self.opened.append(time.monotonic())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)
        self._thread.start()

    def _trickle(self):
        selector = selectors.DefaultSelector()
        for i, sock in enumerate(self.socks):
            selector.register(sock, selectors.EVENT_READ, i)
        next_tick = time.monotonic() + self.tick
        while not self._stop.is_set() and selector.get_map():
            for key, _ in selector.select(max(0.0, next_tick - time.monotonic())):
                i = key.data
                try:
                    chunk = key.fileobj.recv(65536)
                except OSError:  # reset: closed too
                    chunk = b""
                if chunk:
                    self.received[i] += chunk
                    continue
                self.closed_after[i] = time.monotonic() - self.opened[i]
                selector.unregister(key.fileobj)
                key.fileobj.close()
            if time.monotonic() >= next_tick:
                next_tick += self.tick
                for key in list(selector.get_map().values()):
                    try:
                        key.fileobj.send(b"a")
                    except OSError:
                        pass  # the read side reports the close
        selector.close()

    def close(self):
        self._stop.set()
        self._thread.join()
        for sock in self.socks:
            sock.close()


def test_slow_headers_are_cut_off_and_normal_clients_still_served(start_sim, start_gateway):
    """200 slowloris connections against 50 slots: the first 50 hold them until
    header_timeout_s (1 s) cuts them off with a 408, the other 150 get 503 server_busy at
    once. Ten SDK clients that arrive meanwhile are refused with 503 server_busy while the
    slots are held, retry after its Retry-After (1 s), and are served: each completes
    with 200 in under 3 s."""
    sim = start_sim("--instant")
    gateway = start_gateway(gateway_yaml([sim], server=["worker_connections: 50",
                                                        "header_timeout_s: 1"]))
    attempts = []

    def record(response):
        response.read()
        attempts.append((response.status_code, response.headers, response.content))

    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, timeout=3.0,
                           max_retries=2,
                           http_client=httpx2.Client(event_hooks={"response": [record]}))

    def ask(_):
        start = time.monotonic()
        reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4)
        return reply, time.monotonic() - start

    slow = SlowClients(gateway.port, 200, tick=0.3)
    try:
        with ThreadPoolExecutor(10) as pool:
            answered = list(pool.map(ask, range(10)))
        wait_until(lambda: len(slow.closed_after) == 200, timeout=5)
    finally:
        slow.close()

    latencies = [seconds for _, seconds in answered]
    assert all(reply.choices[0].message.content for reply, _ in answered)
    assert max(latencies) < 3.0, latencies
    assert sorted(status for status, _, _ in attempts) == [200] * 10 + [503] * 10
    for status, headers, body in attempts:
        if status == 503:
            assert headers["retry-after"] == "1"
            assert json.loads(body)["error"]["code"] == "server_busy"
    # Slow clients: each closed by the server within header_timeout_s plus a 1 s margin,
    # after a 408 request_timeout or a 503 server_busy in OpenAI's shape; no more than
    # worker_connections of them were served.
    assert max(slow.closed_after.values()) < 2.0, sorted(slow.closed_after.values())[-5:]
    codes = [json.loads(parse(raw)[2])["error"]["code"] for raw in slow.received]
    assert set(codes) == {"request_timeout", "server_busy"}
    assert 0 < codes.count("request_timeout") <= 50


def test_connections_over_the_cap_are_refused_at_once(start_sim, start_gateway):
    sim = start_sim("--instant")
    gateway = start_gateway(gateway_yaml([sim], server=["worker_connections: 5",
                                                        "header_timeout_s: 10"]))
    # One holder more than the cap, in case the readiness probe's connection still counts.
    holders = [socket.create_connection(("127.0.0.1", gateway.port)) for _ in range(6)]
    try:
        for sock in holders:
            sock.sendall(SLOW_HEAD)
        status, headers, body, seconds = exchange(
            gateway.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n", timeout=3)
        assert_openai_error(status, headers, body, 503, "server_busy", "server_error")
        assert headers["retry-after"] == "1"
        assert seconds < 0.5
        with pytest.raises(openai.InternalServerError) as err:
            openai.OpenAI(base_url=gateway.url + "/v1", api_key=gateway.key, max_retries=0,
                          timeout=3).chat.completions.create(model=MODEL, messages=MESSAGES)
        assert err.value.status_code == 503 and err.value.code == "server_busy"
    finally:
        for sock in holders:
            sock.close()
    # Slots free again once the holders leave.
    wait_until(lambda: exchange(gateway.port, b"GET /health HTTP/1.1\r\nHost: x\r\n"
                                b"Connection: close\r\n\r\n")[0] == 200, timeout=3)


def read_response(sock):
    """One response with a Content-Length from a keep-alive connection."""
    raw = b""
    while b"\r\n\r\n" not in raw:
        raw += sock.recv(65536)
    status, headers, body = parse(raw)
    while len(body) < int(headers["content-length"]):
        body += sock.recv(65536)
    return status, headers, body


def test_keep_alive_connection_may_idle_but_not_trickle(start_sim, start_gateway):
    """On a keep-alive connection the head's clock starts at the next request's first byte:
    idling past header_timeout_s is gunicorn's keepalive's business, trickling is not."""
    sim = start_sim("--instant")
    gateway = start_gateway(gateway_yaml([sim], server=["header_timeout_s: 1"]))
    request = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as sock:
        sock.sendall(request)
        assert read_response(sock)[0] == 200
        time.sleep(1.5)  # idle past header_timeout_s: the subject here, not a wait
        sock.sendall(request)
        assert read_response(sock)[0] == 200
        time.sleep(0.5)  # idle, so a clock started at the last response would run out early
        started = time.monotonic()
        sock.sendall(SLOW_HEAD)
        raw = b""
        while time.monotonic() - started < 5:
            if not select.select([sock], [], [], 0.3)[0]:
                sock.sendall(b"a")  # one more byte of the head per 0.3 s of silence
                continue
            chunk = sock.recv(65536)
            if not chunk:
                break
            raw += chunk
        cut_after = time.monotonic() - started
    assert_openai_error(*parse(raw), 408, "request_timeout", "invalid_request_error")
    assert 0.9 < cut_after < 1.8, cut_after


@pytest.fixture(scope="module")
def gateway(instant_gateway):
    return instant_gateway


def test_header_line_too_large_is_answered_431_json(gateway):
    payload = (b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10240 + b"\r\n\r\n")
    status, headers, body, _ = exchange(gateway.port, payload)
    assert_openai_error(status, headers, body, 431, "request_header_too_large",
                        "invalid_request_error")


@pytest.mark.parametrize("payload, status, code", [
    (b"GARBAGE\r\n\r\n", 400, "invalid_http_request"),
    (b"GET /health HTTP/9.9\r\nHost: x\r\n\r\n", 400, "invalid_http_request"),
    (b"GET /health HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n", 400, "invalid_http_request"),
    (b"GET /" + b"a" * 10240 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "request_line_too_long"),
], ids=["request-line", "http-version", "header", "request-line-too-long"])
def test_malformed_requests_are_answered_in_openai_shape(gateway, payload, status, code):
    got_status, headers, body, _ = exchange(gateway.port, payload)
    assert_openai_error(got_status, headers, body, status, code, "invalid_request_error")
