"""A real third-party OpenAI-compatible server behind an ``openai`` backend: llama-cpp-python's
server (``python -m llama_cpp.server``) with a tiny GGUF model the tests write themselves
(tests/support/tiny_gguf.py; nothing is downloaded), a real gateway in front of it, and the
real ``openai`` SDK as the client.

What llama-cpp-python's server does (pinned by the first test, straight to it):

- It sends no usage chunk in a stream, not even when asked with stream_options.
  include_usage; the gateway still meters the stream (its prompt estimate and one
  completion token per content event) instead of billing nothing.
- It answers a non-UUID X-Request-ID with 400 and an empty body; the gateway sends a UUID
  upstream and keeps the client's id for the client and the ledger.
- A prompt over its context: an OpenAI-shaped JSON 400 (context_length_exceeded) for a
  JSON request, but 200 and an empty stream for a streamed one.
- A parameter of the wrong type: 500 with a JSON error (type internal_server_error).
- Its /v1/models reports no context length, so the gateway's model sets context_length.
"""

import json
import uuid

import openai
import pytest
import requests

from inferegator.store.store import Store
from tests.gateway_fixtures import UNLIMITED, launch_gateway, provision, sdk
from tests.support.llama_cpp import LlamaCppServer
from tests.support.processes import wait_until
from tests.support.tiny_gguf import write_tiny_gguf

pytestmark = pytest.mark.slow

SIZED = "acme/tiny"  # the gateway knows the context length (512)
UNSIZED = "acme/tiny-unsized"  # the same backend; only llama.cpp knows the context length
CONTEXT = 512
MESSAGES = [{"role": "user", "content": "Say something."}]
TOO_LONG = [{"role": "user", "content": "hello " * 600}]  # thousands of llama.cpp tokens
PRICES = {"prompt": 1.0, "completion": 2.0}  # USD per 1M tokens


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    model = write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    server = LlamaCppServer(model, n_ctx=CONTEXT)
    yield server
    server.stop()


def gateway_config(llama) -> str:
    lines = ["server:", "  health_check_interval_s: 0.5", "ratelimit:",
             *(f"  {k}: {v}" for k, v in UNLIMITED.items()), "models:"]
    for model, context in ((SIZED, CONTEXT), (UNSIZED, None)):
        lines += [f"  - id: {model}", "    owned_by: acme",
                  *([f"    context_length: {context}"] if context else []),
                  f"    pricing: {{prompt: {PRICES['prompt']}, completion: "
                  f"{PRICES['completion']}, cached_prompt: 0.5}}",
                  "    capabilities: [chat, completions, streaming]", "    backends:",
                  f"      - {{type: openai, url: '{llama.url}/v1', model: {llama.alias}}}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def gateway(llama, tmp_path_factory):
    server = launch_gateway(tmp_path_factory.mktemp("gw"), gateway_config(llama))
    server.admin_key, _ = provision(server.storage, email="ops@example.com", role="admin")
    yield server
    server.stop()


def ledger_row(gateway, request_id: str, timeout: float = 10.0) -> dict:
    store = Store(gateway.storage)
    try:
        return dict(wait_until(lambda: store.db.query(
            "SELECT * FROM usage_ledger WHERE request_id = ?", (request_id,)),
            timeout=timeout, interval=0.05)[0])
    finally:
        store.db.close()


def backend_state(gateway, model: str) -> dict:
    """The admin API's view of the model's (only) backend; one worker, so it is exact."""
    resp = requests.get(gateway.url + "/v1/admin/backends", timeout=5,
                        headers={"Authorization": f"Bearer {gateway.admin_key}"})
    assert resp.status_code == 200, resp.text
    [state] = [b for b in resp.json()["data"] if b["model"] == model]
    return state


def cost(prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * PRICES["prompt"] + completion_tokens * PRICES["completion"]) / 1e6


def posts_after(llama, seen: int, count: int) -> list[tuple[str, int]]:
    """The generation requests llama.cpp logged after the first `seen`, once there are
    `count` of them (its access log line is written as it answers)."""
    def logged():
        new = llama.requests_seen()[seen:]
        return new if len(new) >= count else None

    return wait_until(logged, timeout=5)


def test_llama_cpp_is_the_server_these_tests_assume(llama):
    """The premises, straight to llama.cpp (no gateway)."""
    chat = llama.url + "/v1/chat/completions"
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 4}

    models = requests.get(llama.url + "/v1/models", timeout=5).json()
    assert [m["id"] for m in models["data"]] == ["tiny"]
    assert not any(k in models["data"][0] for k in ("context_length", "max_model_len"))

    # No usage chunk in a stream, even when asked for one.
    resp = requests.post(chat, timeout=30, json={**body, "stream": True,
                                                 "stream_options": {"include_usage": True}})
    assert resp.status_code == 200
    events = [e for e in resp.content.replace(b"\r\n", b"\n").split(b"\n\n") if e.strip()]
    assert events[-1] == b"data: [DONE]"
    chunks = [json.loads(e[len(b"data: "):]) for e in events[:-1]]
    assert not any("usage" in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"

    # A non-UUID request id: 400 with an empty body; a UUID is fine.
    resp = requests.post(chat, json=body, headers={"X-Request-ID": "my-id"}, timeout=30)
    assert (resp.status_code, resp.content) == (400, b"")
    resp = requests.post(chat, json=body, headers={"X-Request-ID": str(uuid.uuid4())},
                         timeout=30)
    assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] == 4

    # Over the context: an OpenAI-shaped JSON 400, but a streamed request gets 200 and an
    # empty stream.
    resp = requests.post(chat, json={**body, "messages": TOO_LONG}, timeout=30)
    assert resp.status_code == 400
    assert resp.json()["error"]["code"] == "context_length_exceeded"
    resp = requests.post(chat, json={**body, "messages": TOO_LONG, "stream": True}, timeout=30)
    assert (resp.status_code, resp.content.strip()) == (200, b"")

    # A parameter of the wrong type: 500 with a JSON error.
    resp = requests.post(chat, json={**body, "logit_bias": {"abc": 3}}, timeout=30)
    assert resp.status_code == 500
    assert resp.json()["error"]["type"] == "internal_server_error"


