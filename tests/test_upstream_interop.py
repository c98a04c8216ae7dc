"""Interop with strict OpenAI-compatible servers, through real gateways and real backends.

- The X-Request-ID sent upstream is always a UUID (llama-cpp-python's server answers 400
  with an empty body to any other), while the client and the ledger keep the client's id.
- An upstream error answer with an empty or non-JSON body reaches the SDK as a 502
  ``upstream_error`` naming the backend's status, not as a 400 blamed on the client, and
  another backend is tried; a JSON 400 still passes through as the client's 400.
- A stream from an ``openai`` backend cut short without a usage chunk is billed what was
  relayed (one completion token per content event), not zero.

The backends are tests/support/hostile_backend.py processes (modes echo_request_id,
empty_400, html_400, cut_short), behind ``openai`` and ``sglang`` backend types.
"""

import json
import uuid

import openai
import pytest
import requests

from inferegator.backends.base import upstream_request_id
from inferegator.gateway.relay import SSERelay
from inferegator.outcome import Usage
from inferegator.store.store import Store
from tests.gateway_fixtures import MODEL, gateway_yaml, sdk
from tests.support.hostile_backend import HostileBackend
from tests.support.processes import wait_until

MESSAGES = [{"role": "user", "content": "Say something."}]


@pytest.fixture
def start_hostile():
    started = []

    def start(mode="ok"):
        server = HostileBackend(mode)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def config(backend_type, primaries, fallbacks=()):
    """gateway_yaml's config with each backend of the given type (openai: url ends in /v1)."""
    text = gateway_yaml(primaries, fallbacks=fallbacks)
    if backend_type == "openai":
        for server in (*primaries, *fallbacks):
            text = text.replace(f"type: sglang, url: '{server.url}'",
                                f"type: openai, url: '{server.url}/v1'")
    return text


def ledger_row(gateway, request_id, timeout=10.0):
    store = Store(gateway.storage)
    try:
        return wait_until(lambda: store.db.query(
            "SELECT * FROM usage_ledger WHERE request_id = ?", (request_id,)),
            timeout=timeout, interval=0.05)[0]
    finally:
        store.db.close()


def is_canonical_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


@pytest.mark.parametrize("backend_type", ["openai", "sglang"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_the_upstream_sees_a_uuid_request_id(start_hostile, start_gateway, backend_type,
                                             stream):
    hostile = start_hostile("echo_request_id")
    gateway = start_gateway(config(backend_type, [hostile]))
    client = sdk(gateway)

    def ask(client_id=None):
        headers = {"X-Request-ID": client_id} if client_id else None
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES, max_tokens=4, stream=stream,
            extra_headers=headers)
        if stream:
            seen = "".join(chunk.choices[0].delta.content or "" for chunk in raw.parse()
                           if chunk.choices)
        else:
            seen = raw.parse().choices[0].message.content
        return raw.headers["x-request-id"], seen

    # The gateway's own id: the upstream gets the same digits as a UUID.
    own, upstream = ask()
    assert is_canonical_uuid(upstream), upstream
    assert uuid.UUID(upstream).hex == own.removeprefix("req-")
    assert upstream == upstream_request_id(own)

    # A client's id that is not a UUID: kept for the client and the ledger, a UUID upstream
    # (derived from it, so the same on every attempt and recomputable).
    mine = "trace.42:abc-" + uuid.uuid4().hex[:8]
    echoed, upstream = ask(mine)
    assert echoed == mine
    assert is_canonical_uuid(upstream) and upstream == upstream_request_id(mine)
    assert uuid.UUID(upstream).version == 4
    assert ledger_row(gateway, mine)["status"] == "completed"

    # A client's own UUID goes upstream as it is.
    theirs = str(uuid.uuid4())
    assert ask(theirs) == (theirs, theirs)


@pytest.mark.parametrize("mode,what", [("empty_400", "an empty body"),
                                       ("html_400", "a body that is not JSON")])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_a_400_without_a_json_body_is_the_backends_fault(start_hostile, start_gateway, mode,
                                                         what, stream):
    hostile = start_hostile(mode)
    gateway = start_gateway(config("openai", [hostile]))
    with pytest.raises(openai.APIStatusError) as caught:
        answer = sdk(gateway).chat.completions.create(model=MODEL, messages=MESSAGES,
                                                      max_tokens=4, stream=stream)
        if stream:
            list(answer)
    error = caught.value
    assert error.status_code == 502, (error.status_code, error.body)
    assert isinstance(error, openai.InternalServerError)
    assert error.code == "upstream_error"
    assert error.body["type"] == "server_error"
    assert "HTTP 400" in error.message and what in error.message, error.message
    request_id = error.response.headers["x-request-id"]
    row = ledger_row(gateway, request_id)
    assert row["status"] == "failed" and row["http_status"] == 502


def test_a_400_without_a_json_body_fails_over_and_counts_against_the_backend(
        start_hostile, start_gateway):
    broken, good = start_hostile("empty_400"), start_hostile("ok")
    gateway = start_gateway(config("openai", [broken], fallbacks=[good]))
    answer = sdk(gateway).chat.completions.create(model=MODEL, messages=MESSAGES,
                                                  max_tokens=4)
    assert answer.choices[0].message.content == "ok"
    assert broken.stats()["served"] == {"empty_400": 1}
    assert good.stats()["served"] == {"ok": 1}


def test_a_json_400_from_the_backend_is_still_the_clients(start_hostile, start_gateway):
    hostile = start_hostile("ok")
    gateway = start_gateway(config("openai", [hostile]))
    with pytest.raises(openai.BadRequestError) as caught:  # the hostile server's JSON 400
        sdk(gateway).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4,
                                             extra_body={"hostile_mode": "no-such-mode"})
    assert caught.value.status_code == 400
    assert "unknown mode" in caught.value.message


