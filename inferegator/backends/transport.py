"""Upstream HTTP for the hot path: one generation request out, its answer relayed back.

``requests`` costs about half the gateway's CPU per request (issue 14): it re-merges
settings, builds a PreparedRequest, wraps urllib3's response in its own and parses headers
with the email package. The hot path needs far less, and this module offers exactly that
much, behind one small interface (``Transport``); ``GeventHttpTransport`` implements it with
geventhttpclient's llhttp parser (C) and its connection pool classes, the request head
pre-rendered per path. bench/upstream_contenders.py implements it on urllib3's pool too,
the contender it was measured against.

A transport gives ``post(url_path, body, headers, stream, connect_timeout, read_timeout)`` ->
``UpstreamResponse`` (``status_code``, case-insensitive ``headers.get``, ``iter_content``,
``close``, plus ``preload`` for error bodies) and raise one error class,
``TransportError``, whose ``kind`` says what failed (``refused`` is told apart: the
pipeline opens a circuit at once on it).

What a transport promises, because the pipeline depends on it:

- keep-alive, at most ``pool_size`` idle connections kept per backend; more requests at
  once than that open extra connections that are closed after use (like requests'
  non-blocking pool: the pool never makes a request wait);
- no retries, no redirects, no proxies, no environment or netrc lookups, no content
  decoding (``Accept-Encoding: identity`` is sent);
- a stream's events are yielded as they arrive (``iter_content(None)``), never held back
  to fill a size;
- a response read to its end has put its connection back in the pool by itself;
  ``close()`` on an unfinished one closes its connection, so the runtime sees the
  disconnect and aborts the generation;
- an exception raised into the waiting greenlet (``gevent.kill`` by the client watch:
  ClientDisconnected, the total deadline's UpstreamFault) never leaks a connection; an
  OSError raised that way (ClientDisconnected is one) comes out as a TransportError, so
  callers keep checking ``watch.gone`` first, as they do with requests today.

The gateway sends generation requests through ``GeventHttpTransport``, one per backend
(``BackendAdapter.transport``); control calls (probes, loads, model lists) keep
``requests``. ``bench/upstream_client_cost.py`` measures the transports against
``requests``: geventhttpclient costs about a third of requests' CPU per request, urllib3
about three quarters.
"""

import socket
import ssl
from urllib.parse import urlsplit

import certifi
import gevent
import gevent.socket
import gevent.ssl
from geventhttpclient.connectionpool import ConnectionPool, SSLConnectionPool
from geventhttpclient.response import HTTPParseError, HTTPSocketPoolResponse

from ..sockets import send_all

READ_BLOCK_BYTES = 65536  # the most one recv takes: an SSE event is far smaller
# Sent with every request unless the caller's headers say otherwise: the body is JSON and
# must come back undecoded (neither transport decodes gzip, unlike requests).
BASE_HEADERS = {"Content-Type": "application/json", "Accept-Encoding": "identity"}


class TransportError(Exception):
    """The request could not be sent or its answer not read: the one error both transports
    raise, the original exception chained as ``__cause__``.

    ``kind`` is one of:

    - ``refused``: nothing listens at the backend's address (the runtime is down);
    - ``connect``: any other failure to open a connection (name resolution, unreachable
      network, TLS handshake or certificate);
    - ``connect_timeout``: the connection was not established within ``connect_timeout``;
    - ``read_timeout``: nothing arrived for ``read_timeout`` seconds, waiting for the
      answer's head or in its body;
    - ``broken``: the connection was lost or the answer was not valid HTTP, after the
      request was (perhaps) sent.
    """

    KINDS = ("refused", "connect", "connect_timeout", "read_timeout", "broken")

    def __init__(self, kind: str, message: str):
        super().__init__(f"{kind}: {message}")
        self.kind = kind

    @property
    def refused(self) -> bool:
        """A refused connection: the circuit opens at once (pipeline._refused)."""
        return self.kind == "refused"

    @property
    def timeout(self) -> bool:
        """Either timeout (the backend is slow or hung, not necessarily down)."""
        return self.kind in ("connect_timeout", "read_timeout")


class UpstreamHeaders:
    """An answer's header fields, looked up case-insensitively; a field sent more than once
    reads as its values joined by ``", "`` (as requests gives it)."""

    __slots__ = ("_fields",)

    def __init__(self, fields: dict):
        self._fields = fields  # lower-cased name -> value

    def get(self, name: str, default=None):
        return self._fields.get(name.lower(), default)

    def __getitem__(self, name: str) -> str:
        return self._fields[name.lower()]

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._fields

    def items(self):
        return self._fields.items()

    def __repr__(self) -> str:
        return f"UpstreamHeaders({self._fields!r})"


