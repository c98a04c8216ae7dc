"""/v1/responses of a generation simulator, held to SGLang 0.5.23's protocol (stateless).

The openai SDK reads the JSON answer and the typed event stream; the raw stream is
``event: <type>`` / ``data: <json>`` blocks numbered by sequence_number, without [DONE];
max_output_tokens, refusals, faults, disconnects and aborts behave as SGLang's do; the
shapes validate against OpenAI's schema apart from SGLang's two documented deviations.
"""

import copy
import json
import socket

import openai
import pytest
import requests

from inferegator.simulator.tokenizer import encode, render_chat, tokenize
from tests.support.processes import wait_until
from tests.test_gateway_openapi import assert_valid, validator_for  # noqa: F401

MODEL = "sim-model"
STORE_DISABLED = ("Response store is disabled. Stateful Responses require "
                  "--enable-response-store on a standalone server; response storage is "
                  "unavailable in PD mode.")
STREAM_ORDER = ["response.created", "response.in_progress", "response.output_item.added",
                "response.content_part.added"]
CLOSING = ["response.output_text.done", "response.content_part.done",
           "response.output_item.done"]


def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def post(server, body, **kw):
    return requests.post(server.url + "/v1/responses", json=body, timeout=10, **kw)


def raw_events(text: str) -> list[tuple[str, dict]]:
    """(event name, data) of each block; asserts every block is exactly event + data."""
    blocks = text.split("\n\n")
    assert blocks[-1] == ""
    events = []
    for block in blocks[:-1]:
        name_line, data_line = block.split("\n")
        assert name_line.startswith("event: ") and data_line.startswith("data: ")
        events.append((name_line[len("event: "):], json.loads(data_line[len("data: "):])))
    return events


def prompt_tokens(messages) -> int:
    return len(encode(render_chat(messages)))


def test_sdk_json_answer_honours_max_output_tokens(sim):
    answer = client(sim).responses.create(model=MODEL, input="Say something.",
                                          max_output_tokens=12)
    assert answer.id.startswith("resp_") and answer.object == "response"
    assert answer.model == MODEL
    (message,) = answer.output
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_") and message.status == "completed"
    (part,) = message.content
    assert part.type == "output_text" and part.annotations == []
    # SGLang asks for max_output_tokens - 2; answers are 16+ tokens, so this one is cut.
    assert answer.status == "incomplete"
    assert answer.incomplete_details.reason == "max_output_tokens"
    usage = answer.usage
    assert usage.output_tokens == 10 == len(tokenize(answer.output_text))
    assert usage.input_tokens == prompt_tokens([{"role": "user", "content": "Say something."}])
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 0
    assert usage.output_tokens_details.reasoning_tokens == 0


def test_an_answer_that_ends_by_itself_is_completed(sim):
    answer = client(sim).responses.create(model=MODEL, input="Say something.")
    assert answer.status == "completed" and answer.incomplete_details is None
    assert 16 <= answer.usage.output_tokens <= 96
    assert answer.max_output_tokens is None


def test_the_json_answer_has_sglangs_fields_and_echoes(sim):
    tools = [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]
    body = post(sim, {"model": MODEL, "input": "hi", "max_output_tokens": 40,
                      "metadata": {"k": "v"}, "user": "u-1", "temperature": 0.3,
                      "tools": tools, "store": False,
                      "reasoning": {"effort": "low"}}).json()
    assert list(body) == [
        "id", "object", "created_at", "model", "output", "status", "usage",
        "parallel_tool_calls", "tool_choice", "tools", "error", "incomplete_details",
        "instructions", "max_output_tokens", "previous_response_id", "reasoning", "store",
        "temperature", "text", "top_p", "truncation", "user", "metadata"]
    assert (body["metadata"], body["user"], body["temperature"]) == ({"k": "v"}, "u-1", 0.3)
    assert body["tools"][0]["name"] == "lookup" and body["tool_choice"] == "auto"
    assert body["store"] is False and body["reasoning"] == {"effort": "low", "summary": None}
    assert body["text"] == {"format": {"type": "text"}}
    assert body["usage"]["input_tokens_details"] == {"cached_tokens": 0,
                                                     "cache_write_tokens": 0}


