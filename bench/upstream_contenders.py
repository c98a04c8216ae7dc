"""The upstream clients the gateway's hot path was measured against and did not keep (issue 14).

- ``PreparedPost`` + ``read_error_body`` + ``refused_cause``: the gateway's path before issue
  14, requests' adapter with a request prepared once per endpoint;
- ``Urllib3Transport``: the ``Transport`` interface (inferegator/backends/transport.py) on
  urllib3's ``HTTPConnectionPool.urlopen``, what requests runs underneath.

Only bench/upstream_client_cost.py uses them; the gateway sends on ``GeventHttpTransport``.
"""

import requests
import urllib3
from urllib3.exceptions import (
    ConnectTimeoutError,
    HTTPError,
    NewConnectionError,
    ReadTimeoutError,
)
from urllib3.exceptions import SSLError as Urllib3SSLError

from inferegator.backends.base import ERROR_BODY_BYTES, upstream_request_id
from inferegator.backends.transport import (
    READ_BLOCK_BYTES,
    Transport,
    TransportError,
    UpstreamHeaders,
    UpstreamResponse,
)


def read_error_body(response: requests.Response) -> bytes:
    """The start of an error answer, at most ERROR_BODY_BYTES, kept on the response so that
    whoever reads it next (iter_content) gets the same bytes; the rest is never read."""
    parts, size = [], 0
    for data in response.iter_content(8192):
        parts.append(data)
        size += len(data)
        if size >= ERROR_BODY_BYTES:
            break
    content = b"".join(parts)[:ERROR_BODY_BYTES]
    response._content, response._content_consumed = content, True
    return content


class PreparedPost:
    """A POST prepared once per endpoint and copied per request.

    Session.request re-merges settings, cookies and hooks for every call; measured at
    about a sixth of the gateway's CPU per request. Only the body changes here.
    """

    __slots__ = ("_template", "_adapter")

    def __init__(self, session: requests.Session, url: str, headers: dict):
        self._template = session.prepare_request(requests.Request(
            "POST", url, headers={**headers, "Content-Type": "application/json"}))
        self._adapter = session.get_adapter(url)

    def send(self, body: bytes, headers: dict, stream: bool, timeout) -> requests.Response:
        prepared = self._template.copy()
        prepared.body = body
        prepared.headers["Content-Length"] = str(len(body))
        prepared.headers.update(headers)
        rid = prepared.headers.get("X-Request-ID")
        if rid is not None:
            prepared.headers["X-Request-ID"] = upstream_request_id(rid)
        return self._adapter.send(prepared, stream=stream, timeout=timeout)


def refused_cause(exc) -> bool:
    """A refused connection: the runtime is down, not slow (the circuit opens at once)."""
    stack, looked = [exc], 0
    while stack and looked < 12:
        error = stack.pop()
        looked += 1
        if isinstance(error, ConnectionRefusedError):
            return True
        for cause in (getattr(error, "reason", None), error.__cause__, error.__context__,
                      *error.args):
            if isinstance(cause, BaseException):
                stack.append(cause)
    return False


def _caused_by(exc: BaseException, kind: type, depth: int = 8) -> bool:
    """Whether exc or one of its causes (``__cause__``/``__context__``/urllib3's
    ``reason``) is a ``kind``."""
    seen = 0
    stack = [exc]
    while stack and seen < depth:
        error = stack.pop()
        seen += 1
        if isinstance(error, kind):
            return True
        for cause in (getattr(error, "reason", None), error.__cause__, error.__context__):
            if isinstance(cause, BaseException):
                stack.append(cause)
    return False


# -- urllib3 ------------------------------------------------------------------------------


