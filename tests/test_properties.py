"""Property-based tests (hypothesis) over every route of the gateway.

One gateway (one gunicorn worker) in front of an instant simulator serves the whole
module. Hypothesis sends, to every route and method, well-formed requests with fields
mutated (wrong types, huge or negative numbers, nested values, long, empty, non-ASCII and
lone-surrogate strings, nulls, unknown fields), raw byte bodies (invalid JSON or UTF-8,
nesting 10,000-100,000 deep, truncation, other encodings, oversize), and odd headers
(no key, malformed Authorization, odd X-Request-ID values), and checks every answer:

* it is a JSON object; on status >= 400 exactly OpenAI's error body, whose ``type`` is
  one that inferegator/errors.py or inferegator/ratelimit/limiter.py uses (this includes
  what gunicorn refuses before the app: bad header bytes, over-long lines and headers);
* no 5xx but 502/503/504 (a backend may cause those, with an OpenAI body);
* a 200 stream is SSE whose events are JSON objects, ending in [DONE] or an error event;
* the gunicorn master has the same workers after the request as before.

A HEAD answer has no body, and a bare 2xx to OPTIONS (an Allow header) is accepted. The
backend's circuit never opens here, so that a fault stays reproducible while hypothesis
shrinks it.

A failure is raised as ``GatewayFault[<signature>]`` (the status, and for a 500 the
exception the gateway logged), so that hypothesis shrinks each distinct fault to its own
minimal example instead of reporting only the simplest one.

Then, in file order (the last three tests): no worker died over the whole run, every
backend's in-flight count is back to 0, and after a graceful stop (SIGTERM) the usage
ledger holds exactly one row per authenticated generation request. Every generation
request that carries one of our keys has a unique ``X-Request-ID: prop-<hex>``; it is
authenticated when it carried a valid key and was not answered 401. (Whether a body over
server.max_body_bytes is billed is left open: such requests are not judged, and are only
sent without a key in the generation tests.)

Budget: INFEREGATOR_PROPERTY_EXAMPLES examples in all (default 2000), shared by the
tests in fixed proportions; derandomized, so CI tries the same cases on every run. The
cases tried and the answers per status class are printed at the end of the module (and
written as JSON to $INFEREGATOR_PROPERTY_REPORT when set).
"""

import glob
import http.client
import json
import os
import re
import signal
import socket
import sqlite3
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.gateway_fixtures import MODEL, gateway_yaml, launch_gateway, provision
from tests.support.processes import wait_until

BUDGET = int(os.environ.get("INFEREGATOR_PROPERTY_EXAMPLES", "2000"))
SHARES = {"generation_json": 0.30, "generation_raw": 0.12, "models": 0.06,
          "admin_users": 0.12, "admin_keys": 0.12, "admin_backends": 0.07,
          "self_service": 0.12, "any_route": 0.09}
MAX_BODY = 1024 * 1024  # server.max_body_bytes here: 413 stays cheap to reach

# Every error type the gateway's own errors use (errors.py: invalid_request_error and
# server_error; limiter.py: the limit's kind, requests or tokens, and insufficient_quota).
ERROR_TYPES = frozenset({"invalid_request_error", "server_error", "requests", "tokens",
                         "insufficient_quota"})
ERROR_FIELDS = {"message", "type", "param", "code"}
BACKEND_STATUSES = (502, 503, 504)  # 5xx a backend may legitimately cause
GENERATION = ("/v1/chat/completions", "/v1/completions")
METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")
ODD_METHODS = ("TRACE", "FOO", "get", "M-SEARCH")


def budget(name: str):
    return settings(max_examples=max(5, round(BUDGET * SHARES[name])), deadline=None,
                    derandomize=True, database=None, print_blob=False,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much,
                                           HealthCheck.large_base_example])


# -- what was tried and seen, for the figures and the ledger ------------------------------

@dataclass
class Sent:
    """A generation request that carried an X-Request-ID of ours."""

    path: str
    status: int | None  # None: no answer
    auth: str
    authenticated: bool | None  # None: cannot tell (no answer; a body over the limit)
    body: bytes


@dataclass
class Tally:
    cases: Counter = field(default_factory=Counter)  # test -> requests sent
    classes: Counter = field(default_factory=Counter)  # "2xx".. "5xx", "no answer"
    statuses: Counter = field(default_factory=Counter)
    by_test: Counter = field(default_factory=Counter)  # (test, status)
    codes: Counter = field(default_factory=Counter)  # (test, status, error code)
    streams: int = 0  # 200 answers that were SSE streams
    faults: Counter = field(default_factory=Counter)  # (test, signature) of violations
    sent: dict = field(default_factory=dict)  # our request id -> Sent

    def summary(self) -> dict:
        return {"examples": BUDGET, "cases": dict(self.cases),
                "cases_total": sum(self.cases.values()),
                "answers": {k: v for k, v in sorted(self.classes.items())},
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
                "statuses_by_test": {t: {str(s): n for (u, s), n in sorted(self.by_test.items())
                                         if u == t} for t in self.cases},
                "codes": [f"{t} {s} {c}: {n}" for (t, s, c), n in sorted(
                    self.codes.items(), key=lambda kv: (kv[0][0], -kv[1]))],
                "faults": [f"{t}: {s} x{n}" for (t, s), n in self.faults.most_common()],
                "streams_200": self.streams, "generation_ids": len(self.sent),
                "authenticated_generation": sum(1 for s in self.sent.values()
                                                if s.authenticated)}


TALLY = Tally()
_FAULT_CLASSES: dict = {}


def fault(signature: str, message: str) -> AssertionError:
    """An AssertionError whose class names the fault: one class per distinct signature."""
    cls = _FAULT_CLASSES.get(signature)
    if cls is None:
        cls = _FAULT_CLASSES[signature] = type(f"GatewayFault[{signature}]",
                                               (AssertionError,), {})
    return cls(message)


