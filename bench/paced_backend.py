#!/usr/bin/env python3
"""A minimal paced, OpenAI-shaped SSE chat backend for stream benchmarks (bench/perf.py).

What an SGLang runtime sends for a streamed chat completion, at a fixed pace and at the
least CPU this machine allows, so that thousands of concurrent streams measure the proxy
in front of it rather than the backend:

- a raw gevent StreamServer, keep-alive HTTP/1.1, a minimal request parser (the request
  line, Content-Length, and one json.loads of the body for max_tokens and stream_options);
- the answer is SGLang's chat.completion.chunk events, pre-rendered once per shape and
  length (with or without the running usage of ``stream_options.continuous_usage_stats``,
  which the gateway asks for): the role chunk, one content chunk per token, the finish
  chunk (``finish_reason: "length"``), the usage chunk (``choices: []``) when
  ``stream_options.include_usage`` is set, and ``data: [DONE]``; chunked transfer encoding;
- one event per write: the response headers and the role chunk, then the first token at
  once, then each next token ``--pace-ms`` after the previous one (on an absolute
  schedule, so lateness does not add up); the finish, usage and [DONE] events follow the
  last token at once, each its own write (the chunked terminator rides with [DONE]);
- one scheduler greenlet writes every due event of every stream (a heap of due times,
  non-blocking ``send`` on the raw socket), instead of one timer and one greenlet switch
  per event; a write the socket cannot take whole is finished by a helper greenlet
  and that stream waits for it before its next event.

Non-streamed requests get a small JSON chat completion. ``GET /health``, ``/v1/models``,
``/v1/loads``, ``/get_load``, ``/server_info``, ``/get_server_info`` and
``/get_model_info`` answer as SGLang's do, enough for the gateway's health checks and
load polls and for sglang-router (whose HTTP/2 probe, ``PRI *``, gets a 400: HTTP/1.1
only); ``GET /stats`` counts the streams and events sent.

Usage: python bench/paced_backend.py --port 30100 --model sim-model --pace-ms 50
"""

import argparse
import heapq
import json
import os
import resource
import signal
import sys
import time

import gevent
import gevent.event
import gevent.server
import gevent.socket as gsocket

_HEAD_STREAM = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
                b"cache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n")
_TERMINATOR = b"0\r\n\r\n"
_WORDS = ("The", " prefix", " cache", " keeps", " the", " key", " and", " value", " blocks",
          " of", " earlier", " prompts,", " so", " a", " repeated", " system", " prompt",
          " is", " not", " computed", " again.")
PROMPT_TOKENS = 24


def _dumps(obj) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _framed(event: bytes) -> bytes:
    """One SSE event as one HTTP chunk."""
    return b"%x\r\n%s\r\n" % (len(event), event)


def _usage(completion: int) -> dict:
    return {"prompt_tokens": PROMPT_TOKENS, "total_tokens": PROMPT_TOKENS + completion,
            "completion_tokens": completion, "prompt_tokens_details": {"cached_tokens": 0},
            "reasoning_tokens": 0, "completion_tokens_details": None}


def render_stream(model: str, tokens: int, continuous: bool, include_usage: bool,
                  rid: str = "chatcmpl-paced", created: int = 0) -> list[bytes]:
    """The events of one streamed chat completion, as SGLang writes them, unframed:
    [role, token 1 .. token n, finish, (usage,) [DONE]]."""
    head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model}

    def chunk(delta, reason=None, running=None):
        obj = {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                    "finish_reason": reason, "matched_stop": None}]}
        if running is not None:
            obj["usage"] = running
        return b"data: " + _dumps(obj).encode() + b"\n\n"

    events = [chunk({"role": "assistant", "content": "", "reasoning_content": None})]
    for i in range(tokens):
        events.append(chunk({"content": _WORDS[i % len(_WORDS)], "reasoning_content": None},
                            running=_usage(i + 1) if continuous else None))
    events.append(chunk({"reasoning_content": None}, "length"))
    if include_usage:
        events.append(b"data: " + _dumps({**head, "choices": [], "usage": _usage(tokens)})
                      .encode() + b"\n\n")
    events.append(b"data: [DONE]\n\n")
    return events


class _Stream:
    __slots__ = ("sock", "raw", "events", "last_token", "next", "due", "done", "pending")

    def __init__(self, sock, events, tokens, due):
        self.sock = sock
        self.raw = sock._sock if hasattr(sock, "_sock") else sock
        self.events = events
        self.last_token = tokens  # events: role, tokens 1..n, finish, (usage,) [DONE]
        self.next = 2  # role and token 1 go out with the headers
        self.due = due
        self.done = gevent.event.Event()
        self.pending = None  # a greenlet finishing a partial write


