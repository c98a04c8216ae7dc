"""Notice a client that hangs up while its request is still being worked on.

WSGI gives no signal when a client goes away; a server only learns it at its next
write. A watcher greenlet waits for the client socket to turn readable: once the
request body has been read, readable with nothing to read means the peer closed.
"""

import socket

import gevent
from gevent.socket import wait_read


def watch_disconnect(environ, on_disconnect):
    """Call ``on_disconnect()`` as soon as the client closes; returns a stop() function.

    Works under gunicorn (``gunicorn.socket`` in environ); elsewhere it watches nothing.
    Call it only after the request body has been read.
    """
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return _noop
    watcher = gevent.spawn(_watch, sock, on_disconnect)
    return lambda: watcher.kill(block=False)


def _watch(sock, on_disconnect):
    try:
        wait_read(sock.fileno())
        if sock.recv(1, socket.MSG_PEEK) != b"":
            return  # the client sent more (a pipelined request): it is still there
    except (OSError, ValueError):
        pass  # reset or closed under us: gone too
    on_disconnect()


def _noop():
    pass