class UpstreamResponse:
    """One upstream answer: what the pipeline reads of it, and nothing else.

    ``status_code`` and ``headers`` are there once ``post`` returns. The body is read by
    ``iter_content`` (or ahead of it by ``preload``); the response is *finished* once the
    whole body has been read, and by then its connection is back in the pool.
    """

    __slots__ = ("status_code", "headers", "_preloaded")

    def __init__(self, status_code: int, headers: UpstreamHeaders):
        self.status_code = status_code
        self.headers = headers
        self._preloaded = None  # bytes read ahead by preload(), yielded first

    # -- the interface ------------------------------------------------------------------

    def iter_content(self, chunk_size: int | None = None):
        """The body, piece by piece: each piece is what has arrived (at most chunk_size
        bytes; None: no bound), yielded without waiting for more, so a stream's events
        come out as the backend sends them. What ``preload`` read comes first. Raises
        TransportError when the connection fails or stalls for the read timeout."""
        preloaded, self._preloaded = self._preloaded, None
        if preloaded:
            if chunk_size is None or len(preloaded) <= chunk_size:
                yield preloaded
            else:
                for start in range(0, len(preloaded), chunk_size):
                    yield preloaded[start:start + chunk_size]
        yield from self._wire(chunk_size)

    def preload(self, limit: int | None = None) -> bytes:
        """Read ahead the body's first ``limit`` bytes (None: all of it) and return them;
        what was read (a recv may bring a little more) is kept, so that ``iter_content``
        yields it again first and then goes on where the reading stopped.

        requests' ``read_error_body`` keeps an error answer's start on the response the
        same way (``_content``); a non-streamed answer is preloaded whole by ``post``.
        """
        parts, size = [], 0
        if self._preloaded:
            parts.append(self._preloaded)
            size = len(self._preloaded)
        if limit is None or size < limit:
            for data in self._wire(None if limit is None else limit - size):
                parts.append(data)
                size += len(data)
                if limit is not None and size >= limit:
                    break
        content = b"".join(parts)
        self._preloaded = content  # all that was read, also past limit: nothing is lost
        return content if limit is None else content[:limit]

    def close(self) -> None:
        """Give the connection back: a finished answer's is in the pool already (nothing to
        do); an unfinished one's is closed, which the runtime sees as the client gone."""
        raise NotImplementedError

    @property
    def finished(self) -> bool:
        """Whether the whole body has been read (the connection is pooled again)."""
        raise NotImplementedError

    # -- what an implementation provides ---------------------------------------------------

    def _wire(self, chunk_size: int | None):
        """The body's bytes not yet read, as they arrive; at most chunk_size per piece."""
        raise NotImplementedError


class Transport:
    """One backend's upstream connections (scheme, host and port of ``base_url``), pooled.

    ``base_url`` may carry a path prefix (``http://host:8000/api``); ``post``'s
    ``url_path`` is appended to it. ``headers`` are sent with every request (after
    BASE_HEADERS, before a request's own). ``ca_certs`` (https only): a CA bundle path, by
    default certifi's, as requests uses; ``verify=False`` turns certificate checks off.
    """

    def __init__(self, base_url: str, pool_size: int = 64, connect_timeout: float = 3.0,
                 read_timeout: float = 300.0, headers: dict | None = None,
                 ca_certs: str | None = None, verify: bool = True):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.prefix = parts.path.rstrip("/")
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.headers = {**BASE_HEADERS, **(headers or {})}
        self.ca_certs = ca_certs or certifi.where()
        self.verify = verify
        self.connections_opened = 0  # for tests and benchmarks: pooling at work

    def post(self, url_path: str, body: bytes, headers: dict | None = None,
             stream: bool = False, connect_timeout: float | None = None,
             read_timeout: float | None = None) -> UpstreamResponse:
        """POST ``body`` to ``url_path``; the answer once its head has arrived (its whole
        body too, unless ``stream``). Timeouts default to the transport's own; the read
        timeout bounds each wait for bytes, not the whole answer. Raises TransportError."""
        raise NotImplementedError

    def close(self) -> None:
        """Close the idle connections; answers still being read keep theirs."""
        raise NotImplementedError

    def _host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


# -- geventhttpclient ---------------------------------------------------------------------


