"""`inferegator sim`: serve one simulated SGLang runtime with gunicorn and a gevent worker."""

import sys

from ..serving.gunicorn_app import EmbeddedGunicorn
from .settings import add_arguments, from_arguments

HELP = "Run an SGLang-compatible runtime simulator (one model, one gevent worker)."
# gunicorn's access log line, with the request id and W3C trace context each request came
# with (SGLang records traceparent only with --enable-trace; the simulator just shows it).
ACCESS_LOG_FORMAT = ('%(h)s %(t)s "%(r)s" %(s)s %(b)s %(M)sms request_id=%({x-request-id}i)s '
                     'traceparent=%({traceparent}i)s tracestate="%({tracestate}i)s"')


def register(subparsers) -> None:
    parser = subparsers.add_parser("sim", help=HELP, description=HELP + (
        " The engine state (queue, prefix cache, load) lives in one process, so the simulator"
        " always runs a single worker, like one SGLang runtime."))
    add_arguments(parser)
    parser.add_argument("--log-level", default="warning", help="gunicorn log level")
    parser.add_argument("--access-log", action="store_true", help="log every request")
    parser.set_defaults(handler=run)


def ready_banner(settings) -> str:
    url = f"http://{settings.host}:{settings.port}"
    return (f"SGLang-compatible simulator serving {settings.model!r} at {url}\n"
            f"  curl {url}/v1/chat/completions -H 'Content-Type: application/json' \\\n"
            f"    -d '{{\"model\": \"{settings.model}\", "
            f"\"messages\": [{{\"role\": \"user\", \"content\": \"Hello!\"}}]}}'")


def run(args) -> int:
    try:
        settings = from_arguments(args)
    except ValueError as exc:
        print(f"inferegator sim: {exc}", file=sys.stderr)
        return 2

    def app_factory():
        from .app import create_app

        return create_app(settings)

    options = {
        "bind": f"{settings.host}:{settings.port}",
        "workers": 1,
        "worker_connections": settings.worker_connections,
        "loglevel": args.log_level,
        "accesslog": "-" if args.access_log else None,
        "access_log_format": ACCESS_LOG_FORMAT,
        "graceful_timeout": 5,
        "timeout": 0,
        "keepalive": 75,
        "proc_name": f"inferegator-sim:{settings.port}",
        "when_ready": lambda server: print(ready_banner(settings), flush=True),
    }
    EmbeddedGunicorn(app_factory, options).run()
    return 0
