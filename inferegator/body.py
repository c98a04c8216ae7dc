"""Request bodies at the edge: read bounded in size and time, parsed as strict JSON.

Shared by the generation endpoints, the accounts API and plugins, so every route refuses
the same hostile input the same way: a body over the size limit (413), one that does not
arrive in time (408), invalid UTF-8, JSON nested deeper than the parser can follow, and
lone surrogates (valid JSON and a valid Python ``str``, but no database, Redis or UTF-8
encoder accepts them).
"""

import json
import re

import gevent

from .errors import GatewayError, body_too_large, invalid_request

# A \uD800-\uDFFF escape: only then can a parsed body hold a lone surrogate.
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


class _BodyTimeout(Exception):
    pass


def read_body(req, limit: int, timeout_s: float) -> bytes:
    """The request body (Content-Length or chunked), refusing one over ``limit`` bytes (413)
    or one the client has not finished sending within ``timeout_s`` (408)."""
    length = req.content_length
    if length is not None and length > limit:
        raise body_too_large(limit)
    # Without Content-Length the server has decoded a chunked body, or has none to give.
    stream = req.bounded_stream if length is not None else req.stream
    # a bare loop timer: gevent.Timeout costs a few µs more per request
    timer = gevent.get_hub().loop.timer(timeout_s)
    timer.start(gevent.getcurrent().throw, _BodyTimeout)
    try:
        data = stream.read(limit + 1)
    except _BodyTimeout:
        raise GatewayError(408, f"The request body did not arrive within {timeout_s:g} s.",
                           "invalid_request_error", "request_timeout") from None
    finally:
        timer.stop()
        timer.close()
    if len(data) > limit:
        raise body_too_large(limit)
    return data


def json_object(raw: bytes) -> dict:
    """A request body as a JSON object of valid Unicode; 400 invalid_json for anything else."""
    try:
        body = json.loads(raw.decode("utf-8"))  # strict: encoded surrogates are refused too
    except (ValueError, UnicodeDecodeError):
        raise invalid_request("We could not parse the JSON body of your request. The body "
                              "must be valid JSON.", None, "invalid_json") from None
    except RecursionError:
        raise invalid_request("The JSON body of your request is nested too deeply.", None,
                              "invalid_json") from None
    if not isinstance(body, dict):
        raise invalid_request("The request body must be a JSON object.", None, "invalid_json")
    if _SURROGATE_ESCAPE.search(raw) is not None:
        try:  # paired surrogates (an escaped emoji) encode; a lone one does not
            json.dumps(body, ensure_ascii=False).encode("utf-8")
        except UnicodeEncodeError:
            raise invalid_request("The JSON body of your request holds an invalid Unicode "
                                  "escape (a lone surrogate).", None, "invalid_json") from None
    return body


def read_json(req, server) -> dict:
    """The request's JSON object body under the server's size and time limits."""
    return json_object(read_body(req, server.max_body_bytes, server.body_timeout_s))