class Problem(Exception):
    """A check that failed: kind (short, for the signature) and what was seen."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def require(condition, kind: str, message: str) -> None:
    if not condition:
        raise Problem(kind, message)


# -- symbolic values, resolved against the running gateway when sent ----------------------

@dataclass(frozen=True)
class Ref:
    """An id known only at run time (a user's, a key's, the backend's name)."""

    name: str


@dataclass(frozen=True)
class Raw:
    """JSON text written as is (numbers Python cannot write or parse, NaN)."""

    text: str

    def __repr__(self):
        return f"Raw({self.text!r})" if len(self.text) <= 40 else \
            f"Raw({self.text[:20]!r}...{self.text[-5:]!r}, {len(self.text)} chars)"


@dataclass(frozen=True)
class Nest:
    """``depth`` nested arrays or objects, closed or not (a value, or a whole body)."""

    depth: int
    kind: str = "array"  # array, object, mixed
    closed: bool = True

    def text(self) -> str:
        opener, closer = {"array": ("[", "]"), "object": ('{"a":', "}"),
                          "mixed": ('[{"a":', "}]")}[self.kind]
        inner = "" if self.kind == "array" else "1"
        return opener * self.depth + inner + (closer * self.depth if self.closed else "")


def to_json(value, ids: dict, ascii_only: bool = True) -> str:
    """JSON text; lone surrogates become \\ud800 escapes when ascii_only, else raw code
    points (which then encode to invalid UTF-8)."""
    if isinstance(value, Raw):
        return value.text
    if isinstance(value, Nest):
        return value.text()
    if isinstance(value, Ref):
        return json.dumps(ids[value.name])
    if isinstance(value, (str, float)) or value is None or isinstance(value, bool):
        return json.dumps(value, ensure_ascii=ascii_only)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(to_json(v, ids, ascii_only) for v in value) + "]"
    return "{" + ", ".join(json.dumps(k, ensure_ascii=ascii_only) + ": "
                           + to_json(v, ids, ascii_only) for k, v in value.items()) + "}"


@dataclass(frozen=True)
class Body:
    """A request body: a JSON value (with Refs), or bytes, or JSON text made invalid."""

    value: object = None
    ascii_only: bool = True  # False: non-ASCII as UTF-8 (lone surrogates: invalid UTF-8)
    raw: bytes | None = None
    encoding: str = "utf-8"
    cut: int | None = None  # truncate the encoded text to this many bytes
    insert: bytes | None = None  # bytes put in at the middle of the encoded text
    suffix: bytes = b""

    def encode(self, ids: dict) -> bytes:
        if self.raw is not None:
            return self.raw
        text = to_json(self.value, ids, self.ascii_only)
        try:
            data = text.encode(self.encoding, "surrogatepass")
        except UnicodeEncodeError:  # latin-1: what it cannot write becomes "?"
            data = text.encode(self.encoding, "replace")
        if self.insert is not None:
            middle = len(data) // 2
            data = data[:middle] + self.insert + data[middle:]
        if self.cut is not None:
            data = data[:self.cut]
        return data + self.suffix

    def __repr__(self):
        if self.raw is not None:
            shown = self.raw if len(self.raw) <= 80 else self.raw[:40] + b"..." + self.raw[-8:]
            return f"Body(raw={shown!r}, {len(self.raw)} bytes)"
        parts = [f"{self.value!r}"[:1500]]
        for name in ("ascii_only", "encoding", "cut", "insert", "suffix"):
            if getattr(self, name) != Body.__dataclass_fields__[name].default:
                parts.append(f"{name}={getattr(self, name)!r}")
        return f"Body({', '.join(parts)})"


@dataclass(frozen=True)
class Call:
    """One HTTP request, symbolic until sent."""

    method: str
    path: tuple  # str pieces (already percent-encoded) and Refs (quoted when sent)
    body: Body | None = None
    auth: tuple = ("user", b"")  # (variant, payload)
    request_id: bytes | None = None  # odd X-Request-ID (never on a billed request)
    query: str = ""
    content_type: bytes | None = b"application/json"


# -- strategies ---------------------------------------------------------------------------

def weighted(*choices):
    """One of the strategies, each (weight, strategy) chosen weight times in sum(weights)
    (st.one_of would take each once); shrinks towards the first."""
    pool = [strategy for weight, strategy in choices for _ in range(weight)]
    return st.integers(0, len(pool) - 1).flatmap(lambda i: pool[i])


CHARS = weighted(
    (6, st.characters()),  # any code point but surrogates
    (1, st.characters(categories=["Cs"])),  # lone surrogates
    (1, st.sampled_from("\x00\x1f\n\"\\/ \u00e9\u4e2d\U0001f600\u2028\ufeff\uffff")),
)
PLAIN_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), min_size=1,
                     max_size=24)
SHORT_TEXT = weighted((2, st.text(CHARS, max_size=24)), (1, PLAIN_TEXT))
LONG_TEXT = st.builds(lambda s, n: (s * (n // len(s) + 1))[:n],
                      st.text(CHARS, min_size=1, max_size=8), st.integers(1000, 10240))
TEXT = weighted((6, SHORT_TEXT), (1, LONG_TEXT), (1, st.sampled_from(
    ["", " ", "\ud800", "\udfff", "null", MODEL, "0", "true"])))
HUGE_NUMBERS = st.one_of(
    st.builds(lambda n, neg: Raw(("-" if neg else "") + "1" + "0" * n),
              st.sampled_from([20, 400, 4000, 4299, 4300, 5000]), st.booleans()),
    st.sampled_from([Raw("1e400"), Raw("-1e400"), Raw("1e-400"), Raw("-0"), Raw("0.0"),
                     Raw("1E2"), Raw("2.5")]))
INTS = st.one_of(st.integers(-3, 20), st.integers(-2 ** 64, 2 ** 64),
                 st.sampled_from([2 ** 31 - 1, 2 ** 31, 2 ** 63, -2 ** 63 - 1, 10 ** 19]))
SCALARS = st.one_of(st.none(), st.booleans(), INTS, HUGE_NUMBERS, TEXT,
                    st.floats(allow_nan=False, allow_infinity=False))
JSON_VALUES = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(SHORT_TEXT, inner, max_size=4), max_leaves=8)
DEEP = st.builds(Nest, st.one_of(st.integers(10_000, 100_000), st.integers(500, 3000)),
                 st.sampled_from(["array", "object", "mixed"]))
HEADER_TEXT = st.one_of(  # mostly what gunicorn passes to the app; some it refuses itself
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E) | st.sampled_from(
        "\t\u00e9\u00ff\u4e2d\U0001f600"), max_size=64),
    st.builds(lambda s, n: (s * n)[:4000], st.text(
        st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=4),
        st.integers(129, 4000)),
    st.sampled_from(["", " ", "prop-", "a" * 128, "a" * 129, "../../etc", "x y", "\"'<>",
                     "\u00e9", "a\x01b", "\x7f", "a\x0bb", "x" * 9000]),
).map(lambda s: s.encode("utf-8"))

