"""A small Redis client for the rate limiter's hot path: one pipelined connection per process.

redis-py under gevent costs about 95 µs of a worker's CPU per command (a pool checkout,
command packing, a hub switch per reply), as much as the rest of a request's path. Here
every greenlet of the process shares ONE connection (TCP or unix socket):

- a command is encoded to RESP and appended to an output buffer; the buffer is written
  with one non-blocking ``send`` per event-loop iteration, whatever the number of
  greenlets that queued commands in it (a write watcher finishes a partial write);
- replies are read by an io watcher callback in the hub (no reader greenlet), parsed,
  and handed in order to the callers waiting on them: Redis answers one connection's
  commands in the order it received them;
- ``call`` blocks only its greenlet until its reply; ``send`` does not wait at all.

Every command ends within about ``timeout_s``: a timer (every ``timeout_s / 4``) fails
the connection once its oldest unanswered command is older than that, and so do a
refused, reset or closed connection. Failing it raises ``RedisUnavailable`` in every
waiting caller and closes the socket; the next command reconnects. An error reply raises
``RedisReplyError`` in its own caller only. Usable from any greenlet of the thread that
first connects, except the hub itself, in a monkey-patched process or not. TLS
(``rediss://``) is not supported.
"""

import _socket
import errno
import logging
import os
import time
from collections import deque
from urllib.parse import parse_qs, unquote, urlsplit

import gevent
from gevent.event import Event
from gevent.hub import Waiter, get_hub
from gevent.socket import getaddrinfo, wait_write
from greenlet import getcurrent

log = logging.getLogger(__name__)

READ_SIZE = 65536
WARN_EVERY_S = 5.0  # at most one warning line per this long about dropped replies
_READ, _WRITE = 1, 2  # libev/libuv io watcher events


class RedisUnavailable(OSError):
    """Redis could not be reached, or did not answer in time; the command may have run."""


class RedisReplyError(Exception):
    """Redis answered the command with an error (``-ERR ...``, ``-NOSCRIPT ...``)."""


class RedisProtocolError(RedisUnavailable):
    """What came back is not RESP2: the connection is dropped."""


def parse_url(url: str) -> dict:
    """``redis://[[user]:password@]host[:port][/db]`` or ``unix://[[user]:password@]/path``,
    the database also as ``?db=N``: the address and what to send once connected."""
    parts = urlsplit(url)
    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    unknown = set(query) - {"db"}
    if unknown:
        raise ValueError(f"redis URL options not supported: {', '.join(sorted(unknown))}")
    db = query.get("db")
    if parts.scheme == "redis":
        if parts.path.strip("/"):
            db = parts.path.strip("/")
        address = (parts.hostname or "localhost", parts.port or 6379)
    elif parts.scheme == "unix":
        if not parts.path:
            raise ValueError(f"no socket path in {url!r}")
        address = parts.path
    else:
        raise ValueError(f"not a redis:// or unix:// URL: {url!r}")
    return {"address": address, "db": int(db or 0),
            "username": unquote(parts.username) if parts.username else None,
            "password": unquote(parts.password) if parts.password else None}


