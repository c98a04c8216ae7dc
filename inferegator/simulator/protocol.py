"""SGLang's wire shapes, as its runtime (v0.5) writes them: errors, OpenAI objects, SSE."""

import json
import time

from .engine import SimRequest

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
    return {"prompt_tokens": prompt, "total_tokens": prompt + completion,
            "completion_tokens": completion,
            "prompt_tokens_details": {"cached_tokens": sum(r.cached_tokens for r in firsts)},
            "reasoning_tokens": 0, "completion_tokens_details": None}


def chat_completion(rid: str, model: str, reqs: list[SimRequest], n: int | None = None) -> dict:
    choices = []
    for index, req in enumerate(reqs):
        reason, matched = openai_finish_reason(req)
        choices.append({"index": index,
                        "message": {"role": "assistant", "content": req.text,
                                    "reasoning_content": None},
                        "logprobs": None, "finish_reason": reason, "matched_stop": matched})
    return {"id": rid, "object": "chat.completion", "created": int(time.time()),
            "model": model, "choices": choices, "usage": usage(reqs, n),
            "metadata": {"weight_version": "default"}}


def text_completion(rid: str, model: str, reqs: list[SimRequest], n: int | None = None) -> dict:
    choices = []
    for index, req in enumerate(reqs):
        reason, matched = openai_finish_reason(req)
        choices.append({"index": index, "text": req.text, "logprobs": None,
                        "finish_reason": reason, "matched_stop": matched})
    return {"id": rid, "object": "text_completion", "created": int(time.time()),
            "model": model, "choices": choices, "usage": usage(reqs, n),
            "metadata": {"weight_version": "default"}}


class ChatChunks:
    """Builds the SSE events of one streamed chat completion."""

    def __init__(self, rid: str, model: str):
        self._head = {"id": rid, "object": "chat.completion.chunk",
                      "created": int(time.time()), "model": model}

    def _chunk(self, index, delta, reason=None, matched=None) -> bytes:
        return sse({**self._head, "choices": [{"index": index, "delta": delta, "logprobs": None,
                                               "finish_reason": reason,
                                               "matched_stop": matched}]})

    def role(self, index: int) -> bytes:
        return self._chunk(index, {"role": "assistant", "content": "",
                                   "reasoning_content": None})

    def content(self, index: int, text: str, running_usage: dict | None = None) -> bytes:
        chunk = {**self._head, "choices": [{"index": index, "delta": {
            "content": text, "reasoning_content": None}, "logprobs": None,
            "finish_reason": None, "matched_stop": None}]}
        if running_usage is not None:  # stream_options.continuous_usage_stats
            chunk["usage"] = running_usage
        return sse(chunk)

    def finish(self, index: int, req: SimRequest) -> bytes:
        reason, matched = openai_finish_reason(req)
        return self._chunk(index, {"reasoning_content": None}, reason, matched)

    def usage(self, reqs: list[SimRequest], n: int | None = None) -> bytes:
        return sse({**self._head, "choices": [], "usage": usage(reqs, n)})


class CompletionChunks:
    """Builds the SSE events of one streamed text completion (finish rides on the last text)."""

    def __init__(self, rid: str, model: str):
        self._head = {"id": rid, "object": "text_completion", "created": int(time.time()),
                      "model": model}

    def role(self, index: int) -> bytes:
        return b""

    def content(self, index: int, text: str, running_usage: dict | None = None) -> bytes:
        return sse({**self._head, "choices": [{"index": index, "text": text, "logprobs": None,
                                               "finish_reason": None, "matched_stop": None}],
                    "usage": running_usage})

    def finish(self, index: int, req: SimRequest) -> bytes:
        reason, matched = openai_finish_reason(req)
        return sse({**self._head, "choices": [{"index": index, "text": "", "logprobs": None,
                                               "finish_reason": reason,
                                               "matched_stop": matched}],
                    "usage": None})

    def usage(self, reqs: list[SimRequest], n: int | None = None) -> bytes:
        return sse({**self._head, "choices": [], "usage": usage(reqs, n)})


def model_card(model: str, context_length: int, created: int) -> dict:
    return {"id": model, "object": "model", "created": created, "owned_by": "sglang",
            "root": model, "parent": None, "max_model_len": context_length}
