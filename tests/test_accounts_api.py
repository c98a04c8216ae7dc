"""The accounts API (/v1/admin/..., /v1/me/...) against a real gateway and simulator.

One gateway serves the module; its SQLite store is seeded in this process before it
starts (an admin, two users and their keys). The key cache is off (TTL 0) so that a
revocation or a disabled user is seen by the next request.
"""

import datetime
from dataclasses import dataclass

import openai
import pytest
import requests

from inferegator.store.store import Store
from tests.support.processes import GatewayServer, wait_until

MODEL = "acme/sim-chat"
OTHER = "acme/sim-other"
PASSWORD = "correct horse battery"


@dataclass
class Env:
    url: str
    admin_key: str
    admin_id: str
    alice_key: str
    alice_id: str
    alice_key_id: str
    bob_key: str
    bob_key_id: str


def gateway_yaml(sim, storage: str) -> str:
    models = []
    for model in (MODEL, OTHER):
        models += [f"  - id: {model}", "    owned_by: acme",
                   "    pricing: {prompt: 1.0, completion: 2.0, cached_prompt: 0.5}",
                   "    capabilities: [chat, completions, streaming]",
                   f"    backends: [{{type: sglang, url: '{sim.url}', model: sim-model}}]"]
    return "\n".join(["server:", "  health_check_interval_s: 0.5", f"storage: {storage}",
                      "ratelimit: {requests_per_minute: 1000000, tokens_per_minute: 1000000000}",
                      "auth:", "  key_cache_ttl_s: 0", "models:", *models]) + "\n"


