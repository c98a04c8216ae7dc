"""Responses validate against OpenAI's own OpenAPI document (../shared/spec/openai-openapi.yaml).

The document is OpenAPI 3.1 but still writes ``nullable: true``; the loader below turns
that keyword into JSON Schema's ``null`` type so a strict 2020-12 validator understands it.
"""

import json
import pathlib

import pytest
import requests
import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from tests.gateway_fixtures import MODEL

SPEC = pathlib.Path(__file__).resolve().parents[2] / "shared" / "spec" / "openai-openapi.yaml"
MESSAGES = [{"role": "user", "content": "Validate me."}]


def _nullable_to_json_schema(node):
    if isinstance(node, dict):
        node = {k: _nullable_to_json_schema(v) for k, v in node.items()}
        if node.pop("nullable", False):
            return {"anyOf": [node, {"type": "null"}]}
        return node
    if isinstance(node, list):
        return [_nullable_to_json_schema(v) for v in node]
    return node


@pytest.fixture(scope="module")
def validator_for():
    spec = _nullable_to_json_schema(yaml.load(SPEC.read_text(), Loader=yaml.CSafeLoader))
    registry = Registry().with_resource(
        "spec", Resource.from_contents(spec, default_specification=DRAFT202012))

    def make(name):
        return Draft202012Validator({"$ref": f"spec#/components/schemas/{name}"},
                                    registry=registry)
    return make


def assert_valid(validator, instance):
    errors = sorted(validator.iter_errors(instance), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors[:5])


@pytest.fixture(scope="module")
def gateway(instant_gateway):
    return instant_gateway


def call(gateway, method, path, **kw):
    return requests.request(method, gateway.url + path, timeout=10,
                            headers={"Authorization": f"Bearer {gateway.key}"}, **kw)


def test_chat_completion_response(gateway, validator_for):
    body = call(gateway, "POST", "/v1/chat/completions",
                json={"model": MODEL, "messages": MESSAGES, "max_tokens": 8, "n": 2}).json()
    assert_valid(validator_for("CreateChatCompletionResponse"), body)


@pytest.mark.parametrize("include_usage", [True, False])
def test_every_stream_chunk(gateway, validator_for, include_usage):
    extra = {"stream_options": {"include_usage": True}} if include_usage else {}
    resp = call(gateway, "POST", "/v1/chat/completions", stream=True,
                json={"model": MODEL, "messages": MESSAGES, "max_tokens": 8, "stream": True,
                      **extra})
    validator = validator_for("CreateChatCompletionStreamResponse")
    chunks = [line[6:] for line in resp.iter_lines() if line.startswith(b"data: ")]
    assert chunks[-1] == b"[DONE]"
    for chunk in chunks[:-1]:
        assert_valid(validator, json.loads(chunk))
    assert ("usage" in json.loads(chunks[-2])) is include_usage


def test_models_and_model(gateway, validator_for):
    assert_valid(validator_for("ListModelsResponse"), call(gateway, "GET", "/v1/models").json())
    assert_valid(validator_for("Model"), call(gateway, "GET", f"/v1/models/{MODEL}").json())


@pytest.mark.parametrize("method,path,body", [
    ("POST", "/v1/chat/completions", {"model": MODEL}),
    ("POST", "/v1/chat/completions", {"model": "unknown", "messages": MESSAGES}),
    ("GET", "/v1/unknown", None),
    ("POST", "/v1/chat/completions", {"model": MODEL, "messages": MESSAGES,
                                      "max_tokens": 10 ** 7}),
])
def test_error_responses(gateway, validator_for, method, path, body):
    resp = call(gateway, method, path, json=body)
    assert resp.status_code >= 400
    assert_valid(validator_for("ErrorResponse"), resp.json())


def test_unauthenticated_error(gateway, validator_for):
    resp = requests.get(gateway.url + "/v1/models", timeout=10)
    assert resp.status_code == 401
    assert_valid(validator_for("ErrorResponse"), resp.json())
