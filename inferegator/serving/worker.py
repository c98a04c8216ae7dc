"""The gevent worker the gateway and the simulator run: gunicorn's, with limits on slow and
surplus clients, and OpenAI-shaped JSON for the errors gunicorn answers before the app.

- A request head (request line and headers) must be complete ``header_timeout`` seconds
  after the connection was accepted, or, on a keep-alive connection, after the next
  request's first byte arrived (until then gunicorn's own ``keepalive`` bounds the idle
  wait). Trickling bytes does not move the deadline; a late client gets a 408 and is closed.
- At most ``worker_connections`` connections are served at once. gevent's pool gets room
  beyond that, so a surplus connection is accepted and refused at once with a 503
  ``server_busy`` instead of waiting unseen in the listen backlog.
- What gunicorn rejects itself (bad request line, header, HTTP version, oversized line or
  headers...) is answered as ``{"error": {...}}`` JSON with the status gunicorn chose.

``header_timeout`` is a gunicorn setting registered here (``HeaderTimeout``), so it travels
in the options dict like gunicorn's own; importing this module registers it, and
gunicorn_app does so before any gunicorn Config exists.
"""

import json
import socket
from contextlib import contextmanager
from http import HTTPStatus

import gevent
from gunicorn.config import Setting
from gunicorn.workers.ggevent import GeventWorker

from ..errors import GatewayError

# After a final answer the client gets this long (and this much input) to hang up before
# the socket is closed: closing on unread input sends a reset, and a reset can destroy the
# answer before the client has read it.
LINGER_S = 1.0
LINGER_BYTES = 256 * 1024

BUSY = GatewayError(503, "The server is at its connection limit. Please retry shortly.",
                    "server_error", "server_busy", headers={"Retry-After": "1"})
# Codes for the statuses gunicorn answers; others: invalid_http_request or internal_error.
CODES = {403: "forbidden", 408: "request_timeout", 414: "request_line_too_long",
         417: "expectation_failed", 431: "request_header_too_large",
         501: "unsupported_transfer_coding"}


def _positive_float(value) -> float:
    value = float(value)
    if not value > 0:
        raise ValueError(f"must be a number above 0, got {value}")
    return value


class HeaderTimeout(Setting):
    name = "header_timeout"
    section = "Inferegator"
    meta = "FLOAT"
    validator = _positive_float
    type = float
    default = 10.0
    desc = """Seconds a client has to send its request line and headers."""


class RequestHeadTimeout(Exception):
    """Thrown into a connection's greenlet when its request head is late."""


class HeadDeadline:
    """The clock on one connection's request head; when it runs out, it throws
    RequestHeadTimeout into the greenlet that serves the connection."""

    def __init__(self, seconds: float, sock):
        self.seconds = seconds
        self._greenlet = gevent.getcurrent()
        self._loop = gevent.get_hub().loop
        self._fileno = sock.fileno()
        self._timer = self._watcher = None

    @property
    def running(self) -> bool:
        return self._timer is not None or self._watcher is not None

    def start(self):
        self._timer = self._loop.timer(self.seconds)
        self._timer.start(self._greenlet.throw, RequestHeadTimeout(self.seconds))

    def start_on_first_byte(self):
        """Start the clock once the socket turns readable: the next request has begun."""
        self._watcher = self._loop.io(self._fileno, 1)  # 1: readable
        self._watcher.start(self._first_byte)

    def _first_byte(self):
        self._watcher.stop()
        self.start()

    def stop(self):
        for watcher in (self._timer, self._watcher):
            if watcher is not None:
                watcher.stop()
                watcher.close()
        self._timer = self._watcher = None


def render(error: GatewayError) -> bytes:
    """A whole HTTP/1.1 response carrying ``error`` in OpenAI's shape; it closes."""
    body = json.dumps(error.body()).encode()
    head = [f"HTTP/1.1 {error.status} {HTTPStatus(error.status).phrase}",
            "Content-Type: application/json", f"Content-Length: {len(body)}",
            "Connection: close", *(f"{k}: {v}" for k, v in error.headers.items())]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