@pytest.mark.parametrize("endpoint", ["chat", "completions"])
def test_a_stream_cut_short_is_billed_what_was_relayed(start_hostile, start_gateway, endpoint):
    hostile = start_hostile("cut_short")
    gateway = start_gateway(config("openai", [hostile]))
    client = sdk(gateway)
    relayed = []
    with pytest.raises(openai.APIError):
        if endpoint == "chat":
            chunks = client.chat.completions.with_raw_response.create(
                model=MODEL, messages=MESSAGES, max_tokens=16, stream=True)
            request_id = chunks.headers["x-request-id"]
            for chunk in chunks.parse():
                if chunk.choices and chunk.choices[0].delta.content:
                    relayed.append(chunk.choices[0].delta.content)
        else:
            chunks = client.completions.with_raw_response.create(
                model=MODEL, prompt="Say something.", max_tokens=16, stream=True)
            request_id = chunks.headers["x-request-id"]
            for chunk in chunks.parse():
                if chunk.choices and chunk.choices[0].text:
                    relayed.append(chunk.choices[0].text)
    assert relayed == ["a", "b", "c"]
    row = ledger_row(gateway, request_id)
    assert row["status"] == "upstream_failed"
    assert row["completion_tokens"] == 3  # one per content event relayed
    assert row["cost_usd"] > 0


def test_a_stream_with_a_usage_chunk_is_billed_the_backends_usage(start_hostile,
                                                                 start_gateway):
    """The control case: the estimate is only for streams that bring no usage at all."""
    hostile = start_hostile("echo_request_id")
    gateway = start_gateway(config("openai", [hostile]))
    with requests.post(gateway.url + "/v1/chat/completions", stream=True, timeout=10,
                       headers={"Authorization": f"Bearer {gateway.key}"},
                       json={"model": MODEL, "messages": MESSAGES, "stream": True}) as resp:
        assert resp.status_code == 200
        body = resp.content
        request_id = resp.headers["x-request-id"]
    assert body.endswith(b"data: [DONE]\n\n")
    row = ledger_row(gateway, request_id)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (3, 1)  # the backend's usage


def _chunk(delta: dict) -> bytes:
    return b"data: " + json.dumps({"id": "x", "object": "chat.completion.chunk", "model": "m",
                                   "choices": [{"index": 0, "delta": delta}]}).encode() + b"\n\n"


def test_the_relay_estimates_usage_only_when_none_came():
    """A stream that ends properly without a usage chunk (llama-cpp-python's server sends
    none) is billed the prompt estimate and one token per event that carried output."""
    relay = SSERelay("m", "m", include_usage=False, prompt_estimate=7)
    events = [_chunk({"role": "assistant", "content": ""}), _chunk({"content": "Hel"}),
              _chunk({"content": "lo"}), _chunk({"reasoning_content": "hm"}),
              _chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}),
              _chunk({"content": None}), b"data: [DONE]\n\n"]
    for event in events:
        relay.feed(event)
    assert relay.done and relay.usage == Usage(7, 4)

    reported = SSERelay("m", "m", include_usage=False, prompt_estimate=7)
    reported.feed(_chunk({"content": "Hi"}))
    reported.feed(b'data: {"id":"x","choices":[],"usage":{"prompt_tokens":5,'
                  b'"completion_tokens":9,"total_tokens":14}}\n\n')
    assert reported.usage == Usage(5, 9)

    broken = SSERelay("m", "m", include_usage=False, prompt_estimate=7)
    broken.feed(_chunk({"content": "Hi"}))
    broken.feed(b'data: {"id":"x","choices":[],"usage":{"prompt_tokens":"many",'
                b'"completion_tokens":null}}\n\n')
    assert broken.usage is None  # a broken usage object is not billed as if it were tokens
