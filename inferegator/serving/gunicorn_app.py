"""Embedded gunicorn with our gevent worker (worker.py); the WSGI app is built in load(), after
gevent patched."""

from gunicorn.app.base import BaseApplication

# Registers gunicorn's `header_timeout` setting, which must exist before any gunicorn Config.
from . import worker  # noqa: F401


class EmbeddedGunicorn(BaseApplication):
    """Serve the app made by ``app_factory()`` with the given gunicorn settings.

    ``app_factory`` runs inside each worker (gevent's monkey patching has happened by then),
    so nothing that opens sockets or spawns greenlets is built in the master.
    """

    def __init__(self, app_factory, options: dict):
        self._app_factory = app_factory
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
