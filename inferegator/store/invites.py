"""Invitations for registration ``invite``: an admin makes a code, one sign-up spends it."""

import hashlib
import secrets
import time

INVITE_PREFIX = "inv-"


def _hash(code: str) -> str:
    return hashlib.sha256(code.strip().encode()).hexdigest()


class Invites:
    """The invites table (codes stored hashed, like keys)."""

    def __init__(self, db, clock=time.time):
        self.db = db
        self.clock = clock

    def create(self, created_by: str, ttl_s: float) -> str:
        """A new single-use code, shown once."""
        code = INVITE_PREFIX + secrets.token_urlsafe(18)
        now = self.clock()
        self.db.execute("INSERT INTO invites (code_hash, prefix, created_by, created, expires) "
                        "VALUES (?, ?, ?, ?, ?)",
                        (_hash(code), code[:len(INVITE_PREFIX) + 4] + "…", created_by, now,
                         now + ttl_s))
        return code

    def usable(self, code: str) -> bool:
        rows = self.db.query("SELECT expires FROM invites WHERE code_hash = ? AND used_by IS "
                             "NULL", (_hash(code),))
        return bool(rows) and rows[0]["expires"] > self.clock()

    def spend(self, code: str, user_id: str, cur) -> bool:
        """Mark the code used by user_id inside the caller's transaction; False if it was
        unknown, expired or spent already (a race for one code has one winner)."""
        return cur.execute("UPDATE invites SET used_by = ?, used_at = ? WHERE code_hash = ? "
                           "AND used_by IS NULL AND expires > ?",
                           (user_id, self.clock(), _hash(code), self.clock())) == 1

    def list(self) -> list[dict]:
        return self.db.query("SELECT i.prefix, i.created, i.expires, i.used_at, u.email AS "
                             "used_by FROM invites i LEFT JOIN users u ON u.id = i.used_by "
                             "ORDER BY i.created DESC")