@pytest.fixture(scope="module")
def gw(sim, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("accounts-api")
    storage = f"sqlite:///{tmp}/gw.db"
    store = Store(storage)
    accounts = store.accounts
    admin = accounts.create_user("admin@example.com", PASSWORD, "admin")
    admin_key, _ = accounts.create_key(admin["id"], "admin")
    alice = accounts.create_user("alice@example.com", PASSWORD)
    alice_key, alice_record = accounts.create_key(alice["id"], "alice")
    bob = accounts.create_user("bob@example.com", PASSWORD)
    bob_key, bob_record = accounts.create_key(bob["id"], "bob")
    store.close()
    server = GatewayServer(tmp, gateway_yaml(sim, storage))
    yield Env(server.url, admin_key, admin["id"], alice_key, alice["id"], alice_record["id"],
              bob_key, bob_record["id"])
    server.stop()


def call(gw, method, path, key=None, json=None, data=None, params=None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return requests.request(method, gw.url + path, headers=headers, json=json, data=data,
                            params=params, timeout=10)


def ok(resp, status=200) -> dict:
    assert resp.status_code == status, resp.text
    assert "hash" not in resp.text  # neither password_hash nor secret_hash, ever
    return resp.json()


def error_of(resp, status: int) -> dict:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


def sdk(gw, key):
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0)


def chat(gw, key, model=MODEL):
    return sdk(gw, key).chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Hello there"}], max_tokens=8)


def new_user(gw, email):
    return ok(call(gw, "POST", "/v1/admin/users", gw.admin_key,
                   {"email": email, "password": PASSWORD}), 201)


def new_key(gw, user_id, **fields):
    return ok(call(gw, "POST", "/v1/admin/keys", gw.admin_key,
                   {"user_id": user_id, "name": "test", **fields}), 201)


# -- admin --------------------------------------------------------------------------------

def test_admin_creates_a_user_and_a_key_that_works_with_the_openai_sdk(gw):
    user = ok(call(gw, "POST", "/v1/admin/users", gw.admin_key,
                   {"email": "Carol@Example.com", "password": PASSWORD, "role": "user"}), 201)
    assert user["object"] == "user" and user["email"] == "carol@example.com"
    assert user["role"] == "user" and user["disabled"] is False
    assert ok(call(gw, "GET", f"/v1/admin/users/{user['id']}", gw.admin_key)) == user
    listed = ok(call(gw, "GET", "/v1/admin/users", gw.admin_key))
    assert listed["object"] == "list" and user in listed["data"]

    created = new_key(gw, user["id"], requests_per_minute=100, allowed_models=[MODEL])
    secret = created.pop("key")
    assert secret.startswith("sk-inf-") and created["object"] == "api_key"
    assert created["user_id"] == user["id"] and created["revoked"] is False
    assert created["limits"]["requests_per_minute"] == 100
    assert created["limits"]["allowed_models"] == [MODEL]
    assert secret not in call(gw, "GET", "/v1/admin/keys", gw.admin_key).text

    answer = chat(gw, secret)
    assert answer.model == MODEL and answer.choices[0].message.content
    keys = ok(call(gw, "GET", "/v1/admin/keys", gw.admin_key, params={"user_id": user["id"]}))
    assert [k["id"] for k in keys["data"]] == [created["id"]]


def test_admin_can_name_the_user_of_a_new_key_by_email(gw):
    created = new_key(gw, "ALICE@example.com")
    assert created["user_id"] == gw.alice_id
    assert ok(call(gw, "DELETE", f"/v1/admin/keys/{created['id']}", gw.admin_key))["revoked"]


def test_a_duplicate_email_is_a_409_email_taken(gw):
    new_user(gw, "dave@example.com")
    resp = call(gw, "POST", "/v1/admin/users", gw.admin_key,
                {"email": "DAVE@example.com", "password": PASSWORD})
    error = error_of(resp, 409)
    assert error["code"] == "email_taken" and error["param"] == "email"


ADMIN_ROUTES = [("GET", "/v1/admin/users"), ("POST", "/v1/admin/users"),
                ("GET", "/v1/admin/users/{alice_id}"), ("PATCH", "/v1/admin/users/{alice_id}"),
                ("GET", "/v1/admin/keys"), ("POST", "/v1/admin/keys"),
                ("GET", "/v1/admin/keys/{alice_key_id}"),
                ("PATCH", "/v1/admin/keys/{alice_key_id}"),
                ("DELETE", "/v1/admin/keys/{alice_key_id}")]


@pytest.mark.parametrize("method,path", ADMIN_ROUTES)
def test_admin_routes_refuse_a_user_key_with_403_and_no_key_with_401(gw, method, path):
    path = path.format(**vars(gw))
    body = {"disabled": True} if method == "PATCH" else {}
    error = error_of(call(gw, method, path, gw.alice_key, body), 403)
    assert error["code"] == "permission_denied"
    assert error_of(call(gw, method, path, None, body), 401)["code"] == "invalid_api_key"
    assert error_of(call(gw, method, path, "sk-inf-" + "x" * 40, body), 401)
    assert chat(gw, gw.alice_key).choices  # the refused DELETE/PATCH changed nothing


@pytest.mark.parametrize("method,path", [("GET", "/v1/me/keys"), ("POST", "/v1/me/keys"),
                                         ("DELETE", "/v1/me/keys/{bob_key_id}"),
                                         ("GET", "/v1/me/usage")])
def test_user_routes_need_a_valid_key(gw, method, path):
    resp = call(gw, method, path.format(**vars(gw)), None, {"name": "x"})
    assert error_of(resp, 401)["code"] == "invalid_api_key"


def test_revoking_a_key_with_delete_stops_it_at_once(gw):
    user = new_user(gw, "erin@example.com")
    created = new_key(gw, user["id"])
    assert chat(gw, created["key"]).choices
    revoked = ok(call(gw, "DELETE", f"/v1/admin/keys/{created['id']}", gw.admin_key))
    assert revoked["id"] == created["id"] and revoked["revoked"] is True
    with pytest.raises(openai.AuthenticationError):
        chat(gw, created["key"])
    again = ok(call(gw, "DELETE", f"/v1/admin/keys/{created['id']}", gw.admin_key))
    assert again["revoked"] is True


def test_patched_limits_round_trip_and_null_clears_one(gw):
    user = new_user(gw, "frank@example.com")
    created = new_key(gw, user["id"])
    assert created["limits"] == {"requests_per_minute": None, "tokens_per_minute": None,
                                 "monthly_budget_usd": None, "allowed_models": None}
    path = f"/v1/admin/keys/{created['id']}"
    limits = {"requests_per_minute": 30, "tokens_per_minute": 5000,
              "monthly_budget_usd": 12.5, "allowed_models": [OTHER, OTHER]}
    patched = ok(call(gw, "PATCH", path, gw.admin_key, limits))
    assert patched["limits"] == {**limits, "allowed_models": [OTHER]}
    assert ok(call(gw, "GET", path, gw.admin_key))["limits"] == patched["limits"]
    with pytest.raises(openai.PermissionDeniedError):  # allowed_models is enforced
        chat(gw, created["key"], MODEL)
    assert chat(gw, created["key"], OTHER).choices

    cleared = ok(call(gw, "PATCH", path, gw.admin_key,
                      {"tokens_per_minute": None, "allowed_models": None}))
    assert cleared["limits"] == {"requests_per_minute": 30, "tokens_per_minute": None,
                                 "monthly_budget_usd": 12.5, "allowed_models": None}
    assert chat(gw, created["key"], MODEL).choices
    assert ok(call(gw, "PATCH", path, gw.admin_key, {}))["limits"] == cleared["limits"]


def test_disabling_a_user_stops_their_keys_and_enabling_restores_them(gw):
    user = new_user(gw, "grace@example.com")
    created = new_key(gw, user["id"])
    path = f"/v1/admin/users/{user['id']}"
    assert ok(call(gw, "PATCH", path, gw.admin_key, {"disabled": True}))["disabled"] is True
    with pytest.raises(openai.AuthenticationError):
        chat(gw, created["key"])
    assert ok(call(gw, "PATCH", path, gw.admin_key, {"disabled": False}))["disabled"] is False
    assert chat(gw, created["key"]).choices


def test_an_admin_cannot_disable_their_own_account(gw):
    resp = call(gw, "PATCH", f"/v1/admin/users/{gw.admin_id}", gw.admin_key, {"disabled": True})
    assert error_of(resp, 400)["param"] == "disabled"
    assert ok(call(gw, "GET", "/v1/admin/users", gw.admin_key))


@pytest.mark.parametrize("method,path,body,param", [
    ("GET", "/v1/admin/users/user_nope", None, None),
    ("PATCH", "/v1/admin/users/user_nope", {"disabled": True}, None),
    ("GET", "/v1/admin/keys/key_nope", None, None),
    ("PATCH", "/v1/admin/keys/key_nope", {"requests_per_minute": 5}, None),
    ("DELETE", "/v1/admin/keys/key_nope", None, None),
    ("POST", "/v1/admin/keys", {"user_id": "user_nope", "name": "k"}, "user_id"),
    ("GET", "/v1/admin/keys?user_id=user_nope", None, "user_id"),
])
def test_unknown_ids_are_404_not_found(gw, method, path, body, param):
    error = error_of(call(gw, method, path, gw.admin_key, body), 404)
    assert error["code"] == "not_found" and error["param"] == param


def test_an_unsupported_method_is_an_openai_shaped_405(gw):
    assert error_of(call(gw, "PUT", "/v1/admin/users", gw.admin_key, {}), 405)
    assert error_of(call(gw, "PATCH", "/v1/me/keys", gw.alice_key, {}), 405)


# -- the caller's own keys and usage ------------------------------------------------------

def test_a_user_lists_creates_and_deletes_their_own_keys(gw):
    mine = ok(call(gw, "GET", "/v1/me/keys", gw.alice_key))
    assert mine["object"] == "list"
    assert gw.alice_key_id in [k["id"] for k in mine["data"]]
    assert {k["user_id"] for k in mine["data"]} == {gw.alice_id}

    created = ok(call(gw, "POST", "/v1/me/keys", gw.alice_key, {"name": "laptop"}), 201)
    assert created["name"] == "laptop" and created["user_id"] == gw.alice_id
    assert set(created["limits"].values()) == {None}  # a user's key carries no overrides
    assert chat(gw, created["key"]).choices
    assert created["id"] in [k["id"] for k in
                             ok(call(gw, "GET", "/v1/me/keys", gw.alice_key))["data"]]

    deleted = ok(call(gw, "DELETE", f"/v1/me/keys/{created['id']}", gw.alice_key))
    assert deleted["id"] == created["id"] and deleted["revoked"] is True
    with pytest.raises(openai.AuthenticationError):
        chat(gw, created["key"])


def test_someone_elses_key_is_404_like_a_key_that_does_not_exist(gw):
    theirs = error_of(call(gw, "DELETE", f"/v1/me/keys/{gw.bob_key_id}", gw.alice_key), 404)
    missing = error_of(call(gw, "DELETE", "/v1/me/keys/key_0000000000000000", gw.alice_key),
                       404)
    assert theirs["code"] == missing["code"] == "not_found"
    assert theirs["message"].replace(gw.bob_key_id, "ID") == \
        missing["message"].replace("key_0000000000000000", "ID")
    assert chat(gw, gw.bob_key).choices  # still works
    assert gw.bob_key_id not in call(gw, "GET", "/v1/me/keys", gw.alice_key).text


def test_usage_is_grouped_by_day_model_and_key_once_the_ledger_flushes(gw):
    user = new_user(gw, "heidi@example.com")
    first, second = new_key(gw, user["id"]), new_key(gw, user["id"])
    for key, model in ((first, MODEL), (first, MODEL), (second, OTHER)):
        chat(gw, key["key"], model)

    def usage(**params):
        return ok(call(gw, "GET", "/v1/me/usage", first["key"], params=params))

    def all_three_rows():
        rows = usage(group_by="model")["data"]
        return rows if sum(r["requests"] for r in rows) == 3 else None

    by_model = wait_until(all_three_rows, timeout=10)
    assert {r["model"]: r["requests"] for r in by_model} == {MODEL: 2, OTHER: 1}
    assert all(r["prompt_tokens"] > 0 and r["completion_tokens"] > 0 and r["cost_usd"] > 0
               for r in by_model)
    by_key = usage(group_by="key")
    assert by_key["object"] == "list" and by_key["group_by"] == "key"
    assert {r["key"]: r["requests"] for r in by_key["data"]} == {first["id"]: 2,
                                                                 second["id"]: 1}
    today = datetime.datetime.now(datetime.timezone.utc).date()
    by_day = usage(group_by="day", start=str(today), end=str(today))["data"]
    assert by_day == [{**by_day[0], "day": str(today), "requests": 3}]
    assert usage()["group_by"] == "day"
    tomorrow = str(today + datetime.timedelta(days=1))
    assert usage(start=tomorrow)["data"] == []
    assert all(r["key"] != first["id"] for r in
               ok(call(gw, "GET", "/v1/me/usage", gw.bob_key,
                       params={"group_by": "key"}))["data"])


# -- bad input ----------------------------------------------------------------------------

BAD_INPUT = [
    # (method, path, JSON body or raw bytes, query, the param named)
    ("POST", "/v1/admin/users", b'{"email": ', None, None),
    ("POST", "/v1/admin/users", b"", None, None),
    ("POST", "/v1/admin/users", [], None, None),
    ("POST", "/v1/admin/users", "just a string", None, None),
    ("POST", "/v1/admin/users", {"password": PASSWORD}, None, "email"),
    ("POST", "/v1/admin/users", {"email": 5, "password": PASSWORD}, None, "email"),
    ("POST", "/v1/admin/users", {"email": "not-an-email", "password": PASSWORD}, None, "email"),
    ("POST", "/v1/admin/users", {"email": "a b@example.com", "password": PASSWORD}, None,
     "email"),
    ("POST", "/v1/admin/users", {"email": "x@example.com"}, None, "password"),
    ("POST", "/v1/admin/users", {"email": "x@example.com", "password": "short"}, None,
     "password"),
    ("POST", "/v1/admin/users", {"email": "x@example.com", "password": 123456789012345}, None,
     "password"),
    ("POST", "/v1/admin/users", {"email": "x@example.com", "password": PASSWORD,
                                 "role": "root"}, None, "role"),
    ("POST", "/v1/admin/users", {"email": "x@example.com", "password": PASSWORD,
                                 "role": ["admin"]}, None, "role"),
    ("POST", "/v1/admin/users", {"email": "x@example.com", "password": PASSWORD,
                                 "nickname": "x"}, None, "nickname"),
    ("PATCH", "/v1/admin/users/{alice_id}", {"disabled": "yes"}, None, "disabled"),
    ("PATCH", "/v1/admin/users/{alice_id}", {"disabled": 1}, None, "disabled"),
    ("PATCH", "/v1/admin/users/{alice_id}", {}, None, "disabled"),
    ("PATCH", "/v1/admin/users/{alice_id}", {"role": "admin"}, None, "role"),
    ("PATCH", "/v1/admin/users/{alice_id}", b"nope", None, None),
    ("POST", "/v1/admin/keys", {"name": "k"}, None, "user_id"),
    ("POST", "/v1/admin/keys", {"user_id": 7, "name": "k"}, None, "user_id"),
    ("POST", "/v1/admin/keys", {"user_id": "{alice_id}"}, None, "name"),
    ("POST", "/v1/admin/keys", {"user_id": "{alice_id}", "name": ""}, None, "name"),
    ("POST", "/v1/admin/keys", {"user_id": "{alice_id}", "name": "k", "secret": "x"}, None,
     "secret"),
    ("POST", "/v1/admin/keys", {"user_id": "{alice_id}", "name": "k",
                                "requests_per_minute": -1}, None, "requests_per_minute"),
    ("POST", "/v1/admin/keys", {"user_id": "{alice_id}", "name": "k",
                                "requests_per_minute": "10"}, None, "requests_per_minute"),
    ("POST", "/v1/admin/keys", {"user_id": "{alice_id}", "name": "k",
                                "requests_per_minute": True}, None, "requests_per_minute"),
    ("POST", "/v1/admin/keys", {"user_id": "{alice_id}", "name": "k",
                                "tokens_per_minute": 1.5}, None, "tokens_per_minute"),
    ("POST", "/v1/admin/keys", {"user_id": "{alice_id}", "name": "k",
                                "tokens_per_minute": 2 ** 40}, None, "tokens_per_minute"),
    ("POST", "/v1/admin/keys", {"user_id": "{alice_id}", "name": "k",
                                "monthly_budget_usd": -0.01}, None, "monthly_budget_usd"),
    ("POST", "/v1/admin/keys", {"user_id": "{alice_id}", "name": "k",
                                "monthly_budget_usd": "5"}, None, "monthly_budget_usd"),
    ("POST", "/v1/admin/keys", {"user_id": "{alice_id}", "name": "k",
                                "allowed_models": MODEL}, None, "allowed_models"),
    ("POST", "/v1/admin/keys", {"user_id": "{alice_id}", "name": "k",
                                "allowed_models": []}, None, "allowed_models"),
    ("POST", "/v1/admin/keys", {"user_id": "{alice_id}", "name": "k",
                                "allowed_models": [MODEL, "no/such-model"]}, None,
     "allowed_models[1]"),
    ("POST", "/v1/admin/keys", {"user_id": "{alice_id}", "name": "k",
                                "allowed_models": [3]}, None, "allowed_models[0]"),
    ("PATCH", "/v1/admin/keys/{alice_key_id}", {"requests_per_minute": -5}, None,
     "requests_per_minute"),
    ("PATCH", "/v1/admin/keys/{alice_key_id}", {"name": "renamed"}, None, "name"),
    ("PATCH", "/v1/admin/keys/{alice_key_id}", {"allowed_models": ["no/such-model"]}, None,
     "allowed_models[0]"),
    ("PATCH", "/v1/admin/keys/{alice_key_id}", [1], None, None),
    ("GET", "/v1/admin/keys", None, {"user_id": "{alice_id}", "page": "2"}, "page"),
    ("GET", "/v1/admin/users", None, {"limit": "5"}, "limit"),
    ("POST", "/v1/me/keys", {"name": "k", "requests_per_minute": 5}, None,
     "requests_per_minute"),
    ("POST", "/v1/me/keys", {"name": "k", "allowed_models": None}, None, "allowed_models"),
    ("POST", "/v1/me/keys", {"name": "k", "user_id": "{admin_id}"}, None, "user_id"),
    ("POST", "/v1/me/keys", {}, None, "name"),
    ("POST", "/v1/me/keys", {"name": 5}, None, "name"),
    ("POST", "/v1/me/keys", b"{not json}", None, None),
    ("GET", "/v1/me/usage", None, {"group_by": "week"}, "group_by"),
    ("GET", "/v1/me/usage", None, {"start": "2024-13-01"}, "start"),
    ("GET", "/v1/me/usage", None, {"start": "2024-02-30"}, "start"),
    ("GET", "/v1/me/usage", None, {"end": "2024/01/01"}, "end"),
    ("GET", "/v1/me/usage", None, {"start": "2024-3-1"}, "start"),
    ("GET", "/v1/me/usage", None, {"start": "2024-03-02", "end": "2024-03-01"}, "end"),
    ("GET", "/v1/me/usage", None, {"group_by": ["day", "model"]}, "group_by"),
    ("GET", "/v1/me/usage", None, {"user_id": "{admin_id}"}, "user_id"),
]


@pytest.mark.parametrize("method,path,body,query,param", BAD_INPUT)
def test_bad_input_is_a_400_naming_the_field(gw, method, path, body, query, param):
    ids = vars(gw)
    key = gw.admin_key if "/admin/" in path else gw.alice_key
    if isinstance(body, dict):
        body = {k: v.format(**ids) if isinstance(v, str) else v for k, v in body.items()}
    if query:
        query = {k: v.format(**ids) if isinstance(v, str) else v for k, v in query.items()}
    raw = body if isinstance(body, bytes) else None
    resp = call(gw, method, path.format(**ids), key, None if raw is not None else body, raw,
                query)
    error = error_of(resp, 400)
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert error["message"]


def test_bad_input_changes_nothing(gw):
    before = ok(call(gw, "GET", f"/v1/admin/keys/{gw.alice_key_id}", gw.admin_key))
    resp = call(gw, "PATCH", f"/v1/admin/keys/{gw.alice_key_id}", gw.admin_key,
                {"requests_per_minute": 5, "tokens_per_minute": -1})
    assert error_of(resp, 400)["param"] == "tokens_per_minute"
    assert ok(call(gw, "GET", f"/v1/admin/keys/{gw.alice_key_id}", gw.admin_key)) == before



def test_a_key_a_user_makes_inherits_the_limits_of_the_key_that_made_it(gw):
    created = ok(call(gw, "POST", "/v1/admin/keys", gw.admin_key,
                      json={"user_id": gw.alice_id, "name": "restricted",
                            "allowed_models": [MODEL], "requests_per_minute": 7}), 201)
    minted = ok(call(gw, "POST", "/v1/me/keys", created["key"], json={"name": "escape"}), 201)
    assert minted["limits"]["allowed_models"] == [MODEL]
    assert minted["limits"]["requests_per_minute"] == 7
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key=minted["key"], max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as err:
        client.chat.completions.create(model=OTHER, messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "model_not_allowed"
