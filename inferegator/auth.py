"""Who is calling: the Principal that authentication hooks return, and Bearer parsing."""

from dataclasses import dataclass, field

from .errors import invalid_api_key, permission_denied


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: the key used and its owner, plus plugin-specific facts."""

    key_id: str
    owner: str
    is_admin: bool = False
    attributes: dict = field(default_factory=dict)


def bearer_token(request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    header = request.header("Authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def authenticate(gateway, request, admin: bool = False) -> Principal:
    """The caller, as the ``inferegator_authenticate`` hooks know it (set on the request):
    401 when none does, 403 on an admin route for a caller who is not an admin.

    ``request`` is a ClientRequest (anything with ``header(name)`` and ``principal``).
    """
    principal = gateway.hook.inferegator_authenticate(gateway=gateway, request=request)
    if principal is None:
        raise invalid_api_key()
    if admin and not principal.is_admin:
        raise permission_denied()
    request.principal = principal
    return principal
