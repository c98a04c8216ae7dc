"""The routes of an embedding model: /v1/embeddings, and what its generation routes answer.

SGLang 0.5.23 does not refuse a generation request on an ``--is-embedding`` server: the
request runs as an embedding and the handlers then read a ``text`` the result does not
have. So chat and completions end in their generic 500 (``Internal server error:
'text'``), /v1/responses in create_responses' 400 (``'text'``), and /generate, which
hands the result back as it is, returns the embedding result (as /encode would).
"""

import gevent

from ..serving.disconnect import watch_disconnect
from .embeddings import (
    check_embedding_call,
    embedding_response,
    encode_result,
    parse_embeddings,
)
from .engine import Aborted, SamplingParams, SimRequest
from .protocol import SGLangError
from .requests_in import parse_generate, parse_json
from .responses_in import parse_responses


def embedding_requests(inputs: list[list[int]], rid: str | None, engine) -> list[SimRequest]:
    """One engine request per input; several get ``<rid>_0``, ``<rid>_1``, ..."""
    if rid is not None and any(r.startswith(rid) for r in engine.live):
        raise SGLangError(400, f"Duplicate request ID: {rid}", param="rid")
    base = rid or SimRequest([], None).rid
    rids = [base] if len(inputs) == 1 else [f"{base}_{i}" for i in range(len(inputs))]
    return [SimRequest(ids, SamplingParams(max_new_tokens=0), rid=r)
            for ids, r in zip(inputs, rids)]


def run_all(reqs: list[SimRequest], environ, run_one) -> None:
    """``run_one(req)`` for every request (a batch's concurrently); a client that hangs up
    aborts them, and an aborted request simply ends (as SGLang's graceful abort)."""
    def one(req):
        try:
            run_one(req)
        except Aborted:
            pass

    stop = watch_disconnect(environ, lambda: [r.aborted.set() for r in reqs])
    try:
        if len(reqs) == 1:
            one(reqs[0])
        else:
            gevent.joinall([gevent.spawn(one, req) for req in reqs])
    finally:
        stop()


def run_embeddings(engine, reqs: list[SimRequest], environ) -> None:
    """Queue and prefill every input; an aborted input still gets its vector, as SGLang's
    graceful abort takes the normal path."""
    run_all(reqs, environ, engine.encode)


class Embeddings:
    """POST /v1/embeddings; on a generation model SGLang's "not an embedding model" 400."""

    def __init__(self, runner, settings):
        self.runner = runner
        self.settings = settings

    def on_post(self, req, resp):
        call = parse_embeddings(parse_json(req.bounded_stream.read()))
        self.runner.check_started()
        check_embedding_call(call, self.settings)
        _, go_on = self.runner.draw_fault(req.env, stream=False)
        if not go_on:
            return
        engine = self.runner.engine
        reqs = embedding_requests(call.inputs, call.rid, engine)
        run_embeddings(engine, reqs, req.env)
        resp.media = embedding_response(self.settings.model, reqs, call,
                                        self.settings.embedding_dim)


class TextlessGeneration:
    """/v1/chat/completions and /v1/completions on an embedding model: a valid request
    ends in SGLang's generic 500 on the missing ``text``."""

    def __init__(self, runner, parse):
        self.runner = runner
        self.parse = parse

    def on_post(self, req, resp):
        self.parse(parse_json(req.bounded_stream.read()))
        self.runner.check_started()
        raise SGLangError(500, "Internal server error: 'text'", type="InternalServerError")


class TextlessResponses:
    """/v1/responses on an embedding model: create_responses answers str(KeyError('text'))."""

    def __init__(self, runner, settings):
        self.runner = runner
        self.settings = settings

    def on_post(self, req, resp):
        parse_responses(parse_json(req.bounded_stream.read()), self.settings.model)
        self.runner.check_started()
        raise SGLangError(400, "'text'")


class EmbeddingGenerate:
    """/generate on an embedding model: the prompt's embedding result, JSON even if streamed."""

    def __init__(self, runner, settings):
        self.runner = runner
        self.settings = settings

    def on_post(self, req, resp):
        call = parse_generate(parse_json(req.bounded_stream.read()))
        self.runner.check_started()
        (prompt,) = call.prompts
        if len(prompt) >= self.settings.context_length:
            raise SGLangError(400, f"The input ({len(prompt)} tokens) is longer than the "
                                   f"model's context length ({self.settings.context_length} "
                                   "tokens).")
        _, go_on = self.runner.draw_fault(req.env, stream=False)
        if not go_on:
            return
        engine = self.runner.engine
        reqs = embedding_requests([prompt], call.rid, engine)
        run_embeddings(engine, reqs, req.env)
        resp.media = encode_result(reqs[0], self.settings.embedding_dim)

    on_put = on_post
