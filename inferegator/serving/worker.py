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
import signal
import socket
from http import HTTPStatus

import gevent
from gunicorn.config import Setting
from gunicorn.http.errors import LimitRequestLine
from gunicorn.workers.ggevent import GeventWorker

from ..errors import GatewayError
from ..sockets import os_socket, send_all

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


class _KeepAliveIdle(Exception):
    """Thrown into a connection's greenlet that waited for its next request longer than
    gunicorn's ``keepalive``; the connection then ends quietly."""


class ConnectionClock:
    """The clocks on one connection, made once and restarted for each request on it.

    - The request head's deadline (``header_timeout``): counted from accept for the first
      request, from the next request's first byte on a keep-alive connection; when it runs
      out, RequestHeadTimeout is thrown into the greenlet that serves the connection.
    - The keep-alive idle bound (gunicorn's ``keepalive``): used as gunicorn's
      ``timeout_ctx()`` around reading each next request; when it runs out the wait ends
      and gunicorn closes the connection, as with its own ``gevent.Timeout(keepalive,
      False)``, which this replaces with watchers made once per connection instead of a
      Timeout and a generator context per request.

    The timers are (re)started with ``again``, which counts from now also after a timer
    has fired (``start`` would fire at once then).
    """

    __slots__ = ("_greenlet", "_head_s", "_head", "_first_byte", "_idle", "_head_running")

    def __init__(self, header_timeout: float, keepalive: float, sock):
        loop = gevent.get_hub().loop
        self._greenlet = gevent.getcurrent()
        self._head_s = header_timeout
        self._head = loop.timer(header_timeout, header_timeout)
        self._first_byte = loop.io(sock.fileno(), 1)  # 1: readable
        self._idle = loop.timer(keepalive, keepalive) if keepalive else None
        self._head_running = False

    @property
    def idle(self) -> bool:
        """Waiting for a keep-alive connection's next request, of which no byte has come."""
        return self._first_byte.active

    def end_idle(self):
        """End the keep-alive wait now, as if its bound had run out (the worker stops)."""
        if self._first_byte.active:
            self._idle_over()

    @property
    def running(self) -> bool:
        """Whether the head's deadline is counting (or waits for the first byte)."""
        return self._head_running

    def start(self):
        """Start the head's deadline now."""
        self._head.again(self._head_late)
        self._head_running = True

    def start_on_first_byte(self):
        """Start the head's deadline once the socket turns readable: the next request has
        begun."""
        self._first_byte.start(self._on_first_byte)
        self._head_running = True

    def _on_first_byte(self):
        self._first_byte.stop()
        self._head.again(self._head_late)

    def _head_late(self):
        self._head.stop()
        self._greenlet.throw(RequestHeadTimeout(self._head_s))

    def _idle_over(self):
        if self._idle is not None:
            self._idle.stop()
        self._first_byte.stop()
        self._greenlet.throw(_KeepAliveIdle())

    def stop(self):
        """Stop the head's deadline (the head is complete)."""
        self._head.stop()
        self._first_byte.stop()
        self._head_running = False

    def close(self):
        for watcher in (self._head, self._first_byte, self._idle):
            if watcher is not None:
                watcher.stop()
                watcher.close()

    # -- gunicorn's timeout_ctx(): the keep-alive wait for the next request ----------------

    def __enter__(self):
        if not self._head_running:
            self.start_on_first_byte()
        if self._idle is not None:
            self._idle.again(self._idle_over)
        return self

    def __exit__(self, kind, value, traceback):
        if self._idle is not None:
            self._idle.stop()
        self.stop()
        return kind is _KeepAliveIdle  # the idle bound ran out: no next request


