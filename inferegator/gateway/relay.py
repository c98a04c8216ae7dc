"""Relay an upstream answer to the client: JSON rewritten once, SSE event by event as it comes.

Per streamed event the relay does the least that is correct: rename the model,
notice (and keep or drop) the usage event, translate an error event, and pass
everything else on as the bytes that arrived. Chat and completions streams end with
``data: [DONE]`` (SSERelay); a Responses stream is typed events ending with
``response.completed`` (ResponsesRelay).
"""

import base64
import functools
import json
import struct

from ..errors import GatewayError, UpstreamFault, upstream_failed, upstream_too_large
from ..outcome import Usage

_DONE = b"data: [DONE]"
# Fields of a stream event whose non-empty string is generated text; tool calls count too.
_TEXT_KEYS = (b'"content":', b'"text":', b'"reasoning_content":')


def _carries_text(event: bytes) -> bool:
    """Whether a content event carries generated output (one token, as billed when the
    backend sent no usage): a non-empty content/text/reasoning string or a tool call."""
    for key in _TEXT_KEYS:
        at = event.find(key)
        while at >= 0:
            value = event[at + len(key):at + len(key) + 3].lstrip()
            if value.startswith(b'"') and not value.startswith(b'""'):
                return True
            at = event.find(key, at + len(key))
    return b'"tool_calls":[{' in event or b'"tool_calls": [{' in event


def _malformed(what: str) -> UpstreamFault:
    return UpstreamFault(upstream_failed(f"It sent {what}."))


def clean_usage(usage: dict) -> dict:
    """OpenAI's usage object: SGLang writes null details, which OpenAI omits."""
    return {k: v for k, v in usage.items() if v is not None}


def rewrite_json(content: bytes, public_model: str, edit=None, fix=None,
                 request=None) -> tuple[bytes, Usage | None]:
    """A non-streamed answer with the public model id, after the endpoint's ``fix(answer,
    request)`` and ``edit(answer)`` (the after-upstream hooks) have seen it; returns
    (bytes, usage).

    The answer is parsed once (usage, and proof that it is a JSON object); its bytes are
    then edited in place when every edit can be placed exactly (``splice_answer``), and
    dumped again only when not (an after-upstream hook, a backend that writes JSON with
    spaces, an edit that needs the whole structure)."""
    try:
        body = json.loads(content)
    except (ValueError, RecursionError):
        raise _malformed("an answer that is not JSON") from None
    if not isinstance(body, dict):
        raise _malformed("an answer that is not a JSON object")
    fix = fix or fix_completion
    usage = body.get("usage")
    if edit is None:
        spliced = splice_answer(content, body, public_model, fix, request)
        if spliced is not None:
            return spliced, Usage.from_upstream(clean_usage(usage) if isinstance(usage, dict)
                                                else usage)
    body["model"] = public_model
    if isinstance(usage, dict):
        usage = body["usage"] = clean_usage(usage)
    fix(body, request)
    if edit is not None:
        edit(body)
        usage = body.get("usage")
    return json.dumps(body, separators=(",", ":")).encode(), Usage.from_upstream(usage)


_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode


def _member(key: str, value) -> bytes | None:
    """``,"key":value`` as compact JSON writes it (SGLang's orjson does), or None if the
    value cannot be written back byte for byte (floats)."""
    if value is None:
        return b',"' + key.encode() + b'":null'
    if isinstance(value, float):
        return None
    return b',"' + key.encode() + b'":' + _COMPACT(value).encode()


@functools.lru_cache(maxsize=256)
def _model_edit(upstream: str, public: str) -> tuple[bytes, bytes]:
    """The model member as the upstream wrote it, and as the client gets it."""
    return _member("model", upstream)[1:], _member("model", public)[1:]


