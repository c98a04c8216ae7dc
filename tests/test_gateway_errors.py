"""Every error path answers in OpenAI's shape, and the SDK raises its matching exception."""

import openai
import pytest
import requests

from tests.gateway_fixtures import MODEL, gateway_yaml, launch_gateway, sdk

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    from tests.support.processes import Simulator

    sim = Simulator("--instant")
    server = launch_gateway(tmp_path_factory.mktemp("gw"),
                           gateway_yaml([sim], server=["max_body_bytes: 2048"]))
    yield server
    server.stop()
    sim.stop()


def raw(gateway, method="POST", path="/v1/chat/completions", data=None, key="own", **kw):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {gateway.key if key == 'own' else key}"
    return requests.request(method, gateway.url + path, data=data, headers=headers,
                            timeout=10, **kw)


def assert_openai_error(resp, status, code, param=None, type_="invalid_request_error"):
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code and error["param"] == param and error["type"] == type_
    assert error["message"]


def test_missing_and_wrong_key(gateway):
    body = b'{"model": "%s", "messages": [{"role": "user", "content": "hi"}]}' % MODEL.encode()
    assert_openai_error(raw(gateway, data=body, key=None), 401, "invalid_api_key")
    with pytest.raises(openai.AuthenticationError) as malformed:
        sdk(gateway, default_headers={"Authorization": "Basic abc"}).chat.completions.create(
            model=MODEL, messages=MESSAGES)
    assert malformed.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError) as wrong:
        sdk(gateway, key="sk-inf-wrong").chat.completions.create(model=MODEL, messages=MESSAGES)
    assert wrong.value.code == "invalid_api_key"
    assert_openai_error(raw(gateway, "GET", "/v1/models", key=None), 401, "invalid_api_key")


def test_unknown_model(gateway):
    with pytest.raises(openai.NotFoundError) as err:
        sdk(gateway).chat.completions.create(model="nope/model", messages=MESSAGES)
    assert err.value.code == "model_not_found" and err.value.param == "model"
    with pytest.raises(openai.NotFoundError):
        sdk(gateway).models.retrieve("nope/model")


def test_malformed_json(gateway):
    assert_openai_error(raw(gateway, data=b'{"model": '), 400, "invalid_json")
    assert_openai_error(raw(gateway, data=b'[]'), 400, "invalid_json")


def test_body_over_the_limit(gateway):
    big = b'{"model": "x", "messages": [{"role": "user", "content": "' + b"a" * 4096 + b'"}]}'
    assert_openai_error(raw(gateway, data=big), 413, "request_too_large")


@pytest.mark.parametrize("body,param,code", [
    ({"messages": MESSAGES}, "model", "missing_required_parameter"),
    ({"model": MODEL}, "messages", "missing_required_parameter"),
    ({"model": MODEL, "messages": []}, "messages", "invalid_value"),
    ({"model": MODEL, "messages": "hi"}, "messages", "invalid_type"),
    ({"model": MODEL, "messages": [{"content": "x"}]}, "messages[0].role",
     "missing_required_parameter"),
    ({"model": MODEL, "messages": MESSAGES, "max_tokens": "9"}, "max_tokens", "invalid_type"),
    ({"model": MODEL, "messages": MESSAGES, "max_tokens": 0}, "max_tokens", "invalid_value"),
    ({"model": MODEL, "messages": MESSAGES, "n": 0}, "n", "invalid_value"),
    ({"model": MODEL, "messages": MESSAGES, "stream": "yes"}, "stream", "invalid_type"),
    ({"model": MODEL, "messages": MESSAGES, "stream_options": {"include_usage": True}},
     "stream_options", "invalid_value"),
    ({"model": 5, "messages": MESSAGES}, "model", "invalid_type"),
])
def test_missing_or_mistyped_fields(gateway, body, param, code):
    with pytest.raises(openai.BadRequestError) as err:
        sdk(gateway).post("/chat/completions", body=body, cast_to=object)
    assert err.value.param == param and err.value.code == code


def test_backend_400_is_translated(gateway):
    with pytest.raises(openai.BadRequestError) as err:
        sdk(gateway).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=10**6)
    assert "context length" in err.value.message
    assert err.value.body["type"] == "invalid_request_error"


def test_unknown_route_and_wrong_method(gateway):
    assert_openai_error(raw(gateway, "GET", "/v1/nothing"), 404, "unknown_url")
    assert_openai_error(raw(gateway, "GET", "/v1/chat/completions"), 405, "method_not_allowed")
    with pytest.raises(openai.NotFoundError):
        sdk(gateway).get("/nothing", cast_to=object)


def test_no_healthy_backend_is_a_503(start_gateway):
    from tests.support.processes import Simulator

    sim = Simulator("--instant")
    gateway = start_gateway(gateway_yaml([sim]))
    sim.stop()
    with pytest.raises(openai.InternalServerError) as first:
        sdk(gateway).chat.completions.create(model=MODEL, messages=MESSAGES)
    assert first.value.status_code == 503 and first.value.code == "model_unavailable"
    assert first.value.body["type"] == "server_error"
    ready = requests.get(gateway.url + "/ready", timeout=5)
    assert ready.status_code == 503


def test_a_request_over_the_context_is_a_400_before_any_limit(start_gateway):
    from tests.support.processes import Simulator

    sim = Simulator("--instant", "--context-length", "256")
    try:
        # A token budget that one over-long request would otherwise take as a 429 "tokens".
        gateway = start_gateway(gateway_yaml([sim], extra="", ratelimit={
            "tokens_per_minute": 300}).replace("    owned_by: acme",
                                               "    owned_by: acme\n    context_length: 256"))
        client = sdk(gateway)
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1000)
        assert err.value.code == "context_length_exceeded" and err.value.param == "max_tokens"
        assert "256" in err.value.message
        long_prompt = [{"role": "user", "content": "word " * 400}]
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model=MODEL, messages=long_prompt, max_tokens=10)
        assert err.value.code == "context_length_exceeded" and err.value.param == "messages"
        with pytest.raises(openai.BadRequestError) as err:
            client.completions.create(model=MODEL, prompt=[list(range(250))], max_tokens=10)
        assert err.value.param == "prompt"
        assert sim.metric("num_requests_total") == 0  # none reached the runtime
        # Nothing was reserved: a request that fits still has the whole token budget.
        reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=200)
        assert reply.usage.completion_tokens > 0
    finally:
        sim.stop()


def test_a_backends_own_context_overflow_has_the_openai_code(start_gateway):
    from tests.support.processes import Simulator

    sim = Simulator("--instant", "--context-length", "256")
    try:
        # An openai-type backend: the gateway learns no context length, the runtime decides.
        yaml_text = gateway_yaml([sim]).replace("type: sglang, url: '" + sim.url + "'",
                                                "type: openai, url: '" + sim.url + "/v1'")
        assert "type: openai" in yaml_text
        client = sdk(start_gateway(yaml_text))
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=1000)
        assert err.value.code == "context_length_exceeded"
        assert "context length" in err.value.message  # the runtime's words, kept
    finally:
        sim.stop()