class HeadHoldingSocket:
    """The client socket as gunicorn writes one answer to it: the answer's head is held
    back and sent with the body's first bytes, in one send.

    gunicorn writes the head and the body with two sends; with Nagle on (gunicorn does not
    set TCP_NODELAY) the body then waits for the client's ACK of the head, and each send
    is a system call of its own. Anything other than a plain ``sendall`` of body bytes
    (``sendfile``, ``send``, ``close``...) sends the held head first; ``flush()`` at the
    end of the request sends it if no body followed. Writes skip gevent's ``sendall``
    where they can (``sockets.send_all``).
    """

    __slots__ = ("_sock", "_raw", "_held")

    def __init__(self, sock):
        self._sock = sock
        self._raw = os_socket(sock)
        self._held = None

    def sendall(self, data):
        held = self._held
        if held is not None:
            self._held = None
            data = held + data
        elif data[:5] == b"HTTP/" and data[9:10] != b"1" and data[-4:] == b"\r\n\r\n":
            self._held = bytes(data)  # a final answer's head (not a 1xx interim one)
            return
        if self._raw is None:
            self._sock.sendall(data)
        else:
            send_all(self._sock, data, self._raw)

    def flush(self):
        held = self._held
        if held is not None:
            self._held = None
            send_all(self._sock, held, self._raw)

    def __getattr__(self, name):
        if self._held is not None and name in _WRITES:
            self.flush()
        return getattr(self._sock, name)


# What else can write to (or end) the client socket: the held head goes out first.
_WRITES = frozenset(("send", "sendto", "sendmsg", "sendfile", "write", "close", "shutdown",
                     "detach", "makefile"))


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
        self._clocks = {}  # greenlet -> ConnectionClock: the connections being served

    def handle(self, listener, client, addr):
        if len(self._clocks) >= self.max_served:
            self.log.debug("Refused %s: %d connections served already", addr, self.max_served)
            client.setblocking(1)
            answer_and_close(client, render(BUSY))
            return
        greenlet = gevent.getcurrent()
        clock = self._clocks[greenlet] = ConnectionClock(self.cfg.header_timeout,
                                                         self.cfg.keepalive, client)
        clock.start()  # the first request's head: counted from accept
        try:
            super().handle(listener, client, addr)
        finally:
            clock.close()
            del self._clocks[greenlet]

    def init_process(self):
        # gunicorn installs a worker's signal handlers only after gevent's patching and the
        # rest of its setup; until then the handlers inherited from the master queue a
        # signal for the master's loop, which this process never runs. A stop sent then
        # was lost, and the worker served on until graceful_timeout's SIGKILL.
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            signal.signal(sig, self._stop_while_booting)
        super().init_process()

    def _stop_while_booting(self, sig, frame):
        self.alive = False  # run() then stops at once, as after a SIGTERM

    def handle_exit(self, sig, frame):
        """SIGTERM (a stop, or the old workers of a reload): gunicorn stops accepting and
        lets requests in flight finish, streams included; each connection closes after its
        answer. Idle keep-alive connections end now, not at graceful_timeout: they would
        hold the worker that long and then be cut, perhaps under a request just sent."""
        super().handle_exit(sig, frame)
        if self._clocks:  # none while the worker boots, before gevent's hub is its own
            gevent.get_hub().loop.run_callback(self._end_idle_connections)
    def _end_idle_connections(self):
        for clock in list(self._clocks.values()):
            clock.end_idle()

    def timeout_ctx(self):
        """gunicorn reads each keep-alive request head inside this: its idle bound, and ours."""
        return self._clocks[gevent.getcurrent()]

    def handle_request(self, listener_name, req, sock, addr):
        # The head is complete (with keepalive 0, gunicorn read it outside timeout_ctx).
        self._clocks[gevent.getcurrent()].stop()
        held = HeadHoldingSocket(sock)
        try:
            return super().handle_request(listener_name, req, held, addr)
        finally:
            held.flush()

    def handle_http2(self, listener, client, addr, *args, **kwargs):
        self._clocks[gevent.getcurrent()].stop()  # HTTP/2 has its own flow control
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
            # gunicorn before 27 answers an over-long request line 400; it is a 414
            status = 414 if isinstance(exc, LimitRequestLine) else capture.status
            error = gunicorn_error(status, exc)
        answer_and_close(client, render(error))
