"""Structured outputs on the simulator, as SGLang 0.5.23 constrains them (xgrammar).

``response_format`` json_object / json_schema (chat and completions), SGLang's ``regex`` and
``ebnf`` fields (and ``json_schema`` on completions): the answer is a JSON value valid for the
schema, a string the regex fully matches, a sentence of the grammar, ending with
``finish_reason: "stop"``; ``max_tokens`` cuts it like any answer. What the grammar backend
refuses is a 400 ``Failed to compile ... grammar`` (a stream: an error event, then [DONE]).
"""

import json
import re

import jsonschema
import openai
import pytest
from pydantic import BaseModel

from inferegator.simulator.tokenizer import tokenize
from tests.test_gateway_openapi import assert_valid, validator_for  # noqa: F401
from tests.test_sim_tools import MODEL, chat_view, data_events, post

ASK = [{"role": "user", "content": "Describe a city as JSON."}]
CITY = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 3, "maxLength": 40},
        "country": {"type": "string", "enum": ["FR", "DE", "JP"]},
        "population": {"type": "integer", "minimum": 1000, "maximum": 40000000},
        "area_km2": {"type": "number", "exclusiveMinimum": 0},
        "capital": {"type": "boolean"},
        "founded": {"type": "string", "format": "date"},
        "districts": {"type": "array", "minItems": 2, "maxItems": 5,
                      "items": {"$ref": "#/$defs/district"}},
        "mayor": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/person"}]},
    },
    "required": ["name", "country", "population", "districts", "mayor"],
    "additionalProperties": False,
    "$defs": {
        "district": {"type": "object", "properties": {"code": {"type": "string",
                                                               "pattern": "^[A-Z]{2}-[0-9]{3}$"},
                                                      "parks": {"type": "integer"}},
                     "required": ["code"]},
        "person": {"type": "object", "properties": {"first": {"type": "string"},
                                                    "email": {"type": "string",
                                                              "format": "email"}},
                   "required": ["first", "email"]},
    },
}


class Person(BaseModel):
    name: str
    age: int
    email: str | None = None


class Team(BaseModel):
    title: str
    members: list[Person]
    active: bool


def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def json_schema_format(schema, name="city"):
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema,
                                                   "strict": True}}


def test_sdk_parse_fills_a_pydantic_model(sim):
    completion = client(sim).chat.completions.parse(model=MODEL, messages=ASK,
                                                    response_format=Team)
    (choice,) = completion.choices
    assert choice.finish_reason == "stop"
    team = choice.message.parsed
    assert isinstance(team, Team) and team.members
    assert all(isinstance(m, Person) for m in team.members)
    assert Team.model_validate_json(choice.message.content) == team


def test_json_schema_answers_validate_for_every_choice(sim, validator_for):  # noqa: F811
    resp = post(sim, {"messages": ASK, "response_format": json_schema_format(CITY), "n": 3})
    body = resp.json()
    assert_valid(validator_for("CreateChatCompletionResponse"), chat_view(body))
    contents = []
    for choice in body["choices"]:
        assert choice["finish_reason"] == "stop" and choice["matched_stop"] == 128009
        jsonschema.validate(json.loads(choice["message"]["content"]), CITY,
                            format_checker=jsonschema.FormatChecker())
        contents.append(choice["message"]["content"])
    assert len(set(contents)) == 3  # each choice has its own seed
    assert body["usage"]["completion_tokens"] == sum(len(tokenize(c)) for c in contents)
    again = post(sim, {"messages": ASK, "response_format": json_schema_format(CITY), "n": 3})
    assert [c["message"]["content"] for c in again.json()["choices"]] == contents


def test_json_object_json_and_stream(sim, validator_for):  # noqa: F811
    body = {"messages": ASK, "response_format": {"type": "json_object"}, "seed": 3}
    content = post(sim, body).json()["choices"][0]["message"]["content"]
    assert isinstance(json.loads(content), dict) and json.loads(content)
    events, done = data_events(post(sim, {**body, "stream": True}, stream=True))
    assert done
    streamed = "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
    assert streamed == content
    assert events[-1]["choices"][0]["finish_reason"] == "stop"
    validator = validator_for("CreateChatCompletionStreamResponse")
    for event in events:
        assert_valid(validator, chat_view(event))


def test_sglangs_schema_shorthand_beside_the_type(sim):
    fmt = {"type": "json_schema", "schema": {"title": "Pair", "type": "object",
                                             "properties": {"a": {"type": "integer"}},
                                             "required": ["a"]}}
    content = post(sim, {"messages": ASK, "response_format": fmt}).json()["choices"][0][
        "message"]["content"]
    assert isinstance(json.loads(content)["a"], int)


@pytest.mark.parametrize("pattern", [r"(yes|no)", r"[A-Z]{3}-\d{2,4}", r"\w+@example\.(com|org)",
                                     r"(?:ab|cd)+[^x-z]?", r"0x[0-9a-f]{8}"])
def test_regex_via_extra_body_fully_matches(sim, pattern):
    answer = client(sim).chat.completions.create(model=MODEL, messages=ASK,
                                                 extra_body={"regex": pattern})
    (choice,) = answer.choices
    assert re.fullmatch(pattern, choice.message.content) and choice.finish_reason == "stop"
    events, done = data_events(post(sim, {"messages": ASK, "regex": pattern, "stream": True},
                                    stream=True))
    streamed = "".join(c["delta"].get("content") or "" for e in events for c in e["choices"])
    assert done and streamed == choice.message.content


