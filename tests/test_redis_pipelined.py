"""PipelinedRedis (one shared, pipelined connection per process) and RedisWindowStore over
it, against real private redis-servers: concurrency, fire-and-forget, errors, timeouts,
reconnects, NOSCRIPT, AUTH, unix sockets, and rediss:// (which stays on redis-py).

This process is not monkey-patched: calls from the main greenlet run the hub while they
wait (the gateway's patched workers are covered by test_rate_limits.py)."""

import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid

import gevent
import pytest
import redis

from inferegator.ratelimit.resp import (
    PipelinedRedis,
    RedisReplyError,
    RedisUnavailable,
    pack,
    parse,
    parse_url,
)
from inferegator.ratelimit.stores import ADMIT, Limit, RedisWindowStore, StoreUnavailable
from tests.support.processes import free_port, wait_until

MINUTE_MS = 60_000


def unique(name="k"):
    return f"{name}-{uuid.uuid4().hex[:12]}"


def limits_of(key_id, requests=1, tokens=0, rpm=3, tpm=100):
    base = f"rl:{{{key_id}}}"
    return [Limit(base + ":requests", rpm, requests), Limit(base + ":tokens", tpm, tokens)]


def served(predicate, timeout=10):
    """Poll predicate until true, letting the hub run between polls (this process is not
    monkey-patched: a blocking redis-py read would keep queued commands from going out)."""
    def check():
        gevent.idle()
        return predicate()

    return wait_until(check, timeout=timeout)


