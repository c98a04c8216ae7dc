"""/v1/responses through a real gateway in front of real simulators.

JSON and the typed SSE stream reach the openai SDK unchanged apart from the public
model id; usage is metered from ``response.completed`` (and, for a stream cut short,
from what was relayed); limits and failover apply as for chat; answers and events
validate against OpenAI's schema.
"""

import json

import openai
import pytest
import requests

from tests.gateway_fixtures import (
    MODEL,
    SIM_CAPABILITIES,
    gateway_yaml,
    launch_gateway,
    provision,
    sdk,
)
from tests.support.processes import Simulator
from tests.test_gateway_openapi import assert_valid, validator_for  # noqa: F401
from tests.test_upstream_interop import ledger_row

CONTEXT = 4096


def responses_yaml(sims, fallbacks=()):
    return gateway_yaml(sims, fallbacks=fallbacks,
                        capabilities=SIM_CAPABILITIES + ("responses",),
                        model_extra=[f"context_length: {CONTEXT}"])


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    sim = Simulator("--instant")
    server = launch_gateway(tmp_path_factory.mktemp("gw"), responses_yaml([sim]))
    yield server
    server.stop()
    sim.stop()


def sse_events(resp) -> list[tuple[str | None, dict]]:
    """(event name, data) of each event of a raw SSE answer."""
    events = []
    for block in resp.content.decode().split("\n\n"):
        name, data = None, None
        for line in block.splitlines():
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:") and line[5:].strip() != "[DONE]":
                data = json.loads(line[5:])
        if data is not None:
            events.append((name, data))
    return events


def test_the_sdk_gets_a_response_with_the_public_model_and_usage_in_the_ledger(gateway):
    raw = sdk(gateway).responses.with_raw_response.create(
        model=MODEL, input="Say something short.", max_output_tokens=24)
    answer = raw.parse()
    assert answer.object == "response" and answer.model == MODEL
    assert answer.output_text
    assert answer.usage.input_tokens > 0 and 0 < answer.usage.output_tokens <= 24
    row = ledger_row(gateway, raw.headers["x-request-id"])
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        answer.usage.input_tokens, answer.usage.output_tokens)
    assert row["status"] == "completed" and row["cost_usd"] > 0


def test_input_items_and_instructions_are_accepted(gateway):
    answer = sdk(gateway).responses.create(
        model=MODEL, instructions="Be brief.", max_output_tokens=16,
        input=[{"role": "user", "content": "Hello there."},
               {"role": "assistant", "content": "Hi."},
               {"role": "user", "content": [{"type": "input_text", "text": "And now?"}]}])
    assert answer.status in ("completed", "incomplete") and answer.output_text


def test_the_stream_reaches_the_sdk_as_its_typed_events(gateway):
    client = sdk(gateway)
    stream = client.responses.with_raw_response.create(
        model=MODEL, input="Stream to me.", max_output_tokens=32, stream=True)
    request_id = stream.headers["x-request-id"]
    events = list(stream.parse())
    types = [e.type for e in events]
    # SGLang ends "incomplete" when max_output_tokens cut the answer, else "completed".
    assert types[0] == "response.created"
    assert types[-1] in ("response.completed", "response.incomplete")
    assert "response.output_text.delta" in types
    assert events[0].response.model == MODEL and events[-1].response.model == MODEL
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    completed = events[-1].response
    assert text == completed.output_text
    row = ledger_row(gateway, request_id)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        completed.usage.input_tokens, completed.usage.output_tokens)


def test_json_and_every_stream_event_validate_against_openais_schema(
        gateway, validator_for):  # noqa: F811
    headers = {"Authorization": f"Bearer {gateway.key}"}
    resp = requests.post(gateway.url + "/v1/responses", headers=headers, timeout=10,
                         json={"model": MODEL, "input": "Validate.", "max_output_tokens": 16})
    assert resp.status_code == 200
    assert_valid(validator_for("Response"), resp.json())
    resp = requests.post(gateway.url + "/v1/responses", headers=headers, timeout=10,
                         json={"model": MODEL, "input": "Validate the stream.",
                               "max_output_tokens": 16, "stream": True})
    assert resp.status_code == 200
    assert resp.headers["content-type"].startswith("text/event-stream")
    events = sse_events(resp)
    assert len(events) >= 5
    stream_event = validator_for("ResponseStreamEvent")
    for name, data in events:
        assert name is None or name == data["type"]
        assert_valid(stream_event, data)