def pack(args) -> bytes:
    """One command as a RESP array of bulk strings (str, bytes or int arguments)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        kind = type(arg)
        if kind is str:
            arg = arg.encode()
        elif kind is int:
            arg = b"%d" % arg
        elif kind is not bytes:
            raise TypeError(f"redis arguments are str, bytes or int, not {kind.__name__}")
        out.append(b"$%d\r\n%b\r\n" % (len(arg), arg))
    return b"".join(out)


def parse(buf: bytes, pos: int):
    """The RESP2 reply that starts at buf[pos]: (value, where the next one starts), or
    (None, -1) when buf ends before the reply does. An error reply is a RedisReplyError
    value, not raised; a simple string is a str, a bulk string bytes, null None."""
    end = buf.find(b"\r\n", pos)
    if end < 0:
        return None, -1
    kind = buf[pos]
    if kind == 58:  # ":" integer
        return int(buf[pos + 1:end]), end + 2
    if kind == 42:  # "*" array
        count = int(buf[pos + 1:end])
        if count < 0:
            return None, end + 2
        items, pos = [], end + 2
        for _ in range(count):
            item, pos = parse(buf, pos)
            if pos < 0:
                return None, -1
            items.append(item)
        return items, pos
    if kind == 36:  # "$" bulk string
        size = int(buf[pos + 1:end])
        if size < 0:
            return None, end + 2
        stop = end + 2 + size
        if len(buf) < stop + 2:
            return None, -1
        return buf[end + 2:stop], stop + 2
    if kind == 43:  # "+" simple string
        return buf[pos + 1:end].decode(), end + 2
    if kind == 45:  # "-" error
        return RedisReplyError(buf[pos + 1:end].decode("utf-8", "replace")), end + 2
    raise RedisProtocolError(f"not a RESP2 reply: {bytes(buf[pos:pos + 40])!r}")


class PipelinedRedis:
    """One shared, pipelined Redis connection for every greenlet of a process.

    ``writes`` counts send() calls on the socket and ``connects`` connections opened;
    several commands queued in one event-loop iteration go out in one write.
    """

    def __init__(self, url: str, timeout_s: float = 0.5):
        self._config = parse_url(url)
        self.timeout_s = timeout_s
        self.writes = 0
        self.connects = 0
        self._sock = None
        self._ready = False  # connected and, where asked, authenticated and on its db
        self._connecting = None  # an Event while a greenlet connects; others wait on it
        self._last_error = "not connected"
        self._hub = self._loop = None
        self._reader = self._writer = self._timer = None
        self._writing = False  # the write watcher is finishing a partial write
        self._flush_queued = False
        self._pending = deque()  # (time queued, Waiter | None | (on_error, args)), in order
        self._out = bytearray()
        self._in = b""
        self._last_warning = -WARN_EVERY_S
        self._dropped = 0  # failed fire-and-forget commands not yet reported

    # -- the API ------------------------------------------------------------------------

    def call(self, *args):
        """Run one command and return its reply, blocking only the calling greenlet.

        Raises RedisReplyError for an error reply, RedisUnavailable when the connection
        fails or no reply comes within timeout_s (the command may then have run)."""
        if not self._ready or not self._pending and self._stale():
            self._connect()
        command = pack(args)  # first: a bad argument must leave nothing queued
        waiter = Waiter(self._hub)
        self._pending.append((time.monotonic(), waiter))
        self._out += command
        if not self._flush_queued:
            self._flush_queued = True
            self._loop.run_callback(self._flush)
        return waiter.get()

    def send(self, *args, on_error=None) -> None:
        """Queue one command without waiting for its reply, which is read and dropped.

        An error reply is logged (one warning line per few seconds) unless
        ``on_error(error, args)`` returns true: it runs in the hub, so it must not block
        (it may ``send``). Raises RedisUnavailable only when there is no connection and
        none can be opened; commands lost with a failing connection are logged too."""
        if not self._ready or not self._pending and self._stale():
            if getcurrent() is self._hub:  # an on_error in the hub: it cannot connect
                self._dropped += 1
                self._warn_dropped("no connection to redis")
                return
            self._connect()
        command = pack(args)
        self._pending.append((time.monotonic(), None if on_error is None else (on_error, args)))
        self._out += command
        if not self._flush_queued:
            self._flush_queued = True
            self._loop.run_callback(self._flush)

    def close(self) -> None:
        """Close the connection; commands still waiting fail. The next one reconnects."""
        self._fail(RedisUnavailable("the redis client was closed"))

    # -- connecting -----------------------------------------------------------------------

    def _connect(self) -> None:
        connecting = self._connecting
        if connecting is not None:  # another greenlet is at it: share its outcome
            connecting.wait()
            if not self._ready:
                raise RedisUnavailable(self._last_error)
            return
        if self._sock is not None:  # stale, or a connect that was interrupted
            self._fail(RedisUnavailable("redis closed the connection"))
        self._connecting = connecting = Event()
        try:
            with gevent.Timeout(self.timeout_s, RedisUnavailable(
                    f"no connection to redis within {self.timeout_s:g}s")):
                self._open()
            self._handshake()
            self._ready = True
        except OSError as exc:
            if not isinstance(exc, RedisUnavailable):
                exc = RedisUnavailable(f"cannot connect to redis at "
                                       f"{self._config['address']}: {exc}")
            self._fail(exc)
            raise exc from None
        finally:
            self._connecting = None
            connecting.set()

    def _open(self) -> None:
        """A connected non-blocking socket (the raw one: never gevent's), its watchers."""
        address = self._config["address"]
        if isinstance(address, str):
            targets = [(_socket.AF_UNIX, address)]
        else:
            targets = [(family, sockaddr) for family, _, _, _, sockaddr
                       in getaddrinfo(address[0], address[1], 0, _socket.SOCK_STREAM)]
        error = None
        for family, sockaddr in targets:
            sock = _socket.socket(family, _socket.SOCK_STREAM)
            try:
                sock.setblocking(False)
                if family != _socket.AF_UNIX:
                    sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
                code = sock.connect_ex(sockaddr)
                if code == errno.EINPROGRESS:
                    wait_write(sock.fileno())
                    code = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_ERROR)
                if code:
                    raise OSError(code, os.strerror(code))
            except BaseException as exc:
                sock.close()
                if not isinstance(exc, OSError) or isinstance(exc, RedisUnavailable):
                    raise
                error = exc
                continue
            break
        else:
            raise error or RedisUnavailable(f"no address for {address[0]}")
        self.connects += 1
        self._hub = get_hub()
        self._loop = loop = self._hub.loop
        self._sock, self._in, self._out = sock, b"", bytearray()
        self._reader = loop.io(sock.fileno(), _READ)
        self._reader.start(self._on_readable)
        self._writer = loop.io(sock.fileno(), _WRITE)
        interval = max(self.timeout_s / 4, 0.005)
        self._timer = loop.timer(interval, interval, ref=False)
        self._timer.start(self._check_timeout)

    def _handshake(self) -> None:
        config = self._config
        try:
            if config["password"] is not None:
                self._request(("AUTH", config["username"], config["password"])
                              if config["username"] else ("AUTH", config["password"]))
            if config["db"]:
                self._request(("SELECT", config["db"]))
        except RedisReplyError as exc:
            raise RedisUnavailable(f"redis refused the connection: {exc}") from None

    def _request(self, args):
        """call() on the connection as it is (no connecting): for the handshake."""
        command = pack(args)
        waiter = Waiter(self._hub)
        self._pending.append((time.monotonic(), waiter))
        self._out += command
        self._flush()
        return waiter.get()

    def _stale(self) -> bool:
        """Whether the idle connection was closed by the server (a restart, an idle
        timeout) with the hub not yet told: a command written now would be lost with it.
        Only checked when nothing is outstanding, so it costs a syscall per idle spell."""
        try:
            return self._sock.recv(1, _socket.MSG_PEEK) == b""
        except BlockingIOError:
            return False
        except OSError:
            return True

    # -- in the hub ---------------------------------------------------------------------

    def _flush(self) -> None:
        """Write what is queued: once per loop iteration, scheduled by the first command."""
        self._flush_queued = False
        if self._writing or self._sock is None or not self._out:
            return
        self._write()

    def _write(self) -> None:
        out = self._out
        try:
            sent = self._sock.send(out)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            self._fail(RedisUnavailable(f"redis connection lost: {exc}"))
            return
        self.writes += 1
        if sent == len(out):
            out.clear()
            if self._writing:
                self._writing = False
                self._writer.stop()
        else:
            del out[:sent]
            if not self._writing:
                self._writing = True
                self._writer.start(self._write)

    def _on_readable(self) -> None:
        sock, data, closed = self._sock, b"", False
        try:
            while True:
                chunk = sock.recv(READ_SIZE)
                if not chunk:  # end of stream: answer what came before it, fail the rest
                    closed = True
                    break
                data += chunk
                if len(chunk) < READ_SIZE:  # else more may be waiting: take it all now
                    break
        except BlockingIOError:
            pass
        except OSError as exc:
            self._fail(RedisUnavailable(f"redis connection lost: {exc}"))
            return
        if not data and not closed:
            return
        if self._in:
            data = self._in + data
        pending, size, pos = self._pending, len(data), 0
        try:
            while pos < size:
                value, end = parse(data, pos)
                if end < 0:
                    break
                pos = end
                target = pending.popleft()[1]
                if type(value) is RedisReplyError:
                    if target is None or type(target) is tuple:
                        if target is None or not self._on_error(target, value):
                            self._dropped += 1
                            self._warn_dropped(value)
                    else:
                        target.throw(value)
                elif target is None or type(target) is tuple:
                    pass
                else:
                    target.switch(value)  # runs the caller until it waits again
                if self._sock is not sock:  # it was closed meanwhile
                    return
        except (RedisProtocolError, ValueError, IndexError) as exc:
            self._fail(RedisProtocolError(f"bad reply from redis: {exc!r}"))
            return
        if closed:
            self._fail(RedisUnavailable("redis closed the connection"))
            return
        self._in = data[pos:] if pos < size else b""

    @staticmethod
    def _on_error(target, error) -> bool:
        on_error, args = target
        try:
            return on_error(error, args)
        except Exception:
            log.exception("on_error of a redis command failed")
            return False

    def _check_timeout(self) -> None:
        """Every timeout_s / 4: fail the connection if its oldest command is too old."""
        if self._pending and time.monotonic() - self._pending[0][0] > self.timeout_s:
            self._on_readable()  # its reply may have come while the loop was busy
            pending = self._pending  # (a new one if that failed the connection)
            if pending and time.monotonic() - pending[0][0] > self.timeout_s:
                self._fail(RedisUnavailable(f"no reply from redis within {self.timeout_s:g}s"))

    def _fail(self, exc: RedisUnavailable) -> None:
        """Drop the connection; every outstanding command fails with exc."""
        self._last_error = str(exc)
        self._ready = False
        sock, self._sock = self._sock, None
        if sock is None:
            return
        for watcher in (self._reader, self._writer, self._timer):
            watcher.stop()
            watcher.close()
        self._reader = self._writer = self._timer = None
        self._writing = False
        sock.close()
        pending, self._pending = self._pending, deque()
        self._out, self._in = bytearray(), b""
        waiters = []
        for _, target in pending:
            if target is None or type(target) is tuple:
                self._dropped += 1
            else:
                waiters.append(target)
        if self._dropped:
            self._warn_dropped(exc)
        if waiters:
            if getcurrent() is self._hub:
                self._throw_all(waiters, exc)
            else:  # Waiter.throw must come from the hub
                self._loop.run_callback(self._throw_all, waiters, exc)

    @staticmethod
    def _throw_all(waiters, exc) -> None:
        for waiter in waiters:
            waiter.throw(exc)

    def _warn_dropped(self, error) -> None:
        now = time.monotonic()
        if now - self._last_warning >= WARN_EVERY_S:
            self._last_warning = now
            log.warning("%d redis command(s) sent without waiting failed; the latest: %s",
                        self._dropped, error)
            self._dropped = 0
