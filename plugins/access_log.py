"""One line per API request on standard output: JSON for log shippers, or a line for
people at a terminal (``access_log.format``; ``auto`` picks by whether stdout is a tty).

A line is written with one write and flushed, so the lines of gunicorn's workers, which
share stdout, never interleave. It names the caller by key id and user id; the key, and
every header, stays out of it. The trace id is the tracing plugin's, read from the
request's ``plugin_data["tracing"]`` (that plugin wraps request_finished, so it is there).
"""

import json
import sys
import time

from inferegator.plugin import COMPLETED, hookimpl

NAME = "access_log"
# ensure_ascii: control characters (a client's model name may hold any) come out escaped.
_encode = json.JSONEncoder(separators=(",", ":")).encode


def _timestamp(wall: float) -> str:
    """ISO 8601 UTC with milliseconds, e.g. 2026-01-31T12:00:00.123Z."""
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(wall)) + \
        f".{int(wall % 1 * 1000):03d}Z"


def _trace_id(request):
    return getattr(request.plugin_data.get("tracing"), "trace_id", None)


def _ms(seconds):
    return None if seconds is None else round(seconds * 1000.0, 3)


def json_line(outcome) -> str:
    request = outcome.request
    http, principal = request.http, request.principal
    return _encode({
        "ts": _timestamp(outcome.started), "request_id": request.request_id,
        "trace_id": _trace_id(request), "method": http.method, "path": http.path,
        "endpoint": request.endpoint, "model": request.model_id, "backend": outcome.backend,
        "attempts": len(outcome.attempts), "stream": request.stream,
        "status": outcome.status, "http_status": outcome.http_status,
        "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": outcome.completion_tokens,
        "cached_tokens": outcome.cached_tokens, "cost_usd": outcome.cost_usd,
        "latency_ms": _ms(outcome.latency_s), "ttft_ms": _ms(outcome.ttft_s),
        "key_id": principal.key_id if principal is not None else None,
        "user_id": principal.owner if principal is not None else None,
        "client": http.remote_addr, "error": outcome.error, "error_code": outcome.error_code,
    }) + "\n"


def _shown(text) -> str:
    """Client-supplied text for a terminal: as is when printable, else JSON-quoted (no
    newline or escape sequence reaches the terminal)."""
    if text is None:
        return "-"
    return text if text.isprintable() else _encode(text)


def text_line(outcome) -> str:
    """e.g. ``2026-01-31T12:00:00.123Z 127.0.0.1 "POST /v1/chat/completions" 200
    acme/sim-chat via sim-a 12.3 ms ttft 4.1 ms tokens 12+34 key 7 user 3 req-9f..``"""
    request = outcome.request
    http, principal = request.http, request.principal
    parts = [_timestamp(outcome.started), http.remote_addr or "-",
             f'"{http.method} {_shown(http.path)}"', str(outcome.http_status),
             _shown(request.model_id), f"via {_shown(outcome.backend)}",
             f"{outcome.latency_s * 1000.0:.1f} ms"]
    if len(outcome.attempts) > 1:
        parts.append(f"after {len(outcome.attempts)} attempts")
    if outcome.ttft_s is not None:
        parts.append(f"ttft {outcome.ttft_s * 1000.0:.1f} ms")
    if outcome.usage is not None:
        parts.append(f"tokens {outcome.prompt_tokens}+{outcome.completion_tokens}")
        if outcome.cached_tokens:
            parts.append(f"(cached {outcome.cached_tokens})")
    if principal is not None:
        parts.append(f"key {principal.key_id} user {principal.owner}")
    parts.append(request.request_id)
    trace_id = _trace_id(request)
    if trace_id is not None:
        parts.append(f"trace {trace_id}")
    if outcome.status != COMPLETED:
        parts.append(outcome.status)
    if outcome.error:
        parts.append(_encode(outcome.error))
    return " ".join(parts) + "\n"


def _writes_to_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # no stdout, or a closed one
        return False


@hookimpl(trylast=True)
def inferegator_startup(gateway):
    chosen = gateway.config.access_log.format
    if chosen == "auto":
        chosen = "text" if _writes_to_terminal() else "json"
    gateway.plugin_state[NAME] = {"json": json_line, "text": text_line}.get(chosen)


@hookimpl(trylast=True)
def inferegator_request_finished(gateway, outcome):
    line = gateway.plugin_state.get(NAME)
    if line is None:
        return  # format: off
    out = sys.stdout
    try:
        out.write(line(outcome))
        out.flush()
    except (OSError, ValueError):  # stdout gone (a closed pipe): the answer goes on
        pass
