"""Embedded gunicorn with our gevent worker (worker.py) and our arbiter; the WSGI app is built in
load(), after gevent patched."""

import sys

from gunicorn.app.base import BaseApplication
from gunicorn.arbiter import Arbiter

# Registers gunicorn's `header_timeout` setting, which must exist before any gunicorn Config.
from . import worker  # noqa: F401


class GatewayArbiter(Arbiter):
    """gunicorn's master, with two joints for ``inferegator serve``:

    - ``before_reap()`` runs before gunicorn reaps its children. gunicorn waits for any
      child (``waitpid(-1)``), the supervised runtimes included, whose exit statuses would
      then be lost to the supervisor (Python reports a child reaped elsewhere as code 0).
    - ``reload_checked()`` decides a SIGHUP: False refuses the reload (the new config has a
      problem) and the workers keep serving the config they have; True lets gunicorn roll the
      workers onto the new config; ``reloaded()`` runs once the old workers are gone.
    """

    def reap_workers(self):
        self.app.hooks["before_reap"]()
        super().reap_workers()

    def handle_hup(self):
        if not self.app.hooks["reload_checked"]():
            return
        super().handle_hup()  # returns once the old workers have stopped (or timed out)
        self.app.hooks["reloaded"]()


def _nothing():
    return True


class EmbeddedGunicorn(BaseApplication):
    """Serve the app made by ``app_factory()`` with the given gunicorn settings.

    ``app_factory`` runs inside each worker (gevent's monkey patching has happened by then),
    so nothing that opens sockets or spawns greenlets is built in the master. ``hooks``
    (``before_reap``, ``reload_checked``, ``reloaded``) are GatewayArbiter's joints.
    """

    def __init__(self, app_factory, options: dict, hooks: dict | None = None):
        self._app_factory = app_factory
        self.hooks = {"before_reap": _nothing, "reload_checked": _nothing,
                      "reloaded": _nothing, **(hooks or {})}
        # One shared control socket path ($HOME/.gunicorn/gunicorn.ctl) would make several
        # gateways and simulators on one host fight over it; we do not use it.
        self._options = {"worker_class": "inferegator.serving.worker.BoundedGeventWorker",
                         "accesslog": None, "control_socket_disable": True, **options}
        super().__init__()

    def load_config(self):
        for key, value in self._options.items():
            if value is not None or key == "accesslog":
                self.cfg.set(key, value)

    def load(self):
        return self._app_factory()

    def run(self):
        try:
            GatewayArbiter(self).run()
        except RuntimeError as exc:  # as gunicorn's own run(): a setting it cannot use
            print(f"\nError: {exc}\n", file=sys.stderr, flush=True)
            sys.exit(1)
