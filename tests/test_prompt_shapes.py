"""/v1/completions accepts every prompt shape OpenAI's API allows — a string, strings,
token ids, lists of token ids — through a real gateway and simulator, and each is
counted: one choice per prompt (times n), usage summed over the prompts in the ledger,
and the token limit's reservation covering every prompt.
"""

import pytest

from tests.gateway_fixtures import MODEL, gateway_yaml, launch_gateway, provision, sdk
from tests.support.processes import Simulator
from tests.test_upstream_interop import ledger_row

SHAPES = {
    "a string": ("Once upon a time", 1),
    "strings": (["Once upon a time", "In a galaxy far away", "It was a dark night"], 3),
    "token ids": ([1, 2, 3, 4, 5], 1),
    "lists of token ids": ([[1, 2, 3], [4, 5, 6, 7], [8]], 3),
}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    sim = Simulator("--instant")
    server = launch_gateway(tmp_path_factory.mktemp("gw"), gateway_yaml([sim]))
    yield server
    server.stop()
    sim.stop()


@pytest.mark.parametrize("shape", SHAPES)
def test_every_prompt_shape_gets_one_choice_per_prompt_and_is_metered(gateway, shape):
    prompt, prompts = SHAPES[shape]
    raw = sdk(gateway).completions.with_raw_response.create(model=MODEL, prompt=prompt,
                                                             max_tokens=8, n=2)
    answer = raw.parse()
    assert answer.model == MODEL
    assert sorted(c.index for c in answer.choices) == list(range(2 * prompts))
    assert all(c.text for c in answer.choices)
    if shape == "lists of token ids":
        assert answer.usage.prompt_tokens == sum(len(ids) for ids in prompt)
    row = ledger_row(gateway, raw.headers["x-request-id"])
    assert (row["prompt_tokens"], row["completion_tokens"]) == (
        answer.usage.prompt_tokens, answer.usage.completion_tokens)


@pytest.mark.parametrize("shape", ["strings", "lists of token ids"])
def test_a_batch_streams_every_prompts_choices(gateway, shape):
    prompt, prompts = SHAPES[shape]
    chunks = list(sdk(gateway).completions.create(
        model=MODEL, prompt=prompt, max_tokens=6, stream=True,
        stream_options={"include_usage": True}))
    finished = {c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason}
    assert finished == set(range(prompts))
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_the_token_limit_reserves_for_every_prompt(gateway, tmp_path):
    """Three prompts of 8 tokens each with max_tokens 10 need 3 x (8 + 10) = 54 tokens at
    most: a key with 40 tokens per minute is refused up front, one with 60 admitted."""
    prompt = [[1, 2, 3, 4, 5, 6, 7, 8]] * 3
    small, _ = provision(gateway.storage, "small@example.com", tokens_per_minute=40)
    large, _ = provision(gateway.storage, "large@example.com", tokens_per_minute=60)
    with pytest.raises(Exception) as caught:
        sdk(gateway, key=small).completions.create(model=MODEL, prompt=prompt, max_tokens=10)
    assert getattr(caught.value, "status_code", None) == 429
    answer = sdk(gateway, key=large).completions.create(model=MODEL, prompt=prompt,
                                                        max_tokens=10)
    assert len(answer.choices) == 3
