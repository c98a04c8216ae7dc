"""W3C Trace Context (https://www.w3.org/TR/trace-context/): a client's ``traceparent``
continued, or a new trace started, and the header sent upstream for each attempt.

Plain strings and ``os.urandom``: no OpenTelemetry needed, so every request carries a
trace id at the cost of a header parse.
"""

import os
import re
from typing import NamedTuple

# version-traceid-parentid-flags, lowercase hex only (the spec refuses uppercase).
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16
SAMPLED = 0x01
# The flags this version defines (sampled; level 2's random trace id): others are zeroed.
_KNOWN_FLAGS = 0x03
TRACESTATE_MAX_CHARS = 512  # what the spec asks every participant to pass on at least
_TRACESTATE_MEMBERS = 32
_MEMBER = re.compile(
    r"(?:[a-z][a-z0-9_\-*/]{0,255}|[a-z0-9][a-z0-9_\-*/]{0,240}@[a-z][a-z0-9_\-*/]{0,13})"
    r"=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]")


def new_trace_id() -> str:
    while True:
        value = os.urandom(16).hex()
        if value != _ZERO_TRACE:
            return value


def new_span_id() -> str:
    while True:
        value = os.urandom(8).hex()
        if value != _ZERO_SPAN:
            return value


def parse_traceparent(value) -> tuple[str, str, int] | None:
    """(trace id, parent span id, flags) of a valid header, else None: version ``ff``, an
    all-zero id, uppercase hex, or version 00 with anything after the flags are invalid;
    a later version is read by its first four fields, as the spec asks."""
    if not value or len(value) < 55:
        return None
    match = _TRACEPARENT.match(value)
    if match is None:
        return None
    version, trace_id, parent_id, flags = match.groups()
    if version == "ff" or trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    if len(value) > 55 and (version == "00" or value[55] != "-"):
        return None
    return trace_id, parent_id, int(flags, 16) & _KNOWN_FLAGS


def _passable(tracestate) -> str | None:
    """A tracestate to pass on as is: at most TRACESTATE_MAX_CHARS of at most 32 valid
    ``key=value`` members; else None (the spec lets an invalid one be dropped)."""
    if not tracestate or len(tracestate) > TRACESTATE_MAX_CHARS:
        return None
    members = [m.strip(" \t") for m in tracestate.split(",")]
    if len(members) > _TRACESTATE_MEMBERS or not all(
            _MEMBER.fullmatch(m) for m in members if m):
        return None
    return tracestate if any(members) else None


class TraceContext(NamedTuple):
    """A request's place in a trace: the caller's, or a trace that starts here."""

    trace_id: str  # 32 lowercase hex digits
    parent_id: str | None  # the caller's span (16 hex digits); None: the trace starts here
    flags: int  # SAMPLED when spans of this trace are recorded
    tracestate: str | None  # the caller's vendor data, passed on untouched

    @classmethod
    def from_headers(cls, traceparent, tracestate=None) -> "TraceContext":
        """The caller's trace continued, or a new sampled one when ``traceparent`` is
        missing or invalid (its ``tracestate`` is then dropped, as the spec asks)."""
        parsed = parse_traceparent(traceparent)
        if parsed is None:
            return cls(new_trace_id(), None, SAMPLED, None)
        return cls(*parsed, _passable(tracestate))

    def traceparent(self, span_id: str) -> str:
        """The header naming ``span_id`` (one of ours) as the parent, for a call we make."""
        return f"00-{self.trace_id}-{span_id}-{self.flags:02x}"
