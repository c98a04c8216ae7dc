"""Authentication against the API keys listed in the YAML (``auth.keys``).

The simplest possible key store, for the embedded default and for tests; a
database-backed key store replaces it by answering the same hook first.
"""

import hmac

from inferegator import hookimpl
from inferegator.auth import Principal, bearer_token


@hookimpl(trylast=True)
def inferegator_authenticate(gateway, request):
    token = bearer_token(request)
    if token is None:
        return None
    for key in gateway.config.auth.keys:
        if hmac.compare_digest(token.encode(), key.encode()):
            return Principal(key_id="yaml:" + key[:10], owner="config")
    return None
