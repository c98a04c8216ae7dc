"""Run a validated generation call through the engine and answer it as JSON or SSE.

Also where injected faults happen, and where a client that hangs up aborts its
requests at once (they leave the running batch and the queue immediately).
"""

import socket

import gevent
from gevent.event import Event
from gevent.queue import Queue

from ..serving.disconnect import watch_disconnect
from .engine import Aborted, SimRequest
from .protocol import SSE_DONE, SGLangError, sse, usage

DROP_AFTER_CHUNKS = 3  # a "drop" fault cuts a stream after this many content chunks


def run_choices(engine, reqs: list[SimRequest]):
    """Yield (choice index, text delta) as tokens come, then (index, None) when it ends.

    An aborted choice simply ends (its finish_reason says "abort"). n > 1 choices run
    concurrently, each in its own greenlet, as separate requests of the batch.
    """
    if len(reqs) == 1:
        try:
            for delta in engine.generate(reqs[0]):
                yield 0, delta
        except Aborted:
            pass
        yield 0, None
        return
    queue = Queue()

    def pump(index, req):
        try:
            for delta in engine.generate(req):
                queue.put((index, delta))
        except Aborted:
            pass
        queue.put((index, None))

    workers = [gevent.spawn(pump, i, r) for i, r in enumerate(reqs)]
    try:
        left = len(reqs)
        while left:
            index, delta = queue.get()
            left -= delta is None
            yield index, delta
    finally:
        for req in reqs:
            req.aborted.set()  # harmless once finished; stops the rest if we were closed early
        gevent.joinall(workers)


class Dropped(Exception):
    """A drop fault cut the connection mid-stream: the stream ends without its closing events."""


class GenerationRunner:
    """Turns a GenerationCall into engine requests and renders the answer."""

    def __init__(self, engine, faults):
        self.engine = engine
        self.faults = faults

    def check_started(self) -> None:
        """503 during the configured slow start."""
        if self.faults.starting:
            raise SGLangError(503, "The server is starting.", type="503")

    def check_fits(self, call) -> None:
        """400 when a prompt plus its max_new_tokens does not fit the context window."""
        for prompt in call.prompts:
            for params in call.params:
                try:
                    self.engine.check_fits(len(prompt), params.max_new_tokens)
                except ValueError as exc:
                    raise SGLangError(400, str(exc)) from None

    def draw_fault(self, environ, stream: bool):
        """Draw the call's fault and play what happens before an answer starts.

        Returns (fault, go_on): go_on is False when the fault already ended the exchange (a
        hang blocks here until the client leaves; a drop of a JSON answer cuts the
        connection). 500/503 faults raise SGLangError.
        """
        fault = self.faults.draw()
        if fault == "500":
            raise SGLangError(500, "Internal server error: injected fault",
                              type="InternalServerError")
        if fault == "503":
            raise SGLangError(503, "Service unavailable: injected fault", type="503")
        if fault == "hang":
            gone = Event()
            stop = watch_disconnect(environ, gone.set)
            gone.wait()
            stop()
            return fault, False
        if fault == "drop" and not stream:
            _drop_connection(environ)
            return fault, False
        return fault, True

    def start(self, call, environ):
        """Validate against the engine, draw a fault and create the requests.

        Returns (requests, fault, stop_watching); no requests when a fault already ended
        the exchange. 500/503 faults and refused calls raise SGLangError.
        """
        self.check_started()
        self.check_fits(call)
        fault, go_on = self.draw_fault(environ, call.stream)
        if not go_on:
            return [], fault, _noop
        reqs, stop = self.create(call, environ)
        return reqs, fault, stop

    def create(self, call, environ):
        """The call's engine requests (prompt-major) and the disconnect watcher aborting them.

        One request keeps the call's rid; several get ``<rid>_0``, ``<rid>_1``, ...
        """
        if call.rid is not None and any(r.startswith(call.rid) for r in self.engine.live):
            raise SGLangError(400, f"Duplicate request ID: {call.rid}", param="rid")
        base = call.rid or SimRequest([], None).rid
        pairs = [(prompt, params) for prompt in call.prompts for params in call.params]
        rids = [base] if len(pairs) == 1 else [f"{base}_{i}" for i in range(len(pairs))]
        reqs = [SimRequest(prompt, params, rid=rid)
                for (prompt, params), rid in zip(pairs, rids)]
        stop = watch_disconnect(environ, lambda: [r.aborted.set() for r in reqs])
        return reqs, stop

    def run_to_end(self, reqs, stop_watching):
        """Run every choice to its end (JSON answers)."""
        try:
            for _ in run_choices(self.engine, reqs):
                pass
        finally:
            stop_watching()

    def deltas(self, reqs, fault, environ):
        """(choice index, text delta) as run_choices yields them, for a streamed answer.

        A drop fault shuts the connection down once the consumer has sent the
        DROP_AFTER_CHUNKS-th non-empty delta, and raises Dropped.
        """
        sent = 0
        for index, delta in run_choices(self.engine, reqs):
            yield index, delta
            if delta:
                sent += 1
                if fault == "drop" and sent == DROP_AFTER_CHUNKS:
                    _drop_connection(environ)
                    raise Dropped

    def stream(self, reqs, fault, stop_watching, chunks, call, environ):
        """SSE events of an OpenAI-style stream: role, content deltas, finish, usage, [DONE].

        Each generated token's delta goes to chunks.step (which parses reasoning and tool
        calls and attaches logprobs); with continuous usage every chunk carries the call's
        running usage.
        """
        n = len(call.params)
        running = (lambda: usage(reqs, n)) if call.continuous_usage else None
        try:
            started = [False] * len(reqs)
            for index, delta in self.deltas(reqs, fault, environ):
                if not started[index]:
                    started[index] = True
                    first = chunks.role(index)
                    if first:
                        yield first
                if delta is None:
                    yield from chunks.finish(index, reqs[index])
                else:
                    yield from chunks.step(index, reqs[index], delta, running)
            if call.include_usage:
                yield chunks.usage(reqs, n)
            yield SSE_DONE
        except Dropped:
            return
        finally:
            stop_watching()

    def stream_native(self, reqs, fault, stop_watching, environ):
        """SSE events of SGLang's /generate stream: cumulative text and output_ids."""
        try:
            texts = [""] * len(reqs)
            for index, delta in self.deltas(reqs, fault, environ):
                req = reqs[index]
                if delta is None:
                    yield sse(native_result(req, req.text, index if len(reqs) > 1 else None))
                    continue
                texts[index] += delta
                yield sse(native_result(req, texts[index], index if len(reqs) > 1 else None))
            yield SSE_DONE
        except Dropped:
            return
        finally:
            stop_watching()


def native_result(req: SimRequest, text: str, index: int | None) -> dict:
    """One /generate result (or stream chunk): text, output_ids, meta_info."""
    result = {"text": text, "output_ids": list(req.output_ids), "meta_info": req.meta_info()}
    if index is not None:
        result["index"] = index
    return result


def _drop_connection(environ) -> None:
    sock = environ.get("gunicorn.socket")
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _noop():
    pass
