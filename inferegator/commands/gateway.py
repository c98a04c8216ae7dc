"""`inferegator serve`, `inferegator check-config` and `inferegator plugins`."""

import logging
import os
import sys

from . import DEFAULT_CONFIG, DEFAULT_CONFIG_HELP, config_name, load_or_report
from .reload import ConfigReloader, checked_in_a_child, with_overrides

# As gunicorn's own lines: [time] [pid] [level] ...
LOG_FORMAT = "[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s"


def register(subparsers) -> None:
    serve = subparsers.add_parser(
        "serve", help="Run the gateway (gunicorn with gevent workers).",
        description="Serve the OpenAI-compatible gateway described by a YAML config, and "
                    "start and supervise the runtimes it lists.")
    serve.add_argument("--config", default=DEFAULT_CONFIG,
                       help=f"YAML configuration file ({DEFAULT_CONFIG_HELP})")
    serve.add_argument("--bind", help="host:port, overrides server.bind")
    serve.add_argument("--workers", type=int, help="overrides server.workers")
    serve.add_argument("--worker-connections", type=int,
                       help="overrides server.worker_connections")
    serve.add_argument("--log-level", default="info", help="gunicorn log level")
    serve.add_argument("--access-log", nargs="?", const="text",
                       choices=("auto", "json", "text", "off"),
                       help="overrides access_log.format (alone: text)")
    serve.set_defaults(handler=run_serve)

    check = subparsers.add_parser(
        "check-config", help="Validate a YAML configuration and print its catalog.")
    check.add_argument("--config", default=DEFAULT_CONFIG,
                       help=f"YAML configuration file ({DEFAULT_CONFIG_HELP})")
    check.set_defaults(handler=run_check_config)

    plugins = subparsers.add_parser(
        "plugins", help="List the loaded plugins, their versions and the hooks they implement.")
    plugins.add_argument("--config", default=DEFAULT_CONFIG,
                         help=f"YAML configuration file ({DEFAULT_CONFIG_HELP})")
    plugins.set_defaults(handler=run_plugins)


def run_plugins(args) -> int:
    import json

    from ..factory import build_plugin_manager, describe_plugins

    config = load_or_report(args.config)
    if config is None:
        return 2
    print(json.dumps(describe_plugins(build_plugin_manager(config)), indent=2))
    return 0


def run_check_config(args) -> int:
    config = load_or_report(args.config)
    if config is None:
        return 2
    from ..errors import GatewayBuildError
    from ..factory import build_plugin_manager
    from ..gateway.core import Gateway

    try:
        gateway = Gateway(config, build_plugin_manager(config))
    except GatewayBuildError as exc:
        print(f"inferegator: invalid configuration:\n{config_name(args.config)}: {exc}",
              file=sys.stderr)
        return 2
    problems = [problem for found in gateway.hook.inferegator_check_config(config=config)
                for problem in found or ()]
    if problems:
        print("inferegator: invalid configuration:\n" + "\n".join(
            f"{config_name(args.config)}: {problem}" for problem in problems), file=sys.stderr)
        return 2
    print(f"{config_name(args.config)}: OK")
    for model in gateway.catalog.models.values():
        p = model.pricing
        print(f"  {model.id}  (routing {model.config.routing}; context "
              f"{model.context_length or 'from backend'}; USD/1M prompt {p.prompt}, "
              f"completion {p.completion}, cached {p.cached_prompt})")
        for backend in model.backends:
            print(f"    - {backend.role:8} {backend.name} as {backend.upstream_model!r}")
    for runtime in config.runtimes:
        print(f"  runtime {runtime.name}: {' '.join(runtime.command)}")
    return 0


def banner(config, bind: str, key=None) -> str:
    host, _, port = bind.rpartition(":")
    url = f"http://{host or '127.0.0.1'}:{port}"
    model = config.models[0].id
    hint = ""
    if key is None:  # not the first start: the key was printed then, or is made now
        key = "sk-inf-YOUR_KEY"
        hint = ("  (replace sk-inf-YOUR_KEY with your API key; create one: "
                "inferegator keys create --user EMAIL)")
    console = (f"  Console: {url}{config.console.prefix}  (sign up, API keys, usage, "
               f"playground; admins sign in with the email and password above)\n"
               if config.console.enabled else "")
    return (f"Inferegator gateway on {url}/v1  (models: "
            f"{', '.join(m.id for m in config.models)})\n"
            f"{console}"
            f"  curl {url}/v1/chat/completions -H 'Authorization: Bearer {key}' "
            f"-H 'Content-Type: application/json' \\\n"
            f"    -d '{{\"model\": \"{model}\", \"messages\": [{{\"role\": \"user\", "
            f"\"content\": \"Hello!\"}}]}}'"
            + (f"\n{hint}" if hint else ""))