def test_chat_json_is_relayed_and_metered_with_llama_cpps_usage(gateway, llama):
    seen = len(llama.requests_seen())
    raw = sdk(gateway).chat.completions.with_raw_response.create(
        model=SIZED, messages=MESSAGES, max_tokens=5, extra_headers={"X-Request-ID": "my-id"})
    # llama.cpp refuses a non-UUID X-Request-ID: the gateway sent it a UUID instead, and
    # the client still sees its own id.
    assert raw.status_code == 200
    assert raw.headers["x-request-id"] == "my-id"
    assert posts_after(llama, seen, 1) == [("/v1/chat/completions", 200)]
    answer = raw.parse()
    assert answer.model == SIZED
    [choice] = answer.choices
    assert isinstance(choice.message.content, str) and choice.message.content.strip()
    assert choice.message.role == "assistant"
    assert choice.finish_reason == "length"  # the tiny model never says </s>
    usage = answer.usage
    assert usage.completion_tokens == 5 and usage.prompt_tokens > 0
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens

    row = ledger_row(gateway, "my-id")
    assert (row["status"], row["http_status"], row["model"]) == ("completed", 200, SIZED)
    assert row["backend"] == f"openai:{llama.url}/v1"
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage.prompt_tokens,
                                                                usage.completion_tokens)
    assert row["cost_usd"] == pytest.approx(cost(usage.prompt_tokens, usage.completion_tokens))


@pytest.mark.parametrize("include_usage", [False, True], ids=["plain", "include_usage"])
def test_chat_stream_is_metered_without_a_usage_chunk(gateway, include_usage):
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    raw = sdk(gateway).chat.completions.with_raw_response.create(
        model=SIZED, messages=MESSAGES, max_tokens=6, stream=True, **options)
    assert raw.status_code == 200
    request_id = raw.headers["x-request-id"]
    chunks = list(raw.parse())
    assert chunks and all(c.model == SIZED for c in chunks)
    pieces = [c.choices[0].delta.content for c in chunks
              if c.choices and c.choices[0].delta.content]
    assert len(pieces) == 6  # one token per chunk
    assert "".join(pieces).strip()
    assert [c.choices[0].finish_reason for c in chunks
            if c.choices and c.choices[0].finish_reason] == ["length"]

    # llama.cpp sent no usage, yet the stream is metered: the gateway's prompt estimate and
    # one completion token per content event relayed.
    row = ledger_row(gateway, request_id)
    assert (row["status"], row["http_status"]) == ("completed", 200)
    assert row["completion_tokens"] == 6
    assert row["prompt_tokens"] > 0
    assert row["cost_usd"] == pytest.approx(cost(row["prompt_tokens"], 6)) and row["cost_usd"]
    usage_chunks = [c.usage for c in chunks if c.usage]
    if not include_usage:
        assert usage_chunks == []  # never a usage chunk the client did not ask for
    for usage in usage_chunks:  # none comes today: llama.cpp sends none to pass on
        assert (usage.prompt_tokens, usage.completion_tokens) == (row["prompt_tokens"], 6)


