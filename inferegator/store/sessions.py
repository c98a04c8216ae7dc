"""Console sign-in sessions, kept server-side so that they can be revoked.

The browser holds only a random token; the store keeps its SHA-256, the user, an expiry
and the session's CSRF token. Signing out deletes the row, "sign out everywhere" deletes
every row of the user, and a disabled user's sessions stop working at once.
"""

import hashlib
import secrets
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Session:
    """A live session: who is signed in and the token their forms must carry."""

    user: dict
    csrf_token: str
    expires: float


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Sessions:
    """The console_sessions table."""

    def __init__(self, db, clock=time.time):
        self.db = db
        self.clock = clock

    def create(self, user_id: str, ttl_s: float) -> str:
        """A new session for user_id; returns the token for the cookie (stored hashed)."""
        token = secrets.token_urlsafe(32)
        now = self.clock()
        with self.db.transaction() as cur:
            cur.execute("DELETE FROM console_sessions WHERE user_id = ? AND expires < ?",
                        (user_id, now))
            cur.execute("INSERT INTO console_sessions (token_hash, user_id, csrf_token, "
                        "created, expires) VALUES (?, ?, ?, ?, ?)",
                        (_hash(token), user_id, secrets.token_urlsafe(32), now, now + ttl_s))
        return token

    def get(self, token: str) -> Session | None:
        """The session of this token if it exists, has not expired and its user is active."""
        if not token or len(token) > 128:
            return None
        rows = self.db.query(
            "SELECT s.csrf_token, s.expires, u.id, u.email, u.role, u.created, u.disabled "
            "FROM console_sessions s JOIN users u ON u.id = s.user_id "
            "WHERE s.token_hash = ?", (_hash(token),))
        if not rows or rows[0]["expires"] <= self.clock() or rows[0]["disabled"]:
            return None
        r = rows[0]
        user = {"id": r["id"], "email": r["email"], "role": r["role"], "created": r["created"],
                "disabled": False}
        return Session(user, r["csrf_token"], r["expires"])

    def end(self, token: str) -> None:
        self.db.execute("DELETE FROM console_sessions WHERE token_hash = ?", (_hash(token),))

    def end_all(self, user_id: str) -> int:
        """Sign a user out everywhere; returns the sessions ended."""
        return self.db.execute("DELETE FROM console_sessions WHERE user_id = ?", (user_id,))

    def count(self, user_id: str) -> int:
        return self.db.query("SELECT COUNT(*) AS n FROM console_sessions WHERE user_id = ? "
                             "AND expires > ?", (user_id, self.clock()))[0]["n"]
