"""The access log of a real `inferegator serve`: one JSON line per API request (standard
output is not a terminal here), matching what the client saw and never holding the key;
the text form when asked; nothing when off."""

import json
import re

import openai
import pytest
import requests

from inferegator.store.store import Store
from tests.gateway_fixtures import MODEL, gateway_yaml, sdk
from tests.support.processes import wait_until

MESSAGES = [{"role": "user", "content": "hello"}]


def log_lines(gateway, count):
    """The gateway's JSON access-log lines, once there are ``count`` of them."""
    def lines():
        found = [json.loads(line) for line in gateway.output().splitlines()
                 if line.startswith("{")]
        return found if len(found) >= count else None
    return wait_until(lines, timeout=10)


def owner_of(gateway) -> str:
    """The user id of the gateway's test key, from its store."""
    store = Store(gateway.storage)
    try:
        return next(k["user_id"] for k in store.accounts.list_keys()
                    if k["id"] == gateway.key_id)
    finally:
        store.db.close()


def by_request_id(lines):
    return {line["request_id"]: line for line in lines}


def test_json_lines_parse_match_the_requests_and_never_hold_the_key(start_sim,
                                                                     start_gateway):
    sim = start_sim("--instant")
    gateway = start_gateway(gateway_yaml([sim]))
    client = sdk(gateway)
    answer = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=3, extra_headers={"X-Request-ID": "req-one"})
    usage = answer.parse().usage
    stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4,
                                            stream=True, stream_options={"include_usage": True})
    streamed = [chunk.usage for chunk in stream if chunk.usage is not None][-1]
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="acme/nope", messages=MESSAGES)
    refused = requests.post(gateway.url + "/v1/chat/completions",
                            headers={"Authorization": "Bearer sk-inf-not-a-real-key"},
                            json={"model": MODEL, "messages": MESSAGES}, timeout=5)
    assert refused.status_code == 401

    lines = by_request_id(log_lines(gateway, 4))
    assert len(lines) == 4
    one = lines[answer.headers["X-Request-ID"]]
    assert answer.headers["X-Request-ID"] == "req-one"
    assert (one["method"], one["path"], one["endpoint"]) == ("POST", "/v1/chat/completions",
                                                             "chat")
    assert (one["model"], one["backend"], one["attempts"]) == (MODEL, f"sglang:{sim.url}", 1)
    assert (one["status"], one["http_status"], one["stream"]) == ("completed", 200, False)
    assert (one["prompt_tokens"], one["completion_tokens"], one["cached_tokens"]) == (
        usage.prompt_tokens, usage.completion_tokens, 0)
    # The model's prices are 1.0 and 2.0 USD per million prompt and completion tokens.
    assert one["cost_usd"] == pytest.approx((usage.prompt_tokens
                                             + 2 * usage.completion_tokens) / 1e6)
    assert (one["key_id"], one["client"], one["error"]) == (gateway.key_id, "127.0.0.1", None)
    assert one["user_id"] == owner_of(gateway)
    assert one["latency_ms"] > 0 and one["ttft_ms"] is None
    assert one["ts"].endswith("Z") and len(one["ts"]) == len("2026-01-31T12:00:00.123Z")
    # Each request has a trace of its own, those refused before any backend included.
    assert all(re.fullmatch("[0-9a-f]{32}", line["trace_id"]) for line in lines.values())
    assert len({line["trace_id"] for line in lines.values()}) == 4

    streamed_line = lines[stream.response.headers["X-Request-ID"]]
    assert streamed_line["stream"] is True
    assert (streamed_line["prompt_tokens"], streamed_line["completion_tokens"]) == (
        streamed.prompt_tokens, streamed.completion_tokens)
    assert 0 < streamed_line["ttft_ms"] <= streamed_line["latency_ms"]

    not_found = lines[missing.value.response.headers["X-Request-ID"]]
    assert (not_found["status"], not_found["http_status"], not_found["model"]) == (
        "rejected", 404, "acme/nope")
    assert (not_found["error_code"], not_found["backend"], not_found["attempts"]) == (
        "model_not_found", None, 0)
    assert "acme/nope" in not_found["error"] and not_found["key_id"] == gateway.key_id

    unknown = lines[refused.headers["X-Request-ID"]]
    assert (unknown["http_status"], unknown["key_id"], unknown["user_id"]) == (401, None, None)

    output = gateway.output()
    assert gateway.key not in output and gateway.key[len("sk-inf-"):] not in output
    assert "sk-inf-not-a-real-key" not in output


def test_text_lines_for_people(start_sim, start_gateway):
    sim = start_sim("--instant")
    gateway = start_gateway(gateway_yaml([sim], extra="access_log: {format: text}\n"))
    answer = sdk(gateway).chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=2)
    usage = answer.parse().usage
    request_id = answer.headers["X-Request-ID"]

    def line():
        return next((x for x in gateway.output().splitlines() if request_id in x), None)
    text = wait_until(line, timeout=10)
    assert f'127.0.0.1 "POST /v1/chat/completions" 200 {MODEL} via sglang:{sim.url} ' in text
    assert f" ms tokens {usage.prompt_tokens}+{usage.completion_tokens} " in text
    assert f"key {gateway.key_id} user {owner_of(gateway)} " in text
    assert not any(x.startswith("{") for x in gateway.output().splitlines())


def test_off_writes_nothing(start_sim, start_gateway):
    sim = start_sim("--instant")
    gateway = start_gateway(gateway_yaml([sim], extra="access_log: {format: 'off'}\n"))
    request_id = sdk(gateway).chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=2).headers["X-Request-ID"]
    assert sim.metric("num_requests_total") == 1  # it was served...
    assert request_id not in gateway.output()  # ...and not logged
