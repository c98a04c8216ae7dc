"""The simulator's Falcon app: SGLang's HTTP surface over one simulated engine."""

import datetime
import functools
import json
import logging
import time
from http import HTTPStatus

import falcon

from . import metrics
from .embedding_routes import EmbeddingGenerate, Embeddings, TextlessGeneration, TextlessResponses
from .engine import Engine
from .faults import FaultInjector
from .generation import GenerationRunner, native_result
from .protocol import (
    SSE_DONE,
    ChatChunks,
    CompletionChunks,
    SGLangError,
    chat_completion,
    model_card,
    sse_error,
    text_completion,
)
from .requests_in import parse_chat, parse_completion, parse_generate, parse_json
from .rerank import RERANKER_MODEL_INFO, Rerank
from .responses import Responses
from .score import Score

log = logging.getLogger("inferegator.sim")
SGLANG_VERSION = "0.5.23"  # the SGLang release whose HTTP surface this simulates
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class Health:
    """/health and /health_generate: 200 with an empty body, 503 while starting."""

    def __init__(self, faults):
        self.faults = faults

    def on_get(self, req, resp):
        resp.status = falcon.HTTP_503 if self.faults.starting else falcon.HTTP_200
        resp.text = ""


class ModelInfo:
    def __init__(self, settings):
        self.body = {
            "model_path": settings.model, "served_model_name": settings.model,
            "tokenizer_path": settings.model, "is_generation": not settings.is_embedding,
            "preferred_sampling_params": None, "weight_version": "default",
            "has_image_understanding": False, "has_audio_understanding": False,
            "model_type": "llama", "architectures": ["LlamaForCausalLM"],
        }

    def on_get(self, req, resp):
        resp.media = self.body


class ServerInfo:
    def __init__(self, settings, engine):
        self.settings = settings
        self.engine = engine
        self.started = time.time()

    def on_get(self, req, resp):
        s = self.settings
        args = {
            "model_path": s.model, "tokenizer_path": s.model, "served_model_name": s.model,
            "host": s.host, "port": s.port, "tp_size": 1, "dp_size": 1, "pp_size": 1,
            "context_length": s.context_length, "max_running_requests": s.max_running_requests,
            "max_total_tokens": s.cache_capacity_tokens, "page_size": s.page_size,
            "max_prefill_tokens": 16384, "chunked_prefill_size": s.chunked_prefill_size,
            "enable_metrics": True, "disaggregation_mode": "null", "weight_version": "default",
            "skip_tokenizer_init": False, "is_embedding": s.is_embedding,
            "tool_call_parser": None if s.tool_call_parser == "none" else s.tool_call_parser,
            "reasoning_parser": s.reasoning_parser,
        }
        resp.media = {
            **args, "status": "ready", "max_total_num_tokens": s.cache_capacity_tokens,
            "max_req_input_len": s.context_length - 1, "startup_time": self.started,
            "internal_states": [{**args, "last_gen_throughput": self.engine.gen_throughput,
                                 "effective_max_running_requests_per_dp":
                                     s.max_running_requests}],
            "version": SGLANG_VERSION, "frontend": "python", "simulator": True,
        }


class Models:
    def __init__(self, settings):
        self.card = model_card(settings.model, settings.context_length, int(time.time()))

    def on_get(self, req, resp):
        resp.media = {"object": "list", "data": [self.card]}

    def on_get_one(self, req, resp, model_id):
        if model_id != self.card["id"]:
            resp.status = falcon.HTTP_404
            resp.media = {"error": {"message": f"The model '{model_id}' does not exist",
                                    "type": "invalid_request_error", "param": "model",
                                    "code": "model_not_found"}}
            return
        resp.media = self.card