class PacedBackend:
    """The server: parse requests, start streams, and one scheduler writing due events."""

    def __init__(self, model: str, pace_s: float, max_tokens_cap: int = 4096):
        self.model = model
        self.pace = pace_s
        self.cap = max_tokens_cap
        self._rendered = {}
        self._heap = []  # (due, seq, stream)
        self._seq = 0
        self._wake = gevent.event.Event()
        self.running = 0
        self.streams_started = 0
        self.events_sent = 0
        gevent.spawn(self._scheduler)

    # -- pre-rendered answers ------------------------------------------------------------

    def _events(self, tokens: int, continuous: bool, include_usage: bool) -> list[bytes]:
        key = (tokens, continuous, include_usage)
        events = self._rendered.get(key)
        if events is None:
            plain = render_stream(self.model, tokens, continuous, include_usage,
                                  created=int(time.time()))
            events = [_framed(e) for e in plain]
            events[-1] += _TERMINATOR
            events[0] = _HEAD_STREAM + events[0]
            self._rendered[key] = events
        return events

    # -- the scheduler -------------------------------------------------------------------

    def _push(self, stream: _Stream) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (stream.due, self._seq, stream))
        self._wake.set()

    def _scheduler(self) -> None:
        heap, pace = self._heap, self.pace
        while True:
            if not heap:
                self._wake.clear()
                self._wake.wait()
                continue
            now = time.monotonic()
            due = heap[0][0]
            if due > now:
                self._wake.clear()
                self._wake.wait(due - now)
                continue
            while heap and heap[0][0] <= now:
                _, _, stream = heapq.heappop(heap)
                self._advance(stream, pace)

    def _advance(self, stream: _Stream, pace: float) -> None:
        if stream.pending is not None:
            if not stream.pending.ready():  # the last write is still going out: wait
                stream.due += pace / 10
                self._push(stream)
                return
            stream.pending = None
        events = stream.events
        while True:
            if not self._write(stream, events[stream.next]):
                self._finish(stream)
                return
            stream.next += 1
            if stream.next == len(events):
                self._finish(stream)
                return
            # after the last token, finish, usage and [DONE] follow at once (one write each)
            if stream.next <= stream.last_token:
                break
            if stream.pending is not None:
                stream.due = time.monotonic()
                self._push(stream)
                return
        stream.due += pace
        self._push(stream)

    def _write(self, stream: _Stream, data: bytes) -> bool:
        """Send data without blocking the scheduler; False if the client is gone."""
        self.events_sent += 1
        try:
            sent = stream.raw.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            return False
        if sent < len(data):
            stream.pending = gevent.spawn(self._send_rest, stream.sock, data[sent:])
        return True

    @staticmethod
    def _send_rest(sock, data: bytes) -> None:
        try:
            sock.sendall(data)
        except OSError:
            pass

    def _finish(self, stream: _Stream) -> None:
        self.running -= 1
        stream.done.set()  # the connection's greenlet waits for a pending write, not this one

    # -- the connection handler ----------------------------------------------------------

    def handle(self, sock, address) -> None:
        sock.setsockopt(gsocket.IPPROTO_TCP, gsocket.TCP_NODELAY, 1)
        buf = b""
        try:
            while True:
                end = buf.find(b"\r\n\r\n")
                while end < 0:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buf += data
                    end = buf.find(b"\r\n\r\n")
                head = buf[:end].decode("latin-1")
                method, target = head.split(" ", 2)[:2]
                length = 0
                lower = head.lower()
                at = lower.find("\ncontent-length:")
                if at >= 0:
                    eol = lower.find("\r\n", at + 1)
                    length = int(lower[at + 16:eol if eol >= 0 else None])
                body_end = end + 4 + length
                while len(buf) < body_end:
                    data = sock.recv(65536)
                    if not data:
                        return
                    buf += data
                body, buf = buf[end + 4:body_end], buf[body_end:]
                close = "\nconnection: close" in lower
                if method == "PRI":  # an HTTP/2 probe (sglang-router's): HTTP/1.1 only here
                    self._send(sock, 400, b"", "text/plain")
                    return
                if method == "POST" and target.startswith("/v1/chat/completions"):
                    self._chat(sock, body)
                else:
                    self._other(sock, method, target)
                if close:
                    return
        except (OSError, ValueError):
            return
        finally:
            sock.close()

    def _chat(self, sock, body: bytes) -> None:
        try:
            req = json.loads(body)
        except ValueError:
            return self._send_json(sock, 400, {"error": {"message": "body is not JSON"}})
        tokens = max(1, min(int(req.get("max_tokens") or req.get("max_completion_tokens")
                                or 16), self.cap))
        if not req.get("stream"):
            text = "".join(_WORDS[i % len(_WORDS)] for i in range(tokens))
            return self._send_json(sock, 200, {
                "id": "chatcmpl-paced", "object": "chat.completion", "created": int(time.time()),
                "model": self.model, "choices": [{
                    "index": 0, "message": {"role": "assistant", "content": text,
                                            "reasoning_content": None, "tool_calls": None},
                    "logprobs": None, "finish_reason": "length", "matched_stop": None}],
                "usage": _usage(tokens), "metadata": {"weight_version": "default"}})
        options = req.get("stream_options") or {}
        events = self._events(tokens, bool(options.get("continuous_usage_stats")),
                              bool(options.get("include_usage")))
        self.running += 1
        self.streams_started += 1
        sock.sendall(events[0])  # headers + role
        sock.sendall(events[1])  # the first token
        self.events_sent += 2
        stream = _Stream(sock, events, tokens,
                         time.monotonic() + (self.pace if tokens > 1 else 0.0))
        self._push(stream)
        stream.done.wait()
        if stream.pending is not None:
            stream.pending.join()

    def _other(self, sock, method: str, target: str) -> None:
        path = target.split("?", 1)[0]
        if path in ("/health", "/health_generate"):
            return self._send(sock, 200, b"", "text/plain")
        if path == "/v1/models":
            return self._send_json(sock, 200, {"object": "list", "data": [{
                "id": self.model, "object": "model", "created": 0, "owned_by": "sglang",
                "root": self.model, "parent": None, "max_model_len": 32768}]})
        if path == "/v1/loads":
            return self._send_json(sock, 200, {"loads": [{
                "dp_rank": 0, "num_running_reqs": self.running, "num_waiting_reqs": 0}]})
        if path == "/get_load":
            return self._send_json(sock, 200, [{"dp_rank": 0, "num_reqs": self.running,
                                                "num_waiting_reqs": 0}])
        if path in ("/server_info", "/get_server_info"):
            return self._send_json(sock, 200, {"context_length": 32768,
                                               "max_running_requests": 100000,
                                               "model_path": self.model,
                                               "served_model_name": self.model})
        if path in ("/get_model_info", "/model_info"):
            return self._send_json(sock, 200, {"model_path": self.model,
                                               "tokenizer_path": self.model,
                                               "is_generation": True})
        if path == "/stats":  # for the benchmark: what this backend did
            return self._send_json(sock, 200, {"streams_started": self.streams_started,
                                               "events_sent": self.events_sent,
                                               "running": self.running})
        print(f"paced_backend: 404 {method} {target}", file=sys.stderr, flush=True)
        return self._send_json(sock, 404, {"error": {"message": f"no route {path}"}})

    @staticmethod
    def _send(sock, status: int, body: bytes, ctype: str) -> None:
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "OK")
        sock.sendall(b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n%s"
                     % (status, reason.encode(), ctype.encode(), len(body), body))

    def _send_json(self, sock, status: int, obj) -> None:
        self._send(sock, status, _dumps(obj).encode(), "application/json")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--model", default="sim-model")
    ap.add_argument("--pace-ms", type=float, default=50.0,
                    help="time between two tokens of one stream (default 50)")
    ap.add_argument("--backlog", type=int, default=4096)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    backend = PacedBackend(args.model, args.pace_ms / 1000.0)
    listener = gsocket.socket(gsocket.AF_INET, gsocket.SOCK_STREAM)
    listener.setsockopt(gsocket.SOL_SOCKET, gsocket.SO_REUSEADDR, 1)
    listener.bind((args.host, args.port))
    listener.listen(args.backlog)
    server = gevent.server.StreamServer(listener, backend.handle)
    gevent.signal_handler(signal.SIGTERM, server.stop)
    gevent.signal_handler(signal.SIGINT, server.stop)
    print(f"paced backend {args.model!r} at http://{args.host}:{args.port}, "
          f"{args.pace_ms:g} ms per token, pid {os.getpid()}", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