class OwnRedis:
    """A private redis-server that a test may pause, kill and start again on its port."""

    def __init__(self, *flags, port=None, password=None, unixsocket=None, tls=None):
        self.port = free_port() if port is None else port
        self.flags, self.password, self.unixsocket, self.tls = flags, password, unixsocket, tls
        self.dir = tempfile.mkdtemp(prefix="inferegator-redis-")
        self.proc = None
        self.start()

    def admin(self, db=0) -> redis.Redis:
        if self.unixsocket:
            return redis.Redis(unix_socket_path=self.unixsocket, password=self.password, db=db)
        if self.tls:
            return redis.Redis(port=self.port, password=self.password, db=db, ssl=True,
                               ssl_cert_reqs=None)
        return redis.Redis(port=self.port, password=self.password, db=db)

    def start(self) -> None:
        port = ["--port", "0", "--tls-port", str(self.port)] if self.tls else [
            "--port", "0" if self.unixsocket else str(self.port)]
        self.proc = subprocess.Popen(
            [shutil.which("redis-server") or "/usr/bin/redis-server", *port,
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", self.dir,
             "--loglevel", "warning", *self.flags],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        client = self.admin()

        def answers():
            try:
                return client.ping()
            except redis.ConnectionError:
                if self.proc.poll() is not None:
                    raise RuntimeError("redis-server exited") from None
                return False

        wait_until(answers, timeout=20, interval=0.02)
        client.close()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused one cannot handle SIGTERM
            self.proc.terminate()
            self.proc.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def own_redis():
    started = []

    def start(*flags, **kwargs):
        server = OwnRedis(*flags, **kwargs)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


# -- the protocol, without a server -------------------------------------------------------

def test_replies_parse_whole_and_split_anywhere():
    stream = (b"+OK\r\n:-42\r\n$5\r\nhe\r\nl\r\n$-1\r\n*-1\r\n-ERR no\r\n$0\r\n\r\n"
              b"*3\r\n:1\r\n*2\r\n$1\r\nx\r\n-WRONGTYPE inner\r\n*0\r\n")
    expected = ["OK", -42, b"he\r\nl", None, None, RedisReplyError("ERR no"), b"",
                [1, [b"x", RedisReplyError("WRONGTYPE inner")], []]]

    def replies(data):
        out, pos = [], 0
        while pos < len(data):
            value, end = parse(data, pos)
            if end < 0:
                return out, data[pos:]
            out.append(value)
            pos = end
        return out, b""

    def same(got):  # by repr: exceptions compare by identity
        assert repr(got) == repr(expected)
        return True

    assert same(replies(stream)[0])
    for cut in range(1, len(stream)):  # as recv() may hand it over: in two pieces
        first, rest = replies(stream[:cut])
        second, left = replies(rest + stream[cut:])
        assert left == b"" and same(first + second), cut
    assert pack(("SET", b"k\r\n", 12, "é")) == (
        b"*4\r\n$3\r\nSET\r\n$3\r\nk\r\n\r\n$2\r\n12\r\n$2\r\n\xc3\xa9\r\n")
    with pytest.raises(TypeError):
        pack(("SET", "k", 1.5))


def test_urls():
    assert parse_url("redis://127.0.0.1:6380/2") == {
        "address": ("127.0.0.1", 6380), "db": 2, "username": None, "password": None}
    assert parse_url("redis://:p%40ss@cache") == {
        "address": ("cache", 6379), "db": 0, "username": None, "password": "p@ss"}
    assert parse_url("redis://app:pw@h:1?db=5") == {
        "address": ("h", 1), "db": 5, "username": "app", "password": "pw"}
    assert parse_url("unix:///run/redis.sock?db=3") == {
        "address": "/run/redis.sock", "db": 3, "username": None, "password": None}
    for bad in ("rediss://h:6379/0", "http://h", "unix://", "redis://h/0?socket_timeout=1"):
        with pytest.raises(ValueError):
            parse_url(bad)
    with pytest.raises(ValueError):
        RedisWindowStore("rediss://h:6379/0", pipelined=True)


# -- one client, many greenlets -----------------------------------------------------------

def test_many_greenlets_get_their_own_replies_in_few_writes(redis_server):
    client = PipelinedRedis(redis_server.url)
    assert client.call("PING") == "PONG"
    writes, prefix = client.writes, unique("n")

    def count(i):
        assert client.call("INCRBY", f"{prefix}:{i}", i + 1) == i + 1
        assert client.call("GET", f"{prefix}:{i}") == str(i + 1).encode()
        return i

    jobs = [gevent.spawn(count, i) for i in range(200)]
    gevent.joinall(jobs, raise_error=True)
    assert [job.value for job in jobs] == list(range(200))
    written = client.writes - writes
    assert written < 400 / 4, written  # 400 commands, batched per loop iteration
    assert client.connects == 1
    client.close()


def test_a_large_command_is_written_in_parts_and_the_rest_still_answer(redis_server):
    client = PipelinedRedis(redis_server.url, timeout_s=5)
    key, value = unique("big"), os.urandom(8 << 20)
    client.call("PING")
    writes = client.writes
    small = [gevent.spawn(client.call, "ECHO", str(i)) for i in range(20)]
    big = gevent.spawn(client.call, "SET", key, value)
    later = [gevent.spawn(client.call, "ECHO", str(i)) for i in range(20, 40)]
    gevent.joinall(small + [big] + later, raise_error=True)
    assert big.value == "OK" and [job.value for job in small + later] == [
        str(i).encode() for i in range(40)]
    assert client.writes - writes > 1  # more than a socket buffer: the write watcher's part
    assert client.call("GET", key) == value
    assert client.connects == 1
    client.close()


def test_fire_and_forget_commands_take_effect(redis_server):
    client = PipelinedRedis(redis_server.url)
    client.call("PING")
    key, writes = unique("ff"), client.writes
    for i in range(50):
        client.send("RPUSH", key, i)
    assert client.writes == writes  # queued, not waited for: written once the hub runs
    assert served(lambda: redis_server.client.llen(key) == 50)
    assert redis_server.client.lrange(key, 0, -1) == [str(i).encode() for i in range(50)]
    assert client.writes == writes + 1
    client.close()


def test_an_error_reply_reaches_only_its_caller(redis_server, caplog):
    client = PipelinedRedis(redis_server.url)
    text, prefix = unique("text"), unique("c")
    client.call("SET", text, "not a number")

    def incr(i):
        return client.call("INCR", f"{prefix}:{i}")

    jobs = [gevent.spawn(incr, i) for i in range(30)]
    wrong = gevent.spawn(client.call, "INCR", text)
    unknown = gevent.spawn(client.call, "NO-SUCH-COMMAND")
    jobs += [gevent.spawn(incr, i) for i in range(30, 60)]
    gevent.joinall(jobs + [wrong, unknown])
    assert [job.value for job in jobs] == [1] * 60
    assert isinstance(wrong.exception, RedisReplyError) and "integer" in str(wrong.exception)
    assert isinstance(unknown.exception, RedisReplyError)
    assert "unknown command" in str(unknown.exception)
    # a failing fire-and-forget command is logged (once for a burst), nothing else changes
    with caplog.at_level(logging.WARNING, logger="inferegator.ratelimit.resp"):
        for _ in range(3):
            client.send("INCR", text)
        assert client.call("ECHO", "after") == b"after"  # its reply came after theirs
    lines = [r.getMessage() for r in caplog.records if r.name == "inferegator.ratelimit.resp"]
    assert len(lines) == 1 and "not an integer" in lines[0], lines
    assert client.connects == 1
    client.close()


# -- failures: timeouts and reconnects ----------------------------------------------------

def test_a_paused_redis_gives_store_unavailable_within_the_timeout(own_redis):
    server, timeout_s = own_redis(), 0.3
    store = RedisWindowStore(f"redis://127.0.0.1:{server.port}/0", timeout_s=timeout_s)
    key = unique()
    assert store.admit(limits_of(key), unique("m"), MINUTE_MS).admitted

    def admit():
        started = time.monotonic()
        with pytest.raises(StoreUnavailable):
            store.admit(limits_of(key), unique("m"), MINUTE_MS)
        return time.monotonic() - started

    server.proc.send_signal(signal.SIGSTOP)
    try:
        jobs = [gevent.spawn(admit) for _ in range(20)]
        gevent.joinall(jobs, raise_error=True)
        took = [job.value for job in jobs]
        assert all(timeout_s * 0.9 <= t < 3 * timeout_s for t in took), took
        # still paused: the kernel accepts the new connection, Redis never answers
        assert admit() < 3 * timeout_s
    finally:
        server.proc.send_signal(signal.SIGCONT)
    # (what was sent before the timeout runs now: "unavailable" does not mean "not done")
    assert store.admit(limits_of(unique()), unique("m"), MINUTE_MS).used[0] == 1
    store.close()


def test_a_redis_killed_and_restarted_on_its_port_is_reconnected(own_redis):
    server = own_redis()
    store = RedisWindowStore(f"redis://127.0.0.1:{server.port}/0")
    key = unique()
    assert store.admit(limits_of(key), unique("m"), MINUTE_MS).used[0] == 1
    server.kill()
    server.start()  # an empty Redis: the old connection is dead, the scripts unknown
    assert store.admit(limits_of(key), unique("m"), MINUTE_MS).used[0] == 1

    server.kill()
    with pytest.raises(StoreUnavailable):
        store.admit(limits_of(key), unique("m"), MINUTE_MS)
    with pytest.raises(StoreUnavailable):  # refused again: no connection to queue it on
        store.reconcile(limits_of(key)[1].key, "m", 0)
    server.start()
    assert store.admit(limits_of(key), unique("m"), MINUTE_MS).used[0] == 1
    store.close()


@pytest.mark.parametrize("pipelined", [True, False], ids=["pipelined", "redis-py"])
def test_scripts_flushed_from_redis_are_loaded_again(redis_server, pipelined):
    store = RedisWindowStore(redis_server.url, pipelined=pipelined)
    admin, key = redis_server.client, unique()
    requests_limit, tokens_limit = limits_of(key, tokens=30)
    first, second = unique("m"), unique("m")
    assert store.admit(limits_of(key, tokens=30), first, MINUTE_MS).admitted
    admin.script_flush()
    assert store.admit(limits_of(key, tokens=30), second, MINUTE_MS).used == [2, 60]
    assert admin.script_exists(ADMIT.sha) == [True]

    admin.script_flush()
    store.reconcile(tokens_limit.key, first, 12)  # fire-and-forget: NOSCRIPT, then EVAL
    assert served(lambda: admin.hget(tokens_limit.key + ":h", first) == b"12")
    assert admin.get(tokens_limit.key + ":sum") == b"42"
    assert store.peek(limits_of(key), MINUTE_MS).used == [2, 42]
    store.close()


# -- where Redis is and who may use it ----------------------------------------------------

def test_a_password_protected_redis(own_redis):
    server = own_redis("--requirepass", "x", password="x")
    key = unique()
    store = RedisWindowStore(f"redis://:x@127.0.0.1:{server.port}/0")
    assert store.admit(limits_of(key), unique("m"), MINUTE_MS).admitted
    with_user = RedisWindowStore(f"redis://default:x@127.0.0.1:{server.port}/3")
    assert with_user.admit(limits_of(key), unique("m"), MINUTE_MS).used[0] == 1  # its own db
    assert server.admin(db=3).exists(limits_of(key)[0].key + ":z") == 1
    for url in (f"redis://:wrong@127.0.0.1:{server.port}/0",
                f"redis://127.0.0.1:{server.port}/0"):  # NOAUTH
        store_of_url = RedisWindowStore(url)
        with pytest.raises(StoreUnavailable):
            store_of_url.admit(limits_of(key), unique("m"), MINUTE_MS)
        with pytest.raises(StoreUnavailable):
            store_of_url.peek(limits_of(key), MINUTE_MS)
        store_of_url.close()
    with pytest.raises(RedisUnavailable, match="WRONGPASS"):
        PipelinedRedis(f"redis://:wrong@127.0.0.1:{server.port}/0").call("PING")
    store.close()
    with_user.close()


def test_a_unix_socket(own_redis, tmp_path):
    path = str(tmp_path / "redis.sock")
    server = own_redis("--unixsocket", path, "--unixsocketperm", "700", unixsocket=path)
    store = RedisWindowStore(f"unix://{path}?db=2")
    key = unique()
    assert store.admit(limits_of(key, tokens=5), "a", MINUTE_MS).used == [1, 5]
    store.reconcile(limits_of(key)[1].key, "a", 2)
    assert served(lambda: store.peek(limits_of(key), MINUTE_MS).used == [1, 2])
    assert server.admin(db=2).hget(limits_of(key)[1].key + ":h", "a") == b"2"
    store.close()


def test_rediss_stays_on_redis_py(own_redis, tmp_path):
    if not shutil.which("openssl"):
        pytest.skip("no openssl to make a certificate")
    cert, key_file = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", key_file, "-out", cert],
                   check=True, capture_output=True, timeout=60)
    try:
        server = own_redis("--tls-cert-file", cert, "--tls-key-file", key_file,
                           "--tls-ca-cert-file", cert, "--tls-auth-clients", "no", tls=True)
    except RuntimeError:
        pytest.skip("this redis-server has no TLS")
    store = RedisWindowStore(f"rediss://127.0.0.1:{server.port}/0?ssl_cert_reqs=none")
    key = unique()
    assert store.admit(limits_of(key, tokens=9), "a", MINUTE_MS).used == [1, 9]
    store.reconcile(limits_of(key)[1].key, "a", 4)  # redis-py: done when it returns
    assert store.peek(limits_of(key), MINUTE_MS).used == [1, 4]
    store.close()
