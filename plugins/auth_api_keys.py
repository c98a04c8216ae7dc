"""Authentication with the key store: ``Authorization: Bearer sk-inf-...``.

Keys are looked up by SHA-256 through a per-worker cache whose entries live
``auth.key_cache_ttl_s`` (default 2 s): that is the longest a revoked key, or a key of a
disabled user, keeps working, in every worker and replica. Unknown, revoked and
malformed keys all get the same 401, so answers do not tell which keys exist.
"""

from inferegator.plugin import (
    Principal,
    TTLCache,
    bearer_token,
    hookimpl,
    looks_like_key,
    may_use,
    model_not_allowed,
)


@hookimpl(trylast=True)
def inferegator_startup(gateway):
    gateway.plugin_state["auth_api_keys"] = TTLCache(
        gateway.store.accounts.find_key, gateway.config.auth.key_cache_ttl_s,
        clock=gateway.clock)


@hookimpl(trylast=True)
def inferegator_authenticate(gateway, request):
    token = bearer_token(request)
    if token is None or not looks_like_key(token):
        return None
    record = gateway.plugin_state["auth_api_keys"].get(token)
    if record is None or not record.active:
        return None
    return Principal(key_id=record.id, owner=record.user_id, is_admin=record.role == "admin",
                     attributes={"key": record})


@hookimpl(trylast=True)
def inferegator_admit(principal, model):
    # One rule for the allow-list, shared with /v1/models (which lists only what is allowed).
    return None if may_use(principal, model.id) else model_not_allowed(model.id)