def answer_and_close(sock, response: bytes):
    """Send a final response, then drain the client's input (bounded) until it hangs up."""
    try:
        with gevent.Timeout(LINGER_S, False):
            sock.sendall(response)
            sock.shutdown(socket.SHUT_WR)
            drained = 0
            while drained < LINGER_BYTES and (chunk := sock.recv(65536)):
                drained += len(chunk)
    except OSError:
        pass
    finally:
        sock.close()


def gunicorn_error(status: int, exc: BaseException) -> GatewayError:
    """The error gunicorn answered ``status`` for, as a GatewayError; no details for a 500."""
    if status == 500:
        return GatewayError(500, "The server had an error while processing your request.",
                            "server_error", "internal_error")
    client_error = status < 500
    return GatewayError(status, f"{HTTPStatus(status).phrase}: {str(exc)[:200]}",
                        "invalid_request_error" if client_error else "server_error",
                        CODES.get(status, "invalid_http_request" if client_error
                                  else "internal_error"))


class _StatusCapture:
    """Stands in for the client socket while gunicorn writes its HTML error page, to learn
    the status gunicorn chose for the error."""

    status = 500

    def gettimeout(self):
        return 0.0  # "non-blocking": gunicorn then writes with a plain sendall()

    def sendall(self, data: bytes):
        status_line = data.split(b"\r\n", 1)[0].split()  # HTTP/1.1 400 Bad Request
        if len(status_line) > 1 and status_line[1].isdigit():
            self.status = int(status_line[1])


class BoundedGeventWorker(GeventWorker):
    """gunicorn's gevent worker with a request-head deadline, a connection cap that refuses
    cleanly, and JSON error answers."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.max_served = self.cfg.worker_connections
        # The size of gevent's pool: room beyond the cap to accept surplus clients and refuse
        # them, each of which holds a greenlet for at most LINGER_S.
        self.worker_connections = self.max_served + max(self.max_served, 100)
        self._deadlines = {}  # greenlet -> HeadDeadline: the connections being served

    def handle(self, listener, client, addr):
        if len(self._deadlines) >= self.max_served:
            self.log.debug("Refused %s: %d connections served already", addr, self.max_served)
            client.setblocking(1)
            answer_and_close(client, render(BUSY))
            return
        greenlet = gevent.getcurrent()
        deadline = self._deadlines[greenlet] = HeadDeadline(self.cfg.header_timeout, client)
        deadline.start()  # the first request's head: counted from accept
        try:
            super().handle(listener, client, addr)
        finally:
            deadline.stop()
            del self._deadlines[greenlet]

    @contextmanager
    def timeout_ctx(self):
        """gunicorn reads each keep-alive request head inside this: its idle bound, and ours."""
        deadline = self._deadlines[gevent.getcurrent()]
        if not deadline.running:
            deadline.start_on_first_byte()
        try:
            with super().timeout_ctx():
                yield
        finally:
            deadline.stop()

    def handle_request(self, listener_name, req, sock, addr):
        # The head is complete (with keepalive 0, gunicorn read it outside timeout_ctx).
        self._deadlines[gevent.getcurrent()].stop()
        return super().handle_request(listener_name, req, sock, addr)

    def handle_http2(self, listener, client, addr, *args, **kwargs):
        self._deadlines[gevent.getcurrent()].stop()  # HTTP/2 has its own flow control
        return super().handle_http2(listener, client, addr, *args, **kwargs)

    def handle_error(self, req, client, addr, exc):
        if isinstance(exc, RequestHeadTimeout):
            self.log.debug("Request head from %s not complete after %ss", addr, exc.args[0])
            error = GatewayError(408, f"The request line and headers did not arrive within "
                                      f"{exc.args[0]} seconds.", "invalid_request_error",
                                 "request_timeout")
        else:
            capture = _StatusCapture()
            super().handle_error(req, capture, addr, exc)  # logs it, picks the status
            error = gunicorn_error(capture.status, exc)
        answer_and_close(client, render(error))
