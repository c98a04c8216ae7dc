"""SGLang's wire shapes, as its runtime (v0.5) writes them: errors, OpenAI objects, SSE."""

import json
import time
import uuid

from .engine import SimRequest
from .logprobs import chat_entries, completion_logprobs
from .options import Features
from .reasoning import ReasoningSplitter
from .tool_parsers import detector

_PLAIN = Features()

_dumps = json.JSONEncoder(separators=(",", ":")).encode


class SGLangError(Exception):
    """An error answered in SGLang's flat shape: {"object":"error","message",...,"code"}."""

    def __init__(self, status: int, message: str, type: str = "BadRequestError",
                 param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param

    def body(self) -> dict:
        return {"object": "error", "message": self.message, "type": self.type,
                "param": self.param, "code": self.status}

    def nested(self) -> dict:
        """The OpenAI-style envelope SGLang uses on /v1/responses (http_server.py)."""
        kind = "invalid_request_error" if self.type == "BadRequestError" else self.type
        return {"error": {"message": self.message, "type": kind, "param": self.param,
                          "code": self.status}}


def sse(obj) -> bytes:
    """One server-sent event carrying compact JSON."""
    return b"data: " + _dumps(obj).encode() + b"\n\n"


SSE_DONE = b"data: [DONE]\n\n"


def sse_error(message: str) -> bytes:
    """The error event of a stream whose request the scheduler aborted with a 400
    (create_streaming_error_response: the type is the status's name)."""
    return sse({"error": {"object": "error", "message": message, "type": "BAD_REQUEST",
                          "param": None, "code": 400}})


def tool_call_id() -> str:
    """SGLang's id for a parsed tool call (every parser but kimi_k2/kimi_k3)."""
    return f"call_{uuid.uuid4().hex[:24]}"


def _tokens(req: SimRequest, start: int, end: int | None = None) -> list[tuple[str, int]]:
    return list(zip(req.token_texts[start:end], req.output_ids[start:end]))


def openai_finish_reason(req: SimRequest) -> tuple[str, object]:
    """(finish_reason, matched_stop) for OpenAI responses from meta_info's finish_reason."""
    reason = req.finish_reason or {}
    kind = reason.get("type")
    if kind == "stop":
        return "stop", reason.get("matched")
    if kind == "length":
        return "length", None
    return "abort", None


def usage(reqs: list[SimRequest], n: int | None = None) -> dict:
    """Usage of a call's requests, n choices per prompt (prompt-major, as SGLang sums it).

    Each prompt's prompt and cached tokens count once (from its first choice); the
    completions of every choice add up. n defaults to all requests being one prompt's.
    """
    firsts = reqs[::n or len(reqs)]
    prompt = sum(r.prompt_tokens for r in firsts)
    completion = sum(r.completion_tokens for r in reqs)
    reasoning = sum(r.reasoning_tokens for r in reqs)
    return {"prompt_tokens": prompt, "total_tokens": prompt + completion,
            "completion_tokens": completion,
            "prompt_tokens_details": {"cached_tokens": sum(r.cached_tokens for r in firsts)},
            "reasoning_tokens": reasoning,
            "completion_tokens_details": {"reasoning_tokens": reasoning} if reasoning else None}


def chat_message(req: SimRequest, f: Features) -> tuple[dict, str, object]:
    """(message, finish_reason, matched_stop) of one choice: reasoning split off and tool
    calls parsed as serving_chat._build_chat_response does."""
    reason, matched = openai_finish_reason(req)
    text, thought, calls = req.text, None, None
    if f.split_reasoning:
        thought, text = ReasoningSplitter(f.thinking).split(text)
    if f.tool_parser:
        parser = detector(f.tool_parser, f.tool_names)
        if parser.has_tool_call(text):
            text, found = parser.parse(text)
            if found:
                calls = [{"id": tool_call_id(), "index": i, "type": "function",
                          "function": {"name": name, "arguments": arguments}}
                         for i, (name, arguments) in enumerate(found)]
                if reason == "stop":
                    reason, matched = "tool_calls", None
    message = {"role": "assistant", "content": text or "", "reasoning_content": thought or None}
    if calls is not None:
        message["tool_calls"] = calls
    return message, reason, matched


def chat_completion(rid: str, model: str, reqs: list[SimRequest], n: int | None = None,
                    features: Features | None = None) -> dict:
    f = features or _PLAIN
    choices = []
    for index, req in enumerate(reqs):
        message, reason, matched = chat_message(req, f)
        logprobs = None
        if f.logprobs:
            logprobs = {"content": chat_entries(_tokens(req, 0), 0, req.params.seed,
                                                f.top_logprobs)}
        choices.append({"index": index, "message": message, "logprobs": logprobs,
                        "finish_reason": reason, "matched_stop": matched})
    return {"id": rid, "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": choices, "usage": usage(reqs, n),
            "metadata": {"weight_version": "default"}}


def text_completion(rid: str, model: str, reqs: list[SimRequest], n: int | None = None,
                    features: Features | None = None) -> dict:
    f = features or _PLAIN
    choices = []
    for index, req in enumerate(reqs):
        reason, matched = openai_finish_reason(req)
        logprobs = completion_logprobs(_tokens(req, 0), 0, req.params.seed, f.top_logprobs) \
            if f.logprobs else None
        choices.append({"index": index, "text": req.text, "logprobs": logprobs,
                        "finish_reason": reason, "matched_stop": matched})
    return {"id": rid, "object": "text_completion", "created": int(time.time()),
            "model": model, "choices": choices, "usage": usage(reqs, n),
            "metadata": {"weight_version": "default"}}


class ChatChunks:
    """Builds the SSE events of one streamed chat completion.

    Per choice, each generated token's delta goes through the reasoning and tool-call
    parsers as in serving_chat._generate_stream_content: reasoning chunks
    (``{"reasoning_content": ...}``), content chunks, and tool-call chunks (written the
    way SGLang's pydantic models dump them: ``role``/``content``/``reasoning_content``
    null, ``"usage": null``). A step's logprobs ride on its first chunk; when a parser is
    configured and the step made no chunk, they get one of their own.
    """

    def __init__(self, rid: str, model: str, features: Features | None = None):
        self._head = {"id": rid, "object": "chat.completion.chunk",
                      "created": int(time.time()), "model": model}
        self.f = features or _PLAIN
        self._splitters: dict[int, ReasoningSplitter] = {}
        self._parsers: dict = {}
        self._logprobs_sent: dict[int, int] = {}
        self._has_calls: dict[int, bool] = {}

    def _chunk(self, index, delta, reason=None, matched=None, logprobs=None,
               running_usage=None) -> bytes:
        chunk = {**self._head, "choices": [{"index": index, "delta": delta,
                                            "logprobs": logprobs, "finish_reason": reason,
                                            "matched_stop": matched}]}
        if running_usage is not None:  # stream_options.continuous_usage_stats
            chunk["usage"] = running_usage
        return sse(chunk)

    def _model_chunk(self, index, content=None, tool_call=None, running_usage=None) -> bytes:
        """A ChatCompletionStreamResponse dumped by pydantic (the tool-call path)."""
        delta = {"role": None, "content": content, "reasoning_content": None}
        if tool_call is not None:
            delta["tool_calls"] = [tool_call]
        return sse({**self._head, "choices": [{"index": index, "delta": delta,
                                               "logprobs": None, "finish_reason": None,
                                               "matched_stop": None}],
                    "usage": running_usage})

    def role(self, index: int) -> bytes:
        return self._chunk(index, {"role": "assistant", "content": "",
                                   "reasoning_content": None})

    def content(self, index: int, text: str, running_usage: dict | None = None,
                logprobs=None) -> bytes:
        return self._chunk(index, {"content": text, "reasoning_content": None},
                           logprobs=logprobs, running_usage=running_usage)

    def step(self, index: int, req: SimRequest, delta: str, running_usage=None) -> list:
        """The chunks of one generated token (delta may be "" while a stop is held back)."""
        f = self.f
        logprobs = None
        if f.logprobs:
            start, end = self._logprobs_sent.get(index, 0), len(req.output_ids)
            if start < end:
                logprobs = {"content": chat_entries(_tokens(req, start, end), start,
                                                    req.params.seed, f.top_logprobs)}
            self._logprobs_sent[index] = end
        running = running_usage() if running_usage else None
        out, text = [], delta
        if f.split_reasoning:
            splitter = self._splitters.get(index)
            if splitter is None:
                splitter = self._splitters[index] = ReasoningSplitter(f.thinking,
                                                                      f.stream_reasoning)
            thought, text = splitter.feed(delta)
            if thought:
                out.append(self._chunk(index, {"reasoning_content": thought},
                                       logprobs=logprobs, running_usage=running))
                logprobs = None
        if f.tool_parser:
            out += self._tool_chunks(index, text, running, False)
        elif text:
            out.append(self.content(index, text, running, logprobs))
            logprobs = None
        if logprobs is not None and f.server_parsers:
            out.append(self._chunk(index, {"reasoning_content": None}, logprobs=logprobs,
                                   running_usage=running))
        return out

    def _tool_chunks(self, index, text, running, final) -> list:
        parser = self._parsers.get(index)
        if parser is None:
            parser = self._parsers[index] = detector(self.f.tool_parser, self.f.tool_names)
        normal, deltas = parser.increment(text) if text or not final else ("", [])
        if final:
            more_normal, more = parser.finish()
            normal, deltas = normal + more_normal, deltas + more
        out = [self._model_chunk(index, content=normal, running_usage=running)] if normal else []
        for piece in deltas:
            self._has_calls[index] = True
            first = piece.name is not None
            call = {"id": tool_call_id() if first else None, "index": piece.index,
                    "type": "function",
                    "function": {"name": piece.name, "arguments": piece.arguments}}
            out.append(self._model_chunk(index, tool_call=call, running_usage=running))
        return out

    def finish(self, index: int, req: SimRequest) -> list:
        """What the parsers still hold, then the finish chunk (tool_calls after calls)."""
        reason, matched = openai_finish_reason(req)
        out = []
        text = ""
        if reason != "abort" and index in self._splitters:
            thought, text = self._splitters[index].finish()
            if thought:
                out.append(self._chunk(index, {"reasoning_content": thought}))
        if self.f.tool_parser and index in self._parsers:
            if reason != "abort":
                out += self._tool_chunks(index, text, None, True)
            rest = self._parsers[index].unstreamed()
            if rest is not None:
                out.append(self._model_chunk(index, tool_call={
                    "id": None, "index": rest.index, "type": "function",
                    "function": {"name": None, "arguments": rest.arguments}}))
        elif text:
            out.append(self.content(index, text))
        if self._has_calls.get(index) and reason == "stop":
            reason = "tool_calls"
        out.append(self._chunk(index, {"reasoning_content": None}, reason, matched))
        return out

    def usage(self, reqs: list[SimRequest], n: int | None = None) -> bytes:
        return sse({**self._head, "choices": [], "usage": usage(reqs, n)})


class CompletionChunks:
    """Builds the SSE events of one streamed text completion (finish rides on the last text).

    With logprobs, a chunk carries those of the tokens generated since the previous chunk.
    """

    def __init__(self, rid: str, model: str, features: Features | None = None):
        self._head = {"id": rid, "object": "text_completion", "created": int(time.time()),
                      "model": model}
        self.f = features or _PLAIN
        self._logprobs_sent: dict[int, int] = {}

    def role(self, index: int) -> bytes:
        return b""

    def _logprobs(self, index: int, req: SimRequest | None):
        if not self.f.logprobs or req is None:
            return None
        start, end = self._logprobs_sent.get(index, 0), len(req.output_ids)
        if start >= end:
            return None
        self._logprobs_sent[index] = end
        return completion_logprobs(_tokens(req, start, end), start, req.params.seed,
                                   self.f.top_logprobs)

    def content(self, index: int, text: str, running_usage: dict | None = None,
                req: SimRequest | None = None) -> bytes:
        return sse({**self._head, "choices": [{"index": index, "text": text,
                                               "logprobs": self._logprobs(index, req),
                                               "finish_reason": None, "matched_stop": None}],
                    "usage": running_usage})

    def step(self, index: int, req: SimRequest, delta: str, running_usage=None) -> list:
        if not delta:
            return []
        return [self.content(index, delta, running_usage() if running_usage else None, req)]

    def finish(self, index: int, req: SimRequest) -> list:
        reason, matched = openai_finish_reason(req)
        return [sse({**self._head, "choices": [{"index": index, "text": "",
                                                "logprobs": self._logprobs(index, req),
                                                "finish_reason": reason,
                                                "matched_stop": matched}],
                     "usage": None})]

    def usage(self, reqs: list[SimRequest], n: int | None = None) -> bytes:
        return sse({**self._head, "choices": [], "usage": usage(reqs, n)})


def model_card(model: str, context_length: int, created: int) -> dict:
    return {"id": model, "object": "model", "created": created, "owned_by": "sglang",
            "root": model, "parent": None, "max_model_len": context_length}
