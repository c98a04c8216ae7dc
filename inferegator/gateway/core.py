"""The Gateway: configuration, plugins, catalog and backend health, built once per worker."""

import logging
import time

from gevent.pool import Pool

from ..catalog import Catalog, CatalogModel
from ..errors import GatewayBuildError
from ..periodic import every
from .endpoints import ENDPOINTS

log = logging.getLogger("inferegator.gateway")


def _merged(results) -> dict:
    merged = {}
    for result in results:
        merged.update(result or {})
    return merged


class Gateway:
    """What every request needs: config, plugin hooks, the catalog and backend health."""

    def __init__(self, config, plugin_manager, store=None, clock=time.monotonic):
        self.config = config
        self.store = store  # accounts, keys, usage ledger (None only for check-config)
        self.clock = clock  # monotonic seconds, for plugins' caches and windows
        self.app = None  # the WSGI app, once inferegator.factory.build_gateway made it
        self.pipeline = None  # the app's request path (gateway/pipeline.py), with the app
        self.plugin_state: dict = {}  # each plugin's per-worker objects, by plugin name
        self.pm = plugin_manager
        self.hook = plugin_manager.hook
        # Hook results come in LIFO order (user plugins first); built-ins must not override.
        backend_types = _merged(reversed(self.hook.inferegator_register_backends()))
        policies = _merged(reversed(self.hook.inferegator_register_routing_policies()))
        self.catalog = Catalog([self._build_model(m, backend_types, policies, config.resilience)
                                for m in config.models])
        self._greenlets = []

    @staticmethod
    def _build_model(model_config, backend_types, policies, resilience) -> CatalogModel:
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
            backend_type = backend_types[backend.type]
            missing = [c for c in model_config.capabilities if c in ENDPOINTS
                       and backend_type.paths and c not in backend_type.paths]
            if missing:
                raise GatewayBuildError(
                    f"model {model_config.id!r}: backend type {backend.type!r} does not serve "
                    f"{', '.join(ENDPOINTS[c].path for c in missing)}, which its capabilities "
                    f"({', '.join(missing)}) declare")
            backends.append(backend_type(backend, model_config.id, resilience))
        return CatalogModel(model_config, backends, policies[model_config.routing])

    # -- backend health -------------------------------------------------------------------

    def check_health(self) -> None:
        """Probe every backend once, concurrently; learn context lengths on first success."""
        resilience = self.config.resilience
        backends = list(self.catalog.backends())
        timeout = resilience.health_check_timeout_s
        never_healthy_warn_after = 10  # failed probes before "never healthy" is logged
        sent = time.monotonic()
        results = Pool(16).map(lambda b: b.probe(timeout), backends)
        for backend, ok in zip(backends, results):
            if not ok and backend.last_success > sent:
                # A request answered after the probe went out (a runtime still booting
                # when probed, or too busy to answer it in time): the probe is stale.
                continue
            seen_healthy = getattr(backend, "seen_healthy", False)
            if ok:
                backend.failed_probes, backend.passed_probes = 0, backend.passed_probes + 1
                if backend.breaker.probe_passed():
                    backend.cache_epoch += 1  # it was down: a new process, an empty cache
                if not seen_healthy:
                    backend.seen_healthy = True
                    log.info("backend %s is healthy", backend.name)
                if backend.probe_ok is None:
                    backend.probe_ok = True
                elif not backend.probe_ok and backend.passed_probes >= resilience.healthy_after:
                    if seen_healthy:  # else its first pass was logged just above
                        log.warning("backend %s passes its health checks again", backend.name)
                        backend.cache_epoch += 1
                    backend.probe_ok = True
            else:
                backend.passed_probes, backend.failed_probes = 0, backend.failed_probes + 1
                probes = getattr(backend, "probes_before_healthy", 0) + 1
                if not seen_healthy:
                    backend.probes_before_healthy = probes
                    if probes == never_healthy_warn_after:
                        log.warning(
                            "backend %s has not passed any of its first %d health checks; it "
                            "gets no requests until it does", backend.name, probes)
                if backend.probe_ok is None:
                    backend.probe_ok = False  # never seen healthy: it joins once it is
                elif backend.probe_ok and backend.failed_probes >= resilience.unhealthy_after:
                    log.warning("backend %s failed %d health checks", backend.name,
                                backend.failed_probes)
                    backend.probe_ok = False
        for model in self.catalog.models.values():
            if model.context_length is None:
                for backend in model.backends:
                    if backend.healthy:
                        model.discovered_context_length = backend.discover().get(
                            "context_length")
                        break

    def poll_loads(self) -> None:
        """Read each runtime's own load (SGLang /v1/loads), and operators' drains."""
        backends = list(self.catalog.backends())
        ours = [b.in_flight for b in backends]  # what this worker had there when asking
        loads = Pool(16).map(lambda b: b.poll_load(), backends)
        now = time.monotonic()
        for backend, load, mine in zip(backends, loads, ours):
            backend.reported_load = None if load is None else {**load, "ours": mine,
                                                               "at": now}
        if self.store is not None:
            drained = self.store.drained_backends()
            for backend in backends:
                backend.drained = backend.name in drained

    def start_health_checks(self) -> None:
        server = self.config.server

        def health_interval():
            # A backend not yet seen healthy (a runtime still starting) is probed often,
            # so that it joins within half a second of being ready.
            waiting = any(b.probe_ok is not True for b in self.catalog.backends())
            return min(server.health_check_interval_s, 0.5) if waiting \
                else server.health_check_interval_s

        self._greenlets += [
            every(health_interval, self.check_health, "health check", at_once=True),
            every(lambda: server.load_poll_interval_s, self.poll_loads, "load poll",
                  at_once=True)]

    def stop(self) -> None:
        for greenlet in self._greenlets:
            greenlet.kill(block=False)

    def close(self) -> None:
        """Stop the background loops, run the shutdown hooks, close the store."""
        self.stop()
        self.hook.inferegator_shutdown(gateway=self)
        if self.store is not None:
            self.store.close()

    def ready(self) -> dict:
        """Readiness: each model's healthy backend count (a probe must have passed); ready
        when every model has one."""
        models = {m.id: sum(b.healthy and b.probe_ok is True for b in m.backends)
                  for m in self.catalog.models.values()}
        return {"ready": all(models.values()), "healthy_backends": models}