# Authorization variants; these three carry a valid key in a Bearer header gateways accept.
VALID_AUTH = ("user", "admin", "user-lowercase")
AUTH = st.one_of(
    st.sampled_from(["user"] * 5 + ["admin", "user-lowercase", "none", "revoked", "basic",
                     "no-scheme", "truncated", "bearer-empty", "two-keys"]).map(
        lambda v: (v, b"")),
    st.tuples(st.sampled_from(["bearer-garbage", "key-like", "garbage"]), HEADER_TEXT),
)  # (two branches: as likely a garbage header as one of the ten fixed variants)
AS_ADMIN = weighted((3, st.just(("admin", b""))), (1, AUTH))  # for admin routes
AS_USER = weighted((5, st.just(("user", b""))), (1, st.just(("admin", b""))), (2, AUTH))
AS_CALLER = weighted((5, st.just(("user", b""))), (1, st.just(("admin", b""))),
                     (2, AUTH))  # for generation


def authorization(auth, keys: dict) -> bytes | None:
    variant, payload = auth
    user, admin, revoked = keys["user"], keys["admin"], keys["revoked"]
    return {"user": b"Bearer " + user, "admin": b"Bearer " + admin,
            "user-lowercase": b"bearer  " + user + b" ", "none": None,
            "revoked": b"Bearer " + revoked, "basic": b"Basic " + user, "no-scheme": user,
            "truncated": b"Bearer " + user[:-1], "bearer-empty": b"Bearer ",
            "two-keys": b"Bearer " + user + b", Bearer " + admin,
            "bearer-garbage": b"Bearer " + payload, "key-like": b"Bearer sk-inf-" + payload,
            "garbage": payload}[variant]


CONTENT_TYPES = st.sampled_from([b"application/json"] * 4 + [
    None, b"text/plain", b"application/json; charset=latin-1", b"multipart/form-data",
    b"application/x-www-form-urlencoded"])
PATH_IDS = st.one_of(
    st.builds(lambda s: quote(s.encode("utf-8", "surrogatepass"), safe=""), SHORT_TEXT),
    st.sampled_from(["%", "%zz", "%ff", "%ED%A0%80", "%00", "%2F", "..", ".", "%2e%2e",
                     "x" * 300, "key_0000000000000000", "usr_0", "admin%40example.com"]))
QUERY_VALUE = st.builds(lambda s: quote(s.encode("utf-8", "surrogatepass"), safe=""),
                        SHORT_TEXT) | st.sampled_from(["%", "%ff", "%zz", "", "day", "model"])


def queries(names):
    pair = st.tuples(st.sampled_from(names) | QUERY_VALUE, QUERY_VALUE)
    return st.one_of(st.just(""), st.lists(pair, max_size=3).map(
        lambda pairs: "&".join(f"{k}={v}" for k, v in pairs)),
        st.sampled_from(["&&", "=", "a", "%", "a=1&a=2"]))


@st.composite
def mutated(draw, base: dict, names, nested=()):
    """base with 0-3 changes: a field set to any JSON value, deleted, or nested one set;
    sometimes not an object at all."""
    body = dict(base)
    for _ in range(draw(st.sampled_from([0, 0, 0, 1, 1, 2, 3]))):
        op = draw(st.sampled_from(["set", "set", "delete", "nested"]))
        if op == "delete" and body:
            del body[draw(st.sampled_from(sorted(body)))]
        elif op == "nested" and nested and isinstance(body.get(nested[0]), list) \
                and body[nested[0]]:
            items = list(body[nested[0]])
            i = draw(st.integers(0, len(items) - 1))
            if isinstance(items[i], dict) and draw(st.booleans()):
                names_in = st.sampled_from(nested[1:]) | SHORT_TEXT if nested[1:] else SHORT_TEXT
                items[i] = {**items[i], draw(names_in): draw(JSON_VALUES)}
            else:
                items[i] = draw(JSON_VALUES)
            body[nested[0]] = items
        else:
            body[draw(st.sampled_from(names) | SHORT_TEXT)] = draw(JSON_VALUES)
    if draw(st.integers(0, 19)) >= 18:  # the last choices: hypothesis favours the first
        return draw(JSON_VALUES)
    return body


MODEL_IDS = weighted((10, st.just(MODEL)), (1, TEXT), (1, st.sampled_from(
    ["sim-model", MODEL.upper(), MODEL + "/", "acme/\ud800", "acme"])))
CHAT_FIELDS = ["model", "messages", "stream", "stream_options", "max_tokens",
               "max_completion_tokens", "n", "temperature", "top_p", "stop", "seed", "user",
               "logprobs", "top_logprobs", "presence_penalty", "frequency_penalty",
               "response_format", "tools", "tool_choice", "logit_bias", "prompt"]