def test_input_items_and_instructions_become_the_chat_prompt(sim):
    answer = client(sim).responses.create(
        model=MODEL, instructions="Be brief.", max_output_tokens=8,
        input=[{"role": "developer", "content": "Use short words."},
               {"role": "user", "content": "Hello there."},
               {"role": "assistant", "content": "Hi."},
               {"type": "message", "role": "user",
                "content": [{"type": "input_text", "text": "And now?"}]}])
    # instructions and developer messages coalesce into one leading system message
    assert answer.usage.input_tokens == prompt_tokens([
        {"role": "system", "content": "Be brief.\n\nUse short words."},
        {"role": "user", "content": "Hello there."},
        {"role": "assistant", "content": "Hi."},
        {"role": "user", "content": "And now?"}])


@pytest.mark.parametrize("limit, final", [(12, "response.incomplete"),
                                          (400, "response.completed")])
def test_sdk_stream_events_in_sglangs_order(sim, limit, final):
    events = list(client(sim).responses.create(model=MODEL, input="Stream to me.",
                                               max_output_tokens=limit, stream=True))
    types = [e.type for e in events]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert types == STREAM_ORDER + ["response.output_text.delta"] * len(deltas) + CLOSING \
        + [final]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    text = "".join(e.delta for e in deltas)
    assert events[-4].text == text == events[-2].item.content[0].text
    finished = events[-1].response
    assert finished.output_text == text and finished.model == MODEL
    assert finished.usage.output_tokens == len(deltas) == len(tokenize(text))
    assert finished.usage.input_tokens == prompt_tokens([{"role": "user",
                                                          "content": "Stream to me."}])
    assert events[0].response.status == "in_progress" and events[0].response.usage is None
    item_ids = {e.item_id for e in deltas} | {events[2].item.id}
    assert len(item_ids) == 1 and item_ids.pop().startswith("msg_")


def test_the_raw_stream_is_event_and_data_blocks_without_done(sim):
    resp = post(sim, {"model": MODEL, "input": "Raw.", "max_output_tokens": 8,
                      "stream": True}, stream=True)
    assert resp.headers["content-type"].startswith("text/event-stream")
    text = resp.content.decode()
    assert "[DONE]" not in text
    events = raw_events(text)
    assert all(name == data["type"] for name, data in events)
    assert list(events[0][1]) == ["type", "response", "sequence_number"]
    usage = events[-1][1]["response"]["usage"]
    assert list(usage) == ["input_tokens", "input_tokens_details", "output_tokens",
                           "output_tokens_details", "total_tokens"]
    assert usage["output_tokens"] == 6


def openai_view(obj):
    """obj with SGLang's departures from OpenAI's schema undone, after checking them:
    output_text parts carry ``"logprobs": null``; a Response has ``"user": null``, and
    ``"usage": null`` and ``"text": null`` while in progress (no output yet)."""
    obj = copy.deepcopy(obj)

    def fix(node):
        if isinstance(node, dict):
            if node.get("type") == "output_text" and "text" in node:
                assert node["logprobs"] is None
                node["logprobs"] = []
            if node.get("object") == "response":
                assert node["user"] is None
                del node["user"]
                for name in ("usage", "text"):
                    if node[name] is None:
                        assert not node["output"]
                        del node[name]
            for value in node.values():
                fix(value)
        elif isinstance(node, list):
            for value in node:
                fix(value)

    fix(obj)
    return obj


def test_json_and_stream_validate_against_openais_schema(sim, validator_for):  # noqa: F811
    body = post(sim, {"model": MODEL, "input": "Validate.", "max_output_tokens": 16}).json()
    assert_valid(validator_for("Response"), openai_view(body))
    text = post(sim, {"model": MODEL, "input": "Validate the stream.",
                      "max_output_tokens": 16, "stream": True}).content.decode()
    validator = validator_for("ResponseStreamEvent")
    events = raw_events(text)
    assert len(events) > len(STREAM_ORDER + CLOSING)
    for _, data in events:
        assert_valid(validator, openai_view(data))