def test_output_over_the_context_is_refused_before_admission(gateway):
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(gateway).responses.create(model=MODEL, input="hi", max_output_tokens=CONTEXT + 1)
    assert caught.value.code == "context_length_exceeded"
    assert caught.value.param == "max_output_tokens"


@pytest.mark.parametrize("body, param, code", [
    ({"model": MODEL}, "input", "missing_required_parameter"),
    ({"model": MODEL, "input": 7}, "input", "invalid_type"),
    ({"model": MODEL, "input": ["not an item"]}, "input[0]", "invalid_type"),
    ({"model": MODEL, "input": "x", "max_output_tokens": 0}, "max_output_tokens",
     "invalid_value"),
    ({"model": MODEL, "input": "x", "instructions": 3}, "instructions", "invalid_type"),
])
def test_bad_input_gets_the_gateways_400_naming_the_field(gateway, body, param, code):
    resp = requests.post(gateway.url + "/v1/responses", json=body, timeout=10,
                         headers={"Authorization": f"Bearer {gateway.key}"})
    assert resp.status_code == 400
    assert (resp.json()["error"]["param"], resp.json()["error"]["code"]) == (param, code)


def test_a_stream_cut_short_is_billed_what_was_relayed(tmp_path):
    sim = Simulator("--instant", "--fault-drop-rate", "1.0", "--output-tokens-min", "40",
                    "--output-tokens-max", "40")
    gateway = launch_gateway(tmp_path, responses_yaml([sim]))
    try:
        stream = sdk(gateway).responses.with_raw_response.create(
            model=MODEL, input="Cut me short.", max_output_tokens=64, stream=True)
        request_id = stream.headers["x-request-id"]
        events = list(stream.parse())
        deltas = [e for e in events if e.type == "response.output_text.delta"]
        assert deltas and events[-1].type == "error"
        assert events[-1].code == "upstream_error"
        assert events[-1].sequence_number == len(events) - 1
        row = ledger_row(gateway, request_id)
        assert row["status"] == "upstream_failed"
        assert row["completion_tokens"] == len(deltas)
        assert row["prompt_tokens"] > 0 and row["cost_usd"] > 0
    finally:
        gateway.stop()
        sim.stop()


def test_a_failing_backend_is_failed_over_before_the_first_byte(tmp_path):
    failing = Simulator("--instant", "--fault-503-rate", "1.0")
    healthy = Simulator("--instant")
    gateway = launch_gateway(tmp_path, responses_yaml([failing], fallbacks=[healthy]))
    try:
        client = sdk(gateway)
        for stream in (False, True):
            answer = client.responses.create(model=MODEL, input="Fail over.",
                                             max_output_tokens=16, stream=stream)
            if stream:
                answer = [e for e in answer][-1].response
            assert answer.status == "completed" or answer.status == "incomplete"
            assert answer.output_text
    finally:
        gateway.stop()
        failing.stop()
        healthy.stop()


def test_the_keys_limits_apply(gateway):
    """One request per minute: the second is refused with the SDK's RateLimitError, and
    the reservation counted max_output_tokens."""
    key, _ = provision(gateway.storage, "one-a-minute@example.com", requests_per_minute=1)
    client = sdk(gateway, key=key)
    first = client.responses.with_raw_response.create(model=MODEL, input="Once.",
                                                      max_output_tokens=100)
    assert int(first.headers["x-ratelimit-remaining-requests"]) == 0
    assert int(first.headers["x-ratelimit-limit-tokens"]) - int(
        first.headers["x-ratelimit-remaining-tokens"]) >= 100
    with pytest.raises(openai.RateLimitError) as caught:
        client.responses.create(model=MODEL, input="Twice.", max_output_tokens=16)
    assert caught.value.code == "rate_limit_exceeded"