COMPLETION_FIELDS = ["model", "prompt", "stream", "stream_options", "max_tokens", "n",
                     "temperature", "top_p", "stop", "seed", "echo", "suffix", "best_of",
                     "logprobs", "user", "messages"]
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant"]),
     "content": weighted((6, PLAIN_TEXT), (1, SHORT_TEXT),
                         (1, st.just([{"type": "text", "text": "hi"}])))})
PROMPT = weighted((4, PLAIN_TEXT), (2, SHORT_TEXT),
                  (1, st.lists(SHORT_TEXT, min_size=1, max_size=3)),
                  (1, st.lists(st.integers(0, 1000), min_size=1, max_size=8)))


@st.composite
def generation_body(draw, path):
    """A well-formed body for path (chat or completions), before any mutation."""
    body = {"model": draw(MODEL_IDS)}
    if path == GENERATION[0]:
        body["messages"] = draw(st.lists(MESSAGE, min_size=1, max_size=3))
    else:
        body["prompt"] = draw(PROMPT)
    if draw(st.booleans()):
        body["stream"] = True
        if draw(st.booleans()):
            body["stream_options"] = {"include_usage": draw(st.booleans())}
    body["max_tokens"] = draw(st.integers(1, 16))
    optional = {"temperature": st.floats(0, 2), "n": st.integers(1, 3),
                "stop": st.sampled_from(["\n", ["."]]), "seed": st.integers(0, 99),
                "user": SHORT_TEXT, "top_p": st.floats(0.1, 1)}
    for name in draw(st.lists(st.sampled_from(sorted(optional)), max_size=2, unique=True)):
        body[name] = draw(optional[name])
    return body


def json_bodies(base, names, nested=()):
    """A base body (a strategy) mutated, written as JSON (sometimes as UTF-8)."""
    return st.builds(Body, base.flatmap(lambda b: mutated(b, names, nested)),
                     st.sampled_from([True] * 5 + [False]))


@st.composite
def raw_bodies(draw, base, oversize=True):
    """Bodies that are not a JSON object, or not valid JSON, or nested very deep, or too
    big to accept."""
    kinds = ["binary", "text", "truncated", "trailing", "invalid-utf8", "nest", "nest-field",
             "encoding", "literal", "nan"] + (["oversize"] if oversize else [])
    kind = draw(st.sampled_from(kinds))
    if kind == "binary":
        return Body(raw=draw(st.binary(max_size=300)))
    if kind == "text":
        return Body(raw=draw(TEXT).encode("utf-8", "surrogatepass"))
    if kind == "nest":
        nest = draw(DEEP)
        return Body(value=nest if draw(st.booleans()) else replace(nest, closed=False))
    if kind == "literal":
        return Body(raw=draw(st.sampled_from([
            b"", b"null", b"[]", b'"x"', b"1e400", b"NaN", b"{}", b"{", b"}", b"Infinity",
            b"-Infinity", b"true", b"\xef\xbb\xbf{}", b"{\"a\":1,}", b"{'a': 1}", b"\x00"])))
    if kind == "oversize":
        return Body(raw=b'{"a": "' + b"x" * (MAX_BODY + draw(st.integers(0, 1000))) + b'"}')
    value = draw(base)
    if kind == "truncated":
        return Body(value=value, cut=draw(st.integers(0, 40)))
    if kind == "trailing":
        return Body(value=value, suffix=draw(st.sampled_from(
            [b"}", b",", b"xx", b"\x00", b" {}", b"]", b"\xff"])))
    if kind == "invalid-utf8":
        return Body(value=value, insert=draw(st.sampled_from(
            [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xc0\xaf", b"\x80",
             b"\xe2\x82"])))
    if kind == "encoding":
        return Body(value=value, ascii_only=False, encoding=draw(st.sampled_from(
            ["utf-16", "utf-16-le", "utf-32", "utf-8-sig", "latin-1"])))
    name = draw(st.sampled_from(sorted(value))) if value else "model"
    if kind == "nan":
        return Body(value={**value, name: draw(st.sampled_from(
            [Raw("NaN"), Raw("Infinity"), Raw("-Infinity")]))})
    return Body(value={**value, name: draw(DEEP)})  # nest-field


def bodies(base, names, nested=()):
    json_body = json_bodies(base, names, nested)
    return weighted((3, json_body), (1, raw_bodies(base)))


@st.composite
def generation_calls(draw, raw: bool):
    path = draw(st.sampled_from(GENERATION))
    base = generation_body(path)
    auth = draw(AS_CALLER)
    if raw:
        # An oversize body with one of our keys would leave open whether it is billed.
        body = draw(raw_bodies(base, oversize=auth[0] not in VALID_AUTH + ("revoked",)))
    elif path == GENERATION[0]:
        body = draw(json_bodies(base, CHAT_FIELDS, ("messages", "role", "content", "name")))
    else:
        body = draw(json_bodies(base, COMPLETION_FIELDS, ("prompt",)))
    suffix = draw(st.sampled_from(["", "", "", "/", "?x=1"]))
    rid = draw(weighted((1, st.none()), (1, st.just(b"prop")), (2, HEADER_TEXT)))
    return Call("POST", (path + suffix,), body, auth, rid, content_type=draw(CONTENT_TYPES))


def path_id(*refs):
    """One path piece: an id of ours (quoted when sent), or anything."""
    return weighted(*[(1, st.just(Ref(r))) for r in refs], (len(refs), PATH_IDS))


def fixed(*pieces):
    return st.just(tuple(pieces)) | st.just(tuple(pieces) + ("/",))


NO_QUERY = st.just("")
READ_ONLY = ("GET", "GET", "GET", "HEAD", "OPTIONS")
LIMITS = {"requests_per_minute": st.integers(1, 10 ** 6), "tokens_per_minute": INTS,
          "monthly_budget_usd": st.floats(0, 100), "allowed_models": st.just([MODEL])}
LIMIT_NAMES = sorted(LIMITS)


