"""Every answer to an authenticated caller carries ``x-request-id`` and the
``x-ratelimit-*`` headers: errors refused before admission (bad body, unknown model, a
model the key may not use, a prompt over the context) and GET /v1/models included. Their
counts are the key's window as it stands, and answering them uses none of it.

Each error reaches the openai SDK as the matching exception class with OpenAI's ``code``
and ``param``. A caller without a key gets 401 whatever the body, with no limit headers.
"""

import openai
import pytest
import requests

from tests.gateway_fixtures import MODEL, gateway_yaml, launch_gateway, provision, sdk
from tests.support.processes import Simulator

OTHER = "acme/other"
CONTEXT = 2048
RPM, TPM = 50, 500_000
LIMIT_HEADERS = ("x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
                 "x-ratelimit-reset-requests", "x-ratelimit-limit-tokens",
                 "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens")
MESSAGES = [{"role": "user", "content": "Hello."}]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    sim = Simulator("--instant")
    text = gateway_yaml([sim], model_extra=[f"context_length: {CONTEXT}"])
    other = ["  - id: " + OTHER, "    capabilities: [chat]", "    backends:",
             f"      - {{type: sglang, url: '{sim.url}', model: sim-model}}"]
    server = launch_gateway(tmp_path_factory.mktemp("gw"), text + "\n".join(other) + "\n")
    server.limited, _ = provision(server.storage, "limited@example.com",
                                  requests_per_minute=RPM, tokens_per_minute=TPM,
                                  allowed_models=[MODEL])
    yield server
    server.stop()
    sim.stop()


def limit_headers(response) -> dict:
    return {name: response.headers.get(name) for name in LIMIT_HEADERS}


def refused(call) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    return caught.value


@pytest.mark.parametrize("case, exception, code, param", [
    ("bad body", openai.BadRequestError, "invalid_type", "messages"),
    ("unknown model", openai.NotFoundError, "model_not_found", "model"),
    ("model not allowed", openai.PermissionDeniedError, "model_not_allowed", "model"),
    ("over the context", openai.BadRequestError, "context_length_exceeded", "max_tokens"),
    ("prompt over the context", openai.BadRequestError, "context_length_exceeded",
     "messages"),
])
def test_errors_before_admission_carry_request_id_and_limit_headers(gateway, case, exception,
                                                                    code, param):
    chat = sdk(gateway, key=gateway.limited).chat.completions
    calls = {
        "bad body": lambda: chat.create(model=MODEL, messages="not a list"),
        "unknown model": lambda: chat.create(model="no/such-model", messages=MESSAGES),
        "model not allowed": lambda: chat.create(model=OTHER, messages=MESSAGES),
        "over the context": lambda: chat.create(model=MODEL, messages=MESSAGES,
                                                max_tokens=CONTEXT + 1),
        "prompt over the context": lambda: chat.create(
            model=MODEL, messages=[{"role": "user", "content": "word " * 3 * CONTEXT}],
            max_tokens=10),
    }
    error = refused(calls[case])
    assert isinstance(error, exception)
    assert (error.code, error.param) == (code, param)
    headers = limit_headers(error.response)
    assert headers["x-ratelimit-limit-requests"] == str(RPM)
    assert headers["x-ratelimit-limit-tokens"] == str(TPM)
    assert all(headers.values()), headers
    assert error.response.headers["x-request-id"]


def test_models_carry_the_headers_and_counts_move_only_with_admissions(gateway):
    client = sdk(gateway, key=gateway.limited)
    before = client.models.with_raw_response.list()
    assert before.headers["x-request-id"]
    left = int(before.headers["x-ratelimit-remaining-requests"])
    assert int(client.models.with_raw_response.list().headers[
        "x-ratelimit-remaining-requests"]) == left  # listing uses none of the window
    one = client.models.with_raw_response.retrieve(MODEL)
    assert limit_headers(one)["x-ratelimit-limit-requests"] == str(RPM)
    assert int(one.headers["x-ratelimit-remaining-requests"]) == left
    client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=5)
    after = client.models.with_raw_response.list()
    assert int(after.headers["x-ratelimit-remaining-requests"]) == left - 1
    assert int(after.headers["x-ratelimit-remaining-tokens"]) < TPM


def test_a_models_404_carries_them_too(gateway):
    resp = requests.get(gateway.url + "/v1/models/no/such-model", timeout=10,
                        headers={"Authorization": f"Bearer {gateway.limited}",
                                 "X-Request-ID": "my-own-id"})
    assert resp.status_code == 404
    assert resp.json()["error"]["code"] == "model_not_found"
    assert resp.headers["x-request-id"] == "my-own-id"
    assert limit_headers(resp)["x-ratelimit-limit-requests"] == str(RPM)


@pytest.mark.parametrize("path, body", [
    ("/v1/chat/completions", "not json"),
    ("/v1/embeddings", '{"model": 3}'),
    ("/v1/responses", "[]"),
    ("/v1/models", None),
])
def test_no_key_is_401_whatever_the_body_and_names_no_limits(gateway, path, body):
    method = "GET" if body is None else "POST"
    resp = requests.request(method, gateway.url + path, data=body, timeout=10)
    assert resp.status_code == 401
    assert resp.json()["error"]["code"] == "invalid_api_key"
    assert "x-ratelimit-limit-requests" not in resp.headers