def splice_answer(content: bytes, body: dict, public_model: str, fix, request):
    """The bytes ``rewrite_json`` would write for a compact JSON answer, made by editing the
    upstream's bytes in place: the model renamed, null members of usage and SGLang's
    ``metadata`` dropped, ``refusal: null`` added to each chat message. None when an edit
    cannot be placed exactly, or the endpoint's fix needs the parsed answer.

    Each edit is of a member's exact text, which must occur exactly once (the model
    once, ``"message":{`` once per choice). Outside strings every ``"`` is JSON's own
    (inside one it is escaped), so a match is the member itself, never text within a
    string.
    """
    if fix is fix_embeddings:
        if request is not None and request.body.get("encoding_format") == "base64":
            return None  # floats to encode
    elif fix is not fix_completion:
        return None
    model = body.get("model")
    if not isinstance(model, str):
        return None
    edits = [_model_edit(model, public_model)]
    usage = body.get("usage")
    if isinstance(usage, dict):
        edits.extend((_member(key, None), b"") for key, value in usage.items()
                     if value is None)
    if "metadata" in body and fix is fix_completion:
        edits.append((_member("metadata", body["metadata"]), b""))
    for old, new in edits:
        if old is None or content.count(old) != 1:
            return None
        content = content.replace(old, new, 1)
    if fix is fix_completion:
        choices = body.get("choices")
        if not isinstance(choices, list):
            return None
        messages = [choice["message"] for choice in choices
                    if isinstance(choice, dict) and isinstance(choice.get("message"), dict)]
        if messages:
            # every message lacks refusal (SGLang writes none), and every "message" member
            # in the bytes is one of them, written compactly with a first member
            if any("refusal" in message for message in messages) or \
                    not content.count(b'"message":') == content.count(b'"message":{"') \
                    == len(messages):
                return None
            content = content.replace(b'"message":{"', b'"message":{"refusal":null,"')
    return content


def rewrite_native(content: bytes, public_model: str, edit=None, fix=None,
                   request=None) -> tuple[bytes, Usage | None]:
    """A native /generate answer (one result, or a list for a batch or n > 1): it names no
    model; usage is the sum of each result's meta_info."""
    try:
        body = json.loads(content)
    except (ValueError, RecursionError):
        raise _malformed("an answer that is not JSON") from None
    results = body if isinstance(body, list) else [body]
    if not results or not all(isinstance(r, dict) for r in results):
        raise _malformed("an answer that is not a JSON object or a list of them")
    usage = native_usage(r.get("meta_info") for r in results)
    if fix is not None:
        body = fix(body, request)
    if edit is not None:
        edit(body)
    return json.dumps(body, separators=(",", ":")).encode(), usage


def fix_rerank(results: list, request) -> list:
    """The client's top_n, applied here: the gateway asks the runtime for every document,
    since SGLang reports a pair's tokens only on the results it returns (and the runtime
    scored them all)."""
    top_n = request.body.get("top_n") if request is not None else None
    return results[:top_n] if isinstance(top_n, int) else results


def native_usage(metas) -> Usage | None:
    """The summed usage of SGLang meta_info objects (prompt_tokens, completion_tokens,
    cached_tokens); None if any is not one."""
    prompt = completion = cached = 0
    for meta in metas:
        usage = Usage.from_upstream({
            "prompt_tokens": meta.get("prompt_tokens"),
            "completion_tokens": meta.get("completion_tokens", 0),  # a rerank has none
            "prompt_tokens_details": {"cached_tokens": meta.get("cached_tokens")},
        }) if isinstance(meta, dict) else None
        if usage is None:
            return None
        prompt, completion = prompt + usage.prompt_tokens, completion + usage.completion_tokens
        cached += usage.cached_tokens
    return Usage(prompt, completion, cached)


def fix_completion(body: dict, request) -> None:
    """A chat or text completion as OpenAI writes it."""
    body.pop("metadata", None)  # SGLang's weight_version, not part of OpenAI's object
    choices = body.get("choices")
    for choice in choices if isinstance(choices, list) else ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict):
            message.setdefault("refusal", None)  # OpenAI requires it; SGLang omits it