@st.composite
def limits(draw):
    return {n: draw(LIMITS[n]) for n in draw(st.lists(st.sampled_from(LIMIT_NAMES),
                                                      unique=True, max_size=4))}


NEW_USER = st.fixed_dictionaries({
    "email": weighted((6, st.builds(lambda s: s + "@example.com", st.text(
        "abcdefghijklmnopqrstuvwxyz0123456789.+", min_size=1, max_size=12))), (1, st.sampled_from(
            ["\ud800@example.com", "a@\ud800.com", "\u00e9@example.com", "a@b"]))),
    "password": st.sampled_from(["correct horse battery", "x" * 12, "p\u00e4ssword-long",
                                 "p\ud800ssword-long", "\udfff" * 12, "x" * 1025])},
    optional={"role": st.sampled_from(["user", "admin"])})
USER_FIELDS = ["email", "password", "role", "disabled", "id"]
KEY_FIELDS = ["user_id", "name", *LIMIT_NAMES, "key", "revoked"]
NEW_KEY = st.builds(lambda user, name, lim: {"user_id": user, "name": name, **lim},
                    st.sampled_from([Ref("victim_user"), Ref("user_id"), "nobody"]),
                    SHORT_TEXT, limits())

# Route tables: (usual methods, path pieces, body strategy or None, query strategy). Ids
# in paths are ours only where changing them cannot lock the tests out (the victim's and
# spare keys; the admin's own user, which the gateway must refuse to disable), else random;
# the ids that must stay usable are only read (READ_ONLY: no other method is tried there).
ROUTES = {
    "admin_users": [
        (("GET", "POST"), fixed("/v1/admin/users"), bodies(NEW_USER, USER_FIELDS),
         queries(["x", "role"])),
        (("GET", "PATCH"), st.tuples(st.just("/v1/admin/users/"),
                                     path_id("victim_user", "admin_user")),
         bodies(st.fixed_dictionaries({"disabled": st.booleans()}), USER_FIELDS), NO_QUERY),
        (READ_ONLY, st.just(("/v1/admin/users/", Ref("user_id"))), None, NO_QUERY),
    ],
    "admin_keys": [
        (("GET", "POST"), fixed("/v1/admin/keys"), bodies(NEW_KEY, KEY_FIELDS),
         queries(["user_id"]) | st.sampled_from(["user_id=nobody", "user_id=", "user_id=%ff"])),
        (("GET", "PATCH", "DELETE"),
         st.tuples(st.just("/v1/admin/keys/"), path_id("victim_key", "victim_key2")),
         bodies(limits(), KEY_FIELDS), NO_QUERY),
        (READ_ONLY, st.tuples(st.just("/v1/admin/keys/"), st.sampled_from(
            [Ref("user_key_id"), Ref("admin_key_id")])), None, NO_QUERY),
    ],
    "admin_backends": [
        (("GET",), fixed("/v1/admin/backends"), None, queries(["model"])),
        (("POST",), st.sampled_from([("/v1/admin/backends/drain",),
                                     ("/v1/admin/backends/undrain",)]),
         bodies(st.fixed_dictionaries({"backend": st.sampled_from([Ref("backend")] * 3)
                                       | TEXT}), ["backend", "name", "model"]), NO_QUERY),
    ],
    "self_service": [
        (("GET", "POST"), fixed("/v1/me/keys"),
         bodies(st.fixed_dictionaries({"name": SHORT_TEXT}), ["name", *LIMIT_NAMES]),
         queries(["x"])),
        (("DELETE",), st.tuples(st.just("/v1/me/keys/"),
                                path_id("own_key", "own_key2", "victim_key")), None, NO_QUERY),
        (("GET",), fixed("/v1/me/usage"), None, queries(["group_by", "start", "end"])
         | st.sampled_from(["group_by=model", "group_by=key", "start=2024-02-30",
                            "start=2024-01-02&end=2024-01-01", "group_by=day&group_by=day",
                            "start=9999-12-31", "end=0000-01-01"])),
        (("GET",), fixed("/v1/me"), None, NO_QUERY),
    ],
    "models": [
        (("GET",), fixed("/v1/models"), None, queries(["limit"])),
        (("GET",), st.one_of(st.just(("/v1/models/", quote(MODEL, safe="/"))), st.tuples(
            st.just("/v1/models/"), st.builds(
                lambda s: quote(s.encode("utf-8", "surrogatepass"), safe="/"), TEXT)
            | PATH_IDS)), None, NO_QUERY),
    ],
}
ROUTES["any_route"] = [  # every method on every route, and paths that are no route
    (("GET", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"),
     st.sampled_from([(p,) for p in GENERATION]), None, NO_QUERY),
    *(route for name in ("admin_users", "admin_keys", "admin_backends", "self_service",
                         "models") for route in ROUTES[name]),
    (METHODS + ODD_METHODS, st.sampled_from(
        [("/v1",), ("/",), ("/v1/admin",), ("/v1/admin/keys/a/b",), ("/v1/me/keys/a/b",),
         ("/v2/models",), ("//v1/models",), ("/v1/chat",), ("/v1/models%2F",), ("/%ff",),
         ("/health/x",)]) | PATH_IDS.map(lambda s: ("/v1/", s)), None, NO_QUERY),
]


@st.composite
def calls(draw, table: str, auth):
    """A request to one of ROUTES[table]: mostly a method the route has, else any."""
    methods, pieces, body, query = draw(st.sampled_from(ROUTES[table]))
    if methods != READ_ONLY and draw(st.integers(0, 4)) == 4:
        methods = METHODS + (ODD_METHODS if table == "any_route" else ())
    method = draw(st.sampled_from(methods))
    if body is not None and method in ("POST", "PATCH", "PUT"):
        body = draw(body)
    else:
        body = draw(st.sampled_from([None, Body(raw=b"{}")])) if method != "GET" else None
    return Call(method, draw(pieces), body, draw(auth), draw(st.none() | HEADER_TEXT),
                draw(query), draw(CONTENT_TYPES))



# -- the gateway and talking to it --------------------------------------------------------

@dataclass
class Answer:
    status: int
    headers: dict
    body: bytes


def workers(master: int) -> frozenset:
    """The gunicorn master's child pids."""
    files = glob.glob(f"/proc/{master}/task/*/children")
    kids = set()
    for path in files:
        try:
            with open(path) as f:
                kids.update(int(p) for p in f.read().split())
        except FileNotFoundError:
            pass
    if files:
        return frozenset(kids)
    for path in glob.glob("/proc/[0-9]*/stat"):  # kernels without CONFIG_PROC_CHILDREN
        try:
            with open(path) as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == master:
            kids.add(int(path.split("/")[2]))
    return frozenset(kids)


def exchange(port: int, method: str, target: str, body: bytes | None, headers) -> Answer:
    """One request on its own connection, bytes exactly as given; the answer even when the
    server answers (413, say) before it has read the whole body."""
    head = [f"{method} {target} HTTP/1.1".encode(), b"Host: 127.0.0.1", b"Connection: close"]
    head += [name.encode() + b": " + value for name, value in headers if value is not None]
    if body is not None:
        head.append(b"Content-Length: " + str(len(body)).encode())
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    try:
        try:
            sock.sendall(b"\r\n".join(head) + b"\r\n\r\n" + (body or b""))
        except OSError:
            pass  # refused part way: the answer may be waiting all the same
        response = http.client.HTTPResponse(sock, method=method)
        response.begin()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()},
                      response.read())
    finally:
        sock.close()


