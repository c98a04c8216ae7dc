"""serve's reload, on SIGHUP or a changed config file: the new file is checked in full in the
master, before any worker sees it; a refused file leaves the workers serving the old one.

A file passing every check ``check-config`` makes (run as a child process, as before the
first start) is installed for the workers gunicorn starts next: gunicorn's SIGHUP starts a
new set of workers and stops the old ones gracefully, so each request is served whole by
one config, streams included. Runtimes new in the file start before the new workers; those
removed or changed are stopped (changed ones started again) only once the old workers,
which may still be sending them requests, are gone.
"""

import dataclasses
import hashlib
import logging
import os
import signal
import subprocess
import sys
import threading

from ..config import ConfigError
from ..config.model import AccessLogConfig

log = logging.getLogger("inferegator.serve")

# What a reload cannot change: the master's own sockets, worker count and metrics listener.
RESTART_ONLY = (("server.bind", lambda c: c.server.bind),
                ("server.workers", lambda c: c.server.workers),
                ("metrics.enabled", lambda c: c.metrics.enabled),
                ("metrics.bind", lambda c: c.metrics.bind),
                ("ratelimit.store", lambda c: c.ratelimit.store == "memory"))


def checked_in_a_child(path):
    """``check-config`` on the same file, run in a child process: what the schema alone
    cannot judge (a routing option, a backend type no loaded plugin knows) needs the
    gateway built, and building it here would import the request path into gunicorn's
    master before it forks the workers that gevent patches."""
    argv = [sys.executable, "-m", "inferegator.cli", "check-config"]
    if path is not None:
        argv += ["--config", str(path)]
    return subprocess.run(argv, capture_output=True, text=True)


def with_overrides(config, args):
    """The config as serve's command line amends it."""
    if args.access_log is not None:
        config = dataclasses.replace(config, access_log=AccessLogConfig(args.access_log))
    return config


class ConfigReloader:
    """Checks and installs a new config for the workers ``state["config"]`` builds."""

    def __init__(self, args, state: dict, supervisor):
        self.args = args
        self.state = state
        self.supervisor = supervisor
        self._retiring = []
        self._unwatch = threading.Event()

    def check(self) -> bool:
        """gunicorn's SIGHUP: True when the new file is installed and workers may roll."""
        from ..factory import load_checked_config
        from ..store.database import StoreError
        from ..store.store import Store

        path = self.args.config
        checked = checked_in_a_child(path)
        if checked.returncode != 0:
            log.error("reload refused; still serving the previous config:\n%s",
                      checked.stderr.strip())
            return False
        try:
            config = with_overrides(load_checked_config(path), self.args)
            Store(config.storage).db.close()  # a new storage URL is migrated before use
        except (ConfigError, StoreError) as exc:
            log.error("reload refused; still serving the previous config:\n%s", exc)
            return False
        old = self.state["config"]
        for name, value in RESTART_ONLY:
            if value(config) != value(old):
                log.warning("reload: %s changed; it takes effect at the next restart", name)
        self.state["config"] = config
        self._retiring = self.supervisor.update(list(config.runtimes))
        log.info("reloading %s: new workers start on it, the old ones finish their requests",
                 path or "the embedded default config")
        return True

    def finish(self) -> None:
        """The old workers are gone: retire the runtimes only they used."""
        if self._retiring:
            self.supervisor.retire(self._retiring, list(self.state["config"].runtimes))
            self._retiring = []
        log.info("reloaded %s", self.args.config or "the embedded default config")

    def watch(self, path, interval_s: float = 1.0) -> None:
        """Reload (as on SIGHUP) whenever the file's content changes; a daemon thread."""
        master = os.getpid()

        def digest():
            try:
                with open(path, "rb") as f:
                    return hashlib.sha256(f.read()).digest()
            except OSError:
                return None  # being replaced: judged at the next look

        def loop():
            seen = digest()
            while not self._unwatch.wait(interval_s):
                now = digest()
                if now is not None and now != seen:
                    seen = now
                    os.kill(master, signal.SIGHUP)

        threading.Thread(target=loop, name="inferegator-config-watch", daemon=True).start()

    def stop(self) -> None:
        self._unwatch.set()