def fix_embeddings(body: dict, request) -> None:
    """Embeddings in the encoding the client asked for: a backend that ignores
    ``encoding_format: base64`` (and answers floats) is encoded here, as OpenAI's
    little-endian float32 bytes in base64."""
    if request is None or request.body.get("encoding_format") != "base64":
        return
    data = body.get("data")
    for item in data if isinstance(data, list) else ():
        vector = item.get("embedding") if isinstance(item, dict) else None
        if isinstance(vector, list) and all(type(v) in (float, int) for v in vector):
            item["embedding"] = base64.b64encode(
                struct.pack(f"<{len(vector)}f", *vector)).decode()


def fix_nothing(body: dict, request=None) -> None:
    """An answer that needs nothing beyond the model id and usage (SGLang's /v1/score)."""


def fix_response(body: dict, request=None) -> None:
    """A Response object (or a Responses stream event holding one) as OpenAI's schema
    writes it: SGLang writes ``"logprobs": null`` on output text (OpenAI: an array) and
    ``"user": null``, and ``"usage"``/``"text": null`` before there is any (OpenAI omits
    them)."""
    stack = [body]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("type") == "output_text" and node.get("logprobs", []) is None:
                node["logprobs"] = []
            if node.get("object") == "response":
                for name in ("user", "usage", "text"):
                    if name in node and node[name] is None:
                        del node[name]
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)


class _EventStream:
    """Splits upstream SSE bytes into whole events (each with its blank line), and keeps
    what bills a stream whose backend reported no usage: the prompt estimate and the
    events that carried output (one token each)."""

    __slots__ = ("_buffer", "_max_event", "done", "error", "prompt_estimate", "text_events")

    def __init__(self, max_event_bytes: int, prompt_estimate: int = 0):
        self._buffer = b""
        self._max_event = max_event_bytes
        self.done = False
        self.error = None
        self.prompt_estimate = prompt_estimate
        self.text_events = 0

    def estimated_usage(self) -> Usage | None:
        """The prompt estimate and one completion token per event that carried output."""
        if self.text_events or self.prompt_estimate:
            return Usage(self.prompt_estimate, self.text_events)
        return None

    def feed(self, data: bytes) -> list[bytes]:
        """Events (complete, with their blank line) ready to send for this piece of input."""
        if self._buffer:
            data = self._buffer + data
        if data.endswith(b"\n\n") and data.count(b"\n\n") == 1:  # the usual: one whole event
            self._buffer = b""
            out = self._event(data)
            return [out] if out else []
        *events, self._buffer = data.split(b"\n\n")
        if len(self._buffer) > self._max_event:  # an event that never ends
            self._buffer = b""
            raise UpstreamFault(upstream_too_large("an event", self._max_event))
        out = []
        for event in events:
            piece = self._event(event + b"\n\n")
            if piece:
                out.append(piece)
        return out

    def _event(self, event: bytes) -> bytes | None:
        raise NotImplementedError


