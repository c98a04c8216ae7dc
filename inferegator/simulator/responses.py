"""/v1/responses: the Response object and its typed SSE stream, as SGLang 0.5.23 writes them.

Shapes and order follow serving_responses.py: ``responses_full_generator`` (JSON) and
``_responses_stream_generator_non_harmony`` (stream), with ResponsesResponse.from_request
and its usage serializer (protocol.py). A stream is ``event: <type>\\ndata: <json>\\n\\n``
events numbered by ``sequence_number`` from 0, ending with ``response.completed``,
``response.incomplete`` or ``response.failed``; there is no ``data: [DONE]``.
"""

import json
import time
import uuid

from .engine import SimRequest
from .generation import Dropped
from .protocol import SGLangError
from .requests_in import parse_json
from .responses_in import ResponsesCall, parse_responses

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_dumps = json.JSONEncoder(separators=(",", ":")).encode


def status_of(req: SimRequest) -> str:
    """SGLang's _status_from_finish_reason: length is incomplete, abort is failed."""
    kind = (req.finish_reason or {}).get("type")
    return {"length": "incomplete", "abort": "failed"}.get(kind, "completed")


def output_text(text: str) -> dict:
    return {"annotations": [], "text": text, "type": "output_text", "logprobs": None}


def message_item(item_id: str, text: str | None, status: str) -> dict:
    """An assistant message output item; text None while it is still empty (in progress)."""
    return {"id": item_id, "content": [] if text is None else [output_text(text)],
            "role": "assistant", "status": status, "type": "message",
            "phase": "final_answer"}