def test_ebnf_writes_a_sentence_of_the_grammar(sim):
    grammar = ('root ::= greeting ", " name ("!" | ".")\n'
               'greeting ::= "Hello" | "Good " ("morning" | "evening")  # a comment\n'
               "name ::= [A-Z] [a-z]{2,6}\n")
    for seed in range(5):
        content = post(sim, {"messages": ASK, "ebnf": grammar, "seed": seed}).json()[
            "choices"][0]["message"]["content"]
        assert re.fullmatch(r"(Hello|Good (morning|evening)), [A-Z][a-z]{2,6}[!.]", content)


def test_json_schema_wins_over_regex_as_in_the_grammar_manager(sim):
    content = post(sim, {"messages": ASK, "regex": "[0-9]+",
                         "response_format": {"type": "json_object"}}).json()["choices"][0][
        "message"]["content"]
    assert isinstance(json.loads(content), dict)


def test_max_tokens_cuts_the_json_as_a_real_model_would(sim):
    answer = post(sim, {"messages": ASK, "response_format": json_schema_format(CITY),
                        "max_tokens": 10}).json()
    (choice,) = answer["choices"]
    assert choice["finish_reason"] == "length" and answer["usage"]["completion_tokens"] == 10
    with pytest.raises(json.JSONDecodeError):
        json.loads(choice["message"]["content"])


def test_structured_output_ends_even_with_ignore_eos(sim):
    choice = post(sim, {"messages": ASK, "regex": "(yes|no)", "ignore_eos": True,
                        "max_tokens": 50}).json()["choices"][0]
    assert choice["finish_reason"] == "stop" and choice["message"]["content"] in ("yes", "no")


def test_completions_response_format_json_schema_and_regex(sim, validator_for):  # noqa: F811
    fmt = json_schema_format(CITY)
    body = post(sim, {"prompt": "A city:", "max_tokens": 400, "response_format": fmt},
                path="/v1/completions").json()
    (choice,) = body["choices"]
    jsonschema.validate(json.loads(choice["text"]), CITY)
    assert choice["finish_reason"] == "stop"
    text = post(sim, {"prompt": "A code:", "regex": "[A-F]{4}"},
                path="/v1/completions").json()["choices"][0]["text"]
    assert re.fullmatch("[A-F]{4}", text)
    raw = post(sim, {"prompt": "JSON:", "max_tokens": 100,
                     "json_schema": json.dumps({"type": "array", "items": {"type": "integer"},
                                                "minItems": 4})},
               path="/v1/completions").json()["choices"][0]["text"]
    assert all(isinstance(v, int) for v in json.loads(raw)) and len(json.loads(raw)) >= 4
    events, done = data_events(post(sim, {"prompt": "A city:", "max_tokens": 400,
                                          "response_format": fmt, "stream": True},
                                    path="/v1/completions", stream=True))
    assert done and "".join(c["text"] for e in events for c in e["choices"]) == choice["text"]


@pytest.mark.parametrize("extra, message", [
    ({"regex": r"(a)\1"}, "Failed to compile regex grammar: unsupported regex construct: "
                          "groupref"),
    ({"regex": "("}, "Failed to compile regex grammar: invalid regex: missing ), "
                     "unterminated subpattern at position 0"),
    ({"ebnf": 'start ::= "x"'}, "Failed to compile ebnf grammar: the grammar has no root rule"),
    ({"response_format": json_schema_format({"type": "integer", "multipleOf": 3})},
     "Failed to compile json grammar: JSON Schema at # is not supported by xgrammar: "
     "keyword(s) multipleOf would be ignored"),
    ({"response_format": json_schema_format({"type": "string", "format": "date",
                                             "maxLength": 3})},
     "Failed to compile json grammar: JSON Schema at # is not supported by xgrammar: "
     "constraints format, minLength/maxLength cannot be enforced together"),
])
def test_what_the_grammar_backend_refuses(sim, extra, message):
    resp = post(sim, {"messages": ASK, **extra})
    assert resp.status_code == 400
    assert resp.json() == {"object": "error", "message": message, "type": "BadRequestError",
                           "param": None, "code": 400}
    events, done = data_events(post(sim, {"messages": ASK, "stream": True, **extra},
                                    stream=True))
    assert done and events == [{"error": {"object": "error", "message": message,
                                          "type": "BAD_REQUEST", "param": None, "code": 400}}]


@pytest.mark.parametrize("response_format, message", [
    ({"type": "json_schema", "json_schema": {"name": "x"}},
     "schema_ is required for json_schema response format request."),
    ({"type": "json_schema"}, "schema_ is required for json_schema response format request."),
    ({"type": "yaml"}, None),
    ({"type": "json_schema", "json_schema": {"schema": {}}}, None),
])
def test_malformed_response_formats_are_400s(sim, response_format, message):
    resp = post(sim, {"messages": ASK, "response_format": response_format})
    assert resp.status_code == 400
    if message:
        assert resp.json()["message"] == message
    else:
        assert resp.json()["param"] == "response_format"