class SSERelay(_EventStream):
    """Turns a chat or completions stream into the events to send to the client."""

    __slots__ = ("_replacements", "_public", "_include_usage", "_strip_running",
                 "_final_usage", "_running_usage", "content_events")

    def __init__(self, upstream_model: str, public_model: str, include_usage: bool,
                 strip_running_usage: bool = False, max_event_bytes: int = 1 << 20,
                 prompt_estimate: int = 0):
        # Billed with the estimate when the backend sends no usage at all: a stream cut
        # short, or a server that never reports usage in streams (llama-cpp-python's).
        super().__init__(max_event_bytes, prompt_estimate)
        self._public = public_model
        self._include_usage = include_usage
        # The gateway asked for continuous_usage_stats (the client did not): note the running
        # usage on each event, so a stream cut short is still metered, and remove it.
        self._strip_running = strip_running_usage
        self._final_usage = None
        self._running_usage = None
        self._replacements = _model_replacements(upstream_model, public_model)
        self.content_events = 0

    def _event(self, event: bytes) -> bytes | None:
        if event.startswith(_DONE):
            self.done = True
            return event
        if event.startswith(b'data: {"error"'):
            self.error = _upstream_error(event[len(b"data: "):])
            return self.error.sse_event()
        if b'"usage"' in event and (b'"choices":[]' in event or b'"choices": []' in event):
            try:
                chunk = json.loads(event[len(b"data: "):])
            except (ValueError, RecursionError):
                raise _malformed("a usage event that is not JSON") from None
            if not isinstance(chunk, dict) or not isinstance(chunk.get("usage"), dict):
                raise _malformed("a usage event without a usage object")
            self._final_usage = clean_usage(chunk["usage"])
            if not self._include_usage:
                return None
            chunk["usage"] = self._final_usage
            chunk["model"] = self._public
            return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"
        if self._strip_running:
            at = event.rfind(b',"usage":{')
            if at > 0:
                self._running_usage = event[at + 9:-3]
                event = event[:at] + b"}\n\n"
        for old, new in self._replacements:
            if old in event:
                event = event.replace(old, new, 1)
                break
        self.content_events += 1
        if _carries_text(event):
            self.text_events += 1
        return event

    @property
    def usage(self) -> Usage | None:
        """The final usage if it came, else the running usage of the last event relayed,
        else (no usage event at all) an estimate of what was relayed: the prompt estimate
        and one completion token per event that carried output. A usage event that came
        but is broken (strings, negative counts) is still not billed as if it were tokens."""
        if self._final_usage is not None:
            return Usage.from_upstream(self._final_usage)
        if self._running_usage is not None:
            try:
                return Usage.from_upstream(json.loads(self._running_usage))
            except (ValueError, RecursionError):
                return None
        return self.estimated_usage()

    def error_event(self, error: GatewayError) -> bytes:
        """A failure after the stream started, as this kind of stream reports one."""
        return error.sse_event()


class GenerateRelay(_EventStream):
    """Turns SGLang's native /generate stream (``data: {text, output_ids, meta_info}``
    events, cumulative, one per step and choice, then ``data: [DONE]``) into the events to
    send: passed on as they came; each choice's latest meta_info is its running usage, so
    a stream cut short is still metered exactly."""

    __slots__ = ("_meta",)

    def __init__(self, upstream_model: str, public_model: str, include_usage: bool = True,
                 strip_running_usage: bool = False, max_event_bytes: int = 1 << 20,
                 prompt_estimate: int = 0):
        super().__init__(max_event_bytes, prompt_estimate)
        self._meta = {}  # choice index -> its latest meta_info

    def _event(self, event: bytes) -> bytes | None:
        if event.startswith(_DONE):
            self.done = True
            return event
        if event.startswith(b'data: {"error"'):
            self.error = _upstream_error(event[len(b"data: "):])
            return self.error.sse_event()
        if event.startswith(b"data:"):
            try:
                result = json.loads(event[5:])
            except (ValueError, RecursionError):
                raise _malformed("an event that is not JSON") from None
            if isinstance(result, dict) and isinstance(result.get("meta_info"), dict):
                self._meta[result.get("index", 0)] = result["meta_info"]
            self.text_events += 1
        return event

    @property
    def usage(self) -> Usage | None:
        """The sum of each choice's latest meta_info, else the prompt estimate and one
        token per event relayed."""
        if self._meta:
            return native_usage(self._meta.values())
        return self.estimated_usage()

    def error_event(self, error: GatewayError) -> bytes:
        return error.sse_event()


# Responses events whose delta is generated output (one token each when billed unreported).
_RESPONSE_DELTAS = frozenset((b"response.output_text.delta", b"response.reasoning_text.delta",
                              b"response.reasoning_summary_text.delta",
                              b"response.function_call_arguments.delta",
                              b"response.refusal.delta"))
_RESPONSE_ENDS = frozenset((b"response.completed", b"response.incomplete", b"response.failed"))


