"""Writing to a gevent socket without gevent's per-call overhead.

gevent's ``sendall`` asks the kernel for the socket's SO_SNDBUF on every call (one more
system call per answer and per streamed event) and slices the data through a memoryview
loop. A small write almost always fits the socket's buffer at once, so ``send_all`` tries
one non-blocking send on the OS socket first and hands gevent only what did not fit.
"""

from gevent.socket import socket as GeventSocket


def os_socket(sock):
    """The non-blocking OS socket under a plain gevent socket, or None (a TLS socket, or
    anything else, is written through its own ``sendall``)."""
    return sock._sock if type(sock) is GeventSocket else None


def send_all(sock, data, raw=None) -> None:
    """Write all of ``data`` to gevent socket ``sock`` (``raw``: its os_socket(), if known)."""
    if raw is None:
        raw = os_socket(sock)
        if raw is None:
            sock.sendall(data)
            return
    try:
        sent = raw.send(data)
    except BlockingIOError:
        sent = 0
    if sent < len(data):
        sock.sendall(memoryview(data)[sent:])  # waits for room, as sendall does
