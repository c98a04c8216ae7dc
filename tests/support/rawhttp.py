"""Many truly concurrent HTTP/1.1 requests from one thread: one socket each, selectors.

All requests are written before any answer is read, so the server sees them at once.
"""

import json
import selectors
import socket


def post_many(port: int, path: str, bodies: list[dict], headers: dict, timeout: float = 60.0):
    """POST each body on its own connection; returns [(status, headers, body bytes)]."""
    sel = selectors.DefaultSelector()
    results: list = [None] * len(bodies)
    buffers = {}
    for i, body in enumerate(bodies):
        payload = json.dumps(body).encode()
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{head}"
                     f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
                     .encode() + payload)
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, i)
        buffers[i] = bytearray()
    open_count = len(bodies)
    while open_count:
        events = sel.select(timeout)
        if not events:
            raise TimeoutError(f"{open_count} answers missing after {timeout}s")
        for key, _ in events:
            i = key.data
            chunk = key.fileobj.recv(65536)
            if chunk:
                buffers[i] += chunk
                continue
            sel.unregister(key.fileobj)
            key.fileobj.close()
            open_count -= 1
            results[i] = _parse(bytes(buffers[i]))
    return results


def _parse(raw: bytes):
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0] else 0
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body