def run_serve(args) -> int:
    from ..observability.multiprocess import MetricsDirectory

    # First: gunicorn forks workers without exec, and prometheus_client picks its
    # multiprocess values when first imported, which must see this directory named.
    metrics_dir, master = MetricsDirectory(), os.getpid()
    try:
        return _serve(args, metrics_dir)
    finally:
        if os.getpid() == master:  # a worker leaves by SystemExit through here too
            metrics_dir.close()


def _serve(args, metrics_dir) -> int:
    config = load_or_report(args.config)
    if config is None:
        return 2
    checked = checked_in_a_child(args.config)
    if checked.returncode != 0:  # reported here, not by a worker failing to boot
        sys.stderr.write(checked.stderr)
        return 2
    config = with_overrides(config, args)
    from ..runtimes import RuntimeSupervisor
    from ..serving.gunicorn_app import EmbeddedGunicorn

    logging.basicConfig(level=args.log_level.upper(), format=LOG_FORMAT)
    server = config.server
    workers = args.workers or server.workers
    if refused := _multi_worker_memory_store(config, workers):
        print(refused, file=sys.stderr)
        return 2
    raise_open_files_limit(server.worker_connections * workers)
    # Runtimes may name this installation's own `inferegator` or `python`.
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get(
        "PATH", "")
    supervisor = RuntimeSupervisor(list(config.runtimes), output=sys.stderr, bound=True)
    state = {"config": config}

    from ..store.database import StoreError
    from ..store.store import Store, bootstrap_admin

    try:
        store = Store(config.storage)  # migrates before any worker starts
    except StoreError as exc:
        print(f"inferegator: storage: {exc}", file=sys.stderr)
        return 2
    first = bootstrap_admin(store, config.auth.bootstrap_admin_email)
    store.db.close()
    if first is not None:
        user, password, key = first
        print(f"Created the first admin, {user['email']}; shown once, keep them safe:\n"
              f"  email:    {user['email']}\n"
              f"  password: {password}  (signs in to the console)\n  API key:  {key}",
              file=sys.stderr, flush=True)  # standard output is the access log's
        state["key"] = key

    def app_factory():
        from ..factory import build_gateway

        config = state["config"]  # the one a reload installed, for the workers it starts
        store = Store(config.storage,
                      ledger_flush_interval_s=config.server.ledger_flush_interval_s,
                      ledger_journal=config.ledger_journal)
        gateway = state["gateway"] = build_gateway(config, store=store)
        gateway.start_health_checks()
        return gateway.app

    def worker_exit(arbiter, worker):
        gateway = state.get("gateway")
        if gateway is not None:
            gateway.close()

    reloader = ConfigReloader(args, state, supervisor)

    def when_ready(arbiter):
        if config.metrics.enabled and config.metrics.bind:
            metrics_dir.serve(config.metrics.bind)
        if args.config is not None and server.reload_on_change:
            reloader.watch(args.config)
        print(banner(config, arbiter.cfg.bind[0], state.get("key")), file=sys.stderr,
              flush=True)

    options = {
        "bind": args.bind or server.bind,
        "workers": workers,
        "worker_connections": args.worker_connections or server.worker_connections,
        "graceful_timeout": int(server.graceful_timeout_s),
        "keepalive": 75,
        "header_timeout": server.header_timeout_s,  # a setting of serving/worker.py
        "loglevel": args.log_level,
        "proc_name": "inferegator",
        # X-Forwarded-* is believed only from console.trusted_proxies, by the console.
        "forwarded_allow_ips": "",
        "on_starting": lambda arbiter: supervisor.start(),
        "when_ready": when_ready,
        "worker_exit": worker_exit,
        "child_exit": lambda arbiter, worker: metrics_dir.worker_exited(worker.pid),
        "on_exit": lambda arbiter: (reloader.stop(), supervisor.stop()),
    }
    EmbeddedGunicorn(app_factory, options, hooks={
        "before_reap": supervisor.reap, "reload_checked": reloader.check,
        "reloaded": reloader.finish}).run()
    return 0


def _multi_worker_memory_store(config, workers: int) -> str | None:
    """Why ``workers`` workers cannot share this config's limiter, or None."""
    if workers > 1 and config.ratelimit.store == "memory":
        return (f"inferegator: ratelimit.store is 'memory', which counts per process, so "
                f"{workers} workers would each admit a key's full limit. Use one worker, or "
                "set ratelimit.store to a Redis URL (redis://host:6379/0).")
    return None


def raise_open_files_limit(connections: int) -> None:
    """Raise the soft limit on open files towards the hard one: each client connection
    holds a descriptor, and so does each upstream one."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 2 * connections + 256
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < wanted:
            logging.getLogger("inferegator.serve").warning(
                "open files limited to %d (hard limit); %d connections may need %d: raise "
                "it (ulimit -n, LimitNOFILE=)", target, connections, wanted)
