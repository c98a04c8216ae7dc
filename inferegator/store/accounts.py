"""Users and API keys: create, list, disable, revoke, look up by key hash."""

import json
import time
import uuid
from dataclasses import dataclass

from .secrets import (
    DUMMY_PASSWORD_HASH,
    display_prefix,
    hash_password,
    key_hash,
    new_api_key,
    verify_password,
)

ROLES = ("user", "admin")


class DuplicateEmail(Exception):
    """A user with this email exists already."""


class NotFound(Exception):
    """No such user or key (or not yours)."""


class ClaimRefused(Exception):
    """A new user's claim (an invitation, say) was refused: the user was not created."""


@dataclass(frozen=True)
class KeyRecord:
    """What authentication and limits need to know about one key (never the secret)."""

    id: str
    user_id: str
    name: str
    prefix: str
    revoked: bool
    user_disabled: bool
    role: str
    requests_per_minute: int | None
    tokens_per_minute: int | None
    monthly_budget_usd: float | None
    allowed_models: tuple[str, ...] | None

    @property
    def active(self) -> bool:
        return not self.revoked and not self.user_disabled


LIMIT_FIELDS = ("requests_per_minute", "tokens_per_minute", "monthly_budget_usd",
                "allowed_models")
_KEY_COLUMNS = ("id, user_id, name, prefix, created, last_used, revoked, requests_per_minute,"
                " tokens_per_minute, monthly_budget_usd, allowed_models")


def _public_user(row) -> dict:
    return {"id": row["id"], "email": row["email"], "role": row["role"],
            "created": row["created"], "disabled": bool(row["disabled"])}


def _public_key(row) -> dict:
    models = row["allowed_models"]
    return {"id": row["id"], "user_id": row["user_id"], "name": row["name"],
            "prefix": row["prefix"], "created": row["created"], "last_used": row["last_used"],
            "revoked": row["revoked"] is not None,
            "limits": {"requests_per_minute": row["requests_per_minute"],
                       "tokens_per_minute": row["tokens_per_minute"],
                       "monthly_budget_usd": row["monthly_budget_usd"],
                       "allowed_models": json.loads(models) if models else None}}