class _PoolMixin:
    """geventhttpclient's pool with requests' semantics: never blocks a request (its own
    pool waits on a semaphore once ``size`` connections are out), keeps at most ``size``
    idle connections (most recently used first), takes the connect timeout per call, and
    turns Nagle off (one write per request, but a large body ends in a small segment)."""

    def _setup(self, transport):
        self._idle = []
        self._transport = transport

    def get_socket(self, connect_timeout: float | None = None):
        idle = self._idle
        while idle:
            sock = idle.pop()
            if self._is_socket_alive(sock):  # idle and readable: the server closed it
                return sock
            sock.close()
        return self._open(self.connection_timeout if connect_timeout is None
                          else connect_timeout)

    def _open(self, timeout: float):
        first_error = None
        for family, socktype, proto, _, address in self._resolve():
            sock = gevent.socket.socket(family, socktype, proto)
            try:
                sock.settimeout(timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock = self._connect_socket(sock, address)  # TLS: handshake here, same timeout
                self._transport.connections_opened += 1
                return sock
            except OSError as exc:
                sock.close()
                first_error = first_error or exc
            except BaseException:
                sock.close()
                raise
        raise first_error or OSError(f"cannot resolve {self._connection_host}")

    def _is_socket_alive(self, sock) -> bool:
        """An idle pooled connection is alive while it has nothing to read: readable means
        the server closed it (or sent what it should not have). One non-blocking peek,
        instead of the base class's ``select`` (under gevent: watchers and a timer)."""
        try:
            sock._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except BlockingIOError:
            return True
        except (OSError, AttributeError):
            return False
        return False

    def return_socket(self, sock) -> None:
        if self._closed or len(self._idle) >= self.size:
            sock.close()
        else:
            self._idle.append(sock)

    def release_socket(self, sock) -> None:
        try:
            sock.close()
        except OSError:
            pass

    def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()


class _GeventPool(_PoolMixin, ConnectionPool):
    pass


class _GeventSSLPool(_PoolMixin, SSLConnectionPool):
    pass


class _ReadClock:
    """One answer's read timeout: a timer re-armed around each wait for its bytes (the
    request's send, its head, each read of its body), which throws TimeoutError into the
    waiting greenlet when it runs out. The socket itself stays without a timeout: gevent
    would make a Timeout object for every wait on it."""

    __slots__ = ("_timer", "_greenlet")

    def __init__(self, seconds: float):
        self._timer = gevent.get_hub().loop.timer(seconds, seconds)
        self._greenlet = None

    def start(self) -> None:
        self._greenlet = gevent.getcurrent()
        self._timer.again(self._late)

    def stop(self) -> None:
        self._timer.stop()

    def close(self) -> None:
        self._timer.stop()
        self._timer.close()

    def _late(self) -> None:
        self._timer.stop()
        self._greenlet.throw(TimeoutError("no data within the read timeout"))


class _GeventResponse(UpstreamResponse):
    __slots__ = ("_raw", "_clock")

    def __init__(self, raw: HTTPSocketPoolResponse, clock: _ReadClock):
        fields = {}
        for name, value in raw.items():
            name = name.lower()
            fields[name] = f"{fields[name]}, {value}" if name in fields else value
        super().__init__(raw.status_code, UpstreamHeaders(fields))
        self._raw = raw
        self._clock = clock

    @property
    def finished(self) -> bool:
        return self._raw.message_complete and not self._raw._body_buffer

    def _wire(self, chunk_size):
        raw = self._raw
        buffer = raw._body_buffer  # the parser appends the decoded body here
        clock = self._clock
        try:
            while True:
                if buffer:
                    if chunk_size is None or len(buffer) <= chunk_size:
                        data = bytes(buffer)
                        del buffer[:]
                    else:
                        data = bytes(buffer[:chunk_size])
                        del buffer[:chunk_size]
                    yield data
                    continue
                if raw.message_complete:  # the parser has given the socket back already
                    return
                sock = raw._sock
                if sock is None:
                    raise TransportError("broken", "connection closed before the answer ended")
                clock.start()
                try:
                    data = sock.recv(READ_BLOCK_BYTES)
                finally:
                    clock.stop()
                raw.feed(data)  # b"": the end of a close-delimited body, or an error
                if not data and not raw.message_complete:
                    raise TransportError("broken", "connection closed before the answer ended")
        except TransportError:
            raw.release()
            raise
        except TimeoutError as exc:  # the timer's, or socket.timeout
            raw.release()
            raise TransportError("read_timeout", "no data within the read timeout") from exc
        except (HTTPParseError, OSError) as exc:
            raw.release()
            raise TransportError("broken", f"answer cut short: {exc}") from exc
        # anything else (a kill from the client watch) leaves the socket to close()

    def close(self) -> None:
        # finished: the parser released the socket into the pool already (_sock is None);
        # unfinished: release() sees should_close() and closes it
        self._clock.close()
        self._raw.release()


class GeventHttpTransport(Transport):
    """Upstream HTTP on geventhttpclient: its llhttp response parser (C) and pool classes.

    The request head is rendered once per path (request line, Host, fixed headers);
    a request adds its Content-Length and own headers and goes out in one ``sendall``
    with the body. ``HTTPClient`` itself is not used: it validates every header with
    regexes on each call, retries non-idempotent requests in some cases, and its pool
    blocks once ``size`` connections are out.
    """

    def __init__(self, base_url: str, pool_size: int = 64, connect_timeout: float = 3.0,
                 read_timeout: float = 300.0, headers: dict | None = None,
                 ca_certs: str | None = None, verify: bool = True):
        super().__init__(base_url, pool_size, connect_timeout, read_timeout, headers,
                         ca_certs, verify)
        common = dict(size=pool_size, connection_timeout=connect_timeout,
                      network_timeout=read_timeout)
        if self.scheme == "https":
            self._pool = _GeventSSLPool(self.host, self.port, self.host, self.port,
                                        insecure=not verify,
                                        ssl_options={"ca_certs": self.ca_certs},
                                        ssl_context_factory=_ssl_context_factory(verify),
                                        **common)
        else:
            self._pool = _GeventPool(self.host, self.port, self.host, self.port, **common)
        self._pool._setup(self)
        self._fixed = "".join(_field(name, value) for name, value in self.headers.items())
        self._heads = {}  # url_path -> request line + Host + fixed headers

    def _head(self, url_path: str) -> str:
        head = self._heads.get(url_path)
        if head is None:
            target = self.prefix + url_path
            if not target.startswith("/") or any(c <= " " or c == "\x7f" for c in target):
                raise ValueError(f"invalid request path {url_path!r}")
            head = self._heads[url_path] = (f"POST {target} HTTP/1.1\r\n"
                                            f"Host: {self._host_header()}\r\n{self._fixed}")
        return head

    def post(self, url_path, body, headers=None, stream=False, connect_timeout=None,
             read_timeout=None):
        head = self._head(url_path) + f"Content-Length: {len(body)}\r\n"
        if headers:
            head += "".join(_field(name, value) for name, value in headers.items())
        request = (head + "\r\n").encode("latin-1") + body
        pool = self._pool
        try:
            sock = pool.get_socket(connect_timeout)
        except ConnectionRefusedError as exc:
            raise TransportError("refused", str(exc)) from exc
        except TimeoutError as exc:
            raise TransportError("connect_timeout", str(exc) or "connect timed out") from exc
        except OSError as exc:  # DNS, unreachable, TLS (ssl.SSLError is an OSError)
            raise TransportError("connect", str(exc)) from exc
        clock = _ReadClock(self.read_timeout if read_timeout is None else read_timeout)
        try:
            if sock.timeout is not None:  # a new connection: still its connect timeout
                sock.settimeout(None)
            clock.start()
            send_all(sock, request)
            # reads the head (releases the socket itself if that fails)
            raw = HTTPSocketPoolResponse(sock, pool, block_size=READ_BLOCK_BYTES,
                                         method="POST")
        except TimeoutError as exc:
            clock.close()
            pool.release_socket(sock)
            raise TransportError("read_timeout", "no answer within the read timeout") from exc
        except (HTTPParseError, OSError) as exc:
            clock.close()
            pool.release_socket(sock)
            raise TransportError("broken", str(exc) or exc.__class__.__name__) from exc
        except BaseException:
            clock.close()
            pool.release_socket(sock)
            raise
        clock.stop()
        response = _GeventResponse(raw, clock)
        if not stream:
            try:
                response.preload()
            except BaseException:
                response.close()
                raise
        return response

    def close(self) -> None:
        self._pool.close()


def _field(name: str, value) -> str:
    """One header line as sent; no CR, LF (header injection) or colon in the name, no CR or
    LF in the value."""
    value = str(value)
    if "\r" in value or "\n" in value or not name or any(c in name for c in "\r\n: \t"):
        raise ValueError(f"invalid header {name!r}: {value!r}")
    return f"{name}: {value}\r\n"


def _ssl_context_factory(verify: bool):
    """geventhttpclient calls this with ``cafile=``; without verification the context
    checks neither the certificate nor the host name."""
    def factory(cafile=None):
        context = gevent.ssl.create_default_context(cafile=cafile)
        if not verify:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        return context
    return factory
