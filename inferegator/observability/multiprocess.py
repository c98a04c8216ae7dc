"""The serve master's side of metrics: the directory where workers write their values, and
the listener of ``metrics.bind`` that sums them.

prometheus_client decides how it stores values when it is first imported, from
``PROMETHEUS_MULTIPROC_DIR``; the directory is named before any worker is forked, and this
module imports prometheus_client only inside its methods, after that.
"""

import os
import shutil
import tempfile

from .metrics import MULTIPROC_ENV


def _host_port(bind: str) -> tuple[str, int]:
    """"host:port" (an IPv6 host in brackets) -> (host, port); no host: every address."""
    host, _, port = bind.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


class MetricsDirectory:
    """prometheus_client's multiprocess directory for one ``serve``: made, named in the
    environment, removed."""

    def __init__(self, path: str | None = None):
        self.path = path or tempfile.mkdtemp(prefix="inferegator-metrics-")
        os.makedirs(self.path, exist_ok=True)
        os.environ[MULTIPROC_ENV] = self.path
        self._server = None

    def worker_exited(self, pid: int) -> None:
        """A worker is gone: its live gauges (in flight, streams open, ...) stop counting;
        its counters and histograms stay in the sums."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, self.path)

    def serve(self, bind: str) -> None:
        """Answer scrapes on ``bind`` ("host:port") from a thread of this process, with
        the sum of every worker's files."""
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, self.path)
        host, port = _host_port(bind)
        self._server, _ = start_http_server(port, addr=host, registry=registry)

    def close(self) -> None:
        """Stop the listener, if any, and remove the directory."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        shutil.rmtree(self.path, ignore_errors=True)
        if os.environ.get(MULTIPROC_ENV) == self.path:
            del os.environ[MULTIPROC_ENV]
