"""jwt_auth: Bearer JWT (HS256) authentication for Inferegator, with the standard library.

``Authorization: Bearer <JWT>`` signed with HS256 and the configured secret authenticates
the token's ``sub`` as ``Principal(key_id="jwt:<sub>", owner=<sub>)``, an admin when the
``admin`` claim is ``true``. ``exp`` and ``nbf`` are honoured; with ``audience`` set,
``aud`` must name it. Anything else (an ``sk-inf-`` key, a token signed otherwise, expired,
for another audience) is not this plugin's: None, so key auth answers, or the caller gets
401. Its settings (``plugins: {jwt_auth: {secret: ${JWT_SECRET}}}``)::

    secret    the HS256 key; without one the plugin authenticates nobody, so installing it
              changes nothing until a gateway configures it
    audience  when set, the token's aud claim must name it

To accept JWTs only, turn key auth off: ``plugins: {auth_api_keys: {enabled: false}}``.
"""

import base64
import binascii
import dataclasses
import hashlib
import hmac
import json
import re
import time

from inferegator.plugin import (
    Principal,
    Section,
    Setting,
    String,
    bearer_token,
    hookimpl,
    looks_like_key,
    plugin_settings,
)

NAME = "jwt_auth"
_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")


@dataclasses.dataclass(frozen=True)
class Settings:
    secret: str | None = None
    audience: str | None = None


SETTINGS = Section(
    Settings,
    Setting("secret", String(), "The HS256 signing key (e.g. ${JWT_SECRET}); without one "
            "the plugin authenticates nobody."),
    Setting("audience", String(), "When set, a token's aud claim must name it."),
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def _sign(signing_input: str, secret: str) -> bytes:
    return hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest()


def encode(claims: dict, secret: str) -> str:
    """An HS256 JWT carrying ``claims`` (for tests and scripts)."""
    header = _b64(b'{"alg":"HS256","typ":"JWT"}')
    payload = _b64(json.dumps(claims, separators=(",", ":")).encode())
    return f"{header}.{payload}.{_b64(_sign(f'{header}.{payload}', secret))}"


def decode(token: str, secret: str, audience: str | None = None,
           now: float | None = None) -> dict | None:
    """The claims of a token signed with ``secret`` (HS256), in its validity window, for
    ``audience`` when given, with a non-empty string ``sub``; None otherwise."""
    parts = token.split(".")
    if len(parts) != 3 or not all(_SEGMENT.fullmatch(part) for part in parts):
        return None
    header, payload, signature = parts
    try:  # the signature first: nothing unsigned is parsed
        if not hmac.compare_digest(_unb64(signature), _sign(f"{header}.{payload}", secret)):
            return None
        head, claims = json.loads(_unb64(header)), json.loads(_unb64(payload))
    except (ValueError, binascii.Error):  # bad base64, bad UTF-8, bad JSON
        return None
    if not (isinstance(head, dict) and head.get("alg") == "HS256" and isinstance(claims, dict)):
        return None
    now = time.time() if now is None else now
    exp, nbf, aud, sub = (claims.get(k) for k in ("exp", "nbf", "aud", "sub"))
    if exp is not None and not (_number(exp) and now < exp):
        return None
    if nbf is not None and not (_number(nbf) and now >= nbf):
        return None
    if audience is not None and not (aud == audience or (isinstance(aud, list)
                                                        and audience in aud)):
        return None
    return claims if isinstance(sub, str) and sub else None


def _number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@hookimpl
def inferegator_authenticate(gateway, request):
    settings = plugin_settings(gateway, NAME)
    token = bearer_token(request)
    if settings.secret is None or token is None or looks_like_key(token):
        return None  # not configured, or not a JWT: another plugin's (or a 401)
    claims = decode(token, settings.secret, settings.audience)
    if claims is None:
        return None
    return Principal(key_id=f"jwt:{claims['sub']}", owner=claims["sub"],
                     is_admin=claims.get("admin") is True, attributes={"claims": claims})
