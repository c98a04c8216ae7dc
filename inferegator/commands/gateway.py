"""`inferegator serve`, `inferegator check-config` and `inferegator plugins`."""

import os
import subprocess
import sys

from . import DEFAULT_CONFIG, DEFAULT_CONFIG_HELP, config_name, load_or_report


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
    serve.add_argument("--access-log", action="store_true", help="log every request")
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


def checked_in_a_child(path):
    """``check-config`` on the same file, run in a child process: what the schema alone
    cannot judge (a routing option, a backend type no loaded plugin knows) needs the
    gateway built, and building it here would import the request path into gunicorn's
    master before it forks the workers that gevent patches."""
    argv = [sys.executable, "-m", "inferegator.cli", "check-config"]
    if path is not None:
        argv += ["--config", str(path)]
    return subprocess.run(argv, capture_output=True, text=True)


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
    config = load_or_report(args.config)
    if config is None:
        return 2
    from ..runtimes import RuntimeSupervisor
    from ..serving.gunicorn_app import EmbeddedGunicorn

    checked = checked_in_a_child(args.config)
    if checked.returncode != 0:  # reported here, not by a worker failing to boot
        sys.stderr.write(checked.stderr)
        return 2
    server = config.server
    workers = args.workers or server.workers
    if workers > 1 and config.ratelimit.store == "memory":
        print("inferegator: ratelimit.store is 'memory', which counts per process, so "
              f"{workers} workers would each admit a key's full limit. Use one worker, or "
              "set ratelimit.store to a Redis URL (redis://host:6379/0).", file=sys.stderr)
        return 2
    # Runtimes may name this installation's own `inferegator` or `python`.
    os.environ["PATH"] = os.path.dirname(sys.executable) + os.pathsep + os.environ.get(
        "PATH", "")
    supervisor = RuntimeSupervisor(list(config.runtimes))
    state = {}

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
              flush=True)
        state["key"] = key

    def app_factory():
        from ..factory import build_gateway

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

    options = {
        "bind": args.bind or server.bind,
        "workers": workers,
        "worker_connections": args.worker_connections or server.worker_connections,
        "graceful_timeout": int(server.graceful_timeout_s),
        "keepalive": 75,
        "header_timeout": server.header_timeout_s,  # a setting of serving/worker.py
        "loglevel": args.log_level,
        "accesslog": "-" if args.access_log else None,
        "proc_name": "inferegator",
        # X-Forwarded-* is believed only from console.trusted_proxies, by the console.
        "forwarded_allow_ips": "",
        "on_starting": lambda arbiter: supervisor.start(),
        "when_ready": lambda arbiter: print(banner(config, arbiter.cfg.bind[0], state.get("key")),
                                            flush=True),
        "worker_exit": worker_exit,
        "on_exit": lambda arbiter: supervisor.stop(),
    }
    EmbeddedGunicorn(app_factory, options).run()
    return 0