class ResponsesRelay(_EventStream):
    """Turns a Responses stream (``event: <type>`` + ``data: {...}`` events) into the events
    to send to the client; its usage comes in the final ``response.completed`` (or
    ``incomplete``/``failed``) event, which ends it (an upstream ``[DONE]`` too)."""

    __slots__ = ("_replacements", "_final_usage", "events")

    def __init__(self, upstream_model: str, public_model: str, include_usage: bool = True,
                 strip_running_usage: bool = False, max_event_bytes: int = 1 << 20,
                 prompt_estimate: int = 0):
        super().__init__(max_event_bytes, prompt_estimate)
        self.events = 0  # relayed so far: the next sequence_number
        self._final_usage = None
        self._replacements = _model_replacements(upstream_model, public_model)

    def _event(self, event: bytes) -> bytes | None:
        if event.startswith(_DONE):
            self.done = True
            return event
        for old, new in self._replacements:
            if old in event:
                event = event.replace(old, new, 1)
                break
        kind, data = _typed_event(event)
        if kind is None:  # a comment or keep-alive line
            return event
        if kind == b"error" or data.startswith(b'{"error"'):
            self.error = _upstream_error(data)
            return self.error_event(self.error)
        if kind in _RESPONSE_DELTAS:
            self.text_events += 1
        else:
            if kind in _RESPONSE_ENDS:
                self._end(kind, data)
            if b"null" in data:  # the few events that carry a whole Response or item
                event = _schema_event(event, data)
        self.events += 1
        return event

    def _end(self, kind: bytes, data: bytes) -> None:
        try:
            response = json.loads(data)["response"]
            usage = response.get("usage")
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            raise _malformed(f"a {kind.decode()} event that is not JSON") from None
        if isinstance(usage, dict):
            self._final_usage = usage
        if kind == b"response.failed":
            error = response.get("error") if isinstance(response.get("error"), dict) else {}
            self.error = GatewayError(502, str(error.get("message") or "The response failed.")
                                      [:500], "server_error", "upstream_error")
        self.done = True

    @property
    def usage(self) -> Usage | None:
        """The final usage if it came, else the prompt estimate and one output token per
        delta relayed."""
        if self._final_usage is not None:
            return Usage.from_upstream(self._final_usage)
        return self.estimated_usage()

    def error_event(self, error: GatewayError) -> bytes:
        return error.response_event(self.events)


def _schema_event(event: bytes, data: bytes) -> bytes:
    """A Responses event other than a delta, with its JSON as OpenAI's schema writes it."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return event
    fix_response(obj)
    head = event[:event.index(b"data:")] if event.startswith(b"event:") else b""
    return head + b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def _typed_event(event: bytes) -> tuple[bytes | None, bytes]:
    """(type, data) of one SSE event: the ``event:`` line's name, else the data's "type"."""
    kind, data = None, b""
    for line in event.split(b"\n"):
        if line.startswith(b"event:"):
            kind = line[6:].strip()
        elif line.startswith(b"data:"):
            data = line[5:].strip()
    if kind is None and data:
        try:
            value = json.loads(data).get("type")
            kind = value.encode() if isinstance(value, str) else b""
        except (ValueError, AttributeError, RecursionError):
            kind = b""
    return kind, data


def _model_replacements(upstream_model: str, public_model: str) -> tuple:
    """Byte replacements that rename the model in a JSON event, compact or spaced."""
    if upstream_model == public_model:
        return ()
    up, pub = json.dumps(upstream_model).encode(), json.dumps(public_model).encode()
    return ((b'"model":' + up, b'"model":' + pub), (b'"model": ' + up, b'"model": ' + pub))


def _upstream_error(data: bytes) -> GatewayError:
    """A backend's error event (OpenAI's nested ``{"error": {...}}`` or a Responses error
    event's flat fields) as the gateway's 502."""
    try:
        body = json.loads(data)
        error = body.get("error", body) if isinstance(body.get("error"), dict) else body
        message = str(error.get("message") or "upstream error")[:500]
    except (ValueError, TypeError, AttributeError, RecursionError):
        message = "upstream error"
    return GatewayError(502, message, "server_error", "upstream_error")
