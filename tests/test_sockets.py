"""sockets.send_all: every byte, in order, also when the socket's buffer is full."""

import socket

import gevent
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
