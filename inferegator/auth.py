"""Who is calling: the Principal that authentication hooks return, and Bearer parsing."""

from dataclasses import dataclass, field


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
