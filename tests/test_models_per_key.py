"""GET /v1/models and /v1/models/{id} per key: a key limited to some models sees only
those, and a model it may not use is the same 404 model_not_found as an unknown one.
Every card carries SGLang's `max_model_len` and `root` beside OpenAI's fields.

Driven by the openai SDK against a real gateway over real simulators; the case of a
principal without a key (another auth plugin) runs an in-process gateway with such a
plugin.
"""

import falcon.testing
import openai
import pytest
import requests

from inferegator.config import parse_config
from inferegator.factory import build_gateway
from inferegator.plugin import Principal, hookimpl
from inferegator.store.store import Store
from tests.gateway_fixtures import (
    MODEL,
    SIM_CAPABILITIES,
    gateway_yaml,
    launch_gateway,
    provision,
    sdk,
)
from tests.test_gateway_openapi import assert_valid, validator_for  # noqa: F401 (fixture)

# Served through an `openai` backend, which reports no context length: max_model_len null.
PLAIN = "acme/plain"


def two_models_yaml(sim) -> str:
    second = ["  - id: " + PLAIN, "    owned_by: acme",
              "    pricing: {prompt: 3.0, completion: 4.0}",
              "    capabilities: [chat, completions, streaming]", "    backends:",
              f"      - {{type: openai, url: '{sim.url}/v1', model: sim-model}}"]
    return gateway_yaml([sim]) + "\n".join(second) + "\n"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A gateway with two models, and keys: unrestricted, limited to MODEL, to PLAIN."""
    from tests.support.processes import Simulator

    sim = Simulator("--instant")
    gateway = launch_gateway(tmp_path_factory.mktemp("gw"), two_models_yaml(sim))
    gateway.only_sim, _ = provision(gateway.storage, "sim@example.com",
                                    allowed_models=[MODEL])
    gateway.only_plain, _ = provision(gateway.storage, "plain@example.com",
                                      allowed_models=[PLAIN])
    yield gateway
    gateway.stop()
    sim.stop()


def ids(client) -> list[str]:
    return [card.id for card in client.models.list().data]


def test_an_unrestricted_key_sees_every_model(served):
    client = sdk(served)
    assert ids(client) == [MODEL, PLAIN]
    assert client.models.retrieve(MODEL).id == MODEL
    assert client.models.retrieve(PLAIN).id == PLAIN


@pytest.mark.parametrize("key_name, allowed, hidden", [("only_sim", MODEL, PLAIN),
                                                       ("only_plain", PLAIN, MODEL)])
def test_a_limited_key_sees_only_its_models(served, key_name, allowed, hidden):
    client = sdk(served, key=getattr(served, key_name))
    assert ids(client) == [allowed]
    assert client.models.retrieve(allowed).id == allowed

    with pytest.raises(openai.NotFoundError) as forbidden:
        client.models.retrieve(hidden)
    with pytest.raises(openai.NotFoundError) as unknown:
        client.models.retrieve("acme/no-such-model")
    for err in (forbidden, unknown):
        assert err.value.status_code == 404
        assert err.value.code == "model_not_found" and err.value.param == "model"
    # Not revealed: the forbidden model's answer is the unknown model's, name aside.
    assert (forbidden.value.body["message"].replace(hidden, "X")
            == unknown.value.body["message"].replace("acme/no-such-model", "X"))


def test_cards_carry_max_model_len_and_root(served):
    client = sdk(served)
    cards = {card.id: card for card in client.models.list().data}
    sim_card = cards[MODEL].model_extra
    assert sim_card["root"] == MODEL  # the public id, not the backend's sim-model
    assert sim_card["max_model_len"] == sim_card["context_length"] == 32768  # server_info
    plain = cards[PLAIN].model_extra
    assert plain["root"] == PLAIN
    assert plain["max_model_len"] is None and plain["context_length"] is None
    assert plain["pricing"]["prompt"] == 3.0
    one = client.models.retrieve(MODEL).model_extra
    assert one["root"] == MODEL and one["max_model_len"] == 32768
    assert one["capabilities"] == list(SIM_CAPABILITIES)


def test_shapes_follow_the_openai_spec(served, validator_for):  # noqa: F811
    for key in (served.key, served.only_sim):
        headers = {"Authorization": f"Bearer {key}"}
        listing = requests.get(served.url + "/v1/models", headers=headers, timeout=10)
        assert listing.status_code == 200
        assert_valid(validator_for("ListModelsResponse"), listing.json())
        for card in listing.json()["data"]:
            assert_valid(validator_for("Model"), card)
    hidden = requests.get(f"{served.url}/v1/models/{PLAIN}", timeout=10,
                          headers={"Authorization": f"Bearer {served.only_sim}"})
    assert hidden.status_code == 404
    assert_valid(validator_for("ErrorResponse"), hidden.json())


def test_no_key_is_still_401(served):
    assert requests.get(served.url + "/v1/models", timeout=10).status_code == 401
    assert requests.get(f"{served.url}/v1/models/{MODEL}", timeout=10).status_code == 401


class HeaderAuth:
    """Another auth plugin (say, JWT): its principals carry no key and no allow-list."""

    @hookimpl
    def inferegator_authenticate(self, request):
        user = request.header("X-Test-User")
        return Principal(key_id=f"test:{user}", owner=user) if user else None


def test_a_principal_without_a_key_sees_every_model(tmp_path):
    yaml_text = ("models:\n"
                 "  - id: a\n    backends: [{type: sglang, url: 'http://127.0.0.1:9', "
                 "model: m}]\n"
                 "  - id: b\n    context_length: 4096\n"
                 "    backends: [{type: sglang, url: 'http://127.0.0.1:9', model: m}]\n")
    config = parse_config(yaml_text, str(tmp_path / "conf.yaml"), {})
    store = Store(f"sqlite:///{tmp_path / 'store.db'}")
    user = store.accounts.create_user("owner@example.com", "a long password")
    limited, _ = store.accounts.create_key(user["id"], "limited", allowed_models=["b"])
    gateway = build_gateway(config, store=store, plugins=[HeaderAuth()], entry_points=False)
    try:
        client = falcon.testing.TestClient(gateway.app)
        other = {"X-Test-User": "alice"}
        listing = client.simulate_get("/v1/models", headers=other).json
        assert [card["id"] for card in listing["data"]] == ["a", "b"]
        assert client.simulate_get("/v1/models/a", headers=other).status_code == 200

        keyed = {"Authorization": f"Bearer {limited}"}
        listing = client.simulate_get("/v1/models", headers=keyed).json
        assert [card["id"] for card in listing["data"]] == ["b"]
        card = client.simulate_get("/v1/models/b", headers=keyed).json
        assert card["root"] == "b" and card["max_model_len"] == 4096  # from the YAML
        hidden = client.simulate_get("/v1/models/a", headers=keyed)
        assert hidden.status_code == 404 and hidden.json["error"]["code"] == "model_not_found"
    finally:
        gateway.close()