class Gateway:
    def __init__(self, server, keys: dict, ids: dict):
        self.server = server
        self.master = server.proc.pid
        self.keys = keys  # "user", "admin", "revoked" -> secret bytes
        self.ids = ids  # Ref name -> id
        self.initial_workers = self.workers = workers(self.master)

    def admin_json(self, method, target, body=None) -> tuple[int, dict]:
        answer = exchange(self.server.port, method, target,
                          json.dumps(body).encode() if body is not None else None,
                          [("Authorization", b"Bearer " + self.keys["admin"])])
        return answer.status, json.loads(answer.body)

    def log_size(self) -> int:
        return os.path.getsize(self.server.log.name)

    def logged_exception(self, since: int) -> str:
        """The exception type of an unhandled error the gateway logged after offset since."""
        with open(self.server.log.name, "rb") as f:
            f.seek(since)
            text = f.read().decode("utf-8", "replace")
        names = re.findall(r"unhandled error on [\s\S]*?^([A-Za-z_][\w.]*(?:Error|Exception))\b",
                           text, re.MULTILINE)
        return names[-1] if names else "none logged"

    def call(self, test: str, call: Call) -> Answer:
        """Send call; check the answer and that no worker died meanwhile."""
        target = "".join(quote(self.ids[p.name], safe="") if isinstance(p, Ref) else p
                         for p in call.path) + (f"?{call.query}" if call.query else "")
        auth = authorization(call.auth, self.keys)
        generation = call.method == "POST" and target.split("?")[0].rstrip("/") in GENERATION
        ours = auth is not None and any(k in auth for k in self.keys.values())
        valid = auth is not None and any(k in auth for k in (self.keys["user"],
                                                             self.keys["admin"]))
        rid = call.request_id
        if generation and (ours or rid == b"prop"):
            rid = f"prop-{uuid.uuid4().hex}".encode()  # well-formed: the ledger keeps it
        body = call.body.encode(self.ids) if call.body is not None else None
        headers = [("Authorization", auth), ("X-Request-ID", rid),
                   ("Content-Type", call.content_type if body is not None else None)]
        TALLY.cases[test] += 1
        failure, log_start = None, self.log_size()
        try:
            answer = exchange(self.server.port, call.method, target, body, headers)
        except (OSError, http.client.HTTPException) as exc:
            answer, failure = None, exc
        if generation and rid is not None and rid.startswith(b"prop-"):
            # Cannot tell whether billed: no answer; a body over the limit (refused before
            # or after authentication?). Any other answer but 401 to a valid key is billed.
            unknown = answer is None or (body is not None and len(body) > MAX_BODY)
            TALLY.sent[rid.decode()] = Sent(
                target, answer and answer.status, call.auth[0],
                None if unknown else valid and answer.status != 401, (body or b"")[:300])
        now = workers(self.master)
        died, self.workers = self.workers - now, now
        try:
            require(answer is not None, "no answer", f"{call.method} {target}: {failure!r}")
            TALLY.classes[f"{answer.status // 100}xx"] += 1
            TALLY.statuses[answer.status] += 1
            TALLY.by_test[(test, answer.status)] += 1
            TALLY.codes[(test, answer.status, error_code(answer.body))] += 1
            require(not died, "worker died", f"gunicorn worker(s) {sorted(died)} died")
            check_answer(call.method, answer)
        except Problem as problem:
            if answer is None:
                TALLY.classes["no answer"] += 1
            signature = problem.kind if answer is None else f"{answer.status} {problem.kind}"
            if answer is not None and answer.status >= 500:
                signature += f" [{error_kind(answer.body)}]"
            if answer is None or answer.status == 500 or problem.kind == "worker died":
                signature += f" (unhandled: {self.logged_exception(log_start)})"
            TALLY.faults[(test, signature)] += 1
            raise fault(signature, str(problem)) from None
        return answer


def error_code(body: bytes):
    try:
        return json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def error_kind(body: bytes) -> str:
    """type/code of an error body, for a fault's signature."""
    try:
        error = json.loads(body)["error"]
        return f"{error.get('type')}/{error.get('code')}"
    except (ValueError, KeyError, TypeError, AttributeError):
        return "no error body"


def _no_constants(name):
    raise ValueError(f"{name} is not JSON")


