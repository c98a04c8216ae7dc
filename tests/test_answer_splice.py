"""A non-streamed answer edited in its bytes (relay.splice_answer) says exactly what the
parsed-and-dumped answer says, for any answer hypothesis can write; and the edits are
really made in place for SGLang's answers, whose bytes the simulator writes as SGLang does.
"""

import base64
import json
import struct
from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st

from inferegator.gateway.relay import fix_completion, fix_embeddings, rewrite_json, splice_answer

# Text that looks like the members the splice edits, so a match inside a string shows up.
TRICKY = st.sampled_from(['"model":"up"', ',"metadata":{"weight_version":"default"}',
                          '"message":{"', ',"prompt_tokens_details":null', '\\', '"', 'é',
                          '\u2028', 'ok'])
TEXT = st.lists(st.one_of(TRICKY, st.text(max_size=8)), max_size=4).map("".join)
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-5, 10 ** 6), TEXT,
                    st.floats(allow_nan=False, allow_infinity=False))
VALUES = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(
        ["model", "metadata", "message", "refusal", "content", "x"]), inner, max_size=3)),
    max_leaves=8)


@st.composite
def answers(draw):
    """A chat or text completion as SGLang (or anything else) might write it."""
    choices = []
    for index in range(draw(st.integers(0, 3))):
        choice = {"index": index, "finish_reason": draw(st.sampled_from(["stop", "length"]))}
        if draw(st.booleans()):
            message = {"role": "assistant", "content": draw(st.one_of(st.none(), TEXT))}
            if draw(st.booleans()):
                message["refusal"] = draw(st.one_of(st.none(), TEXT))
            message.update(draw(st.dictionaries(st.sampled_from(
                ["tool_calls", "reasoning_content", "model"]), VALUES, max_size=2)))
            choice["message"] = message
        else:
            choice["text"] = draw(TEXT)
        choices.append(choice)
    body = {"id": draw(TEXT), "object": "chat.completion", "created": 1,
            "model": draw(st.one_of(st.just("up"), TEXT, st.integers())), "choices": choices}
    if draw(st.booleans()):
        body["usage"] = {"prompt_tokens": draw(st.integers(0, 99)),
                         "completion_tokens": draw(st.integers(0, 99)),
                         "total_tokens": 1,
                         "prompt_tokens_details": draw(st.one_of(
                             st.none(), st.just({"cached_tokens": 3}))),
                         "reasoning_tokens": draw(st.one_of(st.none(), st.just(0)))}
    if draw(st.booleans()):
        body["metadata"] = draw(st.one_of(st.just({"weight_version": "default"}), VALUES))
    body.update(draw(st.dictionaries(st.sampled_from(["x", "system_fingerprint"]), VALUES,
                                     max_size=2)))
    order = draw(st.permutations(list(body)))
    body = {key: body[key] for key in order}
    compact = draw(st.booleans())
    return json.dumps(body, ensure_ascii=draw(st.booleans()),
                      separators=(",", ":") if compact else (", ", ": ")).encode()


def parsed_and_dumped(content: bytes, public: str, fix, request=None) -> dict:
    """What the answer becomes without the splice: rewrite_json's slow path."""
    body = json.loads(content)
    body["model"] = public
    if isinstance(body.get("usage"), dict):
        body["usage"] = {k: v for k, v in body["usage"].items() if v is not None}
    fix(body, request)
    return body


@settings(max_examples=400, deadline=None, derandomize=True)
@given(content=answers(), public=st.one_of(st.just("acme/chat"), TEXT))
def test_a_spliced_answer_says_what_the_dumped_one_says(content, public):
    expected = parsed_and_dumped(content, public, fix_completion)
    spliced = splice_answer(content, json.loads(content), public, fix_completion, None)
    if spliced is not None:
        assert json.loads(spliced) == expected
    answer, _ = rewrite_json(content, public, fix=fix_completion)
    assert json.loads(answer) == expected


def test_sglangs_chat_answer_is_edited_in_its_bytes(sim):
    import requests

    content = requests.post(sim.url + "/v1/chat/completions", timeout=10, json={
        "model": "sim-model", "max_tokens": 4,
        "messages": [{"role": "user", "content": "hi"}]}).content
    body = json.loads(content)
    assert "metadata" in body and None in body["usage"].values()  # edits to make
    assert b", " not in content[:40]  # compact, as SGLang writes it
    spliced = splice_answer(content, json.loads(content), "acme/sim-chat", fix_completion,
                            None)
    assert spliced is not None  # the fast path is the one SGLang's answers take
    assert json.loads(spliced) == parsed_and_dumped(content, "acme/sim-chat", fix_completion)
    answer, usage = rewrite_json(content, "acme/sim-chat")
    assert answer == spliced and usage.prompt_tokens == body["usage"]["prompt_tokens"]


def test_an_embedding_asked_as_base64_is_still_encoded():
    content = json.dumps({"object": "list", "model": "up", "usage": {"prompt_tokens": 2},
                          "data": [{"object": "embedding", "index": 0,
                                    "embedding": [0.5, -1.0]}]},
                         separators=(",", ":")).encode()
    request = SimpleNamespace(body={"encoding_format": "base64"})
    assert splice_answer(content, json.loads(content), "pub", fix_embeddings, request) is None
    answer, _ = rewrite_json(content, "pub", fix=fix_embeddings, request=request)
    vector = json.loads(answer)["data"][0]["embedding"]
    assert struct.unpack("<2f", base64.b64decode(vector)) == (0.5, -1.0)
    floats = SimpleNamespace(body={"encoding_format": "float"})
    spliced = splice_answer(content, json.loads(content), "pub", fix_embeddings, floats)
    assert json.loads(spliced)["model"] == "pub"
    assert json.loads(spliced)["data"][0]["embedding"] == [0.5, -1.0]