class _Urllib3Response(UpstreamResponse):
    __slots__ = ("_raw", "_done")

    def __init__(self, raw):
        super().__init__(raw.status, UpstreamHeaders(  # a repeated field: values joined
            {name.lower(): value for name, value in raw.headers.itermerged()}))
        self._raw = raw
        self._done = False

    @property
    def finished(self) -> bool:
        return self._done

    def _wire(self, chunk_size):
        raw = self._raw
        if self._done:
            return
        try:
            # read1: what one recv brought (at most one HTTP chunk), however small; and
            # no generator held across calls, so preload can stop and iter_content go on
            while True:
                data = raw.read1(chunk_size or READ_BLOCK_BYTES, decode_content=False)
                if not data:
                    break
                yield data
        except ReadTimeoutError as exc:
            raise TransportError("read_timeout", "no data within the read timeout") from exc
        except (HTTPError, OSError) as exc:
            raise TransportError("broken", f"answer cut short: {exc}") from exc
        self._done = True  # urllib3 has put the connection back in the pool

    def close(self) -> None:
        raw = self._raw
        if not self._done:
            self._done = True
            raw.close()  # closes the socket: the runtime sees the disconnect
        raw.release_conn()  # as requests does: a closed connection's slot is reused


class Urllib3Transport(Transport):
    """Upstream HTTP through urllib3's connection pool (requests' engine, minus requests).

    ``block=False``: a request never waits for a pooled connection; beyond ``pool_size``
    at once, extra connections are opened and closed after use (urllib3 logs "Connection
    pool is full, discarding connection" at WARNING each time, as it does under requests
    today). ``retries=False`` raises the first error as it is.
    """

    def __init__(self, base_url: str, pool_size: int = 64, connect_timeout: float = 3.0,
                 read_timeout: float = 300.0, headers: dict | None = None,
                 ca_certs: str | None = None, verify: bool = True):
        super().__init__(base_url, pool_size, connect_timeout, read_timeout, headers,
                         ca_certs, verify)
        self._timeouts = {}
        timeout = self._timeout(connect_timeout, read_timeout)
        kwargs = dict(maxsize=pool_size, block=False, timeout=timeout, retries=False,
                      headers=dict(self.headers))
        if self.scheme == "https":
            kwargs.update(cert_reqs="CERT_REQUIRED" if verify else "CERT_NONE",
                          ca_certs=self.ca_certs, assert_hostname=None if verify else False)
            self._pool = urllib3.HTTPSConnectionPool(self.host, self.port, **kwargs)
        else:
            self._pool = urllib3.HTTPConnectionPool(self.host, self.port, **kwargs)
        self._pool.ConnectionCls = self._counted(self._pool.ConnectionCls)

    def _counted(self, connection_class):
        """connection_class counting its connects here: urllib3 reconnects a closed
        connection object in place, so counting new objects would miss those."""
        transport = self

        class Counted(connection_class):
            def connect(self):
                transport.connections_opened += 1
                super().connect()

        return Counted

    def _timeout(self, connect: float, read: float) -> urllib3.Timeout:
        key = (connect, read)
        timeout = self._timeouts.get(key)
        if timeout is None:
            timeout = self._timeouts[key] = urllib3.Timeout(connect=connect, read=read)
        return timeout

    def post(self, url_path, body, headers=None, stream=False, connect_timeout=None,
             read_timeout=None):
        timeout = self._timeout(self.connect_timeout if connect_timeout is None
                                else connect_timeout,
                                self.read_timeout if read_timeout is None else read_timeout)
        sent = {**self._pool.headers, **headers} if headers else self._pool.headers
        try:
            raw = self._pool.urlopen(
                "POST", self.prefix + url_path, body=body, headers=sent, retries=False,
                redirect=False, assert_same_host=False, timeout=timeout,
                preload_content=False, decode_content=False)
        except NewConnectionError as exc:  # before ConnectTimeoutError: it subclasses it
            kind = "refused" if _caused_by(exc, ConnectionRefusedError) else "connect"
            raise TransportError(kind, str(exc)) from exc
        except ConnectTimeoutError as exc:
            raise TransportError("connect_timeout", str(exc)) from exc
        except ReadTimeoutError as exc:
            raise TransportError("read_timeout", "no answer within the read timeout") from exc
        except Urllib3SSLError as exc:
            raise TransportError("connect", f"TLS: {exc}") from exc
        except (HTTPError, OSError) as exc:
            raise TransportError("broken", str(exc)) from exc
        response = _Urllib3Response(raw)
        if not stream:
            try:
                response.preload()
            except BaseException:
                response.close()
                raise
        return response

    def close(self) -> None:
        self._pool.close()
