"""A hostile OpenAI/SGLang-shaped backend: a real HTTP server that answers generations badly.

Run it as its own process::

    python -m tests.support.hostile_backend --port 30000 --mode endless_json

It serves what the gateway's ``sglang`` backend type needs to put it in rotation
(``/health``, ``/v1/models``, ``/server_info``, ``/v1/loads``), and answers POST
``/v1/chat/completions`` and ``/v1/completions`` according to a mode. The mode of one
request is, in this order: the ``X-Hostile-Mode`` header (for direct calls; the gateway
does not forward client headers), the body's ``hostile_mode`` field (the gateway passes
unknown body fields through, so a test can choose per request through the gateway),
else the ``--mode`` the server was started with.

Modes (JSON answer when the request has no ``"stream": true``, SSE otherwise):

- ``ok``: a small valid completion; SSE with a final usage chunk and ``[DONE]``.
- ``hang_up``: closes the connection without answering (a plain transport failure).
- ``endless_json``: 200 JSON, chunked, ``{"a":"xxxx...`` as fast as it can, forever.
- ``huge_json``: 200, a valid ~100 MB JSON completion with Content-Length set.
- ``no_separator``: 200 SSE (chunked), ``data: {"id":"x","choices":[{"delta":{"content":
  "aaaa...`` forever, never a blank line.
- ``no_separator_late``: one valid event first, then the same.
- ``trickle``: 200 JSON or SSE, one byte every 0.2 s, forever.
- ``trickle_late``: SSE: one valid event first, then one byte every 0.2 s, forever.
- ``endless_events``: SSE: valid content events as fast as it can, never ``[DONE]``.
- ``bad_first_event``: SSE whose first event is a usage chunk that is not JSON; JSON
  requests get a body that is not JSON.
- ``array_event``: SSE whose first event is ``[{"choices":[],"usage":1}]`` (it looks like a
  usage chunk but is an array); JSON requests get that array as the body.
- ``bad_usage``: SSE: a content event, then a usage chunk whose numbers are strings/null,
  then ``[DONE]``; JSON requests get ``bad_usage_json``.
- ``bad_usage_json``: a valid JSON completion whose usage has strings for numbers.

GET ``/hostile/stats`` lists the X-Request-IDs whose generation answers are being written
right now (``active``) and how many answers each mode started (``served``), so a test can
see that the gateway hung up on it. SIGINT or SIGTERM stop the server at once; the writer
threads are daemons and end with it.
"""

import argparse
import json
import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

from tests.support.processes import ServerProcess, free_port

MODES = ("ok", "hang_up", "endless_json", "huge_json", "no_separator", "no_separator_late",
         "trickle", "trickle_late", "endless_events", "bad_first_event", "array_event",
         "bad_usage", "bad_usage_json", "empty_400", "html_400", "echo_request_id",
         "cut_short")

HUGE_BYTES = 100 * 1024 * 1024
TRICKLE_INTERVAL_S = 0.2
_PIECE = 64 * 1024

_dumps = json.JSONEncoder(separators=(",", ":")).encode


def sse(obj) -> bytes:
    return b"data: " + _dumps(obj).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


class HostileServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, mode: str):
        super().__init__(address, Handler)
        self.mode = mode
        self.lock = threading.Lock()
        self.active: dict[str, int] = {}
        self.served: dict[str, int] = {}


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked answers, as a runtime does
    server: HostileServer

    def log_message(self, format, *args):  # quiet: endless tests would flood the log
        pass

    # -- plumbing ---------------------------------------------------------------------------

    def _json(self, status: int, obj) -> None:
        data = _dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _raw(self, content_type: str, data: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _start_chunked(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        if content_type == "text/event-stream":
            self.send_header("Cache-Control", "no-cache")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")

    # -- GET --------------------------------------------------------------------------------

    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/health":
            self._json(200, {})
        elif path == "/v1/models":
            self._json(200, {"object": "list", "data": [
                {"id": "sim-model", "object": "model", "created": 0, "owned_by": "hostile"}]})
        elif path in ("/server_info", "/get_server_info"):
            self._json(200, {"context_length": 4096})
        elif path == "/v1/loads":
            self._json(200, {"loads": [{"num_running_reqs": 0, "num_waiting_reqs": 0}]})
        elif path == "/hostile/stats":
            with self.server.lock:
                self._json(200, {"mode": self.server.mode,
                                 "active": sorted(self.server.active),
                                 "served": dict(self.server.served)})
        else:
            self._json(404, {"object": "error", "message": "not found", "code": 404})

    # -- POST -------------------------------------------------------------------------------

    def do_POST(self):
        path = self.path.split("?", 1)[0]
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if path not in ("/v1/chat/completions", "/v1/completions"):
            self._json(404, {"object": "error", "message": "not found", "code": 404})
            return
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except ValueError:
            self._json(400, {"object": "error", "message": "bad JSON", "code": 400})
            return
        mode = self.headers.get("X-Hostile-Mode") or body.get("hostile_mode") or \
            self.server.mode
        if mode not in MODES:
            self._json(400, {"object": "error", "message": f"unknown mode {mode}",
                             "code": 400})
            return
        chat = path == "/v1/chat/completions"
        stream = body.get("stream") is True
        rid = self.headers.get("X-Request-ID") or f"anonymous-{id(self)}"
        with self.server.lock:
            self.server.active[rid] = self.server.active.get(rid, 0) + 1
            self.server.served[mode] = self.server.served.get(mode, 0) + 1
        try:
            getattr(self, "_mode_" + mode)(chat, stream, body.get("model") or "sim-model")
        except OSError:  # the gateway hung up: what a hostile server hopes for, not an error
            self.close_connection = True
        finally:
            with self.server.lock:
                left = self.server.active.pop(rid, 1) - 1
                if left > 0:
                    self.server.active[rid] = left

    # -- answers ----------------------------------------------------------------------------

    @staticmethod
    def _completion(chat: bool, model: str, content: str, usage) -> dict:
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": content},
                      "finish_reason": "stop"}
        else:
            choice = {"index": 0, "text": content, "finish_reason": "stop"}
        return {"id": "hostile-1", "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()), "model": model, "choices": [choice],
                "usage": usage}

    @staticmethod
    def _event(chat: bool, model: str, content: str, finish=None) -> dict:
        if chat:
            choice = {"index": 0, "delta": {"content": content}, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": content, "finish_reason": finish}
        return {"id": "hostile-1", "object": "chat.completion.chunk" if chat
                else "text_completion", "created": int(time.time()), "model": model,
                "choices": [choice]}

    @staticmethod
    def _usage_event(chat: bool, model: str, usage) -> dict:
        return {"id": "hostile-1", "object": "chat.completion.chunk" if chat
                else "text_completion", "created": int(time.time()), "model": model,
                "choices": [], "usage": usage}

    def _mode_ok(self, chat, stream, model, usage=None):
        usage = usage or {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
        if not stream:
            self._json(200, self._completion(chat, model, "ok", usage))
            return
        self._start_chunked("text/event-stream")
        self._chunk(sse(self._event(chat, model, "ok")))
        self._chunk(sse(self._event(chat, model, "", "stop")))
        self._chunk(sse(self._usage_event(chat, model, usage)))
        self._chunk(DONE)
        self._end_chunked()

    def _mode_hang_up(self, chat, stream, model):
        self.close_connection = True

    def _mode_bad_usage(self, chat, stream, model):
        self._mode_ok(chat, stream, model, usage={
            "prompt_tokens": "ten", "completion_tokens": "many", "total_tokens": None})

    _mode_bad_usage_json = _mode_bad_usage

    def _mode_endless_json(self, chat, stream, model):
        self.close_connection = True
        self._start_chunked("application/json")
        self._chunk(b'{"a":"')
        piece = b"x" * _PIECE
        while True:
            self._chunk(piece)

    def _mode_huge_json(self, chat, stream, model):
        self.close_connection = True
        head = _dumps(self._completion(chat, model, "@", {
            "prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4})).encode()
        before, after = head.split(b"@", 1)
        filler = HUGE_BYTES - len(before) - len(after)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(HUGE_BYTES))
        self.end_headers()
        self.wfile.write(before)
        piece = b"a" * _PIECE
        while filler > 0:
            self.wfile.write(piece[:filler])
            filler -= _PIECE
        self.wfile.write(after)

    def _no_separator(self, chat, stream, model, first_event: bool):
        self.close_connection = True
        self._start_chunked("text/event-stream")
        if first_event:
            self._chunk(sse(self._event(chat, model, "first")))
        self._chunk(b'data: {"id":"x","choices":[{"delta":{"content":"')
        piece = b"a" * _PIECE
        while True:
            self._chunk(piece)

    def _mode_no_separator(self, chat, stream, model):
        self._no_separator(chat, stream, model, first_event=False)

    def _mode_no_separator_late(self, chat, stream, model):
        self._no_separator(chat, stream, model, first_event=True)

    def _trickle(self, chat, stream, model, first_event: bool):
        self.close_connection = True
        if stream or first_event:
            self._start_chunked("text/event-stream")
            if first_event:
                self._chunk(sse(self._event(chat, model, "first")))
            self._chunk(b'data: {"id":"x","choices":[{"delta":{"content":"')
        else:
            self._start_chunked("application/json")
            self._chunk(b'{"id":"x","choices":[{"message":{"content":"')
        while True:
            time.sleep(TRICKLE_INTERVAL_S)  # the hostility itself: slow, never silent
            self._chunk(b"a")

    def _mode_trickle(self, chat, stream, model):
        self._trickle(chat, stream, model, first_event=False)

    def _mode_trickle_late(self, chat, stream, model):
        self._trickle(chat, stream, model, first_event=True)

    def _mode_endless_events(self, chat, stream, model):
        self.close_connection = True
        self._start_chunked("text/event-stream")
        event = sse(self._event(chat, model, "more "))
        batch = event * 64
        while True:
            self._chunk(batch)

    def _mode_bad_first_event(self, chat, stream, model):
        if not stream:
            self._raw("application/json", b'{"choices":[],"usage":{not json}')
            return
        self._start_chunked("text/event-stream")
        self._chunk(b'data: {"choices":[],"usage":{not json}\n\n')
        self._chunk(DONE)
        self._end_chunked()

    def _mode_array_event(self, chat, stream, model):
        if not stream:
            self._raw("application/json", b'[{"choices":[],"usage":1}]')
            return
        self._start_chunked("text/event-stream")
        self._chunk(b'data: [{"choices":[],"usage":1}]\n\n')
        self._chunk(DONE)
        self._end_chunked()

    def _mode_empty_400(self, chat, stream, model):
        """400 with an empty body, as llama-cpp-python's server answers an X-Request-ID
        that is not a UUID."""
        self.send_response(400)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _mode_html_400(self, chat, stream, model):
        data = b"<html><body><h1>400 Bad Request</h1></body></html>"
        self.send_response(400)
        self.send_header("Content-Type", "text/html")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _mode_echo_request_id(self, chat, stream, model):
        """ok, whose content is the X-Request-ID this server received ("" if none)."""
        content = self.headers.get("X-Request-ID") or ""
        usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
        if not stream:
            self._json(200, self._completion(chat, model, content, usage))
            return
        self._start_chunked("text/event-stream")
        self._chunk(sse(self._event(chat, model, content)))
        self._chunk(sse(self._event(chat, model, "", "stop")))
        self._chunk(sse(self._usage_event(chat, model, usage)))
        self._chunk(DONE)
        self._end_chunked()

    def _mode_cut_short(self, chat, stream, model):
        """SSE: an empty first delta, three content events, then the connection closes:
        no usage chunk, no [DONE] (a runtime that died mid-answer)."""
        self.close_connection = True
        if not stream:
            self._json(200, self._completion(chat, model, "abc", None))
            return
        self._start_chunked("text/event-stream")
        self._chunk(sse(self._event(chat, model, "")))
        for piece in ("a", "b", "c"):
            self._chunk(sse(self._event(chat, model, piece)))
        self.wfile.flush()


class HostileBackend(ServerProcess):
    """This server as a child process on a free port; ready once /health answers 200."""

    def __init__(self, mode: str = "ok", port=None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        path = os.pathsep.join(filter(None, (root, os.environ.get("PYTHONPATH"))))
        super().__init__([sys.executable, "-m", "tests.support.hostile_backend",
                          "--port", str(self.port), "--mode", mode],
                         self.url + "/health", env={"PYTHONPATH": path})

    def stats(self) -> dict:
        return requests.get(self.url + "/hostile/stats", timeout=5).json()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mode", choices=MODES, default="ok")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # both stop it the same way
    server = HostileServer((args.host, args.port), args.mode)
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
