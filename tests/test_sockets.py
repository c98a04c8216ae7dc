"""sockets.send_all: every byte, in order, also when the socket's buffer is full."""

import socket

import gevent
import gevent.event
import gevent.socket

from inferegator.sockets import os_socket, send_all


def test_a_write_larger_than_the_buffer_arrives_whole_and_in_order():
    left, right = gevent.socket.socketpair()
    left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    data = bytes(range(256)) * 8192  # 2 MiB: far more than one send takes

    def read_all():
        parts, size = [], 0
        while size < len(data):
            part = right.recv(65536)
            parts.append(part)
            size += len(part)
            gevent.sleep(0)  # a slow reader: the writer finds the buffer full
        return b"".join(parts)

    reader = gevent.spawn(read_all)
    assert os_socket(left) is not None
    send_all(left, data)
    assert reader.get(timeout=30) == data
    left.close()
    right.close()


def test_small_writes_go_out_as_they_are():
    left, right = gevent.socket.socketpair()
    for piece in (b"data: one\n\n", b"data: two\n\n"):
        send_all(left, piece)
    assert right.recv(100) == b"data: one\n\ndata: two\n\n"
    left.close()
    right.close()


def test_the_disconnect_watch_reads_the_os_socket_under_the_workers_wrapper():
    from inferegator.serving.disconnect import watch_disconnect
    from inferegator.serving.worker import HeadHoldingSocket

    left, right = gevent.socket.socketpair()
    gone = gevent.event.Event()
    stop = watch_disconnect({"gunicorn.socket": HeadHoldingSocket(left)}, gone.set)
    right.send(b"GET / HTTP/1.1\r\n")  # a pipelined request: readable, but still there
    assert not gone.wait(0.2)
    stop()
    left.close()
    right.close()
    left, right = gevent.socket.socketpair()
    stop = watch_disconnect({"gunicorn.socket": HeadHoldingSocket(left)}, gone.set)
    right.close()  # hung up: readable with nothing to read
    assert gone.wait(5)
    stop()
    left.close()