class Accounts:
    """The users and api_keys tables."""

    def __init__(self, db, clock=time.time):
        self.db = db
        self.clock = clock

    # -- users ----------------------------------------------------------------------------

    def create_user(self, email: str, password: str, role: str = "user", claim=None) -> dict:
        """A new user. ``claim(cur, user_id)``, if given, runs in the same transaction and
        returns False to refuse (ClaimRefused): an invitation spent with the account."""
        email = email.strip().lower()
        row = {"id": "user_" + uuid.uuid4().hex[:16], "email": email,
               "password_hash": hash_password(password), "role": role,
               "created": self.clock(), "disabled": 0}
        try:
            with self.db.transaction() as cur:
                if cur.query("SELECT 1 AS x FROM users WHERE email = ?", (email,)):
                    raise DuplicateEmail(email)
                cur.execute("INSERT INTO users (id, email, password_hash, role, created, "
                            "disabled) VALUES (?, ?, ?, ?, ?, ?)", tuple(row.values()))
                if claim is not None and not claim(cur, row["id"]):
                    raise ClaimRefused(email)
        except (DuplicateEmail, ClaimRefused):
            raise
        except Exception as exc:  # two creations racing: the UNIQUE constraint decides
            if self.db.is_unique_violation(exc):
                raise DuplicateEmail(email) from None
            raise
        return _public_user(row)

    def list_users(self) -> list[dict]:
        return [_public_user(r) for r in self.db.query(
            "SELECT id, email, role, created, disabled FROM users ORDER BY created")]

    def get_user(self, user_id: str) -> dict:
        rows = self.db.query("SELECT id, email, role, created, disabled FROM users "
                             "WHERE id = ? OR email = ?", (user_id, user_id.lower()))
        if not rows:
            raise NotFound(user_id)
        return _public_user(rows[0])

    def user_password_hash(self, email: str) -> tuple[dict | None, str | None]:
        rows = self.db.query("SELECT * FROM users WHERE email = ?", (email.strip().lower(),))
        return (_public_user(rows[0]), rows[0]["password_hash"]) if rows else (None, None)

    def check_password(self, email: str, password: str) -> dict | None:
        """The user whose email and password these are, or None; an unknown email costs
        the same KDF work as a wrong password, so timing does not tell them apart."""
        user, stored = self.user_password_hash(email)
        ok = verify_password(password, stored or DUMMY_PASSWORD_HASH)
        return user if ok and user is not None else None

    def set_user_role(self, user_id: str, role: str) -> dict:
        if role not in ROLES:
            raise ValueError(role)
        user_id = self.get_user(user_id)["id"]
        self.db.execute("UPDATE users SET role = ? WHERE id = ?", (role, user_id))
        return self.get_user(user_id)

    def set_user_disabled(self, user_id: str, disabled: bool) -> dict:
        user_id = self.get_user(user_id)["id"]
        self.db.execute("UPDATE users SET disabled = ? WHERE id = ?", (int(disabled), user_id))
        return self.get_user(user_id)

    def count_users(self) -> int:
        return self.db.query("SELECT COUNT(*) AS n FROM users")[0]["n"]

    # -- keys -----------------------------------------------------------------------------

    def create_key(self, user_id: str, name: str, **limits) -> tuple[str, dict]:
        """A new key for a user: (the secret, shown this once; its public record)."""
        user_id = self.get_user(user_id)["id"]  # an email is accepted too
        secret = new_api_key()
        models = limits.get("allowed_models")
        row = {"id": "key_" + uuid.uuid4().hex[:16], "user_id": user_id, "name": name,
               "prefix": display_prefix(secret), "secret_hash": key_hash(secret),
               "created": self.clock(), "last_used": None, "revoked": None,
               "requests_per_minute": limits.get("requests_per_minute"),
               "tokens_per_minute": limits.get("tokens_per_minute"),
               "monthly_budget_usd": limits.get("monthly_budget_usd"),
               "allowed_models": json.dumps(list(models)) if models is not None else None}
        columns = ", ".join(row)
        self.db.execute(f"INSERT INTO api_keys ({columns}) VALUES "
                        f"({', '.join('?' * len(row))})", tuple(row.values()))
        return secret, _public_key(row)

    def carried_limits(self, user_id: str) -> dict:
        """Per-minute limits a user's new key starts with: the tightest an admin set on
        the user's active keys (absent: the configured defaults), so that a user held
        below the defaults cannot mint a key above them."""
        rows = self.db.query("SELECT MIN(requests_per_minute) AS rpm, MIN(tokens_per_minute) "
                             "AS tpm FROM api_keys WHERE user_id = ? AND revoked IS NULL",
                             (user_id,))
        limits = {"requests_per_minute": rows[0]["rpm"], "tokens_per_minute": rows[0]["tpm"]}
        return {name: value for name, value in limits.items() if value is not None}

    def list_keys(self, user_id: str | None = None) -> list[dict]:
        where, params = ("WHERE user_id = ?", (user_id,)) if user_id else ("", ())
        return [_public_key(r) for r in self.db.query(
            f"SELECT {_KEY_COLUMNS} FROM api_keys {where} ORDER BY created", params)]

    def get_key(self, key_id: str, user_id: str | None = None) -> dict:
        rows = self.db.query(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = ?", (key_id,))
        if not rows or (user_id is not None and rows[0]["user_id"] != user_id):
            raise NotFound(key_id)
        return _public_key(rows[0])

    def revoke_key(self, key_id: str, user_id: str | None = None) -> dict:
        self.get_key(key_id, user_id)
        self.db.execute("UPDATE api_keys SET revoked = ? WHERE id = ? AND revoked IS NULL",
                        (self.clock(), key_id))
        return self.get_key(key_id)

    def set_key_limits(self, key_id: str, **limits) -> dict:
        self.get_key(key_id)
        with self.db.transaction() as cur:
            for name, value in limits.items():
                if name not in LIMIT_FIELDS:
                    raise ValueError(name)
                if name == "allowed_models" and value is not None:
                    value = json.dumps(list(value))
                cur.execute(f"UPDATE api_keys SET {name} = ? WHERE id = ?", (value, key_id))
        return self.get_key(key_id)

    def find_key(self, secret: str) -> KeyRecord | None:
        """The key with this secret (by its hash), revoked or not; None if unknown."""
        rows = self.db.query(
            "SELECT k.id, k.user_id, k.name, k.prefix, k.revoked, k.requests_per_minute, "
            "k.tokens_per_minute, k.monthly_budget_usd, k.allowed_models, u.disabled, u.role "
            "FROM api_keys k JOIN users u ON u.id = k.user_id WHERE k.secret_hash = ?",
            (key_hash(secret),))
        if not rows:
            return None
        r = rows[0]
        return KeyRecord(r["id"], r["user_id"], r["name"], r["prefix"], r["revoked"] is not None,
                         bool(r["disabled"]), r["role"], r["requests_per_minute"],
                         r["tokens_per_minute"], r["monthly_budget_usd"],
                         tuple(json.loads(r["allowed_models"])) if r["allowed_models"] else None)

    @staticmethod
    def touch_keys(last_used: dict, cur) -> None:
        """Record last-used times inside the caller's transaction (batched off the path)."""
        cur.executemany("UPDATE api_keys SET last_used = ? WHERE id = ? AND "
                        "(last_used IS NULL OR last_used < ?)",
                        [(ts, key_id, ts) for key_id, ts in last_used.items()])