def load_json(data: bytes):
    """The JSON value, or a ValueError (NaN and Infinity are not JSON)."""
    return json.loads(data, parse_constant=_no_constants)


def check_answer(method: str, answer: Answer) -> None:
    status, shown = answer.status, answer.body[:300]
    require(status < 500 or status in BACKEND_STATUSES, "server error", f"{status}: {shown!r}")
    if method == "HEAD" or (method == "OPTIONS" and status < 300 and not answer.body):
        return  # no content by definition (HEAD), or a bare Allow (OPTIONS)
    if status == 200 and answer.headers.get("content-type", "").startswith(
            "text/event-stream"):
        check_stream(answer.body)
        TALLY.streams += 1
        return
    try:
        doc = load_json(answer.body)
    except ValueError:
        raise Problem("not JSON", f"{status} answer: {shown!r}") from None
    require(isinstance(doc, dict), "not an object", f"{status} answer: {shown!r}")
    if status >= 400:
        check_error(doc, status)


def check_error(doc: dict, status: int) -> None:
    require(set(doc) == {"error"} and isinstance(doc["error"], dict), "not an error body",
            f"{status}: {doc}")
    error = doc["error"]
    require(set(error) == ERROR_FIELDS, "error fields", f"{status}: {sorted(error)}")
    require(isinstance(error["message"], str) and error["message"], "error message",
            f"{status}: {error}")
    require(error["type"] in ERROR_TYPES, "error type", f"{status}: {error['type']!r}")
    require(error["param"] is None or isinstance(error["param"], str), "error param",
            f"{status}: {error}")
    require(error["code"] is None or isinstance(error["code"], str), "error code",
            f"{status}: {error}")


def check_stream(data: bytes) -> None:
    """SSE: every data payload a JSON object, [DONE] only last; ends in [DONE] or an error."""
    payloads = []
    for event in data.split(b"\n\n"):
        for line in event.split(b"\n"):
            if line.startswith(b"data:"):
                payloads.append(line[5:].strip())
            else:
                require(not line.strip() or line.startswith((b":", b"event:", b"id:")),
                        "not SSE", f"{line[:200]!r}")
    require(payloads, "empty stream", f"{data[:200]!r}")
    for i, payload in enumerate(payloads):
        if payload == b"[DONE]":
            require(i == len(payloads) - 1, "events after [DONE]", f"{payloads[-1][:200]!r}")
            continue
        try:
            event = load_json(payload)
        except ValueError:
            raise Problem("stream event not JSON", f"{payload[:200]!r}") from None
        require(isinstance(event, dict), "stream event not an object", f"{payload[:200]!r}")
        if "error" in event:
            check_error(event, 200)
            require(i == len(payloads) - 1, "events after an error", f"{payload[:200]!r}")
    require(payloads[-1] == b"[DONE]" or b'"error"' in payloads[-1], "stream unfinished",
            f"last event {payloads[-1][:200]!r}")


@pytest.fixture(scope="module")
def gateway(sim, tmp_path_factory, request):
    # The circuit never opens: a request the backend fails (a fault found) must not turn
    # the next ones into 503s, so that every example is reproducible when shrunk.
    server = launch_gateway(tmp_path_factory.mktemp("properties"), gateway_yaml(
        [sim], server=(f"max_body_bytes: {MAX_BODY}",),
        extra="resilience: {breaker_failures: 1000000}\n"))
    try:
        admin, admin_record = provision(server.storage, email="admin@example.com",
                                        role="admin")
        _, own_record = provision(server.storage)  # more keys of the user: to revoke
        _, own2_record = provision(server.storage)
        revoked, revoked_record = provision(server.storage)
        _, victim_record = provision(server.storage, email="victim@example.com")
        _, victim2_record = provision(server.storage, email="victim@example.com")
        gw = Gateway(server, {"user": server.key.encode(), "admin": admin.encode(),
                              "revoked": revoked.encode()}, {
            "user_key_id": server.key_id, "admin_key_id": admin_record["id"],
            "user_id": own_record["user_id"], "admin_user": admin_record["user_id"],
            "victim_user": victim_record["user_id"], "victim_key": victim_record["id"],
            "victim_key2": victim2_record["id"], "own_key": own_record["id"],
            "own_key2": own2_record["id"]})
        status, _ = gw.admin_json("DELETE", f"/v1/admin/keys/{revoked_record['id']}")
        assert status == 200
        status, listing = gw.admin_json("GET", "/v1/admin/backends")
        assert status == 200 and len(listing["data"]) == 1, listing
        gw.ids["backend"] = listing["data"][0]["name"]
        assert gw.initial_workers, "no gunicorn worker found under the master"
        yield gw
    finally:
        log = server.output()
        server.stop()
        report(request.config, log)


def report(config, gateway_log: str) -> None:
    """Print the figures (past pytest's capture) and write them to the report file."""
    summary = TALLY.summary()
    unhandled = Counter(re.findall(
        r"unhandled error on (\S+ \S+)[\s\S]*?^(\w+(?:Error|Exception)[^\n]{0,100})",
        gateway_log, re.MULTILINE))
    summary["gateway_unhandled"] = [f"{where}: {what} x{n}"
                                    for (where, what), n in unhandled.most_common(25)]
    if os.environ.get("INFEREGATOR_PROPERTY_REPORT"):
        with open(os.environ["INFEREGATOR_PROPERTY_REPORT"], "w") as f:
            json.dump(summary, f, indent=2)
    lines = [f"property tests: {summary['cases_total']} cases ({BUDGET} examples budgeted); "
             f"answers {summary['answers']}", f"  statuses {summary['statuses']}",
             f"  cases per test {summary['cases']}",
             *(f"  fault {line}" for line in summary["faults"]),
             *(f"  gateway log {line}" for line in summary["gateway_unhandled"])]
    capture = config.pluginmanager.get_plugin("capturemanager")
    terminal = config.pluginmanager.get_plugin("terminalreporter")
    if capture is not None and terminal is not None:
        with capture.global_and_fixture_disabled():
            terminal.write_line("")
            for line in lines:
                terminal.write_line(line)


