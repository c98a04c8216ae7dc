"""jwt_auth in a JWT-only deployment (key auth off), with inferegator.testing's fixtures."""

import jwt_auth

SECRET = "s3cret-for-tests-only"
JWT_ONLY = {"auth_api_keys": {"enabled": False}, "jwt_auth": {"secret": SECRET}}


def test_a_valid_jwt_is_the_only_way_in_and_is_billed_to_its_subject(make_gateway):
    gateway = make_gateway(settings=JWT_ONLY)
    key, _ = gateway.user()
    token = jwt_auth.encode({"sub": "alice"}, SECRET)
    assert gateway.chat(key).status_code == 401  # an sk-inf- key: key auth is disabled
    assert gateway.chat(jwt_auth.encode({"sub": "alice"}, "other")).status_code == 401
    assert gateway.chat(jwt_auth.encode({"sub": "alice", "exp": 1}, SECRET)).status_code == 401
    assert gateway.chat(token).status_code == 200
    assert [(r["key_id"], r["user_id"]) for r in gateway.ledger()] == [("jwt:alice", "alice")]
    me = gateway.get("/v1/me/keys", key=token)  # no keys of this store: 403, not a 500
    assert me.status_code == 403 and me.json["error"]["code"] == "permission_denied"
    assert set(me.json["error"]) >= {"message", "type", "param", "code"}


def test_the_admin_claim_and_the_audience(make_gateway):
    gateway = make_gateway(settings={"jwt_auth": {"secret": SECRET, "audience": "gw"}})
    admin = jwt_auth.encode({"sub": "root", "admin": True, "aud": ["gw"]}, SECRET)
    user = jwt_auth.encode({"sub": "bob", "admin": "yes", "aud": "gw"}, SECRET)
    assert gateway.get("/v1/admin/users", key=admin).status_code == 200
    assert gateway.get("/v1/admin/users", key=user).status_code == 403
    elsewhere = jwt_auth.encode({"sub": "root", "admin": True, "aud": "other"}, SECRET)
    assert gateway.get("/v1/admin/users", key=elsewhere).status_code == 401
