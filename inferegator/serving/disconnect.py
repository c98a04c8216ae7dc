"""Notice a client that hangs up while its request is still being worked on.

WSGI gives no signal when a client goes away; a server only learns it at its next
write. A watcher greenlet waits for the client socket to turn readable: once the
request body has been read, readable with nothing to read means the peer closed.
"""

import _socket
import errno
import socket

import gevent


def watch_disconnect(environ, on_disconnect):
    """Call ``on_disconnect()`` as soon as the client closes; returns a stop() function.

    Works under gunicorn (``gunicorn.socket`` in environ); elsewhere it watches nothing.
    Call it only after the request body has been read. It costs one event-loop watcher,
    no greenlet: the callback runs in the hub and must not block.
    """
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return _noop
    raw = sock
    while not isinstance(raw, _socket.socket):  # under the worker's and gevent's wrappers
        raw = raw._sock
    watcher = gevent.get_hub().loop.io(sock.fileno(), 1)  # 1: readable

    def readable():
        try:
            data = raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return  # spurious wake-up: keep watching
        except OSError:
            data = b""  # reset: gone too
        watcher.stop()
        if data == b"":
            on_disconnect()
        # else: the client sent more (a pipelined request): it is still there

    watcher.start(readable)

    def stop():
        watcher.stop()
        watcher.close()

    return stop


class ClientDisconnected(ConnectionResetError):
    """Raised into a request's greenlet when its client hangs up while it waits upstream.

    A ConnectionResetError, so that if it lands in gunicorn's own write path instead,
    gunicorn treats it as the ordinary reset it is.
    """

    def __init__(self):
        super().__init__(errno.ECONNRESET, "client disconnected")


class ClientWatch:
    """Interrupts the current greenlet's upstream wait when the client goes away, or when
    the upstream's deadline passes.

    Set ``waiting = True`` around blocking upstream reads; outside them a departed
    client only sets ``gone`` (the next write to it fails on its own) and a passed
    deadline only sets ``expired`` (the relay checks it between chunks). Both use
    event-loop watchers, not greenlets.
    """

    __slots__ = ("gone", "expired", "waiting", "_greenlet", "_stop", "_timer", "_on_expiry")

    def __init__(self, environ):
        self.gone = False
        self.expired = False
        self.waiting = False
        self._greenlet = gevent.getcurrent()
        self._stop = watch_disconnect(environ, self._on_gone)
        self._timer = None
        self._on_expiry = None

    def _on_gone(self):
        self.gone = True
        if self.waiting:
            gevent.kill(self._greenlet, ClientDisconnected())

    def arm(self, seconds: float, exception) -> None:
        """Raise ``exception()`` into the upstream wait ``seconds`` from now (re-arming moves
        the deadline); the exception is made only if the deadline passes."""
        if self._timer is not None:
            self._timer.stop()
            self._timer.close()
        self._timer = gevent.get_hub().loop.timer(seconds)
        self.expired = False
        self._on_expiry = exception
        self._timer.start(self._expire)

    def _expire(self):
        self.expired = True
        if self.waiting:
            gevent.kill(self._greenlet, self._on_expiry())

    def close(self):
        """Stop watching (idempotent)."""
        self._stop()
        self._stop = _noop
        if self._timer is not None:
            self._timer.stop()
            self._timer.close()
            self._timer = None


def _noop():
    pass