# -- the properties -----------------------------------------------------------------------

@budget("generation_json")
@given(call=generation_calls(raw=False))
def test_generation_json_bodies_get_openai_answers(gateway, call):
    gateway.call("generation_json", call)


@budget("generation_raw")
@given(call=generation_calls(raw=True))
def test_generation_raw_bodies_get_openai_answers(gateway, call):
    gateway.call("generation_raw", call)


@budget("models")
@given(call=calls("models", AS_USER))
def test_models_routes_get_openai_answers(gateway, call):
    gateway.call("models", call)


@budget("admin_users")
@given(call=calls("admin_users", AS_ADMIN))
def test_admin_users_api_gets_openai_answers(gateway, call):
    gateway.call("admin_users", call)


@budget("admin_keys")
@given(call=calls("admin_keys", AS_ADMIN))
def test_admin_keys_api_gets_openai_answers(gateway, call):
    gateway.call("admin_keys", call)


@budget("admin_backends")
@given(call=calls("admin_backends", AS_ADMIN))
def test_admin_backends_api_gets_openai_answers(gateway, call):
    answer = gateway.call("admin_backends", call)
    if answer.status == 200 and call.path[0].endswith("/drain"):
        # Put the backend back at once, so that generation keeps reaching it.
        status, undrained = gateway.admin_json("POST", "/v1/admin/backends/undrain",
                                               {"backend": gateway.ids["backend"]})
        assert status == 200 and not undrained["data"][0]["drained"], undrained


@budget("self_service")
@given(call=calls("self_service", AS_USER))
def test_self_service_api_gets_openai_answers(gateway, call):
    gateway.call("self_service", call)


@budget("any_route")
@given(call=calls("any_route", AUTH))
def test_every_route_and_method_gets_openai_answers(gateway, call):
    if call.method == "POST" and call.path[0] == "/v1/admin/backends/drain":
        call = replace(call, path=("/v1/admin/backends/undrain",))  # drains: the test above
    gateway.call("any_route", call)


# -- afterwards (file order: these run last) ----------------------------------------------

def basic_generations(gateway) -> None:
    """A few plain generation requests, so that the checks below never pass vacuously."""
    for path, body in ((GENERATION[0], {"model": MODEL, "max_tokens": 4,
                                        "messages": [{"role": "user", "content": "hi"}]}),
                       (GENERATION[1], {"model": MODEL, "prompt": "hi", "max_tokens": 4,
                                        "stream": True}),
                       (GENERATION[1], {"model": MODEL, "prompt": 7}),
                       (GENERATION[0], {"model": "no/such-model", "messages": []})):
        for auth in (("user", b""), ("admin", b""), ("none", b"")):
            answer = gateway.call("afterwards", Call("POST", (path,), Body(body), auth, b"prop"))
            # The run must not have locked itself out (revoked or disabled our keys).
            assert auth[0] == "none" or answer.status != 401, (auth, answer)


def test_no_gunicorn_worker_died_during_the_run(gateway):
    basic_generations(gateway)
    assert gateway.server.proc.poll() is None, "the gunicorn master exited"
    assert workers(gateway.master) == gateway.initial_workers, (
        f"workers before {sorted(gateway.initial_workers)}, "
        f"after {sorted(workers(gateway.master))}")


def test_no_request_left_in_flight(gateway):
    basic_generations(gateway)

    def in_flight():
        status, listing = gateway.admin_json("GET", "/v1/admin/backends")
        assert status == 200, listing
        counts = {b["name"]: b["in_flight"] for b in listing["data"]}
        assert counts and all(isinstance(n, int) for n in counts.values()), listing
        return counts

    try:  # streams may still be closing: poll the real count briefly
        wait_until(lambda: not any(in_flight().values()), timeout=10, interval=0.05)
    except TimeoutError:
        pass
    assert not any(in_flight().values()), f"in flight after the run: {in_flight()}"


def test_ledger_has_one_row_per_authenticated_generation_request(gateway):
    basic_generations(gateway)
    server = gateway.server
    server.proc.send_signal(signal.SIGTERM)  # graceful: the ledger writes what it holds
    assert server.proc.wait(timeout=60) == 0, server.output()[-3000:]
    with sqlite3.connect(server.storage[len("sqlite:///"):]) as db:
        rows = Counter(r for (r,) in db.execute(
            "SELECT request_id FROM usage_ledger WHERE request_id LIKE 'prop-%'"))
    unknown = {r for r, s in TALLY.sent.items() if s.authenticated is None}
    expected = {r for r, s in TALLY.sent.items() if s.authenticated}
    twice = {r for r, n in rows.items() if n > 1}
    missing = expected - set(rows)
    extra = set(rows) - expected - unknown
    problems = [f"{len(expected)} authenticated generation requests, {sum(rows.values())} "
                f"ledger rows: missing {len(missing)}, twice or more {len(twice)}, "
                f"for requests not authenticated {len(extra)}"]
    for title, group in (("missing", missing), ("twice", twice), ("not billable", extra)):
        kinds: dict = {}
        for r in group:
            sent = TALLY.sent[r]
            kinds.setdefault((sent.path, sent.status, sent.auth), []).append(sent.body)
        for (path, status, auth), sample in sorted(kinds.items(), key=lambda kv: -len(kv[1])):
            problems.append(f"  {title}: {len(sample)} x POST {path} -> {status} ({auth}), "
                            f"e.g. {min(sample, key=len)[:120]!r}")
    problems += [f"  gateway log: {m.group(0)[:400]}" for m in re.finditer(
        r"ledger[^\n]*(?:failed|could not)[^\n]*(?:\n[ \tT][^\n]*)*(?:\n[^\n]*)?",
        server.output())][:2]
    assert not (missing or twice or extra), "\n".join(problems[:25])
