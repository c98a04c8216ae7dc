"""The Gateway: configuration, plugins, catalog and backend health, built once per worker."""

import logging

import gevent
from gevent.pool import Pool

from ..catalog import Catalog, CatalogModel

log = logging.getLogger("inferegator.gateway")
# A slow probe on a busy machine is not an outage; refused connections eject at once
# (passive health in the pipeline).
FAILED_PROBES_TO_EJECT = 2


class GatewayBuildError(ValueError):
    """The configuration names a backend type or routing policy no plugin provides."""


def _merged(results) -> dict:
    merged = {}
    for result in results:
        merged.update(result or {})
    return merged


class Gateway:
    """What every request needs: config, plugin hooks, the catalog and backend health."""

    def __init__(self, config, plugin_manager, store=None):
        self.config = config
        self.store = store  # accounts, keys, usage ledger (None only for check-config)
        self.plugin_state: dict = {}  # each plugin's per-worker objects, by plugin name
        self.pm = plugin_manager
        self.hook = plugin_manager.hook
        # Hook results come in LIFO order (user plugins first); built-ins must not override.
        backend_types = _merged(reversed(self.hook.inferegator_register_backends()))
        policies = _merged(reversed(self.hook.inferegator_register_routing_policies()))
        self.catalog = Catalog([self._build_model(m, backend_types, policies)
                                for m in config.models])
        self._health_greenlet = None

    @staticmethod
    def _build_model(model_config, backend_types, policies) -> CatalogModel:
        if model_config.routing not in policies:
            raise GatewayBuildError(
                f"model {model_config.id!r}: unknown routing policy {model_config.routing!r} "
                f"(available: {', '.join(sorted(policies))})")
        backends = []
        for backend in model_config.backends:
            if backend.type not in backend_types:
                raise GatewayBuildError(
                    f"model {model_config.id!r}: unknown backend type {backend.type!r} "
                    f"(available: {', '.join(sorted(backend_types))})")
            backends.append(backend_types[backend.type](backend, model_config.id))
        return CatalogModel(model_config, backends, policies[model_config.routing])

    # -- backend health -------------------------------------------------------------------

    def check_health(self) -> None:
        """Probe every backend once, concurrently; learn context lengths on first success."""
        backends = list(self.catalog.backends())
        results = Pool(16).map(lambda b: b.probe(), backends)
        for backend, ok in zip(backends, results):
            backend.failed_probes = 0 if ok else backend.failed_probes + 1
            if ok and not backend.healthy:
                log.warning("backend %s is healthy again", backend.name)
                backend.healthy = True
            elif backend.healthy and backend.failed_probes >= FAILED_PROBES_TO_EJECT:
                log.warning("backend %s failed %d health checks", backend.name,
                            backend.failed_probes)
                backend.healthy = False
        for model in self.catalog.models.values():
            if model.context_length is None:
                for backend in model.backends:
                    if backend.healthy:
                        model.discovered_context_length = backend.discover().get(
                            "context_length")
                        break

    def start_health_checks(self) -> None:
        interval = self.config.server.health_check_interval_s

        def loop():
            while True:
                try:
                    self.check_health()
                except Exception:  # a probe bug must not end health checking
                    log.exception("health check failed")
                gevent.sleep(interval)

        self._health_greenlet = gevent.spawn(loop)

    def stop(self) -> None:
        if self._health_greenlet is not None:
            self._health_greenlet.kill(block=False)

    def ready(self) -> dict:
        """Readiness: each model's healthy backend count; ready when every model has one."""
        models = {m.id: sum(b.healthy for b in m.backends)
                  for m in self.catalog.models.values()}
        return {"ready": all(models.values()), "healthy_backends": models}