@pytest.mark.parametrize("body, status, message, param", [
    ({"model": MODEL, "input": "x", "previous_response_id": "resp_123"}, 400,
     STORE_DISABLED, "previous_response_id"),
    ({"model": MODEL, "input": "x", "background": True}, 400, STORE_DISABLED, "background"),
    ({"model": "other", "input": "x"}, 404, "The model 'other' does not exist", "model"),
    ({"model": MODEL, "input": "x", "tool_choice": "required"}, 400,
     'tool_choice="required" requires at least one tool with type="function" or '
     'type="custom"; other built-in tool types cannot be forced.', None),
    ({"model": MODEL, "input": "x", "tools": [{"type": "shell"}]}, 400,
     "Shell tools are not supported by this model", "tools"),
    ({"model": MODEL, "input": [{"type": "computer_call_output", "call_id": "c"}]}, 400,
     "Unsupported Responses API input item type: 'computer_call_output' None", None),
    ({"model": MODEL, "input": "x", "max_output_tokens": 1}, 400,
     "max_new_tokens must be at least 0, got -1.", None),
])
def test_refusals_are_sglangs_nested_errors(sim, body, status, message, param):
    resp = post(sim, body)
    assert resp.status_code == status
    assert resp.json() == {"error": {"message": message, "type": "invalid_request_error",
                                     "param": param, "code": status}}


def test_missing_input_and_bad_json_are_nested_400s(sim):
    for resp in (post(sim, {"model": MODEL}),
                 requests.post(sim.url + "/v1/responses", data=b"{nope", timeout=5,
                               headers={"Content-Type": "application/json"})):
        assert resp.status_code == 400
        error = resp.json()["error"]
        assert error["code"] == 400 and error["message"]


def test_a_refused_stream_ends_with_response_failed(start_sim):
    server = start_sim("--instant", "--context-length", "32")
    resp = post(server, {"model": MODEL, "input": "x", "max_output_tokens": 100,
                         "stream": True})
    assert resp.status_code == 200
    events = raw_events(resp.content.decode())
    assert [name for name, _ in events] == ["response.created", "response.in_progress",
                                            "response.failed"]
    failed = events[-1][1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    assert failed["error"]["message"].startswith("Requested token count exceeds")
    refused = post(server, {"model": MODEL, "input": "x", "max_output_tokens": 100})
    assert refused.status_code == 400
    assert refused.json()["error"]["message"].startswith("Requested token count exceeds")


def test_injected_500_is_nested_and_a_drop_cuts_the_stream(start_sim):
    failing = start_sim("--instant", "--fault-500-rate", "1.0")
    resp = post(failing, {"model": MODEL, "input": "x"})
    assert resp.status_code == 500
    assert resp.json()["error"]["message"] == "Internal server error: injected fault"
    dropping = start_sim("--instant", "--fault-drop-rate", "1.0")
    resp = post(dropping, {"model": MODEL, "input": "x", "stream": True}, stream=True)
    received = b""
    with pytest.raises(requests.exceptions.ChunkedEncodingError):
        for chunk in resp.iter_content(None):
            received += chunk
    assert received.count(b"event: response.output_text.delta") == 3
    assert b"response.output_text.done" not in received
    assert wait_until(lambda: dropping.load()["num_running_reqs"] == 0, timeout=2)


def open_stream(server, body) -> socket.socket:
    payload = json.dumps(body).encode()
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.sendall(b"POST /v1/responses HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                 b"\r\nContent-Length: %d\r\n\r\n%s" % (len(payload), payload))
    return sock


def read_until(sock, marker: bytes) -> bytes:
    received = b""
    while marker not in received:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed before {marker!r}"
        received += chunk
    return received


def test_a_client_that_hangs_up_aborts_its_request(start_sim):
    server = start_sim("--decode-ms-per-token", "50")
    sock = open_stream(server, {"model": MODEL, "input": "long", "stream": True})
    read_until(sock, b"response.output_text.delta")
    assert server.load()["num_running_reqs"] == 1
    sock.close()
    wait_until(lambda: server.load()["num_running_reqs"] == 0, timeout=1.0)
    assert server.metric("num_aborted_requests_total") == 1


def test_abort_request_fails_a_running_stream(start_sim):
    server = start_sim("--decode-ms-per-token", "50")
    sock = open_stream(server, {"model": MODEL, "input": "long", "stream": True,
                                "request_id": "resp_to_abort"})
    read_until(sock, b"response.output_text.delta")
    requests.post(server.url + "/abort_request", json={"rid": "resp_to_abort"}, timeout=5)
    tail = read_until(sock, b"\r\n0\r\n\r\n")  # the end of the chunked answer
    sock.close()
    assert b"event: response.failed\ndata: " in tail
    assert b'"error":{"code":"server_error","message":"Abort request resp_to_abort"}' in tail
    assert b'"id":"resp_to_abort"' in tail