@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_completions(gateway, stream):
    client = sdk(gateway)
    raw = client.completions.with_raw_response.create(
        model=SIZED, prompt="Once upon a time", max_tokens=4, stream=stream)
    assert raw.status_code == 200
    row = ledger_row(gateway, raw.headers["x-request-id"])
    assert (row["status"], row["http_status"], row["model"]) == ("completed", 200, SIZED)
    if stream:
        chunks = list(raw.parse())
        assert all(c.model == SIZED for c in chunks)
        pieces = [c.choices[0].text for c in chunks if c.choices and c.choices[0].text]
        assert len(pieces) == 4 and "".join(pieces).strip()
        assert chunks[-1].choices[0].finish_reason == "length"
        assert row["completion_tokens"] == 4 and row["prompt_tokens"] > 0  # estimated
    else:
        answer = raw.parse()
        assert answer.model == SIZED and answer.object == "text_completion"
        [choice] = answer.choices
        assert isinstance(choice.text, str) and choice.text.strip()
        assert choice.finish_reason == "length"
        assert answer.usage.completion_tokens == 4 and answer.usage.prompt_tokens > 0
        assert (row["prompt_tokens"], row["completion_tokens"]) == (
            answer.usage.prompt_tokens, answer.usage.completion_tokens)
    assert row["cost_usd"] == pytest.approx(cost(row["prompt_tokens"],
                                                 row["completion_tokens"]))


def assert_backend_serves(gateway, model: str) -> None:
    answer = sdk(gateway).chat.completions.create(model=model, messages=MESSAGES, max_tokens=2)
    assert answer.choices[0].message.content and answer.usage.completion_tokens == 2


@pytest.mark.parametrize("model", [SIZED, UNSIZED], ids=["gateway_knows", "llama_cpp_knows"])
def test_a_prompt_over_the_context_is_the_clients_400(gateway, llama, model):
    """Whether the gateway refuses it itself or llama.cpp does, the client gets the same
    OpenAI error, and the backend is not blamed."""
    seen = len(llama.requests_seen())
    with pytest.raises(openai.BadRequestError) as caught:
        sdk(gateway).chat.completions.create(model=model, messages=TOO_LONG, max_tokens=5)
    error = caught.value
    assert error.status_code == 400
    assert error.code == "context_length_exceeded"
    assert error.body["type"] == "invalid_request_error" and error.body["param"] == "messages"
    assert f"maximum context length is {CONTEXT} tokens" in error.message
    row = ledger_row(gateway, error.response.headers["x-request-id"])
    assert (row["status"], row["http_status"], row["cost_usd"]) == ("rejected", 400, 0)

    state = backend_state(gateway, model)
    assert (state["circuit"], state["consecutive_failures"], state["healthy"]) == (
        "closed", 0, True)
    assert_backend_serves(gateway, model)
    expected = [("/v1/chat/completions", 200)]
    if model == UNSIZED:  # it reached llama.cpp, whose JSON 400 was passed on
        expected.insert(0, ("/v1/chat/completions", 400))
    assert posts_after(llama, seen, len(expected)) == expected


def test_a_streamed_prompt_over_the_context(gateway, llama):
    """The gateway knowing the context: the client's 400. Not knowing it: llama.cpp answers
    200 with an empty stream, which the gateway can only report as the backend's 502."""
    client = sdk(gateway)
    with pytest.raises(openai.BadRequestError) as caught:
        list(client.chat.completions.create(model=SIZED, messages=TOO_LONG, max_tokens=5,
                                            stream=True))
    assert caught.value.code == "context_length_exceeded"

    seen = len(llama.requests_seen())
    with pytest.raises(openai.InternalServerError) as caught:
        list(client.chat.completions.create(model=UNSIZED, messages=TOO_LONG, max_tokens=5,
                                            stream=True))
    error = caught.value
    assert error.status_code == 502 and error.code == "upstream_error"
    assert error.body["type"] == "server_error"
    assert "ended before any event" in error.message
    row = ledger_row(gateway, error.response.headers["x-request-id"])
    assert (row["status"], row["http_status"], row["cost_usd"]) == ("failed", 502, 0)
    assert posts_after(llama, seen, 1) == [("/v1/chat/completions", 200)]
    assert backend_state(gateway, UNSIZED)["consecutive_failures"] == 1
    assert_backend_serves(gateway, UNSIZED)
    assert backend_state(gateway, UNSIZED)["consecutive_failures"] == 0


def test_a_500_from_llama_cpp_is_the_backends_502(gateway, llama):
    """A parameter llama.cpp cannot parse: its 500 reaches the client as the gateway's 502
    upstream_error (without llama.cpp's exception text). A 500 is held against a backend
    only when another one then answers the same request (it may be the request's fault),
    so this one, the model's only backend, is not marked failed, and serves the next."""
    seen = len(llama.requests_seen())
    with pytest.raises(openai.InternalServerError) as caught:
        sdk(gateway).chat.completions.create(model=SIZED, messages=MESSAGES, max_tokens=2,
                                             logit_bias={"abc": 3})
    error = caught.value
    assert error.status_code == 502 and error.code == "upstream_error"
    assert error.body["type"] == "server_error"
    assert "invalid literal" not in error.message
    assert posts_after(llama, seen, 1) == [("/v1/chat/completions", 500)]  # not retried
    row = ledger_row(gateway, error.response.headers["x-request-id"])
    assert (row["status"], row["http_status"]) == ("failed", 502)
    state = backend_state(gateway, SIZED)
    assert (state["circuit"], state["consecutive_failures"], state["healthy"]) == (
        "closed", 0, True)
    assert_backend_serves(gateway, SIZED)
