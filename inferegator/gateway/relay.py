"""Relay an upstream answer to the client: JSON rewritten once, SSE event by event as it comes.

Per streamed event the relay does the least that is correct: rename the model,
notice (and keep or drop) the usage event, translate an error event, and pass
everything else on as the bytes that arrived.
"""

import json

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


def rewrite_json(content: bytes, public_model: str, edit=None) -> tuple[bytes, Usage | None]:
    """A non-streamed answer with the public model id, after ``edit(answer)`` (the
    after-upstream hooks) has seen it; returns (bytes, usage)."""
    try:
        body = json.loads(content)
    except (ValueError, RecursionError):
        raise _malformed("an answer that is not JSON") from None
    if not isinstance(body, dict):
        raise _malformed("an answer that is not a JSON object")
    body["model"] = public_model
    usage = body.get("usage")
    if isinstance(usage, dict):
        usage = body["usage"] = clean_usage(usage)
    body.pop("metadata", None)  # SGLang's weight_version, not part of OpenAI's object
    choices = body.get("choices")
    for choice in choices if isinstance(choices, list) else ():
        message = choice.get("message") if isinstance(choice, dict) else None
        if isinstance(message, dict):
            message.setdefault("refusal", None)  # OpenAI requires it; SGLang omits it
    if edit is not None:
        edit(body)
        usage = body.get("usage")
    return json.dumps(body, separators=(",", ":")).encode(), Usage.from_upstream(usage)


class SSERelay:
    """Turns upstream SSE bytes into the events to send to the client."""

    __slots__ = ("_buffer", "_replacements", "_public", "_include_usage", "_strip_running",
                 "_final_usage", "_running_usage", "_max_event", "error", "done",
                 "content_events", "text_events", "prompt_estimate")

    def __init__(self, upstream_model: str, public_model: str, include_usage: bool,
                 strip_running_usage: bool = False, max_event_bytes: int = 1 << 20,
                 prompt_estimate: int = 0):
        self._buffer = b""
        # Billed with text_events (one completion token per event carrying output) when the
        # backend sends no usage at all: a stream cut short, or a server that never reports
        # usage in streams (llama-cpp-python's).
        self.prompt_estimate = prompt_estimate
        self.text_events = 0
        self._max_event = max_event_bytes
        self._public = public_model
        self._include_usage = include_usage
        # The gateway asked for continuous_usage_stats (the client did not): note the running
        # usage on each event, so a stream cut short is still metered, and remove it.
        self._strip_running = strip_running_usage
        self._final_usage = None
        self._running_usage = None
        if upstream_model == public_model:
            self._replacements = ()
        else:
            up, pub = json.dumps(upstream_model).encode(), json.dumps(public_model).encode()
            self._replacements = ((b'"model":' + up, b'"model":' + pub),
                                  (b'"model": ' + up, b'"model": ' + pub))
        self.error = None
        self.done = False
        self.content_events = 0

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
        if event.startswith(_DONE):
            self.done = True
            return event
        if event.startswith(b'data: {"error"'):
            self.error = self._translate_error(event)
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
        if self.text_events or self.prompt_estimate:
            return Usage(self.prompt_estimate, self.text_events)
        return None

    @staticmethod
    def _translate_error(event: bytes) -> GatewayError:
        try:
            error = json.loads(event[len(b"data: "):])["error"]
            message = str(error.get("message") or "upstream error")[:500]
        except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
            message = "upstream error"
        return GatewayError(502, message, "server_error", "upstream_error")
