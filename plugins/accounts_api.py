"""The accounts API: ``/v1/admin/...`` for admins, ``/v1/me/...`` for every key's owner.

Thin Falcon resources over ``gateway.store.accounts`` and the usage ledger; input rules
live in ``inferegator.store.api_validation``. Every caller is authenticated through the
same ``inferegator_authenticate`` hook as the generation endpoints. A user asking for
someone else's key gets 404, never 403, so ids cannot be probed. Responses carry the
store's public records only: never a password or key hash.
"""

import falcon

from inferegator.plugin import (
    LIMIT_FIELDS,
    ClientRequest,
    DuplicateEmail,
    NotFound,
    email_taken,
    hookimpl,
    invalid_request,
    not_found,
    permission_denied,
    read_json,
    usage_summary,
)
from inferegator.plugin import authenticate as authenticate_request
from inferegator.plugin import validate as check


def authenticate(gateway, req, admin: bool = False):
    """The caller's Principal: 401 for a bad key, 403 on admin routes for a non-admin."""
    return authenticate_request(gateway, ClientRequest(req), admin)


def key_holder(gateway, req):
    """The caller of a /v1/me route, who must hold a key of this gateway's store: callers
    another plugin authenticates (a JWT, say) have no keys or usage here (403)."""
    principal = authenticate(gateway, req)
    if principal.attributes.get("key") is None:
        raise permission_denied("The /v1/me routes manage this gateway's own API keys; "
                                "the credentials you sent are not one.")
    return principal


def _body(gateway, req) -> dict:
    return read_json(req, gateway.config.server)


def _user(record: dict) -> dict:
    return {"object": "user", **record}


def _key(record: dict) -> dict:
    return {"object": "api_key", **record}


def _listing(records: list[dict], shape) -> dict:
    return {"object": "list", "data": [shape(r) for r in records]}


class _Resource:
    """Holds the gateway; its accounts and catalog are read per request."""

    def __init__(self, gateway):
        self.gateway = gateway

    @property
    def accounts(self):
        return self.gateway.store.accounts

    def find_user(self, ident: str, param: str | None = None) -> dict:
        try:
            return self.accounts.get_user(ident)
        except NotFound:
            raise not_found("user", ident, param) from None

    def create_key(self, resp, user_id: str, name: str, **limits) -> None:
        secret, record = self.accounts.create_key(user_id, name, **limits)
        resp.status = falcon.HTTP_201
        resp.media = {"key": secret, **_key(record)}


# -- admin ------------------------------------------------------------------------------------

class AdminUsers(_Resource):
    """GET/POST /v1/admin/users."""

    def on_get(self, req, resp):
        authenticate(self.gateway, req, admin=True)
        check.query(req.params, ())
        resp.media = _listing(self.accounts.list_users(), _user)

    def on_post(self, req, resp):
        authenticate(self.gateway, req, admin=True)
        user = check.new_user(_body(self.gateway, req))
        try:
            record = self.accounts.create_user(**user)
        except DuplicateEmail:
            raise email_taken(user["email"]) from None
        resp.status = falcon.HTTP_201
        resp.media = _user(record)


class AdminUser(_Resource):
    """GET/PATCH /v1/admin/users/{user_id} (PATCH {disabled})."""

    def on_get(self, req, resp, user_id):
        authenticate(self.gateway, req, admin=True)
        resp.media = _user(self.find_user(user_id))

    def on_patch(self, req, resp, user_id):
        principal = authenticate(self.gateway, req, admin=True)
        disabled = check.user_patch(_body(self.gateway, req))
        user = self.find_user(user_id)
        if disabled and user["id"] == principal.owner:
            raise invalid_request("An admin cannot disable their own account.", "disabled",
                                  "invalid_value")
        resp.media = _user(self.accounts.set_user_disabled(user["id"], disabled))


class AdminKeys(_Resource):
    """GET /v1/admin/keys[?user_id=] and POST (a key for any user, with limits)."""

    def on_get(self, req, resp):
        authenticate(self.gateway, req, admin=True)
        params = check.query(req.params, ("user_id",))
        user_id = self.find_user(params["user_id"], "user_id")["id"] \
            if "user_id" in params else None
        resp.media = _listing(self.accounts.list_keys(user_id), _key)

    def on_post(self, req, resp):
        authenticate(self.gateway, req, admin=True)
        fields = check.new_key(_body(self.gateway, req), self.gateway.catalog.models,
                               admin=True)
        fields["user_id"] = self.find_user(fields["user_id"], "user_id")["id"]
        self.create_key(resp, **fields)


class AdminKey(_Resource):
    """GET/PATCH (limits; null clears one)/DELETE (revoke) /v1/admin/keys/{key_id}."""

    def _get(self, key_id):
        try:
            return self.accounts.get_key(key_id)
        except NotFound:
            raise not_found("API key", key_id) from None

    def on_get(self, req, resp, key_id):
        authenticate(self.gateway, req, admin=True)
        resp.media = _key(self._get(key_id))

    def on_patch(self, req, resp, key_id):
        authenticate(self.gateway, req, admin=True)
        limits = check.key_patch(_body(self.gateway, req), self.gateway.catalog.models)
        self._get(key_id)
        resp.media = _key(self.accounts.set_key_limits(key_id, **limits))

    def on_delete(self, req, resp, key_id):
        authenticate(self.gateway, req, admin=True)
        self._get(key_id)
        resp.media = _key(self.accounts.revoke_key(key_id))


# -- the caller's own ---------------------------------------------------------------------

class MyKeys(_Resource):
    """GET/POST /v1/me/keys: the caller's keys; a new key inherits the calling key's limits,
    so that a user cannot escape an admin's restrictions by minting a key."""

    def on_get(self, req, resp):
        principal = key_holder(self.gateway, req)
        check.query(req.params, ())
        resp.media = _listing(self.accounts.list_keys(principal.owner), _key)

    def on_post(self, req, resp):
        principal = key_holder(self.gateway, req)
        fields = check.new_key(_body(self.gateway, req), (), admin=False)
        caller = principal.attributes.get("key")
        inherited = {name: getattr(caller, name) for name in LIMIT_FIELDS} if caller else {}
        self.create_key(resp, principal.owner, fields["name"], **inherited)


class MyKey(_Resource):
    """DELETE /v1/me/keys/{key_id}: revoke one of the caller's keys (others': 404)."""

    def on_delete(self, req, resp, key_id):
        principal = key_holder(self.gateway, req)
        try:
            resp.media = _key(self.accounts.revoke_key(key_id, principal.owner))
        except NotFound:
            raise not_found("API key", key_id) from None


class MyUsage(_Resource):
    """GET /v1/me/usage?group_by=day|model|key&start=&end=: the caller's usage ledger."""

    def on_get(self, req, resp):
        principal = key_holder(self.gateway, req)
        q = check.usage_query(req.params)
        rows = usage_summary(self.gateway.store.db, principal.owner, q["group_by"],
                             q["start_day"], q["end_day"])
        resp.media = {"object": "list", "group_by": q["group_by"], "data": rows}


@hookimpl(trylast=True)
def inferegator_register_routes(gateway):
    return [
        ("/v1/admin/users", AdminUsers(gateway)),
        ("/v1/admin/users/{user_id}", AdminUser(gateway)),
        ("/v1/admin/keys", AdminKeys(gateway)),
        ("/v1/admin/keys/{key_id}", AdminKey(gateway)),
        ("/v1/me/keys", MyKeys(gateway)),
        ("/v1/me/keys/{key_id}", MyKey(gateway)),
        ("/v1/me/usage", MyUsage(gateway)),
    ]