class Loads:
    """/v1/loads (JSON or ?format=prometheus) and the older /get_load."""

    def __init__(self, settings, engine):
        self.settings = settings
        self.engine = engine

    def rank_load(self) -> dict:
        e, s = self.engine, self.settings
        used = e.used_tokens()
        return {
            "timestamp": time.time(), "dp_rank": 0,
            "num_running_reqs": len(e.running), "num_waiting_reqs": len(e.waiting),
            "num_used_tokens": used, "num_total_tokens": used, "num_active_tokens": used,
            "max_total_num_tokens": s.cache_capacity_tokens,
            "max_running_requests": s.max_running_requests,
            "token_usage": round(used / s.cache_capacity_tokens, 6),
            "gen_throughput": e.gen_throughput, "cache_hit_rate": round(e.cache_hit_rate, 6),
            "utilization": round(len(e.running) / s.max_running_requests, 6),
            "num_cached_tokens": e.cache.cached_tokens,
            "queues": {"waiting": len(e.waiting), "grammar": 0, "paused": 0, "retracted": 0,
                       "prealloc_ready": 0},
        }

    def on_get(self, req, resp):
        load = self.rank_load()
        if req.get_param("format") == "prometheus":
            lines = []
            for key, value in load.items():
                if isinstance(value, (int, float)) and key not in ("dp_rank", "timestamp"):
                    lines += [f"# TYPE sglang_{key} gauge", f'sglang_{key}{{dp_rank="0"}} {value}']
            resp.content_type = "text/plain; version=0.0.4; charset=utf-8"
            resp.text = "\n".join(lines) + "\n"
            return
        resp.media = {
            "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(),
            "version": SGLANG_VERSION, "accelerator": "simulated", "num_accelerators": 1,
            "loads": [load],
        }

    def on_get_legacy(self, req, resp):
        e = self.engine
        resp.media = [{"dp_rank": 0, "num_reqs": len(e.running) + len(e.waiting),
                       "num_waiting_reqs": len(e.waiting), "num_tokens": e.used_tokens()}]


class Metrics:
    def __init__(self, settings, engine):
        self.settings = settings
        self.engine = engine

    def on_get(self, req, resp):
        e, s = self.engine, self.settings
        used = e.used_tokens()
        gauges = {
            "num_running_reqs": len(e.running), "num_queue_reqs": len(e.waiting),
            "num_used_tokens": used, "token_usage": used / s.cache_capacity_tokens,
            "gen_throughput": e.gen_throughput, "cache_hit_rate": e.cache_hit_rate,
            "max_total_num_tokens": s.cache_capacity_tokens, "context_len": s.context_length,
            "page_size": s.page_size,
        }
        resp.content_type = "text/plain; version=0.0.4; charset=utf-8"
        resp.text = metrics.render(s.model, gauges, e.counters, e.histograms)


class FlushCache:
    def __init__(self, engine):
        self.engine = engine

    def on_post(self, req, resp):
        resp.content_type = falcon.MEDIA_TEXT
        if self.engine.flush_cache():
            resp.text = ("Cache flushed.\nPlease check backend logs for more details. (When "
                         "there are running or waiting requests, the operation will not be "
                         "performed.)\n")
        else:
            resp.status = falcon.HTTP_400
            resp.text = "Flush cache failed.\n"

    on_get = on_post


class AbortRequest:
    """Abort by rid (prefix match, as SGLang) or everything with abort_all; 200, empty body."""

    def __init__(self, engine):
        self.engine = engine

    def on_post(self, req, resp):
        body = parse_json(req.bounded_stream.read() or b"{}")
        rid = body.get("rid")
        if body.get("abort_all"):
            self.engine.abort_all()
        elif isinstance(rid, str) and rid:
            self.engine.abort(rid)
        resp.text = ""


class OpenAIGeneration:
    """/v1/chat/completions and /v1/completions (one or more prompts, n choices each)."""

    def __init__(self, runner, parse, render, chunk_builder):
        self.runner = runner
        self.parse = parse
        self.render = render
        self.chunk_builder = chunk_builder

    def on_post(self, req, resp):
        call = self.parse(parse_json(req.bounded_stream.read()), self.runner.engine.settings)
        if call.features.refusal is not None:
            # The grammar backend refuses the request once it reaches the scheduler: a JSON
            # answer is a 400, a stream an error event (serving_chat / serving_completions).
            self.runner.check_started()
            self.runner.check_fits(call)
            if not call.stream:
                raise SGLangError(400, call.features.refusal)
            resp.content_type = "text/event-stream"
            resp.set_headers(SSE_HEADERS)
            resp.stream = iter((sse_error(call.features.refusal), SSE_DONE))
            return
        reqs, fault, stop = self.runner.start(call, req.env)
        if not reqs:
            return
        rid = reqs[0].rid.rsplit("_", 1)[0] if len(reqs) > 1 else reqs[0].rid
        if call.stream:
            resp.content_type = "text/event-stream"
            resp.set_headers(SSE_HEADERS)
            resp.stream = self.runner.stream(
                reqs, fault, stop, self.chunk_builder(rid, call.model, call.features), call,
                req.env)
            return
        self.runner.run_to_end(reqs, stop)
        resp.media = self.render(rid, call.model, reqs, len(call.params), call.features)


