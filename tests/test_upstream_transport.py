"""The hot path's upstream client (backends/transport.py) against real servers: what the
pipeline relies on it for, seen from the wire.

Keep-alive and the pool's bound, events as they arrive, an unfinished answer's connection
closed (the backend sees the hang-up), each failure reported as its kind, an error body
read ahead and read again, and no header injection.
"""

import json

import gevent
import pytest

from inferegator.backends.transport import GeventHttpTransport, TransportError
from tests.support.hostile_backend import HostileBackend
from tests.support.processes import free_port, wait_until

CHAT = "/v1/chat/completions"


def chat_body(stream=False, **extra) -> bytes:
    return json.dumps({"model": "sim-model", "max_tokens": 8, "stream": stream,
                       "messages": [{"role": "user", "content": "hi"}], **extra}).encode()


@pytest.fixture(scope="module")
def hostile():
    server = HostileBackend("ok")
    yield server
    server.stop()


class Interrupted(Exception):
    """Raised into a waiting greenlet, as ClientDisconnected or a deadline is."""


def read_all(response) -> bytes:
    return b"".join(response.iter_content(None))


def test_sequential_requests_share_one_kept_alive_connection(start_sim):
    sim = start_sim("--decode-ms-per-token", "5")  # a stream's events come apart
    transport = GeventHttpTransport(sim.url, pool_size=4)
    for _ in range(5):
        response = transport.post(CHAT, chat_body())
        assert response.status_code == 200
        assert response.headers.get("content-type").startswith("application/json")
        assert json.loads(read_all(response))["object"] == "chat.completion"
        assert response.finished
    streamed = transport.post(CHAT, chat_body(stream=True), stream=True)
    events = [piece for piece in streamed.iter_content(None)]
    assert b"".join(events).rstrip().endswith(b"data: [DONE]")
    assert len(events) > 1  # yielded as they came, not gathered into one block
    assert streamed.finished
    assert transport.connections_opened == 1
    transport.close()


def test_beyond_the_pool_extra_connections_open_and_only_pool_size_stay(start_sim):
    # paced, so that no stream has ended (and pooled its connection) before the next opens
    sim = start_sim("--decode-ms-per-token", "20")
    transport = GeventHttpTransport(sim.url, pool_size=2)
    open_streams = [transport.post(CHAT, chat_body(stream=True, max_tokens=16), stream=True)
                    for _ in range(4)]
    assert transport.connections_opened == 4  # nobody waited for a pooled connection
    for response in open_streams:
        read_all(response)
    for _ in range(2):  # two kept, reused one after the other
        read_all(transport.post(CHAT, chat_body()))
    assert transport.connections_opened == 4
    at_once = [transport.post(CHAT, chat_body(stream=True, max_tokens=16), stream=True)
               for _ in range(3)]
    assert transport.connections_opened == 5  # the two kept, one new
    for response in at_once:
        read_all(response)
    transport.close()


def test_an_unfinished_answer_closed_hangs_up_on_the_backend(hostile):
    transport = GeventHttpTransport(hostile.url)
    rid = "0e9f8a3c-1111-4222-8333-444455556666"
    response = transport.post(CHAT, chat_body(stream=True, hostile_mode="endless_events"),
                              {"X-Request-ID": rid}, stream=True)
    pieces = response.iter_content(None)
    assert next(pieces).startswith(b"data: ")
    assert rid in hostile.stats()["active"]
    response.close()
    assert not response.finished
    wait_until(lambda: rid not in hostile.stats()["active"], timeout=10)
    assert transport.post(CHAT, chat_body()).status_code == 200
    assert transport.connections_opened == 2  # the closed one was not pooled again


def test_nothing_listening_is_refused():
    transport = GeventHttpTransport(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(TransportError) as raised:
        transport.post(CHAT, chat_body())
    assert raised.value.kind == "refused" and raised.value.refused


def test_a_backend_hanging_up_without_an_answer_is_broken(hostile):
    transport = GeventHttpTransport(hostile.url)
    with pytest.raises(TransportError) as raised:
        transport.post(CHAT, chat_body(hostile_mode="hang_up"))
    assert raised.value.kind == "broken" and not raised.value.refused


def test_silence_longer_than_the_read_timeout_is_a_read_timeout(hostile):
    transport = GeventHttpTransport(hostile.url, read_timeout=0.05)
    response = transport.post(CHAT, chat_body(stream=True, hostile_mode="trickle_late"),
                              stream=True)
    with pytest.raises(TransportError) as raised:
        read_all(response)
    assert raised.value.kind == "read_timeout" and raised.value.timeout
    response.close()


def test_a_kill_while_waiting_is_raised_and_leaks_no_connection(hostile):
    transport = GeventHttpTransport(hostile.url)
    rid = "0e9f8a3c-2222-4222-8333-444455556666"
    response = transport.post(CHAT, chat_body(stream=True, hostile_mode="trickle_late"),
                              {"X-Request-ID": rid}, stream=True)
    reader = gevent.spawn(read_all, response)
    wait_until(lambda: rid in hostile.stats()["active"], timeout=10)
    gevent.kill(reader, Interrupted)  # what the client watch does, with its own error
    assert isinstance(reader.exception, Interrupted)
    response.close()
    wait_until(lambda: rid not in hostile.stats()["active"], timeout=10)


def test_an_error_body_read_ahead_is_read_again_whole(sim):
    transport = GeventHttpTransport(sim.url)
    whole = read_all(transport.post(CHAT, chat_body(max_tokens=-1), stream=True))
    response = transport.post(CHAT, chat_body(max_tokens=-1), stream=True)
    assert response.status_code == 400
    assert response.preload(10) == whole[:10]
    assert read_all(response) == whole
    assert json.loads(whole)["object"] == "error"


@pytest.mark.parametrize("headers", [{"X-Evil": "a\r\nX-Injected: 1"},
                                     {"X-Evil\r\nX-Injected": "1"}])
def test_a_header_that_would_inject_another_is_refused_before_sending(sim, headers):
    transport = GeventHttpTransport(sim.url)
    with pytest.raises(ValueError):
        transport.post(CHAT, chat_body(), headers)
    assert transport.connections_opened == 0


def test_a_backend_that_never_answers_hits_the_read_timeout():
    import socket
    import time

    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)  # the kernel accepts the connection; nobody ever answers
    transport = GeventHttpTransport(f"http://127.0.0.1:{silent.getsockname()[1]}",
                                    read_timeout=0.1)
    started = time.monotonic()
    with pytest.raises(TransportError) as raised:
        transport.post(CHAT, chat_body())
    assert raised.value.kind == "read_timeout"
    assert 0.1 <= time.monotonic() - started < 2
    silent.close()