def response_usage(req: SimRequest) -> dict:
    """The Responses usage shape SGLang's ResponsesResponse serializer writes."""
    return {"input_tokens": req.prompt_tokens,
            "input_tokens_details": {"cached_tokens": req.cached_tokens,
                                     "cache_write_tokens": 0},
            "output_tokens": req.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": req.prompt_tokens + req.completion_tokens}


def response_object(call: ResponsesCall, created_at: int, status: str, output: list,
                    usage: dict | None, error: dict | None = None) -> dict:
    """ResponsesResponse.from_request: the request's echo around output, status and usage."""
    echo = call.echo
    text = echo["text"]
    if text is None and output and all(item["type"] == "message" for item in output):
        text = {"format": {"type": "text"}}
    return {
        "id": call.generation.rid, "object": "response", "created_at": created_at,
        "model": call.generation.model, "output": output, "status": status, "usage": usage,
        "parallel_tool_calls": echo["parallel_tool_calls"], "tool_choice": echo["tool_choice"],
        "tools": echo["tools"], "error": error,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete"
        else None,
        "instructions": echo["instructions"], "max_output_tokens": echo["max_output_tokens"],
        "previous_response_id": echo["previous_response_id"], "reasoning": echo["reasoning"],
        "store": echo["store"], "temperature": echo["temperature"], "text": text,
        "top_p": echo["top_p"], "truncation": echo["truncation"], "user": echo["user"],
        "metadata": echo["metadata"],
    }


def _abort_error(req: SimRequest) -> dict | None:
    if status_of(req) != "failed":
        return None
    return {"code": "server_error", "message": req.finish_reason.get("message")
            or "Generation aborted"}


def final_response(call: ResponsesCall, created_at: int, req: SimRequest,
                   output: list) -> dict:
    return response_object(call, created_at, status_of(req), output, response_usage(req),
                           _abort_error(req))


def json_answer(call: ResponsesCall, req: SimRequest, created_at: int) -> dict:
    """The JSON answer: one completed message item when any text was generated."""
    output = [message_item(f"msg_{uuid.uuid4().hex}", req.text, "completed")] \
        if req.text else []
    return final_response(call, created_at, req, output)


class EventStream:
    """Builds a stream's events, each with the next sequence_number."""

    def __init__(self):
        self.sequence = 0

    def event(self, kind: str, **fields) -> bytes:
        payload = {**fields, "sequence_number": self.sequence, "type": kind}
        if "response" in fields:  # SGLang's lifecycle events: type, response, sequence
            payload = {"type": kind, "response": fields["response"],
                       "sequence_number": self.sequence}
        self.sequence += 1
        return b"event: " + kind.encode() + b"\ndata: " + _dumps(payload).encode() + b"\n\n"


def refused_stream(call: ResponsesCall, message: str):
    """A stream whose generation the engine refused: created, in_progress, then failed."""
    events, created_at = EventStream(), int(time.time())
    initial = response_object(call, created_at, "in_progress", [], None)
    yield events.event("response.created", response=initial)
    yield events.event("response.in_progress", response=initial)
    yield events.event("response.failed", response=response_object(
        call, created_at, "failed", [], None, {"code": "server_error", "message": message}))


def stream_events(runner, call: ResponsesCall, reqs, fault, stop_watching, environ):
    """created, in_progress, then per generated token output_item.added and
    content_part.added (first time), output_text.delta; at the end output_text.done,
    content_part.done, output_item.done (if any text) and response.<status>."""
    events, created_at = EventStream(), int(time.time())
    (req,) = reqs
    item_id, text, opened = f"msg_{uuid.uuid4().hex}", "", False
    try:
        initial = response_object(call, created_at, "in_progress", [], None)
        yield events.event("response.created", response=initial)
        yield events.event("response.in_progress", response=initial)
        where = {"item_id": item_id, "output_index": 0}
        for _, delta in runner.deltas(reqs, fault, environ):
            if not delta:
                continue
            if not opened:
                opened = True
                yield events.event("response.output_item.added", output_index=0,
                                   item=message_item(item_id, None, "in_progress"))
                yield events.event("response.content_part.added", content_index=0, **where,
                                   part=output_text(""))
            text += delta
            yield events.event("response.output_text.delta", content_index=0, delta=delta,
                               **where, logprobs=[])
        output = []
        if opened:
            yield events.event("response.output_text.done", content_index=0, **where,
                               logprobs=[], text=text)
            yield events.event("response.content_part.done", content_index=0, **where,
                               part=output_text(text))
            item = message_item(item_id, text, "completed")
            yield events.event("response.output_item.done", item=item, output_index=0)
            output = [item]
        final = final_response(call, created_at, req, output)
        yield events.event("response." + final["status"], response=final)
    except Dropped:
        return
    finally:
        stop_watching()


class Responses:
    """POST /v1/responses on a generation model (no store: stateless requests only)."""

    def __init__(self, runner, settings):
        self.runner = runner
        self.settings = settings

    def on_post(self, req, resp):
        call = parse_responses(parse_json(req.bounded_stream.read()), self.settings.model)
        runner = self.runner
        runner.check_started()
        refusal = self._refusal(call)
        if refusal is not None:
            if not call.generation.stream:
                raise SGLangError(400, refusal)
            self._stream(resp, refused_stream(call, refusal))
            return
        fault, go_on = runner.draw_fault(req.env, call.generation.stream)
        if not go_on:
            return
        reqs, stop = runner.create(call.generation, req.env)
        if call.generation.stream:
            self._stream(resp, stream_events(runner, call, reqs, fault, stop, req.env))
            return
        created_at = int(time.time())
        runner.run_to_end(reqs, stop)
        resp.media = json_answer(call, reqs[0], created_at)

    def _refusal(self, call: ResponsesCall) -> str | None:
        """What the tokenizer manager raises once generation starts (a ValueError)."""
        if call.max_new_tokens is not None and call.max_new_tokens < 0:
            return f"max_new_tokens must be at least 0, got {call.max_new_tokens}."
        try:
            self.runner.check_fits(call.generation)
        except SGLangError as exc:
            return exc.message
        return None

    @staticmethod
    def _stream(resp, events):
        resp.content_type = "text/event-stream"
        resp.set_headers(SSE_HEADERS)
        resp.stream = events