class Generate:
    """SGLang's native /generate (POST or PUT)."""

    def __init__(self, runner):
        self.runner = runner

    def on_post(self, req, resp):
        call = parse_generate(parse_json(req.bounded_stream.read()))
        if call.features.refusal is not None:
            self.runner.check_started()
            self.runner.check_fits(call)
            raise SGLangError(400, call.features.refusal)
        reqs, fault, stop = self.runner.start(call, req.env)
        if not reqs:
            return
        if call.stream:
            resp.content_type = "text/event-stream"
            resp.set_headers(SSE_HEADERS)
            resp.stream = self.runner.stream_native(reqs, fault, stop, req.env)
            return
        self.runner.run_to_end(reqs, stop)
        results = [native_result(r, r.text, None) for r in reqs]
        resp.media = results[0] if len(results) == 1 else results

    on_put = on_post


def _error_body(req, exc: SGLangError) -> dict:
    # SGLang's handlers answer /v1/responses with OpenAI's {"error": {...}} envelope.
    return exc.nested() if req.path.startswith("/v1/responses") else exc.body()


def _sglang_error(req, resp, exc, params):
    resp.status = exc.status
    resp.media = _error_body(req, exc)


def _http_error(req, resp, exc, params):
    # Starlette's plain shape for routing errors, SGLang's flat shape for the rest.
    resp.status = exc.status
    if exc.status_code in (404, 405):
        resp.media = {"detail": HTTPStatus(exc.status_code).phrase}
    else:
        resp.media = _error_body(req, SGLangError(exc.status_code,
                                                  exc.description or exc.title))


def _unexpected_error(req, resp, exc, params):
    log.exception("unhandled error on %s %s", req.method, req.path)
    resp.status = falcon.HTTP_500
    resp.media = _error_body(req, SGLangError(500, f"Internal server error: {exc}",
                                              type="InternalServerError"))


def create_app(settings, clock=time.time) -> falcon.App:
    """The simulator's WSGI app for one model, per the given settings."""
    engine = Engine(settings, clock=clock)
    faults = FaultInjector(settings.fault_seed, settings.fault_rates, settings.slow_start_s)
    runner = GenerationRunner(engine, faults)
    app = falcon.App()
    app.req_options.strip_url_path_trailing_slash = True
    # JSON answers written as SGLang's FastAPI app writes them (Starlette's JSONResponse,
    # ORJSONResponse): compact, non-ASCII as UTF-8; falcon's default puts spaces in.
    compact = falcon.media.JSONHandler(dumps=functools.partial(
        json.dumps, ensure_ascii=False, allow_nan=False, separators=(",", ":")))
    app.resp_options.media_handlers[falcon.MEDIA_JSON] = compact
    health = Health(faults)
    app.add_route("/health", health)
    app.add_route("/health_generate", health)
    model_info = ModelInfo(settings)
    if settings.is_reranker:
        model_info.body.update(RERANKER_MODEL_INFO)
    app.add_route("/model_info", model_info)
    app.add_route("/get_model_info", model_info)
    server_info = ServerInfo(settings, engine)
    app.add_route("/server_info", server_info)
    app.add_route("/get_server_info", server_info)
    models = Models(settings)
    app.add_route("/v1/models", models)
    app.add_route("/v1/models/{model_id:path}", models, suffix="one")
    loads = Loads(settings, engine)
    app.add_route("/v1/loads", loads)
    app.add_route("/get_load", loads, suffix="legacy")
    app.add_route("/metrics", Metrics(settings, engine))
    app.add_route("/flush_cache", FlushCache(engine))
    app.add_route("/abort_request", AbortRequest(engine))
    app.add_route("/v1/embeddings", Embeddings(runner, settings))
    app.add_route("/v1/rerank", Rerank(runner, settings))
    app.add_route("/v1/score", Score(runner, settings))
    if settings.is_embedding:
        app.add_route("/v1/chat/completions", TextlessGeneration(runner, parse_chat))
        app.add_route("/v1/completions", TextlessGeneration(runner, parse_completion))
        app.add_route("/v1/responses", TextlessResponses(runner, settings))
        app.add_route("/generate", EmbeddingGenerate(runner, settings))
    else:
        app.add_route("/v1/chat/completions",
                      OpenAIGeneration(runner, parse_chat, chat_completion, ChatChunks))
        app.add_route("/v1/completions",
                      OpenAIGeneration(runner, parse_completion, text_completion,
                                       CompletionChunks))
        app.add_route("/v1/responses", Responses(runner, settings))
        app.add_route("/generate", Generate(runner))
    app.add_error_handler(Exception, _unexpected_error)
    app.add_error_handler(falcon.HTTPError, _http_error)
    app.add_error_handler(SGLangError, _sglang_error)
    return app
